//! A timer that wakes the tracer once per deadline, for the async loops that run on a
//! tracer's CPU for as long as a recording lasts (ring-buffer drains, late copies; the
//! sampled reads sleep on a `StopWatch`, outside the runtime).
//!
//! Tokio's timer wheel files a deadline by the highest bit in which it differs from now,
//! and wakes its thread at the edge of each 64 ms slot such a deadline lies past, to file
//! it again: a read every 20 ms woke the tracer 64 times a second, not 49. Each wake of an
//! idle CPU costs the service on the next one (docs/overhead-log.md, session 32). A
//! timerfd fires once, when due.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use tokio::io::{Interest, unix::AsyncFd};

/// One timerfd on `CLOCK_MONOTONIC` (`Instant`'s clock), set again for each deadline.
pub struct DeadlineTimer {
    fd: AsyncFd<OwnedFd>,
}

impl DeadlineTimer {
    /// A timer registered with the current tokio runtime.
    pub fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the descriptor, which stays open and the same for as
        // long as it is registered.
        Ok(Self { fd: unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }? })
    }

    /// Returns at `deadline` (at once if it has passed). Cancel-safe: a later call sets
    /// the timer again, and a firing of an earlier setting ends no later sleep early.
    pub async fn sleep_until(&mut self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        // Setting the timer clears the expirations of its earlier setting.
        self.set(left)?;
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| read_expirations(fd.as_raw_fd())) {
                Ok(result) => return result.map(|_| ()),
                // Readiness left from an earlier setting: not due yet.
                Err(_would_block) => continue,
            }
        }
    }

    fn set(&self, after: Duration) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the fd is ours; `spec` is a valid itimerspec and no old value is asked for.
        let set =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if set != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Ticks every `period` on a [`DeadlineTimer`], the first a period from now. A late tick
/// delays the next, it does not bunch them up. Cancel-safe: a tick abandoned is due at
/// the same time at the next call.
pub struct Ticks {
    timer: DeadlineTimer,
    period: Duration,
    next: Instant,
}

impl Ticks {
    pub fn every(period: Duration) -> io::Result<Self> {
        Ok(Self { timer: DeadlineTimer::new()?, period, next: Instant::now() + period })
    }

    /// Returns at the next tick.
    pub async fn tick(&mut self) -> io::Result<()> {
        self.timer.sleep_until(self.next).await?;
        self.next = Instant::now() + self.period;
        Ok(())
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// Ticks every `period` from the last tick on.
    pub fn set_period(&mut self, period: Duration) {
        self.next = self.next - self.period + period;
        self.period = period;
    }
}

/// Reads how many times the timer fired since it was set or last read; WouldBlock when
/// it has not.
fn read_expirations(fd: i32) -> io::Result<u64> {
    let mut expirations = 0u64;
    // SAFETY: reads 8 bytes into a u64 we own.
    let read = unsafe { libc::read(fd, (&raw mut expirations).cast(), size_of::<u64>()) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(expirations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn sleeps_until_the_deadline_and_not_past_a_passed_one() {
        let mut timer = DeadlineTimer::new().unwrap();
        let start = Instant::now();
        timer.sleep_until(start + Duration::from_millis(30)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(30));
        // A deadline passed returns at its first poll.
        let passed = tokio::time::timeout(Duration::ZERO, timer.sleep_until(start));
        assert!(passed.await.is_ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ticks_come_a_period_apart_and_a_new_period_counts_from_the_last_tick() {
        let mut ticks = Ticks::every(Duration::from_millis(10)).unwrap();
        let start = Instant::now();
        ticks.tick().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(10));
        let ticked = Instant::now();
        ticks.set_period(Duration::from_millis(40));
        ticks.tick().await.unwrap();
        // 40 ms from the tick, which came just before `ticked`.
        assert!(ticked.elapsed() >= Duration::from_millis(35));
        assert_eq!(ticks.period(), Duration::from_millis(40));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_abandoned_setting_does_not_end_the_next_sleep_early() {
        let mut timer = DeadlineTimer::new().unwrap();
        // Set for 5 ms, abandoned (as a select! drops its branch), and left to fire.
        let abandoned = tokio::time::timeout(
            Duration::ZERO,
            timer.sleep_until(Instant::now() + Duration::from_millis(5)),
        );
        assert!(abandoned.await.is_err());
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        timer.sleep_until(start + Duration::from_millis(50)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(50));
    }
}
