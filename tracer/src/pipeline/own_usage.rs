//! What tracing costs the tracer itself: its CPU time and memory, for the line every
//! `record` and `snapshot` ends with and for `serve`'s metrics.

use std::fmt;

/// The tracer process's own CPU time and memory, from /proc/self.
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
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Self {
            cpu_seconds: parse_cpu_ticks(&stat).map_or(0.0, |ticks_used| ticks_used as f64 / ticks),
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

/// utime + stime (fields 14 and 15 of proc_pid_stat(5)), counted after the comm's ')'.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // After ')': state is field 3, so utime (14) is the 12th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
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
    fn proc_self_stat_statm_and_status_parse() {
        let stat = "42 (tracer (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_resident_pages("1000 250 30 1 0 400 0"), Some(250));
        assert_eq!(parse_peak_resident_kib("VmPeak:\t  9000 kB\nVmHWM:\t   7412 kB\n"), Some(7412));
        let usage = ProcessUsage::of_self();
        assert!(usage.resident_bytes > 0);
        assert!(usage.peak_resident_bytes >= usage.resident_bytes);
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
