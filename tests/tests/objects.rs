//! Real-kernel tests of what each wait waits on: the wait-kind frame names the remote endpoint of
//! a socket wait (`[send 127.0.0.1:PORT]`, `[recv ...]`, `[connect ...]`) and the lock of a futex
//! wait (`[futex rust_objects::STATS_QUEUE]`, `[futex stats_lock]`), and stdout adds the tables
//! BY ENDPOINT (with the socket state that explains the wait) and BY LOCK. They need root and
//! share the kernel, so they run one at a time (`--test-threads=1`); none skips.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tracer_tests::{
    C_OBJECTS_SOURCE, ChildGuard, EndpointRow, FoldedStack, FullListener, LockRow, RunOutput,
    TempDir, build_c, parse_endpoint_table, parse_lock_table, read_folded, start_dead_backend,
    start_rust_stuck, start_stuck, top_stacks, total_threads, tracer_record, tracer_snapshot,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");
const RUST_STUCK: &str = env!("CARGO_BIN_EXE_rust-stuck");
const RUST_OBJECTS: &str = env!("CARGO_BIN_EXE_rust-objects");

/// Every workload and backend here listens or connects on loopback.
const LOOPBACK: &str = "127.0.0.1";
/// Handler threads behind the one mutex: enough that a thread missed, counted twice or put on
/// another lock shows, few enough to start in milliseconds.
const HANDLERS: usize = 16;
/// The workloads and backends outlive every test; their guards kill them when the test ends.
const WORKLOAD_SECONDS: f64 = 120.0;
/// Reading a few threads' stacks, resolving their sockets and symbolizing takes well under a
/// second; only a hang should reach this.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);
/// Long enough for the tracer to see the send wait still in flight at the end.
const RECORD_DURATION: &str = "2s";
/// Recording plus attaching, unwinding and symbolizing, with a wide margin; only a hang
/// should reach it.
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);
/// The backlog of the listener that the connect test fills: with 0 the accept queue holds one
/// connection, and every SYN after it is dropped.
const FULL_BACKLOG: libc::c_int = 0;

/// Where each workload's thread waits: the function the tests look for on its stack.
const RUST_STUCK_SEND_SITE: &str = "write_to_backend";
const RECV_SITE: &str = "wait_for_reply";
const CONNECT_SITE: &str = "connect_to_backend";
const LOCK_SITE: &str = "record_stat";
/// The static each mutex workload's handlers queue behind.
const RUST_LOCK: &str = "STATS_QUEUE";
const C_LOCK: &str = "stats_lock";

/// The phrases of the BY ENDPOINT state column that explain each wait.
const SEND_STATE: &str = "send buffer full";
const RECV_STATE: &str = "waiting for data";
const CONNECT_STATE: &str = "SYN";

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

fn all_stacks(stacks: &[FoldedStack]) -> String {
    top_stacks(stacks, |_| true, 30)
}

/// `tracer snapshot` of `workload` into a folded file: its stdout and the stacks.
fn snapshot(label: &str, workload: &ChildGuard) -> (String, Vec<FoldedStack>) {
    let dir = TempDir::new(label);
    let folded = dir.join("now.folded");
    let out = tracer_snapshot(
        workload.pid(),
        &["--output", path_arg(&folded)],
        SNAPSHOT_TIMEOUT,
    );
    println!(
        "{label}: snapshot of {} took {:?}:\n{}",
        workload.name(),
        out.elapsed,
        out.stdout
    );
    assert_success("tracer snapshot", &out);
    let stacks = read_folded(&folded);
    assert!(
        !stacks.is_empty(),
        "{} is empty; stdout:\n{}",
        folded.display(),
        out.stdout
    );
    (out.stdout, stacks)
}

/// Asserts that exactly one thread waits in `kind` at `site` (and only one in `kind` at all),
/// and that its wait-kind frame is exactly `[KIND ENDPOINT]`.
fn assert_one_socket_wait(stacks: &[FoldedStack], kind: &str, site: &str, endpoint: &str) {
    let bracketed = format!("[{kind}]");
    let is_kind = |s: &FoldedStack| s.kind() == bracketed;
    assert_eq!(
        total_threads(stacks, is_kind),
        1,
        "threads on {bracketed} stacks, want the one in {site}; all stacks:\n{}",
        all_stacks(stacks)
    );
    let want_frame = format!("[{kind} {endpoint}]");
    let named = |s: &FoldedStack| {
        s.frames.last().is_some_and(|frame| *frame == want_frame) && s.has_function(site)
    };
    assert_eq!(
        total_threads(stacks, named),
        1,
        "no thread on a stack with {site} ending in {want_frame}; {bracketed} stacks \
         (objects {:?}):\n{}",
        stacks
            .iter()
            .filter(|s| is_kind(s))
            .map(FoldedStack::object)
            .collect::<Vec<_>>(),
        top_stacks(stacks, is_kind, 10)
    );
}

