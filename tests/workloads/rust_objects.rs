//! Threads blocked for good on one object each kind, so the tests can check that the tracer
//! names what a wait waits on: the remote endpoint of a socket wait, the lock of a futex wait.
//!
//! Usage:
//! - `rust-objects recv --backend ADDR [--seconds S]`: one thread (`waiter`) connects to ADDR (a
//!   backend that never writes: `slow-backend --never-read`) and blocks in `wait_for_reply`,
//!   reading a reply that never comes (`recvfrom`).
//! - `rust-objects connect --target ADDR [--seconds S]`: one thread (`connector`) blocks in
//!   `connect_to_backend`, connecting to ADDR (a listener whose accept queue is full, so the
//!   kernel drops our SYNs). Linux gives up after its SYN retries (about two minutes); the thread
//!   then connects again, so it is back in `connect` within milliseconds.
//! - `rust-objects mutex [--handlers N] [--seconds S]`: a `holder` thread locks the static
//!   `STATS_QUEUE` and parks for good holding it; N `handler` threads block in `record_stat`,
//!   locking `STATS_QUEUE`, all on its one futex word.
//!
//! Prints `stuck` once every thread of the mode is blocked in its syscall, as seen in
//! /proc/self/task/*/syscall, several polls in a row. Nothing wakes them afterwards. The main
//! thread only sleeps (`nanosleep`, which the tracer does not watch) and exits after S seconds
//! without joining.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The lock every handler queues behind: a static, so the tracer can name it by its symbol.
static STATS_QUEUE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Thread names, which /proc/self/task/TID/comm shows; the readiness check goes by them.
const WAITER_NAME: &str = "waiter";
const CONNECTOR_NAME: &str = "connector";
const HOLDER_NAME: &str = "holder";
const HANDLER_NAME: &str = "handler";
/// Syscall numbers on x86_64 (arch/x86/entry/syscalls/syscall_64.tbl). std's `TcpStream::read`
/// calls `recv(2)`, which glibc issues as `recvfrom`; `read` is accepted too.
const SYS_READ: i64 = 0;
const SYS_CONNECT: i64 = 42;
const SYS_RECVFROM: i64 = 45;
const SYS_FUTEX: i64 = 202;
/// How often the main thread looks at /proc/self/task while waiting for the threads to block.
const POLL: Duration = Duration::from_millis(10);
/// Consecutive polls that must all see every thread blocked before `stuck` is printed: a thread
/// passing through a syscall on its way elsewhere must not count.
const STABLE_POLLS: usize = 10;
/// The request the waiter sends before it waits for the reply; the backend never reads it.
const REQUEST: &[u8] = b"GET /stats HTTP/1.0\r\n\r\n";
const REPLY_BYTES: usize = 4096;
/// Pause before connecting again when a connect failed (timed out after the SYN retries, or
/// refused): short, so the connector is back in `connect` almost at once.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

enum Mode {
    Recv { backend: String },
    Connect { target: String },
    Mutex { handlers: usize },
}

struct Args {
    mode: Mode,
    seconds: f64,
}

