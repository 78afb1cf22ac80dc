//! Real-kernel tests of the threads that never wake: `tracer snapshot` on pile-ups stuck behind a
//! dead backend and on 10,000 threads parked on one condition variable, and `tracer record`
//! reporting the waits still blocked when it ends. They need root and share the kernel, so they
//! run one at a time (`--test-threads=1`); none skips.

use std::path::Path;
use std::time::{Duration, Instant};

use tracer_tests::{
    BlockedRow, FoldedStack, MANY_WAITERS_SOURCE, RunOutput, Stuck, TempDir, assert_svg, build_c,
    parse_blocked_table, read_folded, rows_at, run_measured, snapshot_command, start_c_stuck,
    start_many_waiters, start_rust_stuck, top_stacks, total_micros, total_threads, tracer_record,
    tracer_snapshot,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");
const RUST_STUCK: &str = env!("CARGO_BIN_EXE_rust-stuck");

/// Handler threads in each stuck workload: enough that a count off by one or two (a thread
/// missed or counted twice) shows, few enough to start in milliseconds.
const HANDLERS: usize = 16;
/// The workloads outlive every test; their guards kill them when the test ends.
const WORKLOAD_SECONDS: f64 = 120.0;
/// How long the pile-up sits before the tracer looks, so that the reported ages have something
/// to be measured against (the acceptance: at least the time since the workload blocked).
const SETTLE: Duration = Duration::from_secs(1);
/// What a reported age may fall short of the time we measured since `stuck` and still pass.
/// Every thread blocked before the workload printed `stuck`, so the true age is never shorter;
/// the slack only absorbs how the tracer measures and prints: ages come from the scheduler's
/// clock (`se.exec_start`, nanoseconds, but sampled against the current clock in two reads) and
/// are printed with three significant digits (`1.05s` hides up to 10 ms).
const AGE_SLACK: Duration = Duration::from_millis(50);
/// Reading ~20 threads' stacks and symbolizing them takes well under a second; only a hang
/// should reach this.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);
/// Long enough to see waits start and end if any did (none should: nothing wakes).
const RECORD_DURATION: &str = "2s";
const RECORD_SECONDS: Duration = Duration::from_secs(2);
/// Recording plus attaching, unwinding and symbolizing, with a wide margin; only a hang should
/// reach it.
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);
/// The line of `record`'s stdout that introduces the table of waits in flight at the end.
const STILL_BLOCKED_HEADING: &str = "still blocked at the end of the recording:";

/// The scale in the acceptance: a process with 10,000 blocked threads.
const MANY_THREADS: usize = 10_000;
/// Creating 10,000 threads and checking each is in its futex wait takes about a second here;
/// the margin is for a loaded CI machine.
const MANY_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The goal is under a second; this only turns a hang into a failure.
const MANY_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The function names a stuck workload's threads block under.
struct Sites {
    /// On every handler's stack, below `enqueue`.
    handler: &'static str,
    /// The channel or queue push where each handler waits on a futex.
    enqueue: &'static str,
    /// Where the sender waits in `send`.
    send: &'static str,
}

const RUST_SITES: Sites = Sites {
    handler: "handler",
    enqueue: "send_stat",
    send: "write_to_backend",
};

const C_SITES: Sites = Sites {
    handler: "handler",
    enqueue: "enqueue_stat",
    send: "send_to_backend",
};

fn assert_success(what: &str, out: &RunOutput) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Asserts that every stack starts with the same process name.
fn assert_one_comm(stacks: &[FoldedStack]) {
    let comm = &stacks[0].frames[0];
    assert!(
        stacks.iter().all(|s| &s.frames[0] == comm),
        "stacks start with different process names:\n{}",
        top_stacks(stacks, |_| true, 20)
    );
}

/// Asserts that the rows of `kind` at `site` hold `want` threads in all, each with a youngest
/// age of at least `min_age` (minus [`AGE_SLACK`]) and an oldest age no younger than that.
fn assert_rows(
    rows: &[BlockedRow],
    kind: &str,
    site: &str,
    want: u64,
    min_age: Duration,
    stdout: &str,
) {
    let at = rows_at(rows, kind, site);
    let threads: u64 = at.iter().map(|row| row.threads).sum();
    assert_eq!(
        threads, want,
        "table rows of kind {kind} at {site} hold {threads} threads, want {want}; stdout:\n{stdout}"
    );
    let bound = min_age.saturating_sub(AGE_SLACK);
    for row in at {
        assert!(
            row.youngest.duration >= bound,
            "row {:?}: youngest {:?} is less than the {min_age:?} since the workload blocked \
             (minus {AGE_SLACK:?} slack)",
            row.line,
            row.youngest.duration
        );
        assert!(
            row.oldest.duration >= row.youngest.duration,
            "row {:?}: oldest {:?} is younger than youngest {:?}",
            row.line,
            row.oldest.duration,
            row.youngest.duration
        );
    }
}