/// The BY ENDPOINT row of `endpoint`, which must be the only one naming it.
fn endpoint_row(stdout: &str, endpoint: &str) -> EndpointRow {
    let rows = parse_endpoint_table(stdout);
    let mut matching = rows.iter().filter(|row| row.endpoint == endpoint);
    let row = matching
        .next()
        .unwrap_or_else(|| panic!("no BY ENDPOINT row for {endpoint}; stdout:\n{stdout}"))
        .clone();
    assert!(
        matching.next().is_none(),
        "more than one BY ENDPOINT row for {endpoint}; stdout:\n{stdout}"
    );
    row
}

/// Asserts that the BY ENDPOINT row of `endpoint` has wait kind `kind`, `now` threads blocked
/// now, and a state containing `state`.
fn assert_endpoint_row(stdout: &str, endpoint: &str, kind: &str, now: u64, state: &str) {
    let row = endpoint_row(stdout, endpoint);
    assert_eq!(
        row.kind, kind,
        "BY ENDPOINT row {:?}: kind, stdout:\n{stdout}",
        row.line
    );
    assert_eq!(
        row.now, now,
        "BY ENDPOINT row {:?}: threads blocked now, stdout:\n{stdout}",
        row.line
    );
    assert!(
        row.state.contains(state),
        "BY ENDPOINT row {:?}: state {:?} does not say {state:?}; stdout:\n{stdout}",
        row.line,
        row.state
    );
}

fn endpoint(port: u16) -> String {
    format!("{LOOPBACK}:{port}")
}

#[test]
fn send_wait_names_the_backend_and_its_full_send_buffer() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, HANDLERS, WORKLOAD_SECONDS);
    let backend = endpoint(stuck.backend_port);
    let (stdout, stacks) = snapshot("objects-send", &stuck.workload);
    assert_one_socket_wait(&stacks, "send", RUST_STUCK_SEND_SITE, &backend);
    assert_endpoint_row(&stdout, &backend, "send", 1, SEND_STATE);
}

#[test]
fn record_names_the_send_still_blocked_at_the_end() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, HANDLERS, WORKLOAD_SECONDS);
    let backend = endpoint(stuck.backend_port);
    let dir = TempDir::new("objects-record-send");
    let folded = dir.join("waits.folded");
    let out = tracer_record(
        stuck.workload.pid(),
        &["--duration", RECORD_DURATION, "--output", path_arg(&folded)],
        RECORD_TIMEOUT,
    );
    println!(
        "objects-record-send: tracer took {:?}:\n{}",
        out.elapsed, out.stdout
    );
    assert_success("tracer record", &out);
    let stacks = read_folded(&folded);
    let want_frame = format!("[send {backend} still-blocked]");
    let is_still_send = |s: &FoldedStack| {
        s.frames.last().is_some_and(|frame| *frame == want_frame)
            && s.has_function(RUST_STUCK_SEND_SITE)
    };
    assert!(
        stacks.iter().any(is_still_send),
        "no stack with {RUST_STUCK_SEND_SITE} ending in {want_frame}; all stacks:\n{}",
        all_stacks(&stacks)
    );
    // The sender never wakes, so no send to the backend may be reported as ended.
    let ended_send = |s: &FoldedStack| s.kind() == "[send]";
    assert!(
        !stacks.iter().any(ended_send),
        "send waits that never ended are reported as completed:\n{}",
        top_stacks(&stacks, ended_send, 10)
    );
    assert_endpoint_row(&out.stdout, &backend, "send", 1, SEND_STATE);
}

#[test]
fn recv_wait_names_the_backend_that_never_replies() {
    let (_backend, port) = start_dead_backend(SLOW_BACKEND, WORKLOAD_SECONDS);
    let backend = endpoint(port);
    let mut cmd = Command::new(RUST_OBJECTS);
    cmd.args(["recv", "--backend", &backend])
        .arg("--seconds")
        .arg(WORKLOAD_SECONDS.to_string());
    let workload = start_stuck("rust-objects recv", cmd);
    let (stdout, stacks) = snapshot("objects-recv", &workload);
    assert_one_socket_wait(&stacks, "recv", RECV_SITE, &backend);
    assert_endpoint_row(&stdout, &backend, "recv", 1, RECV_STATE);
}

