//! Helpers shared by the real-kernel tests: find the tracer, start workloads under guards that
//! clean up, run `tracer record` and `tracer snapshot` with a deadline, and read their folded
//! output and their table of blocked threads.
//!
//! Everything panics with context instead of returning errors: a test failure should say what
//! it was doing.

use std::io::{BufRead as _, BufReader, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Starting a workload (connecting, spawning a few dozen threads) takes milliseconds; this is
/// far above that so a slow CI machine does not fail, and low enough that a broken workload
/// fails the test quickly.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Seconds the slow backend lives beyond the workload using it, so the workload's reporter is
/// still blocked in `send` (not failing with EPIPE) until the workload exits.
pub const BACKEND_EXTRA_SECONDS: f64 = 30.0;

/// The workload sources that the tests compile with gcc at run time.
pub const C_PILEUP_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_pileup.c");
pub const C_STUCK_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_stuck.c");
pub const MANY_WAITERS_SOURCE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/many_waiters.c");
pub const C_LOSSES_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_losses.c");
pub const C_OBJECTS_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_objects.c");

/// The tracer binary: `$TRACER_BIN`, else `target/release/tracer` of this workspace (honouring
/// `CARGO_TARGET_DIR`).
pub fn tracer_bin() -> PathBuf {
    let path = match std::env::var_os("TRACER_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("tests/ has a parent");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|t| {
                    if t.is_relative() {
                        workspace.join(t)
                    } else {
                        t
                    }
                })
                .unwrap_or_else(|| workspace.join("target"));
            target.join("release").join("tracer")
        }
    };
    assert!(
        path.is_file(),
        "tracer binary {} is missing: run `cargo build --release` first or set TRACER_BIN",
        path.display()
    );
    path
}

/// A child process that is killed and reaped when the guard drops, so a failing test leaves
/// nothing running.
pub struct ChildGuard {
    child: Child,
    name: String,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            child,
            name: name.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reaps the child in the background as soon as it exits, the way a real parent (a shell,
    /// systemd) would: a target that exits must not linger as our zombie while it is traced.
    /// Kills it if it still runs after `timeout`.
    pub fn reap_in_background(mut self, timeout: Duration) -> std::thread::JoinHandle<ExitStatus> {
        std::thread::spawn(move || self.wait_timeout(timeout))
    }

    /// Waits for the child to exit on its own, panicking after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                Ok(None) => panic!(
                    "{} (pid {}) still runs after {timeout:?}",
                    self.name,
                    self.pid()
                ),
                Err(e) => panic!("wait {}: {e}", self.name),
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Either may fail because the child already exited; that is the goal anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often a deadline loop checks a child: fine enough to measure "within a second".
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Spawns `cmd` with stdout piped and waits for its first stdout line. The rest of its stdout is
/// drained in the background so the child never blocks on a full pipe.
pub fn spawn_and_read_line(name: &str, cmd: Command) -> (ChildGuard, String) {
    spawn_and_read_line_within(name, cmd, STARTUP_TIMEOUT)
}

/// [`spawn_and_read_line`] with its own deadline, for workloads that take long to set up.
pub fn spawn_and_read_line_within(
    name: &str,
    mut cmd: Command,
    timeout: Duration,
) -> (ChildGuard, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let guard = ChildGuard::new(name, child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = tx.send(reader.read_line(&mut line).map(|_| line));
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = match rx.recv_timeout(timeout) {
        Ok(Ok(line)) if !line.is_empty() => line.trim_end().to_owned(),
        Ok(Ok(_)) => panic!("{name} closed stdout before printing a line"),
        Ok(Err(e)) => panic!("read stdout of {name}: {e}"),
        Err(e) => panic!("{name} printed nothing within {timeout:?}: {e}"),
    };
    (guard, line)
}

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
    let (guard, line) = spawn_and_read_line("slow-backend", cmd);
    let port = line
        .parse()
        .unwrap_or_else(|e| panic!("slow-backend printed {line:?}, not a port: {e}"));
    (guard, port)
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

/// Starts the slow backend and the Rust pile-up against it.
pub fn start_rust_pileup(
    backend_bin: &str,
    pileup_bin: &str,
    handlers: usize,
    seconds: f64,
) -> Pileup {
    let (backend, port) = start_backend(backend_bin, seconds + BACKEND_EXTRA_SECONDS);
    let mut cmd = Command::new(pileup_bin);
    cmd.arg("--backend")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--handlers")
        .arg(handlers.to_string())
        .arg("--seconds")
        .arg(seconds.to_string());
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
    let mut cmd = Command::new(stuck_bin);
    cmd.arg("--backend")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--handlers")
        .arg(handlers.to_string())
        .arg("--seconds")
        .arg(seconds.to_string());
    let (workload, stuck_at) = start_stuck_workload("rust-stuck", cmd);
    Stuck {
        workload,
        backend,
        backend_port: port,
        stuck_at,
    }
}

/// Starts a dead backend and the compiled C stuck workload against it, and waits for `stuck`.
pub fn start_c_stuck(backend_bin: &str, stuck_bin: &Path, handlers: usize, seconds: f64) -> Stuck {
    let (backend, port) = start_dead_backend(backend_bin, seconds + BACKEND_EXTRA_SECONDS);
    let mut cmd = Command::new(stuck_bin);
    cmd.arg(port.to_string())
        .arg(handlers.to_string())
        .arg(seconds.to_string());
    let (workload, stuck_at) = start_stuck_workload("c-stuck", cmd);
    Stuck {
        workload,
        backend,
        backend_port: port,
        stuck_at,
    }
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
    assert_eq!(
        line, "ready",
        "many-waiters printed {line:?} instead of ready"
    );
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
        assert_eq!(
            rc,
            0,
            "listen(backlog {backlog}): {}",
            std::io::Error::last_os_error()
        );
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr of the listener: {e}"));
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
        Self {
            port: addr.port(),
            listener,
            fillers,
        }
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
    cmd.arg(port.to_string())
        .arg(handlers.to_string())
        .arg(seconds.to_string());
    let workload = start_workload("c-pileup", cmd);
    Pileup { workload, backend }
}

/// What a finished command left behind.
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

/// Runs `cmd` to completion, capturing its output; kills it and panics if it is still running
/// after `timeout`, so a hang fails the test instead of blocking the suite.
pub fn run_with_timeout(what: &str, mut cmd: Command, timeout: Duration) -> RunOutput {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
    let stdout = read_in_background(child.stdout.take().expect("stdout is piped"));
    let stderr = read_in_background(child.stderr.take().expect("stderr is piped"));
    let mut guard = ChildGuard::new(what, child);
    let status = guard.wait_timeout(timeout);
    let elapsed = start.elapsed();
    RunOutput {
        status,
        stdout: collect(what, "stdout", stdout),
        stderr: collect(what, "stderr", stderr),
        elapsed,
    }
}

fn read_in_background(
    mut pipe: impl Read + Send + 'static,
) -> std::thread::JoinHandle<std::io::Result<String>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        pipe.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })
}

