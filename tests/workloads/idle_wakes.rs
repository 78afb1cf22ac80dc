//! Wakes HZ times a second and does nothing else, until SIGINT or SIGTERM: what waking the
//! tool's CPU at a sampled mode's rate costs a workload on the other CPU, whatever the
//! reads do. On an idle VM that is not nothing (the other CPU leaves its idle state at
//! every wake); the bench runs it beside the sampled mode to tell that part from the
//! reads' own.
//!
//! Usage: `idle-wakes HZ`; prints `started`, and `woke N times` when it ends.

use std::{process::ExitCode, time::Duration};

#[path = "stop_signals.rs"]
mod stop_signals;

use stop_signals::block_stop_signals;

fn main() -> ExitCode {
    let stop_signals = block_stop_signals();
    let hz = match std::env::args().nth(1).map(|arg| arg.parse::<u32>()) {
        Some(Ok(hz)) if hz > 0 => hz,
        _ => {
            eprintln!("usage: idle-wakes HZ (a whole number above 0)");
            return ExitCode::from(2);
        }
    };
    let period = Duration::from_secs(1) / hz;
    let timeout = libc::timespec {
        tv_sec: period.as_secs() as libc::time_t,
        tv_nsec: period.subsec_nanos() as libc::c_long,
    };
    println!("started");
    let mut wakes: u64 = 0;
    loop {
        // SAFETY: a set of blocked signals, as `block_stop_signals` made it; no siginfo
        // asked for; a valid timeout.
        let signal = unsafe { libc::sigtimedwait(&stop_signals, std::ptr::null_mut(), &timeout) };
        if signal > 0 {
            break;
        }
        // EAGAIN: the period passed (EINTR: another signal; a wake all the same).
        wakes += 1;
    }
    println!("woke {wakes} times");
    ExitCode::SUCCESS
}
