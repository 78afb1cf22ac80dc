//! The workloads that run until they are told to stop (`empty-probes`, `idle-wakes`) take
//! SIGINT and SIGTERM as a request to report and exit, not as their default action.

/// SIGINT and SIGTERM, blocked on this thread (call it before anything else starts, so
/// that every thread inherits the mask), for `sigwait` or `sigtimedwait` to take them
/// instead of their default action, which ends the process unreported.
pub fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: a signal set built by libc on this thread's stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}
