//! The output files under faults: each is written to a temporary file beside it and renamed
//! into place, so a tracer killed mid-record leaves an earlier report whole; every output is
//! attempted and each failure named; SIGHUP ends a recording with its reports, as SIGTERM
//! does; a symbolic link is refused. Real kernel, run as root.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use tracer_tests::{ChildGuard, TempDir, read_profile, tracer_bin, tracer_snapshot};

/// Far above the second a snapshot of a sleeping process takes, so a loaded machine does
/// not flake, yet a hang fails here rather than blocking the suite.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// A recording far longer than the test, so only the signal can end it.
const LONG_RECORDING: &str = "120s";
/// What an earlier report holds before the tracer runs again over it.
const EARLIER: &str = "an earlier report\n";
/// `record` says it is recording just before it starts to watch for signals; a signal sent
/// in between would find the default action (this wait is microseconds of work, far more).
const SIGNALS_WATCHED: Duration = Duration::from_millis(500);
/// Room for a few pages: enough to mount, and then filled up by the test.
const TINY_TMPFS: &str = "size=64k";

/// A live userspace process to point the tracer at.
fn sleeper() -> ChildGuard {
    let child =
        Command::new("sleep").arg("300").spawn().unwrap_or_else(|e| panic!("spawn sleep: {e}"));
    ChildGuard::new("sleep", child)
}

/// The names in `dir`, sorted: a temporary file left behind shows up here.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `tracer record --pid PID --duration 120s --output PATH`, started and read until it says it
/// is recording (the probes are attached, the outputs checked); stderr's reader is returned
/// with it so the rest can be read after it ends.
fn start_recording(pid: u32, output: &Path) -> (ChildGuard, BufReader<std::process::ChildStderr>) {
    let mut cmd = Command::new(tracer_bin());
    cmd.args(["record", "--pid", &pid.to_string(), "--duration", LONG_RECORDING, "--output"])
        .arg(output)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn tracer record: {e}"));
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let guard = ChildGuard::new("tracer record", child);
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap_or_else(|e| panic!("read tracer's stderr: {e}"));
    assert!(line.starts_with("tracer: recording"), "tracer said {line:?} instead of recording");
    std::thread::sleep(SIGNALS_WATCHED);
    (guard, stderr)
}

fn signal(guard: &ChildGuard, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(guard.pid()).expect("pid fits pid_t");
    // SAFETY: kill takes a pid and a signal number; the pid is our unreaped child.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill {pid}: {}", std::io::Error::last_os_error());
}

fn finish(
    mut guard: ChildGuard,
    stderr: BufReader<std::process::ChildStderr>,
) -> (ExitStatus, String) {
    let status = guard.wait_timeout(RUN_TIMEOUT);
    let rest = stderr.lines().map_while(Result::ok).collect::<Vec<_>>().join("\n");
    (status, rest)
}

#[test]
fn an_earlier_report_survives_a_kill_mid_record() {
    let target = sleeper();
    let dir = TempDir::new("kill-mid-record");
    let report = dir.join("waits.json");
    std::fs::write(&report, EARLIER).expect("write the earlier report");

    let (guard, stderr) = start_recording(target.pid(), &report);
    signal(&guard, libc::SIGKILL);
    let (status, rest) = finish(guard, stderr);
    println!("exit {status}: {rest}");

    assert_eq!(std::fs::read_to_string(&report).expect("read the report"), EARLIER);
    assert_eq!(names_in(dir.path()), ["waits.json"], "a temporary file was left behind");
}

#[test]
fn sighup_ends_a_recording_with_its_reports() {
    let target = sleeper();
    let dir = TempDir::new("sighup");
    let report = dir.join("waits.json");
    std::fs::write(&report, EARLIER).expect("write the earlier report");

    let (guard, stderr) = start_recording(target.pid(), &report);
    signal(&guard, libc::SIGHUP);
    let (status, rest) = finish(guard, stderr);
    println!("exit {status}: {rest}");

    assert!(status.success(), "exit {status}; stderr:\n{rest}");
    let profile = read_profile(&report);
    assert_eq!(profile.pid, target.pid());
    assert_eq!(names_in(dir.path()), ["waits.json"], "a temporary file was left behind");
}

/// A tmpfs mounted on a directory, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: PathBuf, options: &str) -> Self {
        std::fs::create_dir(&at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&at)
            .output()
            .unwrap_or_else(|e| panic!("spawn mount: {e}"));
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Self(at)
    }

    /// Writes a file until the file system is full.
    fn fill(&self) {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let block = [0u8; 4096];
        loop {
            match file.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("fill {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_for_one_output_costs_only_that_one() {
    let target = sleeper();
    let dir = TempDir::new("full-disk");
    let tiny = Mount::tmpfs(dir.join("tiny"), TINY_TMPFS);
    let full_svg = tiny.0.join("waits.svg");
    std::fs::write(&full_svg, EARLIER).expect("write the earlier report");
    tiny.fill();
    let json = dir.join("waits.json");
    let txt = dir.join("waits.txt");

    let args = ["--output", full_svg.to_str().expect("utf-8 path")];
    let args = [&args[..], &["--output", json.to_str().expect("utf-8 path")]].concat();
    let args = [&args[..], &["--output", txt.to_str().expect("utf-8 path")]].concat();
    let out = tracer_snapshot(target.pid(), &args, RUN_TIMEOUT);
    println!("exit {}:\n{}", out.status, out.stderr);

    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let svg_line = format!("tracer: {}: cannot write the report", full_svg.display());
    assert!(lines.iter().any(|line| line.starts_with(&svg_line)), "stderr:\n{}", out.stderr);
    assert!(lines.contains(&format!("tracer: wrote {}", json.display()).as_str()));
    assert!(lines.contains(&format!("tracer: wrote {}", txt.display()).as_str()));
    assert_eq!(lines.last(), Some(&"tracer: 1 of 3 reports not written"));
    assert!(!out.stderr.contains("panicked"), "stderr:\n{}", out.stderr);
    // The summary is still printed, and the outputs that could be written are whole.
    assert!(!out.stdout.trim().is_empty(), "nothing on stdout");
    assert_eq!(read_profile(&json).pid, target.pid());
    assert!(!std::fs::read_to_string(&txt).expect("read the text report").is_empty());
    // The earlier report on the full disk is as it was, and no temporary file is left.
    assert_eq!(std::fs::read_to_string(&full_svg).expect("read the svg"), EARLIER);
    assert_eq!(names_in(&tiny.0), ["filler", "waits.svg"]);
}

/// As root, following a link at the final component would let whoever owns the directory
/// choose which file root overwrites; replacing it would silently break the link.
#[test]
fn an_output_that_is_a_symbolic_link_is_refused() {
    let target = sleeper();
    let dir = TempDir::new("symlink");
    let victim = dir.join("victim");
    std::fs::write(&victim, EARLIER).expect("write the victim");
    let link = dir.join("waits.json");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");

    let out =
        tracer_snapshot(target.pid(), &["--output", link.to_str().expect("utf-8")], RUN_TIMEOUT);
    println!("exit {}: {}", out.status, out.stderr);

    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("symbolic link"), "stderr:\n{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&victim).expect("read the victim"), EARLIER);
    assert!(std::fs::symlink_metadata(&link).expect("the link").file_type().is_symlink());
}
