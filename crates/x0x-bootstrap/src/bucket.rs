//! A token bucket: `rate` tokens a second, holding at most one second's worth.

use std::time::Instant;

#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: u64, now: Instant) -> Self {
        Self {
            rate: rate as f64,
            tokens: rate as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Whether the bucket has refilled completely (its owner has been idle).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate
    }

    /// Whether `cost` tokens are there (without taking them).
    pub fn has(&mut self, cost: f64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= cost
    }

    /// Take `cost` tokens if there are enough.
    pub fn take(&mut self, cost: f64, now: Instant) -> bool {
        if !self.has(cost, now) {
            return false;
        }
        self.tokens -= cost;
        true
    }

    /// Take `cost` tokens unconditionally (after checking with [`Self::has`]).
    pub fn charge(&mut self, cost: f64) {
        self.tokens -= cost;
    }

    /// Fill the bucket to its burst.
    pub fn fill(&mut self) {
        self.tokens = self.rate;
    }

    /// Change the rate (and so the burst); tokens above the new burst go.
    pub fn set_rate(&mut self, rate: f64, now: Instant) {
        self.refill(now);
        self.rate = rate;
        self.tokens = self.tokens.min(rate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_one_second_and_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, t0);
        assert!(b.take(100.0, t0));
        assert!(!b.take(1.0, t0));
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.take(50.0, t1));
        assert!(!b.take(1.0, t1));
        assert!(b.is_full(t1 + Duration::from_secs(10)));
        assert!(b.has(100.0, t1 + Duration::from_secs(10)));
        assert!(!b.has(101.0, t1 + Duration::from_secs(10)));
        let t2 = t1 + Duration::from_secs(10);
        b.set_rate(10.0, t2);
        assert!(!b.has(11.0, t2));
        assert!(b.take(10.0, t2));
        assert!(b.take(5.0, t2 + Duration::from_millis(500)));
    }
}
