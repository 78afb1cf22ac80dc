//! Bad input and faults: each must end `tracer record` (or `tracer snapshot`) with one line on
//! stderr that starts with `tracer: ` and names the problem, and a non-zero exit, promptly. Real
//! kernel, run as root.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tracer_tests::{
    ChildGuard, RunOutput, TempDir, run_with_timeout, set_mode, tracer_bin, tracer_record,
    tracer_snapshot,
};

/// The acceptance asks for an exit within a second; this guard is much wider so a loaded CI
/// machine does not flake, yet a tracer that hangs (or records instead of failing) fails here
/// rather than blocking the suite.
const ERROR_TIMEOUT: Duration = Duration::from_secs(5);
/// Passed to every run so that a tracer that wrongly accepts the input finishes (and fails the
/// status assertion with its output shown) before the timeout hits.
const DURATION: &str = "2s";
/// `nobody` on Debian: an unprivileged user that exists everywhere.
const NOBODY: u32 = 65534;
/// `PF_KTHREAD` from include/linux/sched.h: the flags field of /proc/PID/stat has it for
/// kernel threads.
const PF_KTHREAD: u64 = 0x0020_0000;

/// A live userspace process to point the tracer at when the fault lies elsewhere.
fn sleeper() -> ChildGuard {
    let child =
        Command::new("sleep").arg("60").spawn().unwrap_or_else(|e| panic!("spawn sleep: {e}"));
    ChildGuard::new("sleep", child)
}

/// Checks the error contract and that the line mentions `needle` (case-insensitive).
fn assert_error(case: &str, out: &RunOutput, needle: &str) {
    println!("{case}: exit {} after {:?}: {}", out.status, out.elapsed, out.stderr.trim_end());
    assert!(
        !out.status.success(),
        "{case}: tracer succeeded:\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{case}: exit status {} (want 1); stderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.starts_with("tracer: "),
        "{case}: stderr does not start with `tracer: `:\n{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "{case}: want one line on stderr, got:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.to_lowercase().contains(&needle.to_lowercase()),
        "{case}: stderr does not mention {needle:?}:\n{}",
        out.stderr
    );
}

fn record(pid: u32, extra: &[&str]) -> RunOutput {
    let mut args = vec!["--duration", DURATION];
    args.extend_from_slice(extra);
    tracer_record(pid, &args, ERROR_TIMEOUT)
}

#[test]
fn not_root() {
    let target = sleeper();
    // target/ may not be readable by nobody: run a copy from a world-readable temp dir.
    let dir = TempDir::new("not-root");
    let bin = dir.join("tracer");
    std::fs::copy(tracer_bin(), &bin)
        .unwrap_or_else(|e| panic!("copy tracer to {}: {e}", bin.display()));
    set_mode(&bin, 0o755);

    let mut cmd = Command::new(&bin);
    cmd.args(["record", "--pid", &target.pid().to_string(), "--duration", DURATION])
        .uid(NOBODY)
        .gid(NOBODY);
    let out = run_with_timeout("tracer record as nobody", cmd, ERROR_TIMEOUT);
    assert_error("not root", &out, "root");
}

#[test]
fn pid_does_not_exist() {
    let pid = free_pid();
    let out = record(pid, &[]);
    assert_error("missing pid", &out, "does not exist");
    assert!(
        out.stderr.contains(&pid.to_string()),
        "stderr does not name pid {pid}:\n{}",
        out.stderr
    );
}

#[test]
fn pid_is_kernel_thread() {
    let pid = kernel_thread_pid();
    let out = record(pid, &[]);
    assert_error("kernel thread", &out, "kernel thread");
}

#[test]
fn snapshot_pid_does_not_exist() {
    let pid = free_pid();
    let out = tracer_snapshot(pid, &[], ERROR_TIMEOUT);
    assert_error("snapshot of a missing pid", &out, "does not exist");
    assert!(
        out.stderr.contains(&pid.to_string()),
        "stderr does not name pid {pid}:\n{}",
        out.stderr
    );
}

#[test]
fn snapshot_pid_is_kernel_thread() {
    let pid = kernel_thread_pid();
    let out = tracer_snapshot(pid, &[], ERROR_TIMEOUT);
    assert_error("snapshot of a kernel thread", &out, "kernel thread");
}

#[test]
fn kernel_without_btf() {
    let target = sleeper();
    let mut cmd = Command::new(tracer_bin());
    cmd.args(["record", "--pid", &target.pid().to_string(), "--duration", DURATION])
        .env("TRACER_BTF_PATH", "/nonexistent");
    let out = run_with_timeout("tracer record without BTF", cmd, ERROR_TIMEOUT);
    assert_error("no BTF", &out, "BTF");
}

#[test]
fn unwritable_output_path() {
    const PATH: &str = "/nonexistent-dir/x.svg";
    assert!(
        !Path::new(PATH).parent().expect("has a parent").exists(),
        "{PATH}'s directory exists here"
    );
    let target = sleeper();
    let out = record(target.pid(), &["--output", PATH]);
    assert_error("unwritable output", &out, PATH);
}

#[test]
fn unknown_output_extension() {
    let target = sleeper();
    let dir = TempDir::new("ext");
    let path = dir.join("x.xyz");
    let out = record(target.pid(), &["--output", path.to_str().expect("utf-8 temp path")]);
    assert_error("unknown extension", &out, "extension");
    assert!(out.stderr.contains("xyz"), "stderr does not name the extension:\n{}", out.stderr);
}

