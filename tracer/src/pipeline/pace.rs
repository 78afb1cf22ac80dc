//! When a sampled read is next due: a period after the last one began, or later when the
//! reads would take more than their budget of one CPU (`--cpu-budget`, 5% by default). A
//! read's cost follows the target's threads (a pass over 10,000 blocked threads takes
//! about 9 ms here, 45% of a core at 49 Hz) and how many are in a new wait, whose stacks
//! are copied and unwound; always-on use needs a bound that holds whatever the target
//! does. Reads that come later each count the time since the one before, so the profile
//! stays whole; its header gives the rate they came at when it fell below the asked one.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// The most of one CPU the reads may take by default, in percent.
pub const DEFAULT_CPU_BUDGET_PERCENT: f64 = 5.0;

/// The budget of this run's reads, in percent (f64 bits): set once from the command line,
/// read by every pace.
static CPU_BUDGET_PERCENT: AtomicU64 = AtomicU64::new(DEFAULT_CPU_BUDGET_PERCENT.to_bits());

/// Sets the most of one CPU this run's reads may take (`--cpu-budget`), in percent.
pub fn set_cpu_budget(percent: Option<f64>) {
    let percent = percent.unwrap_or(DEFAULT_CPU_BUDGET_PERCENT);
    CPU_BUDGET_PERCENT.store(percent.to_bits(), Ordering::Relaxed);
}

/// The most of one CPU this run's reads may take, in percent.
pub fn cpu_budget_percent() -> f64 {
    f64::from_bits(CPU_BUDGET_PERCENT.load(Ordering::Relaxed))
}

/// Whether reads that came at `came_hz` fell well below the `asked_hz` rate: spaced out by
/// their cost, taken in turns with other processes, or late on a busy machine. Reports
/// then give the rate they came at.
pub fn came_slower(asked_hz: f64, came_hz: f64) -> bool {
    came_hz < asked_hz * 0.8
}

/// The due time of each read of a sampled recording.
#[derive(Debug)]
pub struct ReadPace {
    period: Duration,
    next: Instant,
    reads: u64,
    /// Reads after which the next was put off by the budget.
    slowed: u64,
}

impl ReadPace {
    /// Reads every `period`, the first now.
    pub fn new(period: Duration) -> Self {
        Self { period, next: Instant::now(), reads: 0, slowed: 0 }
    }

    /// Runs one read and sets when the next is due (see [`ReadPace::next`]).
    pub fn read<T>(&mut self, read: impl FnOnce() -> T) -> T {
        let cpu_before = thread_cpu_time();
        let result = read();
        let spent = thread_cpu_time().saturating_sub(cpu_before);
        self.reads += 1;
        // The first read samples every blocked thread from /proc, once: it sets no pace.
        let budget = cpu_budget_percent() / 100.0;
        let gap = match self.reads {
            1 => self.period,
            _ => gap_within_budget(self.period, spent, budget),
        };
        if gap > self.period {
            self.slowed += 1;
            if self.slowed == 1 {
                log::info!(
                    "a read took {spent:?} of CPU: reads come every {gap:?} instead of {:?} \
                     to stay within {}% of a CPU",
                    self.period,
                    cpu_budget_percent()
                );
            }
        }
        // A read that ran late does not make the next ones hurry to catch up.
        self.next = (self.next + gap).max(Instant::now());
        result
    }

    /// Reads come every `period` from the next on (a sampler whose passes moved into the
    /// kernel is drained less often than it samples).
    pub fn set_period(&mut self, period: Duration) {
        if period != self.period {
            self.next = self.next.checked_sub(self.period).unwrap_or(self.next) + period;
            self.period = period;
        }
    }

    /// When the next read is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Reads so far.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Reads after which the next was put off to stay within the budget.
    pub fn slowed(&self) -> u64 {
        self.slowed
    }
}

/// The time from one read's start to the next's: `period`, or longer when a read that
/// took `spent` of CPU would otherwise take more than `budget` (a fraction) of one CPU.
pub(crate) fn gap_within_budget(period: Duration, spent: Duration, budget: f64) -> Duration {
    period.max(spent.div_f64(budget))
}

/// This thread's CPU time so far (`CLOCK_THREAD_CPUTIME_ID`); zero if it cannot be read,
/// which sets no pace.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_period_moves_the_next_read_once() {
        let mut pace = ReadPace::new(Duration::from_millis(20));
        pace.read(|| ());
        let next = pace.next();
        pace.set_period(Duration::from_millis(250));
        assert_eq!(pace.next(), next + Duration::from_millis(230));
        pace.set_period(Duration::from_millis(250));
        assert_eq!(pace.next(), next + Duration::from_millis(230), "the same period again");
    }

    #[test]
    fn a_cheap_read_keeps_the_period_and_a_costly_one_stretches_it() {
        let period = Duration::from_millis(20);
        let gap = |spent| gap_within_budget(period, spent, 0.05);
        assert_eq!(gap(Duration::from_micros(300)), period);
        // At the budget exactly: 1 ms of CPU every 20 ms is 5%.
        assert_eq!(gap(Duration::from_millis(1)), period);
        // 9 ms a read (10,000 threads): every 180 ms, 5% of a CPU; at 50%, every 20 ms.
        assert_eq!(gap(Duration::from_millis(9)), Duration::from_millis(180));
        assert_eq!(gap_within_budget(period, Duration::from_millis(9), 0.5), period);
    }

    #[test]
    fn reads_that_burn_cpu_are_put_off_but_the_first_is_not() {
        let burn = |cpu: Duration| {
            let start = thread_cpu_time();
            while thread_cpu_time().saturating_sub(start) < cpu {
                std::hint::black_box(0u64);
            }
        };
        let period = Duration::from_millis(1);
        let mut pace = ReadPace::new(period);
        let started = Instant::now();
        pace.read(|| burn(Duration::from_millis(5)));
        assert_eq!(pace.slowed(), 0, "the first read sets no pace");
        assert!(pace.next() <= Instant::now() + period);
        let second = Instant::now();
        pace.read(|| burn(Duration::from_millis(5)));
        assert_eq!(pace.slowed(), 1);
        // 5 ms of CPU at 5%: the next read at least 100 ms after the first was due.
        assert!(pace.next() >= started + Duration::from_millis(100), "{:?}", pace.next() - second);
        pace.read(|| ());
        assert_eq!(pace.slowed(), 1, "a cheap read keeps the period");
    }
}