fn collect(
    what: &str,
    stream: &str,
    reader: std::thread::JoinHandle<std::io::Result<String>>,
) -> String {
    reader
        .join()
        .unwrap_or_else(|_| panic!("reader of {what} {stream} panicked"))
        .unwrap_or_else(|e| panic!("read {what} {stream}: {e}"))
}

/// `tracer record --pid PID` with the given extra arguments, under a deadline.
pub fn tracer_record(pid: u32, args: &[&str], timeout: Duration) -> RunOutput {
    let mut cmd = Command::new(tracer_bin());
    cmd.arg("record")
        .arg("--pid")
        .arg(pid.to_string())
        .args(args);
    run_with_timeout("tracer record", cmd, timeout)
}

/// `tracer snapshot --pid PID` with the given extra arguments, under a deadline.
pub fn tracer_snapshot(pid: u32, args: &[&str], timeout: Duration) -> RunOutput {
    run_with_timeout("tracer snapshot", snapshot_command(pid, args), timeout)
}

/// The command line of `tracer snapshot --pid PID ARGS...`.
pub fn snapshot_command(pid: u32, args: &[&str]) -> Command {
    let mut cmd = Command::new(tracer_bin());
    cmd.arg("snapshot")
        .arg("--pid")
        .arg(pid.to_string())
        .args(args);
    cmd
}

/// What a child cost, from the kernel's accounting of that one child (`wait4`).
#[derive(Debug, Clone, Copy)]
pub struct ChildUsage {
    /// Peak resident set size.
    pub max_rss_kib: u64,
    pub user: Duration,
    pub system: Duration,
}

/// [`run_with_timeout`], and also what the child cost. It reaps the child with `wait4`, which
/// reports that child's own peak RSS and CPU time (`getrusage(RUSAGE_CHILDREN)` would mix in every
/// child reaped before, gcc and workloads included).
pub fn run_measured(what: &str, mut cmd: Command, timeout: Duration) -> (RunOutput, ChildUsage) {
    use std::os::unix::process::ExitStatusExt as _;

    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
    let stdout = read_in_background(child.stdout.take().expect("stdout is piped"));
    let stderr = read_in_background(child.stderr.take().expect("stderr is piped"));
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    let deadline = start + timeout;
    let mut timed_out = false;
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if timed_out { 0 } else { libc::WNOHANG };
        // SAFETY: `pid` is our unreaped child, and both out-pointers point to live locals.
        let rc = unsafe { libc::wait4(pid, &raw mut status, flags, &raw mut usage) };
        match rc {
            0 if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
            0 => {
                // Not reaped yet, so the pid is still ours to kill; reap it on the next turn.
                let _ = child.kill();
                timed_out = true;
            }
            rc if rc == pid => break (status, usage),
            _ => panic!("wait4 {what}: {}", std::io::Error::last_os_error()),
        }
    };
    let elapsed = start.elapsed();
    // Already reaped: dropping `child` closes nothing else and must not wait or kill it again.
    drop(child);
    let out = RunOutput {
        status: ExitStatus::from_raw(status),
        stdout: collect(what, "stdout", stdout),
        stderr: collect(what, "stderr", stderr),
        elapsed,
    };
    assert!(
        !timed_out,
        "{what} still ran after {timeout:?} and was killed; stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let timeval = |tv: libc::timeval| {
        Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
    };
    let usage = ChildUsage {
        // Linux reports ru_maxrss in KiB.
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        user: timeval(usage.ru_utime),
        system: timeval(usage.ru_stime),
    };
    (out, usage)
}

