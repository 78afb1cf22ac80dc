//! A backend that chokes: it accepts TCP connections on 127.0.0.1 (or Unix stream connections
//! at `--unix PATH`) and reads them slowly, so whoever writes to it fills its send buffer and
//! blocks in `send`. With `--never-read` it is a dead backend: it accepts and holds each
//! connection open but never reads, so the writer blocks in `send` for good.
//!
//! With `--fork-per-connection` each connection is read by a child process of its own, as
//! Postgres serves each client connection by a backend process.
//!
//! Usage: `slow-backend [--seconds S] [--never-read] [--fork-per-connection]
//! [--unix PATH | --bind IP]`
//!
//! Listens on 127.0.0.1 unless `--bind` names another address (one in a network namespace
//! of its own, say). Prints the port it listens on (or `unix`), then exits after S seconds (so a failed test
//! cannot leave it behind for long).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, TcpListener};
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

/// How each connection is served.
#[derive(Clone, Copy)]
struct Serving {
    read: bool,
    fork_per_connection: bool,
}

/// Accepts connections on a thread of its own, and reads each on one more (or in a child
/// process of its own), slowly or never.
fn serve<C: Into<OwnedFd>>(
    mut accept: impl FnMut() -> std::io::Result<C> + Send + 'static,
    serving: Serving,
) {
    let handle = move |conn: OwnedFd| {
        if serving.read { drain_slowly(conn) } else { never_read(conn) }
    };
    if serving.fork_per_connection {
        // Children are reaped by the kernel: nobody waits for them.
        // SAFETY: setting SIGCHLD's disposition to SIG_IGN, before any child exists.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    }
    std::thread::spawn(move || {
        loop {
            let Ok(conn) = accept() else { continue };
            let conn = conn.into();
            if !serving.fork_per_connection {
                std::thread::spawn(move || handle(conn));
                continue;
            }
            // SAFETY: the child runs only this thread's code: reads, sleeps and _exit.
            match unsafe { libc::fork() } {
                0 => {
                    handle(conn);
                    // SAFETY: leaves the child without running the parent's exit handlers.
                    unsafe { libc::_exit(0) }
                }
                -1 => eprintln!("slow-backend: fork: {}", std::io::Error::last_os_error()),
                // The parent closes its copy: the child alone holds the connection.
                _ => drop(conn),
            }
        }
    });
}

/// Listens on a Unix stream socket at `path` (which has no receive window: the writer's
/// send buffer fills with what this side leaves unread) and prints `unix`.
fn listen_unix(path: &str, serving: Serving) -> Result<(), ExitCode> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| {
        eprintln!("slow-backend: bind {path}: {e}");
        ExitCode::FAILURE
    })?;
    serve(move || listener.accept().map(|(conn, _)| conn), serving);
    println!("unix");
    Ok(())
}

/// Listens on `ip` and prints the port.
fn listen_tcp(ip: IpAddr, serving: Serving) -> Result<(), ExitCode> {
    let failed = |what: &str, e: std::io::Error| {
        eprintln!("slow-backend: {what}: {e}");
        ExitCode::FAILURE
    };
    let listener =
        TcpListener::bind((ip, 0)).map_err(|e| failed(&format!("bind {ip} port 0"), e))?;
    // Accepted sockets inherit the listener's buffer size, which also sets the window scale
    // offered in the handshake; setting it again on each connection is belt and braces.
    set_receive_buffer(listener.as_raw_fd(), RECEIVE_BUFFER_BYTES)
        .map_err(|e| failed("setsockopt SO_RCVBUF", e))?;
    let port = listener.local_addr().map_err(|e| failed("local_addr", e))?.port();
    serve(move || listener.accept().map(|(conn, _)| conn), serving);
    println!("{port}");
    Ok(())
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: slow-backend [--seconds S] [--never-read] [--fork-per-connection] \
         [--unix PATH | --bind IP]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut seconds = 60.0_f64;
    let mut serving = Serving { read: true, fork_per_connection: false };
    let mut unix_path = None;
    let mut ip = IpAddr::from([127, 0, 0, 1]);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seconds" => match args.next().map(|v| v.parse::<f64>()) {
                Some(Ok(v)) => seconds = v,
                _ => return usage(),
            },
            "--never-read" => serving.read = false,
            "--fork-per-connection" => serving.fork_per_connection = true,
            "--bind" => match args.next().map(|v| v.parse::<IpAddr>()) {
                Some(Ok(v)) => ip = v,
                _ => return usage(),
            },
            "--unix" => match args.next() {
                Some(path) => unix_path = Some(path),
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    if serving.fork_per_connection && !serving.read {
        // A child that never reads would never see its connection end, nor exit.
        eprintln!("slow-backend: --fork-per-connection reads each connection, not --never-read");
        return usage();
    }
    let listening = match &unix_path {
        Some(path) => listen_unix(path, serving),
        None => listen_tcp(ip, serving),
    };
    if let Err(code) = listening {
        return code;
    }
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    ExitCode::SUCCESS
}
