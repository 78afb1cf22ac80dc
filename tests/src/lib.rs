//! Helpers shared by the real-kernel tests: find the tracer, start workloads under guards that
//! clean up, run `tracer record` with a deadline, and read its folded output.
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

/// The workload source that the tests compile with gcc at run time.
pub const C_PILEUP_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/c_pileup.c");

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
pub fn spawn_and_read_line(name: &str, mut cmd: Command) -> (ChildGuard, String) {
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
    let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(Ok(line)) if !line.is_empty() => line.trim_end().to_owned(),
        Ok(Ok(_)) => panic!("{name} closed stdout before printing a line"),
        Ok(Err(e)) => panic!("read stdout of {name}: {e}"),
        Err(e) => panic!("{name} printed nothing within {STARTUP_TIMEOUT:?}: {e}"),
    };
    (guard, line)
}

/// Starts the slow backend for `seconds` and returns it with the port it listens on.
pub fn start_backend(bin: &str, seconds: f64) -> (ChildGuard, u16) {
    let mut cmd = Command::new(bin);
    cmd.arg("--seconds").arg(seconds.to_string());
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

/// Compiles the C pile-up into `dir` the way a C service is usually built: `-O2` (which omits
/// frame pointers) with debug info, against the system glibc.
pub fn build_c_pileup(dir: &Path) -> PathBuf {
    let out = dir.join("c-pileup");
    let output = Command::new("gcc")
        .args(["-O2", "-g", "-pthread", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(C_PILEUP_SOURCE)
        .output()
        .unwrap_or_else(|e| panic!("spawn gcc: {e}"));
    assert!(
        output.status.success(),
        "gcc {C_PILEUP_SOURCE} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    out
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
    /// The wait kind frame, e.g. `[futex]`.
    pub fn kind(&self) -> &str {
        self.frames.last().map_or("", String::as_str)
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
    fn matches_function_names() {
        assert!(frame_is("handler", "handler"));
        assert!(frame_is("rust_pileup::handler", "handler"));
        assert!(frame_is("rust_pileup::send_stat_[i]", "send_stat"));
        assert!(frame_is("enqueue_stat+0x1f", "enqueue_stat"));
        assert!(!frame_is("rust_pileup::my_handler", "handler"));
        assert!(!frame_is("handler_loop", "handler"));
    }
}
