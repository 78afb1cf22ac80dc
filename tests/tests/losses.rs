//! Every loss is counted and reported: each test forces one (ring buffers too small for a
//! single record, callers beyond the stack copy, a stack pointer in an unreadable page,
//! code no symbol covers, a socket closed before it is resolved, a waker whose wait's
//! record was lost) on a real workload and asserts the report's `lost:` lines count it.
//! (The in-flight entries live in task storage, which has no capacity to exhaust; only an
//! allocation failure in the kernel counts as "in-flight map full".) Real kernel, run as
//! root, one test at a time (`--test-threads=1`).

use std::{process::Command, time::Duration};

use tracer_tests::{
    C_LOSSES_SOURCE, Profile, ProfileStack, TempDir, WaitKind, build_c, has_function,
    record_profile, start_workload, top_stacks,
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

/// A loss counter the test forced, which must be above zero; prints it.
fn assert_counted(what: &str, count: u64, profile: &Profile) -> u64 {
    println!("{what}: {count}");
    assert!(count > 0, "nothing counted as {what}: {:?}", profile.counts);
    count
}

/// `tracer record` of `pid` for `RECORD` with `extra` flags, read back from its JSON profile.
fn record(pid: u32, extra: &[&str]) -> Profile {
    let mut args = vec!["--duration", RECORD];
    args.extend_from_slice(extra);
    let dir = TempDir::new("losses-record");
    record_profile(pid, &args, &dir, TIMEOUT).profile
}

#[test]
fn a_full_ring_buffer_is_counted() {
    let workload = deep_stack();
    let profile = record(workload.pid(), &["--ring-buffer-bytes", TINY_RING_BUFFER]);
    assert_counted("ring buffer full", profile.counts.ring_buffer_full, &profile);
}

#[test]
fn callers_beyond_the_stack_copy_are_counted_as_truncated_unwinds() {
    let workload = deep_stack();
    let profile = record(workload.pid(), &[]);
    assert_counted("unwinds truncated", profile.counts.unwind_truncated, &profile);
    // The truncated stacks are in the profile, marked, and reach the big frame but not its
    // caller (64 KiB above, beyond the 16 KiB copy).
    let truncated = |stack: &ProfileStack| stack.truncated;
    // The count is of the waits shown cut short (each wait, or each thread still in one
    // at the end), not of other walks (wakers', copies walked to size later copies).
    let shown: u64 = (profile.stacks.iter().filter(|s| truncated(s)))
        .map(|s| s.stats.waits.max(s.stats.threads.len() as u64))
        .sum();
    assert!(
        profile.counts.unwind_truncated <= shown,
        "{} unwinds truncated, {shown} waits shown cut short",
        profile.counts.unwind_truncated
    );
    assert!(
        profile.stacks.iter().any(truncated),
        "no truncated stack in:\n{}",
        top_stacks(&profile, |_| true, 20)
    );
    assert!(
        profile.stacks.iter().any(|s| truncated(s) && has_function(s, "big_frame")),
        "no truncated stack reaches big_frame:\n{}",
        top_stacks(&profile, truncated, 20)
    );
    let beyond = |s: &ProfileStack| truncated(s) && has_function(s, "below_big_frame");
    assert!(
        !profile.stacks.iter().any(beyond),
        "a truncated stack reached below_big_frame, beyond the copy:\n{}",
        top_stacks(&profile, beyond, 20)
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
    let profile = record(workload.pid(), &["--wake-ring-buffer-bytes", TINY_RING_BUFFER]);
    assert_counted("wakers lost", profile.counts.wake_ring_buffer_full, &profile);
    // The waits themselves still arrive (their ring buffer is the default one).
    assert!(profile.counts.long_waits > 0, "no long waits counted: {:?}", profile.counts);
    assert!(
        profile.stacks.iter().any(|s| s.kind == WaitKind::Futex && s.stats.waits > 0),
        "no futex wait in the profile:\n{}",
        top_stacks(&profile, |_| true, 20)
    );
}

#[test]
fn a_stack_that_cannot_be_read_is_counted() {
    let dir = TempDir::new("losses");
    let workload = c_losses(&dir, "bad-stack");
    let profile = record(workload.pid(), &[]);
    assert_counted("stacks unreadable", profile.counts.stack_unreadable, &profile);
}

#[test]
fn code_that_no_symbol_covers_is_counted() {
    let dir = TempDir::new("losses");
    let workload = c_losses(&dir, "jit");
    let profile = record(workload.pid(), &[]);
    assert_counted("unknown symbols", profile.counts.unknown_symbols, &profile);
    // The waits are still reported, their innermost frame unknown.
    let leaf_unknown = |stack: &ProfileStack| {
        stack.kind == WaitKind::Futex
            && stack.frames.last().is_some_and(|frame| frame.name == "[unknown]")
    };
    assert!(
        profile.stacks.iter().any(leaf_unknown),
        "no futex wait with an unknown leaf in:\n{}",
        top_stacks(&profile, |_| true, 20)
    );
}

#[test]
fn a_socket_closed_before_it_is_resolved_is_counted() {
    let dir = TempDir::new("losses");
    let workload = c_losses(&dir, "closed-socket");
    let profile = record(workload.pid(), &[]);
    assert_counted("descriptors unresolved", profile.counts.unresolved_descriptors, &profile);
}

#[test]
fn a_waker_whose_wait_was_lost_is_counted() {
    // Every long wait's record is lost to the tiny ring buffer, while its waker's record
    // arrives: each waker is left without its wait.
    let dir = TempDir::new("losses");
    let workload = c_losses(&dir, "wakes");
    let profile = record(workload.pid(), &["--ring-buffer-bytes", TINY_RING_BUFFER]);
    assert_counted("wakers unmatched", profile.counts.wakers_unmatched, &profile);
    assert_counted("ring buffer full", profile.counts.ring_buffer_full, &profile);
}
