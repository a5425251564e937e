//! Retry delays: capped exponential backoff with jitter.

use std::time::Duration;

/// Capped exponential backoff with "equal jitter": each delay is drawn from
/// the upper half of the exponential step, so peers that failed together do
/// not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
        assert!(delays[19] >= Duration::from_millis(2500));
        // Jitter: two backoffs rarely agree on all of their first ten delays.
        let mut c = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let other: Vec<Duration> = (0..20).map(|_| c.next_delay()).collect();
        assert_ne!(delays, other);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
