//! Targets that are hostile or odd: names that carry escape sequences and markup, plain C
//! functions whose names a demangler reads as C++ types, a process whose main thread has
//! exited while its other threads live on. Real kernel, run as root.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::process::Command;
use std::time::Duration;

use tracer_tests::{
    C_HOSTILE_SOURCE, ChildGuard, ServeDaemon, TempDir, build_c, function_names, has_function,
    http_get, read_profile, run_tool, run_with_timeout, snapshot_profile, stacks_where,
    start_workload, tracer_bin, tracer_snapshot,
};

/// Threads the workload blocks in a futex wait.
const WAITERS: usize = 4;
/// The workload's alarm: far beyond any test, so only a hang meets it.
const WORKLOAD_SECONDS: &str = "120";
/// Far above the second a snapshot takes, so a loaded machine does not flake.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// The name the workload gives itself in `name` mode (see tests/workloads/c_hostile.c).
const HOSTILE_NAME: &str = "\x1b]0;pwn\x07<a>\t\n--";
/// The same, written out as reports show it.
const HOSTILE_NAME_SHOWN: &str = "\\x1b]0;pwn\\x07<a>\\x09\\x0a--";
/// The plain C functions on every waiter's stack, leaf last; a demangler that tries any
/// name reads them as `float`, `std::nullptr_t`, `std`, `char*`, `int`.
const C_NAMES: [&str; 5] = ["f", "Dn", "St", "Pc", "i"];

fn start_hostile(dir: &TempDir, mode: &str) -> ChildGuard {
    let bin = build_c(dir.path(), C_HOSTILE_SOURCE, "c-hostile");
    let mut cmd = Command::new(bin);
    cmd.arg(mode).arg(WAITERS.to_string()).arg(WORKLOAD_SECONDS);
    start_workload(&format!("c-hostile {mode}"), cmd)
}

/// No byte that starts or ends a terminal control sequence: ESC, BEL, CSI (C1, as UTF-8);
/// no tab, and no line the name's newline began.
fn assert_no_controls(what: &str, text: &str) {
    for (name, bad) in [("ESC", "\x1b"), ("BEL", "\x07"), ("CSI", "\u{9b}"), ("TAB", "\t")] {
        assert!(!text.contains(bad), "{what} holds {name}:\n{text:?}");
    }
    assert!(!text.contains("\n--"), "{what} has a line the name's newline began:\n{text}");
}

#[test]
fn names_from_the_target_cannot_drive_the_terminal_or_break_the_svg() {
    let dir = TempDir::new("hostile-name");
    let workload = start_hostile(&dir, "name");
    let comm = std::fs::read(format!("/proc/{}/comm", workload.pid())).expect("read comm");
    assert_eq!(comm, format!("{HOSTILE_NAME}\n").as_bytes(), "the workload did not rename itself");
    let (svg, folded, txt) = (dir.join("now.svg"), dir.join("now.folded"), dir.join("now.txt"));
    let mut args = vec![];
    for path in [&svg, &folded, &txt] {
        args.extend(["--output", path.to_str().expect("utf-8 path")]);
    }

    let out = tracer_snapshot(workload.pid(), &args, RUN_TIMEOUT);
    assert!(out.status.success(), "exit {}; stderr:\n{}", out.status, out.stderr);
    assert_no_controls("stdout", &out.stdout);
    assert_no_controls("stderr", &out.stderr);
    // The name is still there to read, written out.
    assert!(out.stdout.contains(HOSTILE_NAME_SHOWN), "stdout:\n{}", out.stdout);
    let txt = std::fs::read_to_string(&txt).expect("read the text report");
    assert_no_controls("the text report", &txt);
    let folded = std::fs::read_to_string(&folded).expect("read the folded stacks");
    assert_no_controls("the folded stacks", &folded);
    // One line per stack, each ending in its count: the waiters' stack.
    assert_eq!(folded.lines().count(), 1, "folded:\n{folded}");
    assert!(folded.trim_end().ends_with(&format!(" {WAITERS}")), "folded:\n{folded}");
    let svg_text = std::fs::read_to_string(&svg).expect("read the svg");
    assert_no_controls("the svg", &svg_text);
    run_tool("xmllint", &["--noout", svg.to_str().expect("utf-8 path")], RUN_TIMEOUT);

    // serve logs the name of the process it attaches to.
    let pid = workload.pid().to_string();
    let mut daemon = ServeDaemon::start(&["--pid", &pid]);
    daemon.wait_for_log(|line| line.contains(&format!("attached to pid {pid}")), RUN_TIMEOUT);
    let summary = http_get(daemon.port, "/debug/pprof/threads?debug=1", RUN_TIMEOUT);
    daemon.terminate(RUN_TIMEOUT);
    assert_eq!(summary.status, 200, "{}", summary.text());
    assert!(summary.text().contains("\\x1b]0;pwn"), "{}", summary.text());
    assert_no_controls("serve's log", &daemon.log());
    assert_no_controls("serve's summary", &summary.text());

    // --comm finds it by the name as the reports write it out.
    let profile = record_by_comm(OsStr::new(HOSTILE_NAME_SHOWN), &dir, "comm.json");
    assert_eq!(profile.pid, workload.pid());
}