/// Snapshots `stuck` after it settled and checks the acceptance: exactly HANDLERS threads on
/// handler + enqueue stacks with `[futex]`, exactly one on the sender's stack with `[send]`, and
/// ages of at least the time since the workload blocked.
fn snapshot_and_check(label: &str, stuck: &Stuck, sites: &Sites) {
    std::thread::sleep(SETTLE);
    let since_stuck = stuck.stuck_at.elapsed();
    let pid = stuck.workload.pid();
    let dir = TempDir::new(label);
    let folded = dir.join("now.folded");
    let svg = dir.join("now.svg");
    let out = tracer_snapshot(
        pid,
        &["--output", path_arg(&folded), "--output", path_arg(&svg)],
        SNAPSHOT_TIMEOUT,
    );
    println!(
        "{label}: snapshot took {:?}, {since_stuck:?} after stuck:\n{}",
        out.elapsed, out.stdout
    );
    assert_success("tracer snapshot", &out);
    let first = out.stdout.lines().next().unwrap_or("");
    assert!(
        first.contains(&format!("(pid {pid})")),
        "first stdout line {first:?} does not name (pid {pid})"
    );

    let stacks = read_folded(&folded);
    assert!(!stacks.is_empty(), "{} is empty", folded.display());
    assert_one_comm(&stacks);
    let handlers = HANDLERS as u64;
    let is_futex = |s: &FoldedStack| s.kind() == "[futex]";
    let is_handler_wait = |s: &FoldedStack| {
        is_futex(s) && s.has_function(sites.handler) && s.has_function(sites.enqueue)
    };
    assert_eq!(
        total_threads(&stacks, is_handler_wait),
        handlers,
        "threads on [futex] stacks with {} and {}; all stacks:\n{}",
        sites.handler,
        sites.enqueue,
        top_stacks(&stacks, |_| true, 20)
    );
    // The main thread only sleeps: every futex waiter in the process is a handler.
    assert_eq!(
        total_threads(&stacks, is_futex),
        handlers,
        "[futex] threads in all; [futex] stacks without the handler's frames:\n{}",
        top_stacks(&stacks, |s| is_futex(s) && !is_handler_wait(s), 20)
    );
    let is_send = |s: &FoldedStack| s.kind() == "[send]";
    assert_eq!(
        total_threads(&stacks, |s| is_send(s) && s.has_function(sites.send)),
        1,
        "threads on [send] stacks with {}; all stacks:\n{}",
        sites.send,
        top_stacks(&stacks, |_| true, 20)
    );
    assert_eq!(
        total_threads(&stacks, is_send),
        1,
        "[send] threads in all:\n{}",
        top_stacks(&stacks, is_send, 20)
    );
    assert_svg(&svg);

    let rows = parse_blocked_table(&out.stdout, None);
    assert_rows(
        &rows,
        "futex",
        sites.enqueue,
        handlers,
        since_stuck,
        &out.stdout,
    );
    assert_rows(&rows, "send", sites.send, 1, since_stuck, &out.stdout);
}

#[test]
fn rust_stuck_snapshot_counts_threads_and_ages() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, HANDLERS, WORKLOAD_SECONDS);
    snapshot_and_check("rust-stuck", &stuck, &RUST_SITES);
}

