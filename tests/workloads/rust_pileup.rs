//! The pile-up the tracer was built for, in Rust: handler threads push statistics into a bounded
//! channel; one reporter thread drains it and writes each message over TCP (or a Unix stream
//! socket, with `--backend unix:PATH`) to a backend that reads slowly. The backend's slowness
//! fills the reporter's send buffer, the reporter blocks in `send`, the channel fills, and every
//! handler blocks in `send_stat`.
//!
//! With `--reporters N` there are N reporters, each with its own channel and its own
//! connection to the backend (a pool of connections to one endpoint); handler i feeds
//! reporter i mod N.
//!
//! Usage: `rust-pileup --backend ADDR|unix:PATH [--handlers N] [--reporters N] [--seconds S]`
//!
//! Prints `ready` once every thread runs. The main thread never waits on a futex (it only
//! sleeps, which the tracer does not trace), so all futex time in the process belongs to the
//! handlers and, rarely, to the reporter waiting for an empty channel.

use std::io::Write as _;
use std::net::TcpStream;
use std::os::fd::{AsRawFd as _, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

/// Few slots, so the channel stays full and handlers queue behind it.
const CHANNEL_CAPACITY: usize = 16;
/// The smallest send buffer the kernel allows (it doubles this and clamps it at about 4.5 KiB),
/// so a slow reader fills it after a few dozen messages.
const SEND_BUFFER_BYTES: libc::c_int = 4096;
/// Big enough that the backend's reads, not our syscalls, set the pace.
const MESSAGE_BYTES: usize = 256;
/// How often the main thread checks that every thread started; it sleeps rather than joins.
const START_POLL: Duration = Duration::from_millis(1);

/// Threads that reached their loop; `ready` is printed when all did.
static STARTED: AtomicUsize = AtomicUsize::new(0);

struct Args {
    backend: String,
    handlers: usize,
    reporters: usize,
    seconds: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut backend = None;
    let mut handlers = 32;
    let mut reporters = 1;
    let mut seconds = 30.0;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => backend = Some(value()?),
            "--handlers" => {
                let v = value()?;
                handlers = v.parse().map_err(|e| format!("--handlers {v}: {e}"))?;
            }
            "--reporters" => {
                let v = value()?;
                reporters = v.parse().map_err(|e| format!("--reporters {v}: {e}"))?;
            }
            "--seconds" => {
                let v = value()?;
                seconds = v.parse().map_err(|e| format!("--seconds {v}: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let backend = backend.ok_or("--backend ADDR is required")?;
    if reporters == 0 {
        return Err("--reporters must be at least 1".to_owned());
    }
    Ok(Args { backend, handlers, reporters, seconds })
}

/// The call site the tests look for on every handler's futex wait.
#[inline(never)]
fn send_stat(tx: &SyncSender<Vec<u8>>, msg: Vec<u8>) {
    // The reporter never drops the receiver before the process exits.
    tx.send(msg).expect("reporter is gone");
}

#[inline(never)]
fn handler(id: usize, tx: SyncSender<Vec<u8>>) {
    STARTED.fetch_add(1, Ordering::Relaxed);
    let mut seq: u64 = 0;
    loop {
        let mut msg = format!("stat handler={id} seq={seq} ").into_bytes();
        msg.resize(MESSAGE_BYTES, b'.');
        send_stat(&tx, std::hint::black_box(msg));
        seq = seq.wrapping_add(1);
    }
}

/// The connection to the backend.
enum Backend {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Backend {
    fn connect(address: &str) -> std::io::Result<Self> {
        match address.strip_prefix("unix:") {
            Some(path) => UnixStream::connect(path).map(Self::Unix),
            None => TcpStream::connect(address).map(Self::Tcp),
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Self::Tcp(stream) => stream.as_raw_fd(),
            Self::Unix(stream) => stream.as_raw_fd(),
        }
    }
}

/// The call site the tests look for on the reporter's `[send]` wait.
#[inline(never)]
fn write_to_backend(backend: &mut Backend, msg: &[u8]) -> std::io::Result<()> {
    match backend {
        Backend::Tcp(stream) => stream.write_all(msg),
        Backend::Unix(stream) => stream.write_all(msg),
    }
}

#[inline(never)]
fn reporter(rx: Receiver<Vec<u8>>, mut stream: Backend) {
    STARTED.fetch_add(1, Ordering::Relaxed);
    while let Ok(msg) = rx.recv() {
        if let Err(e) = write_to_backend(&mut stream, &msg) {
            // The backend went away: stop draining, so the handlers stay blocked (still a
            // pile-up), and park without a futex until main exits the process.
            eprintln!("rust-pileup: write to backend: {e}");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

fn set_send_buffer(fd: RawFd, bytes: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `fd` is a live socket borrowed from its owner for this call, and the option
    // value points to a c_int whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("rust-pileup: {e}");
            eprintln!(
                "usage: rust-pileup --backend ADDR|unix:PATH [--handlers N] [--reporters N] \
                 [--seconds S]"
            );
            return ExitCode::from(2);
        }
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);

    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    };
    let mut senders = Vec::new();
    for _ in 0..args.reporters {
        let stream = match Backend::connect(&args.backend) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("rust-pileup: connect {}: {e}", args.backend);
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = set_send_buffer(stream.fd(), SEND_BUFFER_BYTES) {
            eprintln!("rust-pileup: setsockopt SO_SNDBUF: {e}");
            return ExitCode::FAILURE;
        }
        let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
        spawn("reporter", Box::new(move || reporter(rx, stream)));
        senders.push(tx);
    }
    for id in 0..args.handlers {
        let tx = senders[id % senders.len()].clone();
        spawn("handler", Box::new(move || handler(id, tx)));
    }
    drop(senders);

    // Poll instead of joining or using a barrier: the main thread must never wait on a futex.
    while STARTED.load(Ordering::Relaxed) < args.handlers + args.reporters {
        std::thread::sleep(START_POLL);
    }
    println!("ready");
    let _ = std::io::stdout().flush();

    let left = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep(left);
    // Exit with the threads still blocked; process::exit does not join them.
    std::process::exit(0);
}