/// A pid with no process: the highest free one below pid_max, unlikely to be handed out during
/// the test since the kernel allocates pids upwards from the last one used.
fn free_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap_or_else(|e| panic!("read pid_max: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("parse pid_max: {e}"));
    (2..max)
        .rev()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("some pid is free")
}

/// A kernel thread: kthreadd (pid 2) where it is one, else the first found in /proc.
fn kernel_thread_pid() -> u32 {
    let is_kthread = |pid: u32| -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // Fields after the parenthesised comm: state ppid pgrp session tty_nr tpgid flags.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        rest.split_whitespace()
            .nth(6)
            .and_then(|f| f.parse::<u64>().ok())
            .is_some_and(|f| f & PF_KTHREAD != 0)
    };
    if is_kthread(2) {
        return 2;
    }
    std::fs::read_dir("/proc")
        .unwrap_or_else(|e| panic!("read /proc: {e}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .find(|&pid| is_kthread(pid))
        .expect("no kernel thread in /proc")
}

/// A stdout that cannot be written (`>/dev/full`; a reader gone, as after `| head`, fails
/// the same way) costs no report: the output files are written first, and the failure is one
/// line and exit status 1, not a panic.
#[test]
fn a_stdout_that_cannot_be_written_still_leaves_the_reports() {
    let target = sleeper();
    let dir = TempDir::new("full-stdout");
    let json = dir.join("now.json");
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full");
    let mut cmd = tracer_tests::snapshot_command(target.pid(), &["--output"]);
    cmd.arg(&json).stdout(full).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn tracer: {e}"));
    // A few lines at most: the pipe holds them until the tracer has exited.
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let status = ChildGuard::new("tracer snapshot >/dev/full", child).wait_timeout(ERROR_TIMEOUT);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut stderr_pipe, &mut stderr).expect("read stderr");
    println!("exit {status}: {stderr}");
    assert_eq!(status.code(), Some(1), "exit {status}; stderr:\n{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("tracer: cannot write to stdout"), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
    let profile = tracer_tests::read_profile(&json);
    assert_eq!(profile.pid, target.pid());
    assert!(profile.thread_counts.threads >= 1, "{:?}", profile.thread_counts);
}

/// A device never ends: `tracer report /dev/zero` read 8 GiB in 8 s. Only regular files
/// are read.
#[test]
fn report_refuses_a_device() {
    let out = tracer_tests::tracer_report(&["/dev/zero"], ERROR_TIMEOUT);
    assert_error("report /dev/zero", &out, "not a regular file");
}

/// The options only a sampled recording takes are refused in exact mode, by name.
#[test]
fn sampled_only_options_are_refused_in_exact_mode() {
    let target = sleeper();
    for option in [["--rate", "20"], ["--cpu-budget", "20"]] {
        let mut args = vec!["--mode", "exact"];
        args.extend_from_slice(&option);
        let out = record(target.pid(), &args);
        assert_error(&format!("{} in exact mode", option[0]), &out, option[0]);
    }
}

/// `top --mode exact` watches one process: two are refused by one line before the
/// terminal is taken.
#[test]
fn top_in_exact_mode_refuses_two_processes() {
    let (one, two) = (sleeper(), sleeper());
    let mut cmd = Command::new(tracer_bin());
    cmd.args(["top", "--mode", "exact", "--pid", &one.pid().to_string()])
        .args(["--pid", &two.pid().to_string()]);
    let out = run_with_timeout("tracer top", cmd, ERROR_TIMEOUT);
    assert_error("top --mode exact on two processes", &out, "watches one process");
}

/// `--no-wakers` leaves out a probe only an exact recording of threads attaches: refused
/// in sampled mode, by name.
#[test]
fn no_wakers_is_refused_in_sampled_mode() {
    let target = sleeper();
    let out = record(target.pid(), &["--mode", "sampled", "--no-wakers"]);
    assert_error("--no-wakers in sampled mode", &out, "--no-wakers is for an exact recording");
}

/// A command line that does not parse is an error as any other: one line, exit code 1
/// (clap's own was several lines, its usage among them, and exit code 2), with its hint
/// kept; help and the version still go to stdout with exit code 0.
#[test]
fn a_command_line_that_does_not_parse_is_one_line() {
    let target = sleeper();
    let pid = target.pid().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["record", "--pid", &pid, "--mode", "fast"], "possible values: sampled, exact"),
        (&["record", "--pid", &pid, "--duration=-1s"], "not a duration"),
        (&["snapshot"], "--pid"),
        (&["bogus"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let mut cmd = Command::new(tracer_bin());
        cmd.args(args);
        let out = run_with_timeout("tracer", cmd, ERROR_TIMEOUT);
        assert_error(&args.join(" "), &out, needle);
    }
    for asked in ["--help", "--version"] {
        let mut cmd = Command::new(tracer_bin());
        cmd.arg(asked);
        let out = run_with_timeout("tracer", cmd, ERROR_TIMEOUT);
        assert!(out.status.success(), "{asked}: {}", out.status);
        assert!(out.stdout.contains("tracer"), "{asked}: {}", out.stdout);
    }
}

/// A trigger's directory that cannot be written is refused at the start, by name: the
/// firing that could not be written came when it mattered, and was lost.
#[test]
fn serve_refuses_a_trigger_dir_it_cannot_write() {
    let target = sleeper();
    let mut cmd = Command::new(tracer_bin());
    cmd.args(["serve", "--pid", &target.pid().to_string(), "--listen", "127.0.0.1:0"]).args([
        "--trigger",
        "threads>=1",
        "--trigger-dir",
        "/proc/tracer-triggers",
    ]);
    let out = run_with_timeout("tracer serve", cmd, ERROR_TIMEOUT);
    assert_error("an unwritable --trigger-dir", &out, "--trigger-dir /proc/tracer-triggers");
}