#[test]
fn plain_c_names_are_not_demangled() {
    let dir = TempDir::new("c-names");
    let workload = start_hostile(&dir, "plain");
    let traced = snapshot_profile(workload.pid(), &[], &dir, RUN_TIMEOUT);
    let waiters = stacks_where(&traced.profile, |stack| has_function(stack, "waiter"));
    assert_eq!(waiters.len(), 1, "stacks: {:#?}", traced.profile.stacks);
    let names = function_names(waiters[0]);
    let position = |name: &str| names.iter().position(|frame| *frame == name);
    let positions: Vec<_> = C_NAMES.iter().map(|name| position(name)).collect();
    assert!(positions.iter().all(Option::is_some), "{C_NAMES:?} not all in {names:?}");
    assert!(positions.is_sorted(), "{C_NAMES:?} not in call order in {names:?}");
    for wrong in ["float", "std::nullptr_t", "std", "char*", "int"] {
        assert!(!names.contains(&wrong), "{wrong} in {names:?}");
    }
}

/// Waits until the workload's main thread is a zombie (it calls pthread_exit after `ready`).
fn wait_main_thread_exited(pid: u32) {
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
        if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "main thread of {pid} still runs: {stat}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The threads blocked on the waiters' stack, and that stack's frames.
fn waiter_threads(profile: &tracer_tests::Profile) -> (usize, Vec<String>) {
    let waiters = stacks_where(profile, |stack| has_function(stack, "waiter"));
    let threads = tracer_tests::thread_ids(profile, |stack| has_function(stack, "waiter")).len();
    let names = waiters
        .first()
        .map(|stack| function_names(stack).into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    (threads, names)
}

#[test]
fn a_process_whose_main_thread_exited_is_traced() {
    let dir = TempDir::new("main-exits");
    let workload = start_hostile(&dir, "main-exits");
    wait_main_thread_exited(workload.pid());

    let snapshot = snapshot_profile(workload.pid(), &[], &dir, RUN_TIMEOUT);
    let (threads, names) = waiter_threads(&snapshot.profile);
    assert_eq!(threads, WAITERS, "stacks: {:#?}", snapshot.profile.stacks);
    assert!(names.iter().any(|name| name == "i"), "the waiters' stack is unnamed: {names:?}");

    let record =
        tracer_tests::record_profile(workload.pid(), &["--duration", "1s"], &dir, RUN_TIMEOUT);
    let (threads, _) = waiter_threads(&record.profile);
    assert_eq!(threads, WAITERS, "stacks: {:#?}", record.profile.stacks);
}

/// Names that are not UTF-8 (the process's, its threads', a mapped file's path) keep no
/// process from being traced: snapshot and both modes of record see every waiter, and the
/// name is shown with its odd bytes replaced (reading /proc/PID/stat or maps failed:
/// "stream did not contain valid UTF-8"; threads were counted unreadable).
#[test]
fn names_that_are_not_utf8_do_not_keep_a_process_from_being_traced() {
    let dir = TempDir::new("hostile-bytes");
    let workload = start_hostile(&dir, "bytes");
    let pid = workload.pid();
    let maps = std::fs::read(format!("/proc/{pid}/maps")).expect("read maps");
    assert!(String::from_utf8(maps).is_err(), "the workload mapped no file of an odd name");

    let snapshot = snapshot_profile(pid, &[], &dir, RUN_TIMEOUT);
    let (threads, _) = waiter_threads(&snapshot.profile);
    assert_eq!(threads, WAITERS, "stacks: {:#?}", snapshot.profile.stacks);
    assert!(snapshot.out.stdout.contains("\u{fffd}-odd"), "{}", snapshot.out.stdout);
    for mode in ["exact", "sampled"] {
        let args = ["--duration", "1s", "--mode", mode];
        let record = tracer_tests::record_profile(pid, &args, &dir, RUN_TIMEOUT);
        let (threads, _) = waiter_threads(&record.profile);
        assert_eq!(threads, WAITERS, "{mode}: stacks: {:#?}", record.profile.stacks);
        assert_eq!(record.profile.thread_counts.unreadable, 0, "{mode}");
        assert_eq!(record.profile.counts.thread_reads_failed, 0, "{mode}");
    }
    // Named by --comm: its bytes given raw (clap refused them as not UTF-8), and written
    // out as the reports show them.
    let raw = OsStr::from_bytes(b"\xff\xc3-odd");
    let shown = OsStr::new("\u{fffd}\u{fffd}-odd");
    for (how, name) in [("raw", raw), ("shown", shown)] {
        let profile = record_by_comm(name, &dir, &format!("comm-{how}.json"));
        assert_eq!(profile.pid, pid, "--comm {how}");
        let (threads, _) = waiter_threads(&profile);
        assert_eq!(threads, WAITERS, "--comm {how}: stacks: {:#?}", profile.stacks);
    }
}

/// `tracer record --comm NAME` for a second, its profile read back from `dir`/`json`.
fn record_by_comm(name: &OsStr, dir: &TempDir, json: &str) -> tracer_tests::Profile {
    let json = dir.join(json);
    let mut cmd = Command::new(tracer_bin());
    cmd.arg("record").arg("--comm").arg(name).args(["--duration", "1s", "--output"]).arg(&json);
    let out = run_with_timeout("tracer record --comm", cmd, RUN_TIMEOUT);
    assert!(out.status.success(), "exit {}; stderr:\n{}", out.status, out.stderr);
    read_profile(&json)
}

/// Every thread gone: the one case still refused, in one line.
#[test]
fn a_process_with_no_live_thread_is_refused() {
    let child = Command::new("true").spawn().unwrap_or_else(|e| panic!("spawn true: {e}"));
    let guard = ChildGuard::new("true", child);
    wait_main_thread_exited(guard.pid());
    let out = tracer_snapshot(guard.pid(), &[], RUN_TIMEOUT);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("has exited"), "stderr:\n{}", out.stderr);
}

/// The waiters' hold in `drain` mode (tests/workloads/c_hostile.c): they are released this
/// long after the workload says ready.
const DRAIN_SECONDS: f64 = 2.0;

/// A pile-up that drains while it is recorded: waits that began before the recording and
/// ended during it are completed waits, at their call site, shown as lower bounds (their
/// earlier part comes from the scheduler's accounting).
#[test]
fn waits_begun_before_the_recording_count_when_they_end() {
    let dir = TempDir::new("drain");
    let workload = start_hostile(&dir, "drain");
    let ready = std::time::Instant::now();
    let record = tracer_tests::record_profile(
        workload.pid(),
        &["--duration", "4s", "--mode", "exact"],
        &dir,
        RUN_TIMEOUT,
    );
    let profile = &record.profile;
    // Released, each waiter may also wait a moment for the mutex: a wait of its own,
    // begun in the recording.
    let ended_before = |stack: &tracer_tests::ProfileStack| {
        has_function(stack, "i") && !stack.in_progress && stack.stats.lower_bound
    };
    let stacks = stacks_where(profile, ended_before);
    let waits: u64 = stacks.iter().map(|stack| stack.stats.waits).sum();
    let threads = tracer_tests::thread_ids(profile, ended_before).len();
    assert_eq!(
        (waits as usize, threads),
        (WAITERS, WAITERS),
        "each waiter's wait, begun before the recording, ended once in it, as a lower bound; \
         tracer stdout:\n{}",
        record.out.stdout
    );
    // Each was woken by main's broadcast, whether the wake ran on the waker's CPU or was
    // queued to the waiter's (where only the queued half sees the waker, and these waits,
    // adopted at the attach, live in task storage).
    let woken = tracer_tests::wakes_between(profile, |site| site == "i", |site| site == "main");
    // (At least: a waiter that then waits a millisecond for the mutex main still holds
    // is woken by main too.)
    assert!(
        woken as usize >= WAITERS,
        "each waiter's wait has main's broadcast for its waker: {woken} of {WAITERS}; \
         wakers {:?}; counts {:?}",
        tracer_tests::waker_rows(profile),
        profile.counts
    );
    // They had all waited since before "ready", and were released DRAIN_SECONDS after it.
    let shortest = stacks.iter().map(|stack| stack.stats.min_ns).min().unwrap_or(0);
    assert!(
        shortest as f64 >= 0.95 * DRAIN_SECONDS * 1e9,
        "the shortest wait ({shortest} ns) is shorter than the {DRAIN_SECONDS} s hold (the \
         recording began {:?} after ready)",
        ready.elapsed().saturating_sub(record.out.elapsed)
    );
}