/// A directory under the system temp dir, removed (with its contents) on drop. Mode 755 so a
/// test can run a binary from it as another user.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tracer-tests-{label}-{}-{n}", std::process::id()));
        // A leftover from a crashed run with a recycled pid would make create_dir fail.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        set_mode(&path, 0o755);
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// One line of a folded file: all frames as written (process name first, wait kind last) and
/// the blocked microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedStack {
    pub frames: Vec<String>,
    pub micros: u64,
}

impl FoldedStack {
    /// The wait-kind frame without the object it names: `[futex]`, `[send]`,
    /// `[futex still-blocked]` (from `[futex queue]`, `[send 127.0.0.1:80]`,
    /// `[futex queue still-blocked]`).
    pub fn kind(&self) -> String {
        let frame = self.frames.last().map_or("", String::as_str);
        let inner = frame.trim_start_matches('[').trim_end_matches(']');
        let kind = inner.split(' ').next().unwrap_or_default();
        if inner.ends_with(" still-blocked") {
            format!("[{kind} still-blocked]")
        } else {
            format!("[{kind}]")
        }
    }

    /// What the wait-kind frame names as the wait's object (`127.0.0.1:80`, `queue`), if any.
    pub fn object(&self) -> Option<&str> {
        let frame = self.frames.last()?;
        let inner = frame.strip_prefix('[')?.strip_suffix(']')?;
        let inner = inner.strip_suffix(" still-blocked").unwrap_or(inner);
        inner.split_once(' ').map(|(_, object)| object)
    }

    /// The program's frames, root to leaf: without the process name and the wait kind, so a
    /// thread or process named like a function cannot satisfy a match.
    pub fn functions(&self) -> &[String] {
        match self.frames.len() {
            0..=2 => &[],
            n => &self.frames[1..n - 1],
        }
    }

    /// Whether some frame names the function `name` (see [`frame_is`]).
    pub fn has_function(&self, name: &str) -> bool {
        self.functions().iter().any(|frame| frame_is(frame, name))
    }
}

/// Whether a frame names the function `name`: equal (`handler`, a C function) or a path ending
/// in it (`rust_pileup::handler`). Tolerates inferno's annotation suffixes (`_[i]` for inlined
/// frames and the like) and a `+0x..` offset.
pub fn frame_is(frame: &str, name: &str) -> bool {
    let mut f = frame.trim();
    if let Some(stripped) = f
        .strip_suffix(']')
        .and_then(|s| s.rsplit_once("_["))
        .map(|(base, _)| base)
    {
        f = stripped;
    }
    if let Some((base, _)) = f.split_once("+0x") {
        f = base;
    }
    f == name
        || f.strip_suffix(name)
            .is_some_and(|prefix| prefix.ends_with("::"))
}

/// Parses collapsed stacks: `frame;frame;... MICROS` per line.
pub fn parse_folded(text: &str) -> Vec<FoldedStack> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (stack, count) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("folded line without a count: {line:?}"));
            let micros = count
                .parse()
                .unwrap_or_else(|e| panic!("folded count {count:?} in {line:?}: {e}"));
            let frames = stack.split(';').map(str::to_owned).collect();
            FoldedStack { frames, micros }
        })
        .collect()
}

/// Reads and parses a folded file.
pub fn read_folded(path: &Path) -> Vec<FoldedStack> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_folded(&text)
}

/// Total microseconds of the stacks that satisfy `pred`.
pub fn total_micros(stacks: &[FoldedStack], pred: impl Fn(&FoldedStack) -> bool) -> u64 {
    stacks.iter().filter(|s| pred(s)).map(|s| s.micros).sum()
}

/// Total threads on the stacks that satisfy `pred`, in a snapshot's folded output, which weighs
/// each stack by its number of threads (the count that [`FoldedStack::micros`] holds).
pub fn total_threads(stacks: &[FoldedStack], pred: impl Fn(&FoldedStack) -> bool) -> u64 {
    total_micros(stacks, pred)
}

/// How long a thread has been blocked, as the tracer prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age {
    pub duration: Duration,
    /// Printed with `≥`: the thread blocked before the tracer looked, and this is a lower bound.
    pub lower_bound: bool,
}