#[test]
fn connect_wait_names_the_listener_that_drops_syns() {
    // Declared before the workload, so the workload is killed first.
    let listener = FullListener::new(FULL_BACKLOG);
    println!(
        "objects-connect: {} connection(s) filled the accept queue of {LOOPBACK}:{} \
         (backlog {FULL_BACKLOG})",
        listener.fillers(),
        listener.port
    );
    let target = endpoint(listener.port);
    let mut cmd = Command::new(RUST_OBJECTS);
    cmd.args(["connect", "--target", &target])
        .arg("--seconds")
        .arg(WORKLOAD_SECONDS.to_string());
    let workload = start_stuck("rust-objects connect", cmd);
    let (stdout, stacks) = snapshot("objects-connect", &workload);
    assert_one_socket_wait(&stacks, "connect", CONNECT_SITE, &target);
    assert_endpoint_row(&stdout, &target, "connect", 1, CONNECT_STATE);
}

/// Asserts that exactly `HANDLERS` threads wait in `[futex]` at `LOCK_SITE`, all on one object
/// that `is_lock` accepts (`describe` says what it should be), that no other thread waits on
/// it, and that the BY LOCK row of that object counts them all as blocked now.
fn assert_one_lock(
    stdout: &str,
    stacks: &[FoldedStack],
    is_lock: impl Fn(&str) -> bool,
    describe: &str,
) {
    let want = HANDLERS as u64;
    let is_handler_wait = |s: &FoldedStack| s.kind() == "[futex]" && s.has_function(LOCK_SITE);
    assert_eq!(
        total_threads(stacks, is_handler_wait),
        want,
        "threads on [futex] stacks with {LOCK_SITE}; all stacks:\n{}",
        all_stacks(stacks)
    );
    let mut objects: Vec<Option<&str>> = stacks
        .iter()
        .filter(|s| is_handler_wait(s))
        .map(FoldedStack::object)
        .collect();
    objects.sort_unstable();
    objects.dedup();
    let [Some(lock)] = objects.as_slice() else {
        panic!(
            "the {want} handlers in {LOCK_SITE} wait on {objects:?}, want one lock, {describe}; \
             stacks:\n{}",
            top_stacks(stacks, is_handler_wait, 10)
        );
    };
    assert!(
        is_lock(lock),
        "the handlers in {LOCK_SITE} wait on {lock:?}, want {describe}; stacks:\n{}",
        top_stacks(stacks, is_handler_wait, 10)
    );
    // The holder waits too (Rust: parked on its own parker), but not on the lock it holds.
    let on_lock = |s: &FoldedStack| s.kind() == "[futex]" && s.object() == Some(*lock);
    assert_eq!(
        total_threads(stacks, on_lock),
        want,
        "threads on [futex {lock}] stacks in all, want only the handlers:\n{}",
        top_stacks(stacks, on_lock, 10)
    );

    let rows = parse_lock_table(stdout);
    let matching: Vec<&LockRow> = rows.iter().filter(|row| row.lock == *lock).collect();
    let [row] = matching.as_slice() else {
        panic!(
            "{} BY LOCK rows for {lock}, want one; stdout:\n{stdout}",
            matching.len()
        );
    };
    assert_eq!(
        row.now, want,
        "BY LOCK row {:?}: threads blocked now; stdout:\n{stdout}",
        row.line
    );
}

#[test]
fn rust_handlers_behind_one_static_mutex_show_one_lock_by_its_symbol() {
    let mut cmd = Command::new(RUST_OBJECTS);
    cmd.args(["mutex", "--handlers", &HANDLERS.to_string()])
        .arg("--seconds")
        .arg(WORKLOAD_SECONDS.to_string());
    let workload = start_stuck("rust-objects mutex", cmd);
    let (stdout, stacks) = snapshot("objects-rust-mutex", &workload);
    // Demangled without its hash: `rust_objects::STATS_QUEUE`.
    assert_one_lock(
        &stdout,
        &stacks,
        |lock| lock == RUST_LOCK || lock.ends_with(&format!("::{RUST_LOCK}")),
        &format!("a path ending in {RUST_LOCK}"),
    );
}

#[test]
fn c_handlers_behind_one_static_mutex_show_one_lock_by_its_symbol() {
    let build = TempDir::new("c-objects-build");
    let bin = build_c(build.path(), C_OBJECTS_SOURCE, "c-objects");
    let mut cmd = Command::new(&bin);
    cmd.arg(HANDLERS.to_string())
        .arg(WORKLOAD_SECONDS.to_string());
    let workload = start_stuck("c-objects", cmd);
    let (stdout, stacks) = snapshot("objects-c-mutex", &workload);
    assert_one_lock(&stdout, &stacks, |lock| lock == C_LOCK, C_LOCK);
}
