//! Child processes under guards that clean up: spawning with a deadline on the first line,
//! running to completion with a deadline (and measuring what a child cost), and temporary
//! directories.

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

/// A child process that is killed and reaped when the guard drops, so a failing test leaves
/// nothing running.
pub struct ChildGuard {
    pub(crate) child: Child,
    name: String,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self { child, name: name.into() }
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
        self.wait_until(timeout).unwrap_or_else(|| {
            panic!("{} (pid {}) still runs after {timeout:?}", self.name, self.pid())
        })
    }

    /// The child's exit status once it exits on its own, or None if it still runs after
    /// `timeout`.
    fn wait_until(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                Ok(None) => return None,
                Err(e) => panic!("wait {}: {e}", self.name),
            }
        }
    }

    /// Where each thread of the child is now (name, kernel wait channel, system call, kernel
    /// stack), for a failure message: what a hung child was waiting for.
    fn threads_now(&self) -> String {
        let pid = self.pid();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return format!("(pid {pid}: no task list)");
        };
        let mut text = String::new();
        for task in tasks.flatten() {
            let read = |leaf: &str| {
                std::fs::read_to_string(task.path().join(leaf))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            text += &format!(
                "thread {} {:?}: wchan {} syscall {}\n{}\n",
                task.file_name().to_string_lossy(),
                read("comm"),
                read("wchan"),
                read("syscall"),
                read("stack")
            );
        }
        text
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
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);

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
        // Where it was, for the next flake's diagnosis (stderr is inherited: above).
        Err(e) => panic!(
            "{name} printed nothing within {timeout:?}: {e}; its threads then:\n{}",
            guard.threads_now()
        ),
    };
    (guard, line)
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
    let (child, stdout, stderr) = spawn_piped(what, &mut cmd);
    let mut guard = ChildGuard::new(what, child);
    let Some(status) = guard.wait_until(timeout) else {
        // Said before the child is killed, then with what it wrote.
        let threads = guard.threads_now();
        drop(guard);
        panic!(
            "{what} still ran after {timeout:?}; its threads then:\n{threads}\nits stderr:\n{}",
            collect(what, "stderr", stderr)
        );
    };
    let elapsed = start.elapsed();
    RunOutput {
        status,
        stdout: collect(what, "stdout", stdout),
        stderr: collect(what, "stderr", stderr),
        elapsed,
    }
}

type OutputReader = std::thread::JoinHandle<std::io::Result<String>>;

/// Spawns `cmd` with no stdin, its stdout and stderr read on threads of their own (a full
/// pipe must never block the child).
fn spawn_piped(what: &str, cmd: &mut Command) -> (Child, OutputReader, OutputReader) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what} ({cmd:?}): {e}"));
    let stdout = read_in_background(child.stdout.take().expect("stdout is piped"));
    let stderr = read_in_background(child.stderr.take().expect("stderr is piped"));
    (child, stdout, stderr)
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> OutputReader {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        pipe.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })
}

fn collect(what: &str, stream: &str, reader: OutputReader) -> String {
    reader
        .join()
        .unwrap_or_else(|_| panic!("reader of {what} {stream} panicked"))
        .unwrap_or_else(|e| panic!("read {what} {stream}: {e}"))
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
    let (mut child, stdout, stderr) = spawn_piped(what, &mut cmd);
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

/// The BPF links process `pid` holds now, by `link_type` as its fdinfo gives it (`iter`,
/// `tracing`, `perf_event`, …; `gone` for one closed while looked at).
pub fn bpf_links_by_type(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut links = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return links };
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        if !target.to_string_lossy().contains("bpf_link") {
            continue;
        }
        let fdinfo =
            Path::new("/proc").join(pid.to_string()).join("fdinfo").join(entry.file_name());
        let link_type = std::fs::read_to_string(fdinfo)
            .ok()
            .and_then(|info| {
                info.lines().find_map(|l| l.strip_prefix("link_type:").map(|t| t.trim().to_owned()))
            })
            .unwrap_or_else(|| "gone".to_owned());
        *links.entry(link_type).or_default() += 1;
    }
    links
}

/// A cgroup the test makes (`NAME-PID` under the cgroup v2 hierarchy, the root or
/// `unified` on a hybrid host, else v1's pids controller), removed when dropped, after
/// the processes in it are gone.
pub struct TestCgroup(PathBuf);

impl TestCgroup {
    pub fn make(name: &str) -> Self {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids"]
            .into_iter()
            .map(Path::new)
            .find(|root| root.join("cgroup.procs").is_file())
            .expect("a cgroup hierarchy under /sys/fs/cgroup");
        let path = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Moves process `pid` into it.
    pub fn add(&self, pid: u32) {
        let procs = self.0.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", procs.display()));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The killed processes leave the cgroup a moment after they are reaped.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("cannot remove the test cgroup {}", self.0.display());
    }
}

/// The thread ids of process `pid` now, in order; panics when it has no task list.
pub fn live_thread_ids(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("list the threads of {pid}: {e}"));
    let mut tids: Vec<u32> =
        tasks.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect();
    tids.sort_unstable();
    tids
}

/// A kernel setting under /proc/sys raised to at least `value` for a test, and set back to
/// what it was on drop.
pub struct RaisedSysctl {
    path: PathBuf,
    before: Option<String>,
}

impl RaisedSysctl {
    pub fn at_least(path: &str, value: u64) -> Self {
        let path = PathBuf::from(path);
        let read = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let current: u64 =
            read.trim().parse().unwrap_or_else(|e| panic!("{}: {read:?}: {e}", path.display()));
        if current >= value {
            return Self { path, before: None };
        }
        std::fs::write(&path, value.to_string())
            .unwrap_or_else(|e| panic!("write {value} to {}: {e}", path.display()));
        Self { path, before: Some(read.trim().to_string()) }
    }
}

impl Drop for RaisedSysctl {
    fn drop(&mut self) {
        if let Some(before) = &self.before {
            let _ = std::fs::write(&self.path, before);
        }
    }
}
