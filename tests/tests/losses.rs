//! Every loss is counted and reported: each test forces one (ring buffers too small for a
//! single record, callers beyond the stack copy, a stack pointer in an unreadable page,
//! code no symbol covers, a socket closed before it is resolved, a waker whose wait's
//! record was lost) on a real workload and asserts the report's `lost:` lines count it.
//! (The in-flight entries live in task storage, which has no capacity to exhaust; only an
//! allocation failure in the kernel counts as "in-flight map full".) Real kernel, run as
//! root, one test at a time (`--test-threads=1`).

use std::{process::Command, time::Duration};

use tracer_tests::{
    C_LOSSES_SOURCE, TempDir, build_c, read_folded, start_workload, tracer_record,
};

/// Threads of the deep-stack workload; each ends a 5 ms wait about 200 times a second.
const THREADS: &str = "4";
/// Long enough for hundreds of long waits.
const RECORD: &str = "1s";
/// Generous bound so a hang fails the test instead of blocking the suite.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The smallest ring buffer the kernel accepts (one page): a wait record (16 KiB of stack
/// copy) never fits, so every long wait is lost to "ring buffer full".
const TINY_RING_BUFFER: &str = "4096";

fn deep_stack() -> tracer_tests::ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deep-stack"));
    cmd.args(["--threads", THREADS, "--seconds", "30"]);
    start_workload("deep-stack", cmd)
}