const USAGE: &str = "usage: rust-objects recv --backend ADDR | connect --target ADDR | \
                     mutex [--handlers N]   [--seconds S]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("a mode is required")?;
    let mut backend = None;
    let mut target = None;
    let mut handlers = 16;
    let mut seconds = 60.0;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => backend = Some(value()?),
            "--target" => target = Some(value()?),
            "--handlers" => {
                let v = value()?;
                handlers = v.parse().map_err(|e| format!("--handlers {v}: {e}"))?;
            }
            "--seconds" => {
                let v = value()?;
                seconds = v.parse().map_err(|e| format!("--seconds {v}: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let mode = match mode.as_str() {
        "recv" => Mode::Recv { backend: backend.ok_or("recv needs --backend ADDR")? },
        "connect" => Mode::Connect { target: target.ok_or("connect needs --target ADDR")? },
        "mutex" => Mode::Mutex { handlers },
        other => return Err(format!("unknown mode {other}")),
    };
    Ok(Args { mode, seconds })
}

/// The call site the tests look for on the `[recv ...]` wait.
#[inline(never)]
fn wait_for_reply(stream: &mut TcpStream) -> std::io::Result<usize> {
    let mut reply = [0u8; REPLY_BYTES];
    stream.read(std::hint::black_box(&mut reply))
}

fn waiter(backend: String) {
    let mut stream = match TcpStream::connect(&backend) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rust-objects: connect {backend}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = stream.write_all(REQUEST) {
        eprintln!("rust-objects: write request to {backend}: {e}");
        std::process::exit(1);
    }
    match wait_for_reply(&mut stream) {
        Ok(n) => eprintln!("rust-objects: the backend replied ({n} bytes); it never should"),
        Err(e) => eprintln!("rust-objects: read reply from {backend}: {e}"),
    }
    // Park without a watched syscall until main exits: the readiness check or the test fails.
    park_without_futex();
}

/// The call site the tests look for on the `[connect ...]` wait.
#[inline(never)]
fn connect_to_backend(target: &str) -> std::io::Result<TcpStream> {
    TcpStream::connect(std::hint::black_box(target))
}

fn connector(target: String) {
    loop {
        match connect_to_backend(&target) {
            Ok(stream) => {
                // The target's accept queue had room: the test set it up wrong. Keep the
                // connection (closing it would free the slot) and stop.
                eprintln!("rust-objects: connected to {target}; its accept queue was not full");
                let _keep = stream;
                park_without_futex();
            }
            Err(e) => {
                eprintln!("rust-objects: connect {target}: {e}; connecting again");
                std::thread::sleep(RECONNECT_PAUSE);
            }
        }
    }
}

/// The call site the tests look for on every handler's `[futex STATS_QUEUE]` wait.
#[inline(never)]
fn record_stat(id: u64) {
    let mut queue = STATS_QUEUE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    queue.push(std::hint::black_box(id));
}

fn handler(id: u64) {
    loop {
        record_stat(id);
    }
}

/// Locks `STATS_QUEUE` and never lets go: parks (a futex wait on its own parker, not on the
/// mutex) until the process exits.
fn holder(locked: std::sync::mpsc::Sender<()>) {
    let _guard = STATS_QUEUE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    locked.send(()).expect("main waits for the lock");
    loop {
        std::thread::park();
    }
}

fn park_without_futex() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
}

/// Counts, right now, the threads named `name` and how many of them are in one of `syscalls`.
/// A running thread shows `running` (or -1 when not in a syscall) and does not count as blocked.
fn blocked_threads(name: &str, syscalls: &[i64]) -> (usize, usize) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    let (mut named, mut blocked) = (0, 0);
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(comm), Ok(syscall)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("syscall")),
        ) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        named += 1;
        let nr = syscall.split_whitespace().next().and_then(|nr| nr.parse::<i64>().ok());
        if nr.is_some_and(|nr| syscalls.contains(&nr)) {
            blocked += 1;
        }
    }
    (named, blocked)
}

/// Whether exactly `count` threads named `name` exist and all are in one of `syscalls`.
fn all_blocked(name: &str, count: usize, syscalls: &[i64]) -> bool {
    blocked_threads(name, syscalls) == (count, count)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("rust-objects: {e}");
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);

    let ready: Box<dyn Fn() -> bool> = match args.mode {
        Mode::Recv { backend } => {
            spawn(WAITER_NAME, move || waiter(backend));
            Box::new(|| all_blocked(WAITER_NAME, 1, &[SYS_RECVFROM, SYS_READ]))
        }
        Mode::Connect { target } => {
            spawn(CONNECTOR_NAME, move || connector(target));
            Box::new(|| all_blocked(CONNECTOR_NAME, 1, &[SYS_CONNECT]))
        }
        Mode::Mutex { handlers } => {
            // The holder takes the lock before any handler starts, so every handler queues.
            let (tx, rx) = std::sync::mpsc::channel();
            spawn(HOLDER_NAME, move || holder(tx));
            if rx.recv().is_err() {
                eprintln!("rust-objects: the holder died before it took the lock");
                return ExitCode::FAILURE;
            }
            for id in 0..handlers {
                spawn(HANDLER_NAME, move || handler(id as u64));
            }
            Box::new(move || {
                all_blocked(HOLDER_NAME, 1, &[SYS_FUTEX])
                    && all_blocked(HANDLER_NAME, handlers, &[SYS_FUTEX])
            })
        }
    };

    // Poll instead of joining or a barrier: the main thread must never wait on a futex.
    let mut stable = 0;
    while stable < STABLE_POLLS {
        if Instant::now() >= deadline {
            eprintln!("rust-objects: the threads did not all block before the deadline");
            return ExitCode::FAILURE;
        }
        stable = if ready() { stable + 1 } else { 0 };
        std::thread::sleep(POLL);
    }
    println!("stuck");
    let _ = std::io::stdout().flush();

    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    // Exit with the threads still blocked; process::exit does not join them.
    std::process::exit(0);
}