/// Parses an age as the tracer prints it: `850us`, `12.3ms`, `1.50s`, `2m05s`, `1h02m`, each
/// optionally prefixed by `≥` (or `>=`). None if it is not one of these.
pub fn parse_age(text: &str) -> Option<Age> {
    let text = text.trim();
    let (rest, lower_bound) = match text.strip_prefix('≥').or_else(|| text.strip_prefix(">=")) {
        Some(rest) => (rest.trim_start(), true),
        None => (text, false),
    };
    let number = |s: &str| -> Option<f64> {
        let v: f64 = s.parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    let seconds = if let Some(v) = rest.strip_suffix("ns") {
        number(v)? / 1e9
    } else if let Some(v) = rest.strip_suffix("us").or_else(|| rest.strip_suffix("µs")) {
        number(v)? / 1e6
    } else if let Some(v) = rest.strip_suffix("ms") {
        number(v)? / 1e3
    } else if let Some((h, m)) = rest.strip_suffix('m').and_then(|r| r.split_once('h')) {
        number(h)? * 3600.0 + number(m)? * 60.0
    } else if let Some((m, s)) = rest.strip_suffix('s').and_then(|r| r.split_once('m')) {
        number(m)? * 60.0 + number(s)?
    } else if let Some(v) = rest.strip_suffix('s') {
        number(v)?
    } else {
        return None;
    };
    Some(Age {
        duration: Duration::from_secs_f64(seconds),
        lower_bound,
    })
}

/// One row of the table of blocked threads that `snapshot` prints, and `record` prints after
/// `still blocked at the end of the recording:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedRow {
    pub threads: u64,
    /// The wait kind without brackets: `futex`, `send`, ...
    pub kind: String,
    pub youngest: Age,
    pub oldest: Age,
    /// The innermost frame of the program's own code, e.g. `rust_stuck::send_stat`.
    pub call_site: String,
    /// The row as printed, for failure messages.
    pub line: String,
}

/// The first line of the table header.
const TABLE_HEADER: &str = "THREADS";

/// Parses the table of blocked threads in `stdout`: the header line starting with `THREADS`
/// (the first one after the line containing `after`, if given), then one row per line up to the
/// first empty line. Columns: THREADS KIND YOUNGEST OLDEST CALL SITE, split on whitespace, the
/// call site being the rest of the line.
pub fn parse_blocked_table(stdout: &str, after: Option<&str>) -> Vec<BlockedRow> {
    let mut lines = stdout.lines();
    if let Some(marker) = after {
        lines
            .by_ref()
            .find(|line| line.contains(marker))
            .unwrap_or_else(|| panic!("no line contains {marker:?} in:\n{stdout}"));
    }
    lines
        .by_ref()
        .find(|line| line.trim_start().starts_with(TABLE_HEADER))
        .unwrap_or_else(|| panic!("no table header starting with {TABLE_HEADER} in:\n{stdout}"));
    lines
        .take_while(|line| !line.trim().is_empty())
        .map(parse_blocked_row)
        .collect()
}

fn parse_blocked_row(line: &str) -> BlockedRow {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let [threads, kind, youngest, oldest, site @ ..] = tokens.as_slice() else {
        panic!("table row with fewer than 5 columns: {line:?}");
    };
    assert!(!site.is_empty(), "table row without a call site: {line:?}");
    let age = |text: &str, column: &str| {
        parse_age(text).unwrap_or_else(|| panic!("{column} {text:?} is not an age in {line:?}"))
    };
    BlockedRow {
        threads: threads
            .parse()
            .unwrap_or_else(|e| panic!("THREADS {threads:?} in {line:?}: {e}")),
        kind: kind
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        youngest: age(youngest, "YOUNGEST"),
        oldest: age(oldest, "OLDEST"),
        call_site: site.join(" "),
        line: line.to_owned(),
    }
}

/// The rows whose wait kind is `kind` and whose call site names the function `name` (its first
/// word, so a trailing `file:line` or annotation does not matter).
pub fn rows_at<'a>(rows: &'a [BlockedRow], kind: &str, name: &str) -> Vec<&'a BlockedRow> {
    rows.iter()
        .filter(|row| {
            row.kind == kind
                && row
                    .call_site
                    .split_whitespace()
                    .next()
                    .is_some_and(|function| frame_is(function, name))
        })
        .collect()
}

/// The header of the table of blocked time by remote endpoint (by local address for `accept`).
pub const ENDPOINT_TABLE_HEADER: &str = "BY ENDPOINT";
/// The header of the table of blocked time by lock.
pub const LOCK_TABLE_HEADER: &str = "BY LOCK";