/// The number before `what` in the report's `lost:` paragraph (the line and its indented
/// continuation lines).
fn lost(stdout: &str, what: &str) -> u64 {
    let mut lines = stdout.lines().skip_while(|line| !line.starts_with("lost: "));
    let first = lines.next().unwrap_or_else(|| panic!("no lost: line in\n{stdout}"));
    let paragraph: Vec<&str> = std::iter::once(first)
        .chain(lines.take_while(|line| line.starts_with(' ')))
        .map(str::trim)
        .collect();
    let paragraph = paragraph.join(" ");
    paragraph
        .trim_start_matches("lost: ")
        .split(',')
        .find_map(|item| item.trim().strip_suffix(what)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{what}` count in {paragraph:?}"))
}

/// The `lost:` count of `what`, which must be above zero: the loss a test forced.
fn assert_counted(stdout: &str, what: &str) -> u64 {
    let count = lost(stdout, what);
    println!("{what}: {count}");
    assert!(count > 0, "nothing counted as {what}:\n{stdout}");
    count
}

/// `tracer record` of `pid` for `RECORD` with `extra` flags; its stdout.
fn record(pid: u32, extra: &[&str]) -> String {
    let mut args = vec!["--duration", RECORD];
    args.extend_from_slice(extra);
    let out = tracer_record(pid, &args, TIMEOUT);
    assert!(out.status.success(), "tracer failed: {}", out.stderr);
    out.stdout
}

/// `tracer record` of `pid` for `RECORD` with a folded output in `dir`: its stdout and the
/// folded stacks.
fn record_folded(pid: u32, dir: &TempDir) -> (String, Vec<tracer_tests::FoldedStack>) {
    let folded = dir.join("waits.folded");
    let stdout = record(pid, &["--output", &folded.to_string_lossy()]);
    (stdout, read_folded(&folded))
}

/// The number before `what` in the report's `seen:` line (`seen: N waits, N long, N short`).
fn seen(stdout: &str, what: &str) -> u64 {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("seen: "))
        .unwrap_or_else(|| panic!("no seen: line in\n{stdout}"));
    line.split(',')
        .find_map(|item| item.trim().strip_suffix(what)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{what}` count in {line:?}"))
}

#[test]
fn a_full_ring_buffer_is_counted() {
    let workload = deep_stack();
    let stdout = record(workload.pid(), &["--ring-buffer-bytes", TINY_RING_BUFFER]);
    assert_counted(&stdout, "ring buffer full");
}

#[test]
fn callers_beyond_the_stack_copy_are_counted_as_truncated_unwinds() {
    let workload = deep_stack();
    let dir = TempDir::new("losses");
    let (stdout, stacks) = record_folded(workload.pid(), &dir);
    assert_counted(&stdout, "unwinds truncated");
    // The truncated stacks are in the report, marked, and reach the big frame but not its
    // caller (64 KiB above, beyond the 16 KiB copy).
    let marked: Vec<_> = stacks
        .iter()
        .filter(|stack| stack.frames.get(1).is_some_and(|frame| frame == "[truncated]"))
        .collect();
    assert!(!marked.is_empty(), "no [truncated] stack in {stacks:#?}");
    assert!(
        marked.iter().any(|stack| stack.has_function("big_frame")),
        "no truncated stack reaches big_frame: {marked:#?}"
    );
    assert!(
        !marked.iter().any(|stack| stack.has_function("below_big_frame")),
        "a stack reached below_big_frame, beyond the copy: {marked:#?}"
    );
}

/// The C workload of waits the tracer cannot fully see (tests/workloads/c_losses.c),
/// built into `dir` and started in `mode`.
fn c_losses(dir: &TempDir, mode: &str) -> tracer_tests::ChildGuard {
    let binary = build_c(dir.path(), C_LOSSES_SOURCE, "c-losses");
    let mut cmd = Command::new(binary);
    cmd.args([mode, "30"]);
    start_workload("c-losses", cmd)
}

#[test]
fn a_full_wake_ring_buffer_is_counted() {
    let dir = TempDir::new("losses");
    let workload = c_losses(&dir, "wakes");
    let stdout = record(workload.pid(), &["--wake-ring-buffer-bytes", TINY_RING_BUFFER]);
    assert_counted(&stdout, "wakers lost");
    // The waits themselves still arrive (their ring buffer is the default one).
    assert!(seen(&stdout, "long") > 0, "no long waits reported:\n{stdout}");
}

#[test]
fn a_stack_that_cannot_be_read_is_counted() {
    let dir = TempDir::new("losses");
    let workload = c_losses(&dir, "bad-stack");
    assert_counted(&record(workload.pid(), &[]), "stacks unreadable");
}

#[test]
fn code_that_no_symbol_covers_is_counted() {
    let dir = TempDir::new("losses");
    let workload = c_losses(&dir, "jit");
    let (stdout, stacks) = record_folded(workload.pid(), &dir);
    assert_counted(&stdout, "unknown symbols");
    // The waits are still reported, their innermost frame (next to the kind) unknown.
    let leaf_unknown = |stack: &&tracer_tests::FoldedStack| {
        let frames = &stack.frames;
        frames.len() >= 2
            && frames[frames.len() - 1].starts_with("[futex")
            && frames[frames.len() - 2] == "[unknown]"
    };
    assert!(stacks.iter().any(|stack| leaf_unknown(&stack)), "no [unknown] leaf in {stacks:#?}");
}

#[test]
fn a_socket_closed_before_it_is_resolved_is_counted() {
    let dir = TempDir::new("losses");
    let workload = c_losses(&dir, "closed-socket");
    assert_counted(&record(workload.pid(), &[]), "descriptors unresolved");
}

#[test]
fn a_waker_whose_wait_was_lost_is_counted() {
    // Every long wait's record is lost to the tiny ring buffer, while its waker's record
    // arrives: each waker is left without its wait.
    let dir = TempDir::new("losses");
    let workload = c_losses(&dir, "wakes");
    let stdout = record(workload.pid(), &["--ring-buffer-bytes", TINY_RING_BUFFER]);
    let unmatched = stdout
        .lines()
        .find_map(|line| {
            line.strip_prefix("lost: ")?
                .strip_suffix(" wakers whose wait's record never arrived")?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no unmatched wakers counted:\n{stdout}"));
    println!("wakers unmatched: {unmatched}");
    assert!(unmatched > 0);
    assert!(lost(&stdout, "ring buffer full") > 0, "{stdout}");
}
