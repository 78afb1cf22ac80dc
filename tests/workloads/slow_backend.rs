//! A backend that chokes: it accepts TCP connections on 127.0.0.1 (or Unix stream connections
//! at `--unix PATH`) and reads them slowly, so whoever writes to it fills its send buffer and
//! blocks in `send`. With `--never-read` it is a dead backend: it accepts and holds each
//! connection open but never reads, so the writer blocks in `send` for good.
//!
//! Usage: `slow-backend [--seconds S] [--never-read] [--unix PATH]`
//!
//! Prints the port it listens on (or `unix`), then exits after S seconds (so a failed test
//! cannot leave it behind for long).

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::fd::{AsRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::time::Duration;

/// A small receive buffer (the kernel doubles it), so the window closes after a few KiB and the
/// writer's send buffer fills behind it.
const RECEIVE_BUFFER_BYTES: libc::c_int = 4096;
/// Bytes taken per read...
const READ_CHUNK_BYTES: usize = 512;
/// ...and the pause after each: 25 KiB/s, slow enough that the writer is almost always blocked,
/// fast enough that its messages keep moving (so it is in `send`, not stuck forever).
const READ_PAUSE: Duration = Duration::from_millis(20);

fn set_receive_buffer(fd: RawFd, bytes: libc::c_int) -> std::io::Result<()> {
    // SAFETY: `fd` is a live socket borrowed from its owner for this call, and the option value
    // points to a c_int whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Not generic over the two kinds of connection, and never inlined: the tests find it by
/// name on the reading thread's stack.
#[inline(never)]
fn drain_slowly(conn: OwnedFd) {
    if let Err(e) = set_receive_buffer(conn.as_raw_fd(), RECEIVE_BUFFER_BYTES) {
        eprintln!("slow-backend: setsockopt SO_RCVBUF: {e}");
    }
    // read(2) on the socket, whatever its family.
    let mut conn = std::fs::File::from(conn);
    let mut buf = [0u8; READ_CHUNK_BYTES];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => std::thread::sleep(READ_PAUSE),
        }
    }
}

/// Holds `conn` open without ever reading it: the peer's writes fill our receive buffer, then its
/// send buffer, and it blocks. Closing would reset the peer instead, so this never returns.
fn never_read(conn: OwnedFd) -> ! {
    if let Err(e) = set_receive_buffer(conn.as_raw_fd(), RECEIVE_BUFFER_BYTES) {
        eprintln!("slow-backend: setsockopt SO_RCVBUF: {e}");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// As the TCP backend, on a Unix stream socket at `path` (a Unix socket has no receive
/// window: the writer's send buffer fills with what this side leaves unread).
fn serve_unix(path: &str, read: bool, seconds: f64) -> ExitCode {
    let _ = std::fs::remove_file(path);
    let listener = match UnixListener::bind(path) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("slow-backend: bind {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("unix");
    let _ = std::io::stdout().flush();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if read {
                std::thread::spawn(move || drain_slowly(conn.into()));
            } else {
                std::thread::spawn(move || never_read(conn.into()));
            }
        }
    });
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let _ = std::fs::remove_file(path);
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: slow-backend [--seconds S] [--never-read] [--unix PATH]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut seconds = 60.0_f64;
    let mut read = true;
    let mut unix_path = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seconds" => match args.next().map(|v| v.parse::<f64>()) {
                Some(Ok(v)) => seconds = v,
                _ => return usage(),
            },
            "--never-read" => read = false,
            "--unix" => match args.next() {
                Some(path) => unix_path = Some(path),
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    if let Some(path) = unix_path {
        return serve_unix(&path, read, seconds);
    }

    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("slow-backend: bind 127.0.0.1:0: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Accepted sockets inherit the listener's buffer size, which also sets the window scale
    // offered in the handshake; setting it again on each connection below is belt and braces.
    if let Err(e) = set_receive_buffer(listener.as_raw_fd(), RECEIVE_BUFFER_BYTES) {
        eprintln!("slow-backend: setsockopt SO_RCVBUF: {e}");
        return ExitCode::FAILURE;
    }
    let port = match listener.local_addr() {
        Ok(addr) => addr.port(),
        Err(e) => {
            eprintln!("slow-backend: local_addr: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{port}");
    let _ = std::io::stdout().flush();

    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if read {
                std::thread::spawn(move || drain_slowly(conn.into()));
            } else {
                std::thread::spawn(move || never_read(conn.into()));
            }
        }
    });
    std::thread::sleep(Duration::from_secs_f64(seconds));
    ExitCode::SUCCESS
}