/// One row of the `BY ENDPOINT` table: ENDPOINT KIND BLOCKED NOW STATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    /// `127.0.0.1:40123`: the remote address of a send, recv or connect; the local listening
    /// address of an accept.
    pub endpoint: String,
    /// The wait kinds seen on it, comma-separated: `send`, `recv`, `send,recv`.
    pub kind: String,
    pub blocked: Age,
    /// Threads blocked on it now (at the snapshot, or at the end of the recording).
    pub now: u64,
    /// What explains the wait: `send buffer full (4608/4608 bytes)`, `waiting for data`,
    /// `connecting (SYN sent)`, `accept queue 0/128`; empty if none is known.
    pub state: String,
    /// The row as printed, for failure messages.
    pub line: String,
}

/// One row of the `BY LOCK` table: LOCK BLOCKED WAITS NOW.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRow {
    /// `rust_objects::STATS_QUEUE`, `stats_lock`, `heap 0x55d0c2a4b188`.
    pub lock: String,
    pub blocked: Age,
    /// Waits that ended within the recording.
    pub waits: u64,
    /// Threads blocked on it now.
    pub now: u64,
    /// The row as printed, for failure messages.
    pub line: String,
}

/// The rows of the table whose header line starts with `header`: the lines after it up to the
/// first empty line, each split on whitespace.
fn table_rows<'a>(stdout: &'a str, header: &str) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut lines = stdout.lines();
    lines
        .by_ref()
        .find(|line| line.trim_start().starts_with(header))
        .unwrap_or_else(|| panic!("no table header starting with {header:?} in:\n{stdout}"));
    lines
        .take_while(|line| !line.trim().is_empty())
        .map(|line| (line, line.split_whitespace().collect()))
        .collect()
}

fn parse_count(text: &str, column: &str, line: &str) -> u64 {
    text.parse()
        .unwrap_or_else(|e| panic!("{column} {text:?} is not a count in {line:?}: {e}"))
}

fn parse_age_column(text: &str, column: &str, line: &str) -> Age {
    parse_age(text).unwrap_or_else(|| panic!("{column} {text:?} is not an age in {line:?}"))
}

/// Parses the `BY ENDPOINT` table in `stdout` (the first one). Panics if there is none.
pub fn parse_endpoint_table(stdout: &str) -> Vec<EndpointRow> {
    table_rows(stdout, ENDPOINT_TABLE_HEADER)
        .into_iter()
        .map(|(line, tokens)| {
            let [endpoint, kind, blocked, now, state @ ..] = tokens.as_slice() else {
                panic!("{ENDPOINT_TABLE_HEADER} row with fewer than 4 columns: {line:?}");
            };
            EndpointRow {
                endpoint: (*endpoint).to_owned(),
                kind: (*kind).to_owned(),
                blocked: parse_age_column(blocked, "BLOCKED", line),
                now: parse_count(now, "NOW", line),
                state: state.join(" "),
                line: line.to_owned(),
            }
        })
        .collect()
}

/// Parses the `BY LOCK` table in `stdout` (the first one). Panics if there is none. The last
/// three columns are BLOCKED WAITS NOW and the lock is everything before them, so a lock named
/// by its mapping (`heap 0x55d0c2a4b188`) stays whole.
pub fn parse_lock_table(stdout: &str) -> Vec<LockRow> {
    table_rows(stdout, LOCK_TABLE_HEADER)
        .into_iter()
        .map(|(line, tokens)| {
            let [lock @ .., blocked, waits, now] = tokens.as_slice() else {
                panic!("{LOCK_TABLE_HEADER} row with fewer than 4 columns: {line:?}");
            };
            assert!(
                !lock.is_empty(),
                "{LOCK_TABLE_HEADER} row without a lock: {line:?}"
            );
            LockRow {
                lock: lock.join(" "),
                blocked: parse_age_column(blocked, "BLOCKED", line),
                waits: parse_count(waits, "WAITS", line),
                now: parse_count(now, "NOW", line),
                line: line.to_owned(),
            }
        })
        .collect()
}

/// The `n` heaviest stacks satisfying `pred`, one per line, for failure messages.
pub fn top_stacks(stacks: &[FoldedStack], pred: impl Fn(&FoldedStack) -> bool, n: usize) -> String {
    let mut matching: Vec<_> = stacks.iter().filter(|s| pred(s)).collect();
    matching.sort_by_key(|s| std::cmp::Reverse(s.micros));
    matching
        .iter()
        .take(n)
        .map(|s| format!("  {} {}\n", s.frames.join(";"), s.micros))
        .collect()
}

