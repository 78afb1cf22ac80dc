//! Real-kernel tests of the threads that never wake: `tracer snapshot` on pile-ups stuck behind a
//! dead backend and on 10,000 threads parked on one condition variable, and `tracer record`
//! reporting the waits still blocked when it ends. They need root and share the kernel, so they
//! run one at a time (`--test-threads=1`); none skips.

use std::time::{Duration, Instant};

use tracer_tests::{
    MANY_WAITERS_SOURCE, Profile, ProfileKind, ProfileStack, Stuck, TempDir, WaitKind,
    assert_success, assert_svg, assert_threads, build_c, has_function, read_profile,
    record_profile, run_measured, snapshot_command, snapshot_profile, stacks_where, start_c_stuck,
    start_many_waiters, start_rust_stuck, top_stacks, total_ns,
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
/// the slack only absorbs how the tracer measures: ages come from the scheduler's clock
/// (`se.exec_start`, nanoseconds, but sampled against the current clock in two reads).
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

/// The scale in the acceptance: a process with 10,000 blocked threads.
const MANY_THREADS: usize = 10_000;
/// Creating 10,000 threads and checking each is in its futex wait takes about a second here;
/// the margin is for a loaded CI machine.
const MANY_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Only turns a hang into a failure (performance is measured by the bench, not asserted here).
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

const RUST_SITES: Sites =
    Sites { handler: "handler", enqueue: "send_stat", send: "write_to_backend" };

const C_SITES: Sites =
    Sites { handler: "handler", enqueue: "enqueue_stat", send: "send_to_backend" };

/// Asserts that the stacks that `pred` accepts hold `want` threads in all, each with a youngest
/// age of at least `min_age` (minus [`AGE_SLACK`]) and an oldest age no younger than that.
fn assert_aged(
    profile: &Profile,
    pred: impl Fn(&ProfileStack) -> bool,
    want: u64,
    min_age: Duration,
    what: &str,
) {
    assert_threads(profile, &pred, want, what);
    let bound = u64::try_from(min_age.saturating_sub(AGE_SLACK).as_nanos()).expect("fits u64");
    for stack in stacks_where(profile, &pred) {
        let stats = &stack.stats;
        assert!(
            stats.min_ns >= bound,
            "{what}: youngest {:?} is less than the {min_age:?} since the workload blocked \
             (minus {AGE_SLACK:?} slack): {}",
            Duration::from_nanos(stats.min_ns),
            tracer_tests::describe(stack)
        );
        assert!(
            stats.max_ns >= stats.min_ns,
            "{what}: oldest is younger than youngest: {}",
            tracer_tests::describe(stack)
        );
        assert!(
            stats.total_ns >= stats.waits * bound,
            "{what}: blocked-so-far total is less than {} waits of {min_age:?}: {}",
            stats.waits,
            tracer_tests::describe(stack)
        );
    }
}

/// Snapshots `stuck` after it settled and checks the acceptance: exactly HANDLERS threads on
/// handler + enqueue stacks waiting in futex, exactly one on the sender's stack waiting in send,
/// and ages of at least the time since the workload blocked.
fn snapshot_and_check(label: &str, stuck: &Stuck, sites: &Sites) {
    std::thread::sleep(SETTLE);
    let since_stuck = stuck.stuck_at.elapsed();
    let pid = stuck.workload.pid();
    let dir = TempDir::new(label);
    let svg = dir.join("now.svg");
    let svg_arg = svg.to_str().expect("utf-8 temp path");
    let traced = snapshot_profile(pid, &["--output", svg_arg], &dir, SNAPSHOT_TIMEOUT);
    println!(
        "{label}: snapshot took {:?}, {since_stuck:?} after stuck:\n{}",
        traced.out.elapsed, traced.out.stdout
    );
    let profile = &traced.profile;
    assert_eq!(profile.kind, ProfileKind::Snapshot);
    assert_eq!(profile.pid, pid, "the profile names another process");
    assert!(!profile.stacks.is_empty(), "a snapshot of {label} holds no stacks");
    assert!(
        profile.stacks.iter().all(|stack| stack.in_progress),
        "a snapshot holds waits that are not in progress:\n{}",
        top_stacks(profile, |stack| !stack.in_progress, 20)
    );

    let handlers = HANDLERS as u64;
    let is_futex = |s: &ProfileStack| s.kind == WaitKind::Futex;
    let is_handler_wait = |s: &ProfileStack| {
        is_futex(s) && has_function(s, sites.handler) && has_function(s, sites.enqueue)
    };
    assert_aged(profile, is_handler_wait, handlers, since_stuck, "handlers in futex");
    // The main thread only sleeps: every futex waiter in the process is a handler.
    assert_threads(profile, is_futex, handlers, "futex waiters in all");
    let is_send = |s: &ProfileStack| s.kind == WaitKind::Send;
    assert_aged(
        profile,
        |s| is_send(s) && has_function(s, sites.send),
        1,
        since_stuck,
        "the sender in send",
    );
    assert_threads(profile, is_send, 1, "send waiters in all");
    assert_eq!(
        profile.thread_counts.blocked_in_waits,
        handlers + 1,
        "threads the snapshot counts as blocked in waits"
    );
    assert_svg(&svg);
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
    let traced = record_profile(
        stuck.workload.pid(),
        &["--duration", RECORD_DURATION],
        &dir,
        RECORD_TIMEOUT,
    );
    println!("record-stuck: tracer took {:?}:\n{}", traced.out.elapsed, traced.out.stdout);
    let profile = &traced.profile;
    assert_eq!(profile.kind, ProfileKind::Recording);
    assert!(
        !profile.stacks.is_empty(),
        "a recording of a process whose threads are all stuck holds no stacks"
    );
    let is_still_handler = |s: &ProfileStack| {
        s.in_progress
            && s.kind == WaitKind::Futex
            && has_function(s, sites.handler)
            && has_function(s, sites.enqueue)
    };
    let is_still_sender =
        |s: &ProfileStack| s.in_progress && s.kind == WaitKind::Send && has_function(s, sites.send);
    // Each is still blocked at the end, aged at least from before the recording.
    assert_aged(
        profile,
        is_still_handler,
        HANDLERS as u64,
        min_blocked,
        "handlers still blocked in futex",
    );
    assert_aged(profile, is_still_sender, 1, min_blocked, "the sender still blocked in send");
    // Nothing wakes in this process, so no handler or sender wait may be reported as ended.
    let ended = |s: &ProfileStack| {
        !s.in_progress && (has_function(s, sites.enqueue) || has_function(s, sites.send))
    };
    assert!(
        !profile.stacks.iter().any(ended),
        "waits that never ended are reported as completed:\n{}",
        top_stacks(profile, ended, 20)
    );
    assert_eq!(
        total_ns(profile, |s| !s.in_progress && s.kind == WaitKind::Futex),
        0,
        "futex waits ended in a process where nothing wakes:\n{}",
        top_stacks(profile, |_| true, 20)
    );
}

#[test]
fn snapshot_of_ten_thousand_waiters() {
    let build = TempDir::new("many-build");
    let bin = build_c(build.path(), MANY_WAITERS_SOURCE, "many-waiters");
    let workload = start_many_waiters(&bin, MANY_THREADS, WORKLOAD_SECONDS, MANY_STARTUP_TIMEOUT);
    // Every waiter was in its futex wait when the workload printed `ready`.
    let ready_at = Instant::now();
    let dir = TempDir::new("many");
    let json = dir.join("now.json");
    let (out, usage) = run_measured(
        "tracer snapshot",
        snapshot_command(workload.pid(), &["--output", json.to_str().expect("utf-8 path")]),
        MANY_SNAPSHOT_TIMEOUT,
    );
    // For the reader of the log; how fast it is, is the bench's business.
    println!(
        "many-waiters: snapshot of {MANY_THREADS} threads took {:?} wall, {:?} user, {:?} sys, \
         max RSS {} KiB",
        out.elapsed, usage.user, usage.system, usage.max_rss_kib
    );
    assert_success("tracer snapshot", &out);
    assert!(!out.stdout.trim().is_empty(), "tracer snapshot printed nothing");

    let profile = read_profile(&json);
    let want = MANY_THREADS as u64;
    let at_site = |s: &ProfileStack| s.kind == WaitKind::Futex && has_function(s, "wait_for_work");
    // The tracer ran to completion after `ready`, so every waiter is at least this old.
    let since_ready = ready_at.elapsed().saturating_sub(out.elapsed);
    // Every one of the threads, each once, at its call site.
    assert_aged(&profile, at_site, want, since_ready, "waiters in wait_for_work");
    let counts = &profile.thread_counts;
    assert_eq!(counts.blocked_in_waits, want, "threads counted as blocked in waits: {counts:?}");
    assert_eq!(
        (counts.unreadable, counts.exited_while_read, counts.woke_while_read),
        (0, 0, 0),
        "threads lost while reading: {counts:?}"
    );
}
