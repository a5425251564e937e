//! CPU time and resident memory of a process, from `/proc/<pid>`.

use std::ffi::{c_int, c_long};
use std::time::{Duration, Instant};

unsafe extern "C" {
    fn sysconf(name: c_int) -> c_long;
}
const SC_CLK_TCK: c_int = 2;

/// CPU time (user + system) the process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after ')'.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { sysconf(SC_CLK_TCK) }.max(1) as f64;
    Some(Duration::from_secs_f64(ticks as f64 / hz))
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The command name of a process (`/proc/<pid>/comm`).
pub fn comm(pid: u32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_string(),
    )
}

/// Measures a process's CPU use over an interval.
pub struct CpuMeter {
    pid: u32,
    cpu0: Duration,
    t0: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            cpu0: cpu_time(pid).unwrap_or_default(),
            t0: Instant::now(),
        }
    }

    /// Percent of one core used since `start`.
    pub fn percent(&self) -> f64 {
        let used = cpu_time(self.pid)
            .unwrap_or_default()
            .saturating_sub(self.cpu0);
        100.0 * used.as_secs_f64() / self.t0.elapsed().as_secs_f64()
    }
}
