//! What tracing costs the tracer itself: its CPU time and memory, for the line every
//! `record` and `snapshot` ends with and for `serve`'s metrics.

use std::fmt;

/// The tracer process's own CPU time (getrusage) and memory (/proc/self).
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessUsage {
    /// User and system time, all threads.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    /// The high-water mark of `resident_bytes` (VmHWM).
    pub peak_resident_bytes: u64,
}

impl ProcessUsage {
    pub fn of_self() -> Self {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Self {
            cpu_seconds: cpu_seconds_of_self(),
            resident_bytes: parse_resident_pages(&statm).map_or(0, |pages| pages * page),
            peak_resident_bytes: parse_peak_resident_kib(&status).map_or(0, |kib| kib * 1024),
        }
    }
}

/// `tracer cost: 0.12s CPU, peak memory 73 MiB` (the report's last line).
impl fmt::Display for ProcessUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tracer cost: {:.2}s CPU, peak memory {} MiB",
            self.cpu_seconds,
            self.peak_resident_bytes.div_ceil(1024 * 1024)
        )
    }
}

/// User and system time of every thread of the tracer, to the microsecond (getrusage):
/// /proc's `stat` counts clock ticks, 10 ms each, more than a second of top's own use.
fn cpu_seconds_of_self() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given; RUSAGE_SELF always exists.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The resident pages: the second field of /proc/self/statm.
fn parse_resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// `VmHWM:    74120 kB` in /proc/self/status.
fn parse_peak_resident_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_self_statm_and_status_parse() {
        assert_eq!(parse_resident_pages("1000 250 30 1 0 400 0"), Some(250));
        assert_eq!(parse_peak_resident_kib("VmPeak:\t  9000 kB\nVmHWM:\t   7412 kB\n"), Some(7412));
        let usage = ProcessUsage::of_self();
        assert!(usage.resident_bytes > 0);
        assert!(usage.peak_resident_bytes >= usage.resident_bytes);
    }

    #[test]
    fn own_cpu_time_counts_microseconds() {
        let before = ProcessUsage::of_self().cpu_seconds;
        // About a millisecond of work: less than one clock tick.
        let started = std::time::Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(2) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let after = ProcessUsage::of_self().cpu_seconds;
        assert!(after > before, "{before} then {after}");
    }

    #[test]
    fn the_cost_line_rounds_memory_up_to_mebibytes() {
        let usage = ProcessUsage {
            cpu_seconds: 0.125,
            resident_bytes: 0,
            peak_resident_bytes: 73 * 1024 * 1024 + 1,
        };
        assert_eq!(usage.to_string(), "tracer cost: 0.12s CPU, peak memory 74 MiB");
    }
}
