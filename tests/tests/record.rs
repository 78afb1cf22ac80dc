//! Real-kernel tests of `tracer record` on the pile-ups it was built for. They need root and
//! share the kernel, so they run one at a time (`--test-threads=1`); none skips.

use std::time::Duration;

use tracer_tests::{
    FoldedStack, Pileup, TempDir, assert_svg, build_c_pileup, read_folded, start_c_pileup,
    start_rust_pileup, top_stacks, total_micros, tracer_record,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");
const RUST_PILEUP: &str = env!("CARGO_BIN_EXE_rust-pileup");

/// Enough handlers that the pile-up dwarfs everything else in the process, as in the story (the
/// machine has 2 cores; they are blocked nearly all the time, so 32 cost little CPU).
const HANDLERS: usize = 32;
/// Long enough for thousands of handler waits and for the reporter to block in `send` many times.
const RECORD_DURATION: &str = "3s";
/// The workload outlives the recording (the tracer attaches after it starts and may take a
/// while to load its probes); its guard kills it when the test ends.
const WORKLOAD_SECONDS: f64 = 60.0;
/// Recording plus attaching, unwinding and symbolizing, with a wide margin for a loaded CI
/// machine; only a hang should reach it.
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);
/// The acceptance bar: the share of the handlers' futex time that must sit on stacks holding
/// both the handler function and the function that enqueues into the channel.
const MIN_ATTRIBUTED_SHARE: f64 = 0.90;

/// Records `pileup` and checks the acceptance: futex time attributed to `handler` +
/// `enqueue_fn`, and `[send]` time under `send_fn`.
fn record_and_check(label: &str, pileup: &Pileup, enqueue_fn: &str, send_fn: &str) {
    let dir = TempDir::new(label);
    let folded = dir.join("waits.folded");
    let svg = dir.join("waits.svg");
    let out = tracer_record(
        pileup.workload.pid(),
        &[
            "--duration",
            RECORD_DURATION,
            "--output",
            folded.to_str().expect("utf-8 temp path"),
            "--output",
            svg.to_str().expect("utf-8 temp path"),
        ],
        RECORD_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "tracer record failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );

    let stacks = read_folded(&folded);
    assert!(
        !stacks.is_empty(),
        "{} is empty; tracer stdout:\n{}",
        folded.display(),
        out.stdout
    );
    let comm = &stacks[0].frames[0];
    assert!(
        stacks.iter().all(|s| &s.frames[0] == comm),
        "stacks start with different process names"
    );

    let is_futex = |s: &FoldedStack| s.kind() == "[futex]";
    let is_attributed =
        |s: &FoldedStack| is_futex(s) && s.has_function("handler") && s.has_function(enqueue_fn);
    let futex_total = total_micros(&stacks, is_futex);
    let attributed = total_micros(&stacks, is_attributed);
    let is_send = |s: &FoldedStack| s.kind() == "[send]";
    let is_reporter_send = |s: &FoldedStack| is_send(s) && s.has_function(send_fn);
    let send_total = total_micros(&stacks, is_send);
    let reporter_send = total_micros(&stacks, is_reporter_send);

    let share = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    };
    println!(
        "{label}: futex {attributed}/{futex_total} us = {:.2}% on handler;{enqueue_fn}; \
         send {reporter_send}/{send_total} us = {:.2}% under {send_fn}",
        100.0 * share(attributed, futex_total),
        100.0 * share(reporter_send, send_total),
    );

    assert!(
        futex_total > 0,
        "no [futex] time recorded; stacks:\n{}",
        top_stacks(&stacks, |_| true, 20)
    );
    assert!(
        share(attributed, futex_total) >= MIN_ATTRIBUTED_SHARE,
        "only {:.2}% of {futex_total} futex us on stacks with handler and {enqueue_fn} (need {:.0}%); \
         heaviest futex stacks without them:\n{}",
        100.0 * share(attributed, futex_total),
        100.0 * MIN_ATTRIBUTED_SHARE,
        top_stacks(&stacks, |s| is_futex(s) && !is_attributed(s), 10)
    );
    assert!(
        reporter_send > 0,
        "no [send] stack contains {send_fn}; [send] stacks:\n{}",
        top_stacks(&stacks, is_send, 10)
    );
    assert_svg(&svg);
}

#[test]
fn rust_pileup_attributes_futex_and_send_waits() {
    let pileup = start_rust_pileup(SLOW_BACKEND, RUST_PILEUP, HANDLERS, WORKLOAD_SECONDS);
    record_and_check("rust-pileup", &pileup, "send_stat", "write_to_backend");
}

#[test]
fn c_pileup_attributes_futex_and_send_waits() {
    let build = TempDir::new("c-build");
    let bin = build_c_pileup(build.path());
    let pileup = start_c_pileup(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    record_and_check("c-pileup", &pileup, "enqueue_stat", "send_to_backend");
}

/// The target lives this long: long enough for the tracer to load and attach its probes first,
/// short against the recording below so that it exits mid-recording.
const EXITING_WORKLOAD_SECONDS: f64 = 2.0;
/// Far longer than the target lives; the tracer must stop when the target exits, not here.
const EXIT_RECORD_DURATION: &str = "10s";
/// Shorter than the requested recording, so a tracer that waits out --duration fails the test.
const EXIT_TIMEOUT: Duration = Duration::from_secs(8);
/// Generous bound on waiting for the workload itself to exit after its own deadline.
const REAP_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn target_exit_ends_recording_and_writes_reports() {
    let Pileup { workload, backend } = start_rust_pileup(
        SLOW_BACKEND,
        RUST_PILEUP,
        HANDLERS,
        EXITING_WORKLOAD_SECONDS,
    );
    let pid = workload.pid();
    // Reap it the moment it exits, as its real parent would, so it does not linger as a zombie.
    let reaper = workload.reap_in_background(REAP_TIMEOUT);

    let dir = TempDir::new("exit");
    let folded = dir.join("waits.folded");
    let out = tracer_record(
        pid,
        &[
            "--duration",
            EXIT_RECORD_DURATION,
            "--output",
            folded.to_str().expect("utf-8 temp path"),
        ],
        EXIT_TIMEOUT,
    );
    println!(
        "tracer returned after {:?}; the target exits {EXITING_WORKLOAD_SECONDS}s after it started",
        out.elapsed
    );
    assert!(
        out.status.success(),
        "tracer record failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("exited") || out.stderr.contains("exited"),
        "no line says the process exited:\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(folded.is_file(), "{} was not written", folded.display());
    let stacks = read_folded(&folded);
    assert!(
        !stacks.is_empty(),
        "{} is empty: what was recorded before the exit is lost",
        folded.display()
    );

    let status = reaper
        .join()
        .unwrap_or_else(|_| panic!("reaping rust-pileup (pid {pid}) failed"));
    assert!(status.success(), "rust-pileup exited with {status}");
    drop(backend);
}
