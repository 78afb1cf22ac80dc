//! A pile-up that never clears, in Rust: handler threads push statistics into a bounded channel;
//! one sender thread drains it and writes each message over TCP to a backend that never reads
//! (`slow-backend --never-read`). The sender's send buffer fills and it blocks in `send` for
//! good, the channel fills, and every handler blocks in `send_stat` for good.
//!
//! Usage: `rust-stuck --backend ADDR [--handlers N] [--seconds S]`
//!
//! Prints `stuck` once every handler is blocked in a futex wait and the sender in `sendto`, as
//! seen in /proc/self/task/*/syscall. Nothing wakes them afterwards. The main thread only sleeps
//! (`nanosleep`, which the tracer does not watch) and exits after S seconds without joining.

use std::io::Write as _;
use std::net::TcpStream;
use std::os::fd::AsRawFd as _;
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// Few slots, so the channel fills right after the sender blocks.
const CHANNEL_CAPACITY: usize = 4;
/// The smallest send buffer the kernel allows (it doubles this and clamps it at about 4.5 KiB),
/// so a dead backend stops the sender after a few dozen messages.
const SEND_BUFFER_BYTES: libc::c_int = 4096;
const MESSAGE_BYTES: usize = 256;
/// Thread names, which /proc/self/task/TID/comm shows; the readiness check goes by them.
const HANDLER_NAME: &str = "handler";
const SENDER_NAME: &str = "sender";
/// Syscall numbers on x86_64 (arch/x86/entry/syscalls/syscall_64.tbl): std's `TcpStream`
/// writes with `send(2)`, which glibc issues as `sendto`.
const SYS_FUTEX: i64 = 202;
const SYS_SENDTO: i64 = 44;
/// How often the main thread looks at /proc/self/task while waiting for the pile-up.
const POLL: Duration = Duration::from_millis(10);
/// Consecutive polls that must all see every thread blocked before `stuck` is printed: a handler
/// briefly waiting on the channel while the sender still drains it must not count.
const STABLE_POLLS: usize = 10;

struct Args {
    backend: String,
    handlers: usize,
    seconds: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut backend = None;
    let mut handlers = 16;
    let mut seconds = 60.0;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => backend = Some(value()?),
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
    let backend = backend.ok_or("--backend ADDR is required")?;
    Ok(Args { backend, handlers, seconds })
}

/// The call site the tests look for on every handler's futex wait.
#[inline(never)]
fn send_stat(tx: &SyncSender<Vec<u8>>, msg: Vec<u8>) {
    // The sender never drops the receiver before the process exits.
    tx.send(msg).expect("sender is gone");
}

#[inline(never)]
fn handler(id: usize, tx: SyncSender<Vec<u8>>) {
    let mut seq: u64 = 0;
    loop {
        let mut msg = format!("stat handler={id} seq={seq} ").into_bytes();
        msg.resize(MESSAGE_BYTES, b'.');
        send_stat(&tx, std::hint::black_box(msg));
        seq = seq.wrapping_add(1);
    }
}

/// The call site the tests look for on the sender's `[send]` wait.
#[inline(never)]
fn write_to_backend(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    stream.write_all(msg)
}

#[inline(never)]
fn sender(rx: Receiver<Vec<u8>>, mut stream: TcpStream) {
    while let Ok(msg) = rx.recv() {
        if let Err(e) = write_to_backend(&mut stream, &msg) {
            // The backend went away: stop draining, so the handlers stay blocked, and park
            // without a futex until main exits the process.
            eprintln!("rust-stuck: write to backend: {e}");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

fn set_send_buffer(stream: &TcpStream, bytes: libc::c_int) -> std::io::Result<()> {
    // SAFETY: the fd is a live socket owned by `stream`, and the option value points to a
    // c_int whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Whether, right now, exactly `handlers` threads named `handler` are all in `futex` and the
/// one thread named `sender` is in `sendto`. A thread that runs shows `running` and fails this.
fn all_blocked(handlers: usize) -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    let (mut futex_handlers, mut blocked_senders) = (0, 0);
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(comm), Ok(syscall)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("syscall")),
        ) else {
            continue;
        };
        // The first field is the syscall number, or `running` / -1 when not in a syscall.
        let nr = syscall.split_whitespace().next().and_then(|nr| nr.parse::<i64>().ok());
        match (comm.trim_end(), nr) {
            (HANDLER_NAME, Some(SYS_FUTEX)) => futex_handlers += 1,
            (HANDLER_NAME, _) => return false,
            (SENDER_NAME, Some(SYS_SENDTO)) => blocked_senders += 1,
            (SENDER_NAME, _) => return false,
            _ => {}
        }
    }
    futex_handlers == handlers && blocked_senders == 1
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("rust-stuck: {e}");
            eprintln!("usage: rust-stuck --backend ADDR [--handlers N] [--seconds S]");
            return ExitCode::from(2);
        }
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);

    let stream = match TcpStream::connect(&args.backend) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rust-stuck: connect {}: {e}", args.backend);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = set_send_buffer(&stream, SEND_BUFFER_BYTES) {
        eprintln!("rust-stuck: setsockopt SO_SNDBUF: {e}");
        return ExitCode::FAILURE;
    }

    let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    };
    spawn(SENDER_NAME, Box::new(move || sender(rx, stream)));
    for id in 0..args.handlers {
        let tx = tx.clone();
        spawn(HANDLER_NAME, Box::new(move || handler(id, tx)));
    }
    drop(tx);

    // Poll instead of joining or a barrier: the main thread must never wait on a futex.
    let mut stable = 0;
    while stable < STABLE_POLLS {
        if Instant::now() >= deadline {
            eprintln!("rust-stuck: the threads did not all block before the deadline");
            return ExitCode::FAILURE;
        }
        stable = if all_blocked(args.handlers) { stable + 1 } else { 0 };
        std::thread::sleep(POLL);
    }
    println!("stuck");
    let _ = std::io::stdout().flush();

    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    // Exit with the threads still blocked; process::exit does not join them.
    std::process::exit(0);
}
