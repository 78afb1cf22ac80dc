//! Faults while tracing: the target execs or is killed in the middle of a recording, or is
//! killed while serve has a block window open. Every report is complete or absent, never
//! cut short. (A target that exits, and one that restarts under `serve --comm`, have their
//! own tests in record.rs and serve.rs.) Real kernel, run as root.

use std::{path::Path, process::Command, time::Duration};

use tracer_tests::{
    C_HOSTILE_SOURCE, ChildGuard, ServeDaemon, TempDir, assert_svg, build_c, http_get,
    read_profile, start_workload, tracer_bin,
};

/// Waiters of the c-hostile workload.
const WAITERS: &str = "4";
/// The workload's alarm: far beyond any test.
const WORKLOAD_SECONDS: &str = "120";
/// Recording, plus attaching and writing every report, on a loaded machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The reports a recording writes in every format, under `dir`.
const REPORTS: [&str; 4] = ["waits.json", "waits.pb.gz", "waits.svg", "waits.folded"];

fn report_args(dir: &TempDir) -> Vec<String> {
    REPORTS
        .iter()
        .flat_map(|name| ["--output".to_string(), dir.join(name).display().to_string()])
        .collect()
}

/// Every report is there and whole: the JSON and pprof read back, the SVG ends as SVG does,
/// every folded line ends in its weight.
fn assert_reports_whole(dir: &TempDir, stdout: &str) {
    for name in REPORTS {
        let path = dir.join(name);
        assert!(path.exists(), "{name} was not written; stdout:\n{stdout}");
    }
    read_profile(&dir.join("waits.json"));
    read_profile(&dir.join("waits.pb.gz"));
    assert_svg(&dir.join("waits.svg"));
    let folded = std::fs::read_to_string(dir.join("waits.folded")).expect("read waits.folded");
    for line in folded.lines() {
        let weight = line.rsplit(' ').next().unwrap_or_default();
        assert!(weight.parse::<u64>().is_ok(), "a folded line cut short: {line:?}");
    }
    // No temporary file left beside them.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list the report directory")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !REPORTS.contains(&name.as_str()))
        .collect();
    assert!(leftovers.is_empty(), "files left beside the reports: {leftovers:?}");
}

fn c_hostile(build: &Path) -> std::path::PathBuf {
    build_c(build, C_HOSTILE_SOURCE, "c-hostile")
}

/// `tracer record --pid PID ARGS...` started now, not waited for.
fn spawn_record(pid: u32, args: &[String]) -> std::process::Child {
    Command::new(tracer_bin())
        .arg("record")
        .arg("--pid")
        .arg(pid.to_string())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tracer record")
}

fn finish(record: std::process::Child) -> (std::process::ExitStatus, String, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(record.wait_with_output());
    });
    let output = rx
        .recv_timeout(RUN_TIMEOUT)
        .expect("tracer record did not end")
        .expect("wait for tracer record");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_target_that_execs_mid_recording_gets_whole_reports() {
    let build = TempDir::new("faults-exec-build");
    let hostile = c_hostile(build.path());
    // A shell that becomes the waiters' process a second into the recording.
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "echo ready; sleep 1; exec {} plain {WAITERS} {WORKLOAD_SECONDS} >/dev/null",
        hostile.display()
    ));
    let workload = start_workload("sh then c-hostile", cmd);
    let dir = TempDir::new("faults-exec");
    let mut args = report_args(&dir);
    args.extend(["--duration".to_string(), "3s".to_string()]);
    let (status, stdout, stderr) = finish(spawn_record(workload.pid(), &args));
    assert!(status.success(), "tracer record failed ({status}):\n{stdout}\n{stderr}");
    assert_reports_whole(&dir, &stdout);
}

#[test]
fn a_target_killed_mid_recording_gets_whole_reports() {
    let build = TempDir::new("faults-kill-build");
    let mut cmd = Command::new(c_hostile(build.path()));
    cmd.args(["drain", WAITERS, WORKLOAD_SECONDS]);
    let workload = start_workload("c-hostile drain", cmd);
    let pid = workload.pid();
    let dir = TempDir::new("faults-kill");
    let mut args = report_args(&dir);
    args.extend(["--duration".to_string(), "20s".to_string(), "--mode".into(), "exact".into()]);
    let record = spawn_record(pid, &args);
    // Past the waiters' release (2 s after ready), while the recording goes on.
    std::thread::sleep(Duration::from_millis(2500));
    kill(&workload);
    let (status, stdout, stderr) = finish(record);
    assert!(status.success(), "tracer record failed ({status}):\n{stdout}\n{stderr}");
    assert!(stderr.contains("exited during the recording"), "stderr:\n{stderr}");
    assert_reports_whole(&dir, &stdout);
    let profile = read_profile(&dir.join("waits.json"));
    assert!(profile.target_exited, "the profile does not say the target exited");
}