#[test]
fn c_stuck_snapshot_counts_threads_and_ages() {
    let build = TempDir::new("c-stuck-build");
    let bin = build_c(build.path(), tracer_tests::C_STUCK_SOURCE, "c-stuck");
    let stuck = start_c_stuck(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    snapshot_and_check("c-stuck", &stuck, &C_SITES);
}

#[test]
fn record_reports_waits_still_blocked_at_the_end() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, HANDLERS, WORKLOAD_SECONDS);
    let sites = &RUST_SITES;
    std::thread::sleep(SETTLE);
    // Each thread has been blocked this long before the tracer starts, and stays blocked for
    // the whole recording after it attaches.
    let min_blocked = stuck.stuck_at.elapsed() + RECORD_SECONDS;
    let dir = TempDir::new("record-stuck");
    let folded = dir.join("waits.folded");
    let out = tracer_record(
        stuck.workload.pid(),
        &["--duration", RECORD_DURATION, "--output", path_arg(&folded)],
        RECORD_TIMEOUT,
    );
    println!(
        "record-stuck: tracer took {:?}:\n{}",
        out.elapsed, out.stdout
    );
    assert_success("tracer record", &out);

    let stacks = read_folded(&folded);
    assert!(
        !stacks.is_empty(),
        "{} is empty: a process whose threads are all stuck must show them; stdout:\n{}",
        folded.display(),
        out.stdout
    );
    assert_one_comm(&stacks);
    let is_still_handler = |s: &FoldedStack| {
        s.kind() == "[futex still-blocked]"
            && s.has_function(sites.handler)
            && s.has_function(sites.enqueue)
    };
    let is_still_sender =
        |s: &FoldedStack| s.kind() == "[send still-blocked]" && s.has_function(sites.send);
    let all = || top_stacks(&stacks, |_| true, 20);
    assert!(
        stacks.iter().any(is_still_handler),
        "no [futex still-blocked] stack with {} and {}:\n{}",
        sites.handler,
        sites.enqueue,
        all()
    );
    assert!(
        stacks.iter().any(is_still_sender),
        "no [send still-blocked] stack with {}:\n{}",
        sites.send,
        all()
    );
    // Weighted by blocked-so-far time: each handler contributes at least `min_blocked`.
    let bound = |threads: u32| {
        u64::try_from((min_blocked.saturating_sub(AGE_SLACK) * threads).as_micros())
            .expect("fits u64")
    };
    let handler_micros = total_micros(&stacks, is_still_handler);
    assert!(
        handler_micros >= bound(HANDLERS as u32),
        "still-blocked handler time {handler_micros} us < {HANDLERS} x {min_blocked:?}:\n{}",
        all()
    );
    let sender_micros = total_micros(&stacks, is_still_sender);
    assert!(
        sender_micros >= bound(1),
        "still-blocked sender time {sender_micros} us < {min_blocked:?}:\n{}",
        all()
    );
    // Nothing wakes in this process, so no handler or sender wait may be reported as ended.
    let ended = |s: &FoldedStack| {
        !s.kind().ends_with("still-blocked]")
            && (s.has_function(sites.enqueue) || s.has_function(sites.send))
    };
    assert!(
        !stacks.iter().any(ended),
        "waits that never ended are reported as completed:\n{}",
        top_stacks(&stacks, ended, 20)
    );

    // The table shows the blocked-so-far age at the end of the recording.
    let rows = parse_blocked_table(&out.stdout, Some(STILL_BLOCKED_HEADING));
    assert_rows(
        &rows,
        "futex",
        sites.enqueue,
        HANDLERS as u64,
        min_blocked,
        &out.stdout,
    );
    assert_rows(&rows, "send", sites.send, 1, min_blocked, &out.stdout);
}

#[test]
fn snapshot_of_ten_thousand_waiters() {
    let build = TempDir::new("many-build");
    let bin = build_c(build.path(), MANY_WAITERS_SOURCE, "many-waiters");
    let workload = start_many_waiters(&bin, MANY_THREADS, WORKLOAD_SECONDS, MANY_STARTUP_TIMEOUT);
    // Every waiter was in its futex wait when the workload printed `ready`.
    let ready_at = Instant::now();
    let dir = TempDir::new("many");
    let folded = dir.join("now.folded");
    let (out, usage) = run_measured(
        "tracer snapshot",
        snapshot_command(workload.pid(), &["--output", path_arg(&folded)]),
        MANY_SNAPSHOT_TIMEOUT,
    );
    // The closing note reports these: the goal is under a second.
    println!(
        "many-waiters: snapshot of {MANY_THREADS} threads took {:?} wall, {:?} user, {:?} sys, \
         max RSS {} KiB",
        out.elapsed, usage.user, usage.system, usage.max_rss_kib
    );
    println!("{}", out.stdout);
    assert_success("tracer snapshot", &out);

    let want = MANY_THREADS as u64;
    let stacks = read_folded(&folded);
    let at_site = |s: &FoldedStack| s.kind() == "[futex]" && s.has_function("wait_for_work");
    assert_eq!(
        total_threads(&stacks, at_site),
        want,
        "threads on [futex] stacks with wait_for_work; heaviest stacks:\n{}",
        top_stacks(&stacks, |_| true, 20)
    );
    let rows = parse_blocked_table(&out.stdout, None);
    // The tracer ran to completion after `ready`, so every waiter is at least this old.
    let since_ready = ready_at.elapsed().saturating_sub(out.elapsed);
    assert_rows(
        &rows,
        "futex",
        "wait_for_work",
        want,
        since_ready,
        &out.stdout,
    );
}
