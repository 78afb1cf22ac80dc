//! Wakes HZ times a second and does nothing else, until SIGINT or SIGTERM: what waking the
//! tool's CPU at a sampled mode's rate costs a workload on the other CPU, whatever the
//! reads do. On an idle VM that is not nothing (the other CPU leaves its idle state at
//! every wake); the bench runs it beside the sampled mode to tell that part from the
//! reads' own. With BUSY_US, each wake then spins that long, as a read keeps its CPU busy.
//!
//! Usage: `idle-wakes HZ [BUSY_US]`; prints `started`, and `woke N times` when it ends.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

#[path = "stop_signals.rs"]
mod stop_signals;

use stop_signals::block_stop_signals;

fn main() -> ExitCode {
    let stop_signals = block_stop_signals();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hz = args.first().and_then(|arg| arg.parse::<u32>().ok()).filter(|&hz| hz > 0);
    let busy = match args.get(1).map(|arg| arg.parse::<u64>()) {
        None => Some(Duration::ZERO),
        Some(Ok(us)) => Some(Duration::from_micros(us)),
        Some(Err(_)) => None,
    };
    let (Some(hz), Some(busy), ..=2) = (hz, busy, args.len()) else {
        eprintln!("usage: idle-wakes HZ [BUSY_US] (whole numbers, HZ above 0)");
        return ExitCode::from(2);
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
        let woke = Instant::now();
        while woke.elapsed() < busy {
            std::hint::spin_loop();
        }
    }
    println!("woke {wakes} times");
    ExitCode::SUCCESS
}
