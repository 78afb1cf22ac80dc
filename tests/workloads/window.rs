//! A measurement window opened and closed by signals, for the overhead bench: the bench sends
//! SIGUSR1 once a tracer is attached and SIGUSR2 before it detaches, so the window a workload
//! measures is traced from end to end.
//!
//! `WindowSignals::block` must run in `main` before any thread is spawned: every thread then
//! inherits the blocked mask and the signals stay pending until `wait` takes them (sigwait
//! is not a watched call, so the waiting thread adds nothing to a trace).

use std::time::Instant;

pub struct WindowSignals {
    set: libc::sigset_t,
}

/// Which edge of the window a signal marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Open,
    Close,
}

impl WindowSignals {
    /// Blocks SIGUSR1 and SIGUSR2 in the calling thread and every thread it spawns later.
    pub fn block() -> Self {
        // SAFETY: the set is initialized by sigemptyset before use; pthread_sigmask only
        // reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            let err = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            assert_eq!(err, 0, "pthread_sigmask: error {err}");
            Self { set }
        }
    }

    /// Waits for the signal of `edge` (a stray signal of the other edge is ignored); returns
    /// when it came.
    pub fn wait_for(&self, edge: Edge) -> Instant {
        loop {
            let mut signal = 0;
            // SAFETY: `set` is a valid, initialized signal set and `signal` a valid out pointer.
            let err = unsafe { libc::sigwait(&self.set, &mut signal) };
            let now = Instant::now();
            let came = match signal {
                libc::SIGUSR1 => Edge::Open,
                _ => Edge::Close,
            };
            if err == 0 && came == edge {
                return now;
            }
        }
    }
}