/// Asserts that `path` is an SVG document (what inferno writes: an XML prolog, then `<svg`).
pub fn assert_svg(path: &Path) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = text.trim_start();
    assert!(
        start.starts_with("<?xml")
            || start.starts_with("<svg")
            || start.starts_with("<!DOCTYPE svg"),
        "{} does not start like an SVG document: {:?}",
        path.display(),
        &start[..start.len().min(200)]
    );
    assert!(
        text.contains("<svg"),
        "{} has no <svg element",
        path.display()
    );
    assert!(
        text.trim_end().ends_with("</svg>"),
        "{} does not end with </svg>",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_folded_lines() {
        let text = "rust-pileup;std::sys::thread::Thread::new::thread_start;rust_pileup::handler;\
                    rust_pileup::send_stat;syscall;[futex] 1234\nc-pileup;send_to_backend;[send] 7\n\n";
        let stacks = parse_folded(text);
        assert_eq!(stacks.len(), 2);
        assert_eq!(stacks[0].micros, 1234);
        assert_eq!(stacks[0].kind(), "[futex]");
        assert_eq!(stacks[0].object(), None);
        assert!(stacks[0].has_function("handler"));
        assert!(stacks[0].has_function("send_stat"));
        assert!(
            !stacks[0].has_function("rust-pileup"),
            "the process name is not a function"
        );
        assert_eq!(stacks[1].functions(), ["send_to_backend"]);
        assert_eq!(total_micros(&stacks, |s| s.kind() == "[send]"), 7);
    }

    #[test]
    fn parses_ages() {
        let age = |text| parse_age(text).map(|a| (a.duration, a.lower_bound));
        assert_eq!(age("850us"), Some((Duration::from_micros(850), false)));
        assert_eq!(age("12.3ms"), Some((Duration::from_micros(12_300), false)));
        assert_eq!(age("1.50s"), Some((Duration::from_millis(1_500), false)));
        assert_eq!(age("2m05s"), Some((Duration::from_secs(125), false)));
        assert_eq!(age("1h02m"), Some((Duration::from_secs(3_720), false)));
        assert_eq!(age("≥1.50s"), Some((Duration::from_millis(1_500), true)));
        assert_eq!(age("≥2m05s"), Some((Duration::from_secs(125), true)));
        assert_eq!(age("CALL"), None);
        assert_eq!(age("-1s"), None);
    }

    #[test]
    fn parses_blocked_tables() {
        let stdout = "rust-stuck (pid 42): 17 threads blocked\n\
                      THREADS KIND  YOUNGEST OLDEST CALL SITE\n\
                      16      futex ≥1.02s   ≥1.05s rust_stuck::send_stat\n\
                      1       send  ≥1.05s   ≥1.05s rust_stuck::write_to_backend\n\
                      \n\
                      footer 3 futex 1s 1s x\n";
        let rows = parse_blocked_table(stdout, None);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].threads, 16);
        assert_eq!(rows[0].kind, "futex");
        assert_eq!(rows[0].youngest.duration, Duration::from_millis(1_020));
        assert!(rows[0].youngest.lower_bound);
        assert_eq!(rows_at(&rows, "futex", "send_stat").len(), 1);
        assert_eq!(rows_at(&rows, "send", "write_to_backend")[0].threads, 1);

        let record = "waits...\nTHREADS KIND TOTAL\n9 futex 1s 1s early\n\n\
                      still blocked at the end of the recording:\n\
                      THREADS KIND YOUNGEST OLDEST CALL SITE\n\
                      3 futex 2.00s 3.00s enqueue_stat <inlined>\n";
        let rows = parse_blocked_table(record, Some("still blocked at the end of the recording:"));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].call_site, "enqueue_stat <inlined>");
        assert_eq!(rows_at(&rows, "futex", "enqueue_stat").len(), 1);
    }

    #[test]
    fn parses_object_frames() {
        let stacks = parse_folded(
            "app;app::handler;[futex app::STATS_QUEUE] 3\n\
             app;app::sender;[send 127.0.0.1:80 still-blocked] 9\n\
             app;app::worker;[futex heap 0x55d0c2a4b188] 2\n",
        );
        assert_eq!(stacks[0].kind(), "[futex]");
        assert_eq!(stacks[0].object(), Some("app::STATS_QUEUE"));
        assert_eq!(stacks[1].kind(), "[send still-blocked]");
        assert_eq!(stacks[1].object(), Some("127.0.0.1:80"));
        assert_eq!(stacks[2].object(), Some("heap 0x55d0c2a4b188"));
    }

    #[test]
    fn parses_object_tables() {
        let stdout = "THREADS  KIND      YOUNGEST     OLDEST  CALL SITE\n\
                      \x20     1  send        ≥1m01s     ≥1m01s  app::write_to_backend\n\
                      \n\
                      BY ENDPOINT              KIND       BLOCKED   NOW  STATE\n\
                      10.0.0.5:80              send        ≥1m01s     1  send buffer full (4608/4608 bytes queued)\n\
                      127.0.0.1:9              connect     2.00s      0\n\
                      \n\
                      BY LOCK                                           BLOCKED     WAITS   NOW\n\
                      app::STATS_QUEUE                                   ≥1.05s         0    16\n\
                      heap 0x55d0c2a4b188                                 3.0ms         7     0\n\
                      \n";
        let endpoints = parse_endpoint_table(stdout);
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].endpoint, "10.0.0.5:80");
        assert_eq!(endpoints[0].kind, "send");
        assert_eq!(endpoints[0].blocked.duration, Duration::from_secs(61));
        assert_eq!(endpoints[0].now, 1);
        assert_eq!(
            endpoints[0].state,
            "send buffer full (4608/4608 bytes queued)"
        );
        assert_eq!(endpoints[1].state, "");
        let locks = parse_lock_table(stdout);
        assert_eq!(locks.len(), 2);
        assert_eq!(locks[0].lock, "app::STATS_QUEUE");
        assert_eq!(locks[0].now, 16);
        assert_eq!(locks[0].waits, 0);
        assert_eq!(locks[1].lock, "heap 0x55d0c2a4b188");
        assert_eq!(locks[1].waits, 7);
    }

    #[test]
    fn matches_function_names() {
        assert!(frame_is("handler", "handler"));
        assert!(frame_is("rust_pileup::handler", "handler"));
        assert!(frame_is("rust_pileup::send_stat_[i]", "send_stat"));
        assert!(frame_is("enqueue_stat+0x1f", "enqueue_stat"));
        assert!(!frame_is("rust_pileup::my_handler", "handler"));
        assert!(!frame_is("handler_loop", "handler"));
    }
}