/// Serve follows the name, so it outlives the target; the window that was open when the
/// target was killed still answers with a whole profile, and /metrics answers after.
fn killed_during_a_block_window(mode: &str) {
    let build = TempDir::new("faults-serve-build");
    let mut cmd = Command::new(c_hostile(build.path()));
    cmd.args(["drain", WAITERS, WORKLOAD_SECONDS]);
    let workload = start_workload("c-hostile drain", cmd);
    let pid = workload.pid();
    let mut daemon = ServeDaemon::start(&["--comm", "c-hostile", "--mode", mode]);
    let wanted = format!("attached to pid {pid} ");
    daemon.wait_for_log(|line| line.contains(&wanted), RUN_TIMEOUT);
    let port = daemon.port;
    let window =
        std::thread::spawn(move || http_get(port, "/debug/pprof/block?seconds=4", RUN_TIMEOUT));
    // Past the waiters' release (2 s after ready), before the window closes.
    std::thread::sleep(Duration::from_millis(2500));
    kill(&workload);
    let answer = window.join().expect("the window's request");
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let dir = TempDir::new("faults-serve");
    let path = dir.join("window.pb.gz");
    std::fs::write(&path, &answer.body).expect("write the window's profile");
    let profile = read_profile(&path);
    assert_eq!(profile.pid, pid, "the window's profile is of another process");
    // The waiters' waits ended at their release, before the kill: the window holds them.
    assert!(
        profile.stacks.iter().any(|stack| tracer_tests::has_function(stack, "i")),
        "the window lost the waits of the killed process: {:#?}",
        profile.stacks
    );
    let metrics = http_get(port, "/metrics", RUN_TIMEOUT);
    assert_eq!(metrics.status, 200, "{}", String::from_utf8_lossy(&metrics.body));
}

/// Threads blocked until their process exits: the window open then holds their waits
/// (a sampled daemon dropped the waits its last read saw; the window had none).
fn exit_during_a_block_window_ends_the_waits(mode: &str) {
    // Long against the daemon's attach on a loaded machine.
    let workload = tracer_tests::start_blocked_until_exit(6.0);
    let pid = workload.pid();
    let reaper = workload.reap_in_background(RUN_TIMEOUT);
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string(), "--mode", mode]);
    daemon.wait_for_log(|line| line.contains(&format!("attached to pid {pid} ")), RUN_TIMEOUT);
    let answer = daemon.get("/debug/pprof/block?seconds=20");
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let dir = TempDir::new("faults-serve-exit");
    let path = dir.join("window.pb.gz");
    std::fs::write(&path, &answer.body).expect("write the window's profile");
    let profile = read_profile(&path);
    let lockers: std::collections::BTreeSet<u64> = profile
        .stacks
        .iter()
        .filter(|stack| stack.kind == tracer_tests::WaitKind::Futex)
        .flat_map(|stack| stack.stats.threads.iter().copied())
        .collect();
    assert_eq!(lockers.len(), 3, "the lockers' waits: {:#?}", profile.stacks);
    assert!(profile.target_exited, "the window does not say its process exited");
    assert!(reaper.join().expect("reaping the python program").success());
}

#[test]
fn an_exit_during_a_sampled_block_window_ends_the_waits_in_it() {
    exit_during_a_block_window_ends_the_waits("sampled");
}

#[test]
fn an_exit_during_an_exact_block_window_ends_the_waits_in_it() {
    exit_during_a_block_window_ends_the_waits("exact");
}

#[test]
fn a_target_killed_during_a_sampled_block_window_answers_a_whole_profile() {
    killed_during_a_block_window("sampled");
}

#[test]
fn a_target_killed_during_an_exact_block_window_answers_a_whole_profile() {
    killed_during_a_block_window("exact");
}

fn kill(workload: &ChildGuard) {
    // SAFETY: kill sends a signal to a process we started and still own.
    unsafe { libc::kill(workload.pid() as libc::pid_t, libc::SIGKILL) };
}
