//! What ends a sampled recording (the duration, Ctrl-C, SIGTERM or SIGHUP, the target's
//! exit), watched on a thread of its own, so that the reads sleep between them in one
//! `ppoll` on an eventfd the watcher writes at the stop. A read then costs its CPU one
//! wake-up and no async runtime's turn around it (the runtime's poll, the timer's setting
//! and reads: a fifth of a read of an idle process, 122 µs → 99 µs here), on a CPU whose
//! every burst the service next to it pays for (docs/overhead-log.md, sessions 32, 33).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::oneshot;

use super::{Stop, StopSources};

/// The watcher thread and the eventfd it writes when the recording is to stop.
pub struct StopWatch {
    stopped: OwnedFd,
    /// Ends the watch from this side (`finish`).
    cancel: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<Option<Stop>>>>,
}

impl StopWatch {
    /// Starts watching for the stop of a recording of `duration`, and for the exit of the
    /// process behind `pidfd` when one is given. Returns once the signals are caught, so
    /// that a Ctrl-C from now on stops the recording instead of killing the tracer.
    pub fn start(pidfd: Option<OwnedFd>, duration: Duration) -> anyhow::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("cannot make an eventfd");
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let stopped = unsafe { OwnedFd::from_raw_fd(fd) };
        let to_write = stopped.try_clone().context("cannot dup the eventfd")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (cancel, cancelled) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tracer-stop".into())
            .spawn(move || {
                let stop = watch(pidfd, duration, ready_tx, cancelled);
                // Wakes the reads whatever the watch ended with (an error stops them too).
                // SAFETY: writes 8 bytes from a u64 we own to an eventfd we own.
                let one = 1u64;
                unsafe { libc::write(to_write.as_raw_fd(), (&raw const one).cast(), 8) };
                stop
            })
            .context("cannot start the thread that watches for the stop")?;
        let mut watch = Self { stopped, cancel: Some(cancel), thread: Some(thread) };
        if ready_rx.recv().is_err() {
            // The thread ended before it caught the signals: its error says why.
            return Err(watch.end().err().unwrap_or_else(|| anyhow::anyhow!("no stop watch")));
        }
        Ok(watch)
    }

    /// Sleeps until `deadline` or the stop, whichever comes first: true at the stop.
    pub fn sleep_until(&self, deadline: Instant) -> io::Result<bool> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            let mut fds =
                [libc::pollfd { fd: self.stopped.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            // SAFETY: one pollfd and a timespec we own; no signal mask.
            let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), 1, &timeout, std::ptr::null()) };
            match ready {
                0 if left.is_zero() || Instant::now() >= deadline => return Ok(false),
                0 => continue,
                n if n > 0 => return Ok(true),
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
    }

    /// Ends the watch: why the recording stopped, or None when it stopped on this side
    /// (nothing left to read, a read failed) before any stop came.
    pub fn finish(mut self) -> anyhow::Result<Option<Stop>> {
        self.end()
    }

    /// Tells the watcher to end (if it has not) and waits for it.
    fn end(&mut self) -> anyhow::Result<Option<Stop>> {
        if let Some(cancel) = self.cancel.take() {
            let _ = cancel.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(stop)) => stop,
            Some(Err(_)) => Err(anyhow::anyhow!("the thread that watches for the stop panicked")),
            None => Ok(None),
        }
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// The watcher thread's work: its own runtime, the signals caught (then `ready`), and the
/// first of the stops or `cancelled`.
fn watch(
    pidfd: Option<OwnedFd>,
    duration: Duration,
    ready: std::sync::mpsc::Sender<()>,
    cancelled: oneshot::Receiver<()>,
) -> anyhow::Result<Option<Stop>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the stop watch's runtime")?;
    runtime.block_on(async move {
        let mut sources = StopSources::new(pidfd)?;
        let _ = ready.send(());
        tokio::select! {
            stop = sources.wait(duration, std::future::pending) => stop.map(Some),
            _ = cancelled => Ok(None),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_to_its_deadline_and_wakes_at_the_stop() {
        let watch = StopWatch::start(None, Duration::from_millis(300)).unwrap();
        let started = Instant::now();
        assert!(!watch.sleep_until(started + Duration::from_millis(20)).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(!watch.sleep_until(started).unwrap(), "a deadline passed returns at once");
        // The duration ends the watch well before this deadline.
        assert!(watch.sleep_until(started + Duration::from_secs(30)).unwrap());
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(watch.finish().unwrap(), Some(Stop::DurationElapsed));
    }

    #[test]
    fn a_watch_ended_here_says_no_stop_came() {
        let watch = StopWatch::start(None, Duration::from_secs(3600)).unwrap();
        assert!(!watch.sleep_until(Instant::now() + Duration::from_millis(5)).unwrap());
        assert_eq!(watch.finish().unwrap(), None);
    }

    #[test]
    fn the_target_exit_stops_it() {
        let mut child = std::process::Command::new("sleep").arg("0.05").spawn().unwrap();
        // SAFETY: pidfd_open takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) } as i32;
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: as above.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let watch = StopWatch::start(Some(pidfd), Duration::from_secs(3600)).unwrap();
        assert!(watch.sleep_until(Instant::now() + Duration::from_secs(30)).unwrap());
        assert_eq!(watch.finish().unwrap(), Some(Stop::TargetExited));
        child.wait().unwrap();
    }
}