/// `tracer report ARGS...` (needs no root and no live process), under a deadline.
pub fn tracer_report(args: &[&str], timeout: Duration) -> RunOutput {
    let mut cmd = Command::new(tracer_bin());
    cmd.arg("report").args(args);
    run_with_timeout("tracer report", cmd, timeout)
}

/// Runs an outside tool (`go tool pprof`, `xmllint`) that `cargo xtask setup` installs,
/// panicking with its output when it fails.
pub fn run_tool(program: &str, args: &[&str], timeout: Duration) -> RunOutput {
    let which = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh to look for {program}: {e}"));
    assert!(
        which.status.success(),
        "{program} is not installed: `cargo xtask setup` installs it (Debian's golang-go, libxml2-utils)"
    );
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_with_timeout(program, cmd, timeout);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// `tracer -v serve ARGS... --listen 127.0.0.1:0` running under a guard, with its log
/// (stderr) collected line by line, and the port it serves on.
pub struct ServeDaemon {
    guard: ChildGuard,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub port: u16,
}

impl ServeDaemon {
    /// Starts the daemon and waits for the line that names its address.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(tracer_bin());
        cmd.arg("-v")
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn tracer serve ({cmd:?}): {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let mut daemon = Self {
            guard: ChildGuard::new("tracer serve", child),
            log,
            port: 0,
        };
        const MARKER: &str = " on http://127.0.0.1:";
        let line = daemon.wait_for_log(|line| line.contains(MARKER), STARTUP_TIMEOUT);
        let port = line
            .split(MARKER)
            .nth(1)
            .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        daemon.port = port;
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Waits for a log line matching `pred` and returns it; panics with the log after
    /// `timeout`.
    pub fn wait_for_log(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|line| pred(line))
            {
                return line.clone();
            }
            if let Ok(Some(status)) = self.guard.child.try_wait() {
                panic!("tracer serve exited ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tracer serve logged no such line within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// GET `path` (with its query) from the daemon.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.port, path, HTTP_TIMEOUT)
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit; returns the status and
    /// how long the exit took.
    pub fn terminate(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        let start = Instant::now();
        // SAFETY: kill takes a pid and a signal; `pid` is our unreaped child.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {pid}: {}", std::io::Error::last_os_error());
        let status = self.guard.wait_timeout(timeout);
        (status, start.elapsed())
    }
}

/// Far above what any endpoint takes besides the requested window, for a loaded CI
/// machine; only a hang reaches it.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP response: status code and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain HTTP/1.1 GET of `path` on 127.0.0.1:`port` (Connection: close; the body is
/// whatever follows the headers).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> HttpResponse {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
    stream.set_read_timeout(Some(timeout)).expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("send GET {path}: {e}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read the answer to GET {path}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no end of headers in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status in {head:?}"));
    HttpResponse { status, body: raw[split + 4..].to_vec() }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap_or_else(|e| panic!("find a free port: {e}"))
        .port()
}

/// A real Prometheus server (Debian's `prometheus`) on 127.0.0.1, scraping one target
/// every second, with its storage in a temporary directory.
pub struct Prometheus {
    guard: ChildGuard,
    pub port: u16,
    _dir: TempDir,
}

impl Prometheus {
    /// How long Prometheus may take to start answering (it replays an empty TSDB).
    const READY_TIMEOUT: Duration = Duration::from_secs(60);

    pub fn start(scrape_port: u16) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: tracer\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{scrape_port}']\n"
            ),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let port = free_port();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("spawn prometheus: {e} (`cargo xtask setup` installs Debian's prometheus)")
        });
        let prometheus = Self { guard: ChildGuard::new("prometheus", child), port, _dir: dir };
        let deadline = Instant::now() + Self::READY_TIMEOUT;
        loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_get(port, "/-/ready", HTTP_TIMEOUT).status == 200;
            if ready {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus not ready within {:?}", Self::READY_TIMEOUT);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The JSON answer of the instant query `query` (letters, digits, `_` and `{}=",`
    /// only: it is percent-encoded here).
    pub fn query(&self, query: &str) -> String {
        let encoded: String = query
            .bytes()
            .map(|byte| match byte {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (byte as char).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect();
        let response = http_get(self.port, &format!("/api/v1/query?query={encoded}"), HTTP_TIMEOUT);
        assert_eq!(response.status, 200, "prometheus query {query}: {}", response.text());
        response.text()
    }
}

/// The Go workload of the goroutine tests (modes `recv N` and `pileup N`), built with
/// Debian's `golang-go` at run time.
pub const GO_GOROUTINES_SOURCE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/go/goroutines.go");

/// Builds a Go program into `dir` with `go build` (its cache and home inside `dir`, so the
/// test writes nothing elsewhere); `stripped` adds `-ldflags=-s -w` (no symbols, no DWARF).
pub fn build_go(dir: &Path, source: &str, name: &str, stripped: bool) -> PathBuf {
    let out = dir.join(name);
    let mut cmd = Command::new("go");
    cmd.arg("build").arg("-o").arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    cmd.arg(source)
        .env("GOCACHE", dir.join("gocache"))
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
pub fn start_go_goroutines(bin: &Path, mode: &str, n: usize, timeout: Duration) -> (ChildGuard, u16) {
    let mut cmd = Command::new(bin);
    cmd.arg(mode).arg(n.to_string());
    let (guard, line) = spawn_and_read_line_within(&format!("goroutines {mode}"), cmd, timeout);
    let port = line
        .strip_prefix("ready ")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("goroutines {mode}: expected `ready PORT`, got {line:?}"));
    (guard, port)
}

/// One group of a Go goroutine profile (pprof's `debug=1` text, or `tracer snapshot`'s
/// table of a Go process): how many goroutines, the functions of their frames leaf first,
/// and (tracer only) the headline function and the wait reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoroutineGroup {
    pub count: u64,
    pub headline: String,
    pub reason: String,
    pub functions: Vec<String>,
}

/// The groups of a `debug=1` goroutine profile: `N @ 0x… 0x…` lines, each followed by
/// `#\t0xADDR\tfunction+0xOFF\tfile:line` frame lines.
pub fn parse_pprof_goroutines(text: &str) -> Vec<GoroutineGroup> {
    let mut groups: Vec<GoroutineGroup> = Vec::new();
    for line in text.lines() {
        if let Some((count, _)) = line.split_once(" @ ")
            && let Ok(count) = count.trim().parse()
        {
            groups.push(GoroutineGroup { count, headline: String::new(), reason: String::new(), functions: Vec::new() });
        } else if let Some(frame) = line.strip_prefix('#')
            && let Some(group) = groups.last_mut()
        {
            let mut fields = frame.split_whitespace();
            let _address = fields.next();
            if let Some(function) = fields.next() {
                let name = function.rsplit_once("+0x").map_or(function, |(name, _)| name);
                group.functions.push(name.to_owned());
            }
        }
    }
    groups
}

/// The Go program's own goroutine profile, fetched from its `net/http/pprof`.
pub fn pprof_goroutines(port: u16) -> Vec<GoroutineGroup> {
    let response = http_get(port, "/debug/pprof/goroutine?debug=1", Duration::from_secs(30));
    assert_eq!(response.status, 200, "pprof goroutine profile: {}", response.text());
    parse_pprof_goroutines(&response.text())
}

/// The groups `tracer snapshot` prints for a Go process: `N @ headline [reason]` (the
/// reason may carry `, longest ≥…`), then `#\tfunction\tfile:line` lines.
pub fn parse_goroutine_table(stdout: &str) -> Vec<GoroutineGroup> {
    let mut groups: Vec<GoroutineGroup> = Vec::new();
    for line in stdout.lines() {
        if let Some((count, rest)) = line.split_once(" @ ")
            && let Ok(count) = count.trim().parse()
            && let Some((headline, reason)) = rest.split_once(" [")
        {
            let reason = reason.trim_end_matches(']');
            let reason = reason.split_once(", longest").map_or(reason, |(reason, _)| reason);
            groups.push(GoroutineGroup {
                count,
                headline: headline.to_owned(),
                reason: reason.to_owned(),
                functions: Vec::new(),
            });
        } else if let Some(frame) = line.strip_prefix("#\t")
            && let Some(group) = groups.last_mut()
        {
            let function = frame.split('\t').next().unwrap_or_default();
            group.functions.push(function.to_owned());
        }
    }
    groups
}

/// Goroutines in the groups whose frames include `function`.
pub fn goroutines_at(groups: &[GoroutineGroup], function: &str) -> u64 {
    groups
        .iter()
        .filter(|group| group.functions.iter().any(|name| name == function))
        .map(|group| group.count)
        .sum()
}
