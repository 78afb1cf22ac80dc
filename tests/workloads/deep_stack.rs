//! Threads whose waits sit below a function with a 64 KiB stack frame: their callers lie
//! beyond the tracer's 16 KiB stack copy, so unwinding them must stop early and be counted.
//! Each wait ends after a few milliseconds (a timed condvar wait), so a recording sees many
//! long waits.
//!
//! Usage: `deep-stack [--threads N] [--seconds S]`; prints `ready` once the threads run.

use std::{
    hint::black_box,
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

/// Larger than the tracer's stack copy (16 KiB) many times over.
const FRAME_BYTES: usize = 64 * 1024;
/// Each wait lasts this long: over the tracer's default 1 ms threshold.
const WAIT: Duration = Duration::from_millis(5);

fn main() {
    let mut threads = 4;
    let mut seconds = 30.0_f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|value| value.parse::<f64>().ok());
        match (arg.as_str(), value) {
            ("--threads", Some(value)) => threads = value as usize,
            ("--seconds", Some(value)) => seconds = value,
            _ => {
                eprintln!("usage: deep-stack [--threads N] [--seconds S]");
                std::process::exit(2);
            }
        }
    }
    let never = Arc::new((Mutex::new(()), Condvar::new()));
    for _ in 0..threads {
        let never = never.clone();
        thread::Builder::new()
            .name("deep".into())
            .stack_size(1024 * 1024)
            .spawn(move || {
                loop {
                    below_big_frame(&never);
                }
            })
            .unwrap_or_else(|e| panic!("spawn: {e}"));
    }
    println!("ready");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    std::process::exit(0);
}

/// The caller the tracer cannot reach: its frame is above the 64 KiB one.
#[inline(never)]
fn below_big_frame(never: &(Mutex<()>, Condvar)) {
    big_frame(never);
}

#[inline(never)]
fn big_frame(never: &(Mutex<()>, Condvar)) {
    let mut buffer = [0u8; FRAME_BYTES];
    black_box(&mut buffer);
    timed_wait(never);
    black_box(&buffer);
}

#[inline(never)]
fn timed_wait((lock, condvar): &(Mutex<()>, Condvar)) {
    let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
    let _ = condvar.wait_timeout(guard, WAIT);
}
