//! Real-kernel tests of `tracer snapshot` on Go programs: goroutines read from the
//! process's memory, checked against the program's own `runtime/pprof` goroutine profile
//! (served on a loopback port). The programs are built with Debian's `golang-go`. They need
//! root (to read another process's memory) and run one at a time (`--test-threads=1`).

use std::time::{Duration, Instant};

use tracer_tests::{
    GO_GOROUTINES_SOURCE, GoroutineGroup, TempDir, assert_svg, build_go, goroutines_at,
    parse_goroutine_table, pprof_goroutines, read_folded, start_go_goroutines, tracer_snapshot,
};

/// Receivers in the channel test: enough that an off-by-a-few count shows, few enough to
/// start instantly.
const RECEIVERS: usize = 1_000;
/// Senders piled up behind the stalled writer.
const SENDERS: usize = 500;
/// The scale the issue asks about.
const MANY_GOROUTINES: usize = 100_000;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the program's own profile may take to show every goroutine parked.
const ORACLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls the program's own profile until `function` has `expected` goroutines.
fn wait_for_oracle(port: u16, function: &str, expected: u64) -> Vec<GoroutineGroup> {
    let deadline = Instant::now() + ORACLE_TIMEOUT;
    loop {
        let groups = pprof_goroutines(port);
        let count = goroutines_at(&groups, function);
        if count == expected {
            return groups;
        }
        assert!(
            Instant::now() < deadline,
            "the program's own profile shows {count} goroutines at {function}, expected {expected}: {groups:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The one group whose headline is `function`, with its count and wait reason.
fn group<'a>(groups: &'a [GoroutineGroup], function: &str, stdout: &str) -> &'a GoroutineGroup {
    let matching: Vec<&GoroutineGroup> = groups
        .iter()
        .filter(|group| group.headline == function)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one group headed {function} expected in:\n{stdout}"
    );
    matching[0]
}

fn snapshot(pid: u32, args: &[&str]) -> (Vec<GoroutineGroup>, String) {
    let out = tracer_snapshot(pid, args, SNAPSHOT_TIMEOUT);
    assert!(
        out.status.success(),
        "tracer snapshot failed ({}): {}",
        out.status,
        out.stderr
    );
    (parse_goroutine_table(&out.stdout), out.stdout)
}

#[test]
fn goroutines_receiving_on_a_channel_match_pprof() {
    let dir = TempDir::new("go-recv");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, port) = start_go_goroutines(&bin, "recv", RECEIVERS, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.receiver", RECEIVERS as u64);

    let folded = dir.join("recv.folded");
    let svg = dir.join("recv.svg");
    let folded_arg = folded.to_str().expect("utf-8 path");
    let svg_arg = svg.to_str().expect("utf-8 path");
    let (groups, stdout) = snapshot(
        workload.pid(),
        &["--output", folded_arg, "--output", svg_arg],
    );
    println!("{stdout}");
    let receivers = group(&groups, "main.receiver", &stdout);
    assert_eq!(receivers.count, RECEIVERS as u64, "{stdout}");
    assert_eq!(receivers.reason, "chan receive", "{stdout}");
    assert_eq!(
        &receivers.functions[..3],
        ["runtime.gopark", "runtime.chanrecv", "runtime.chanrecv1"],
        "{stdout}"
    );
    // Still what the program itself says after the snapshot.
    wait_for_oracle(port, "main.receiver", RECEIVERS as u64);

    let stacks = read_folded(&folded);
    let at_receiver: Vec<_> = stacks
        .iter()
        .filter(|stack| stack.has_function("main.receiver"))
        .collect();
    assert_eq!(at_receiver.len(), 1, "{stacks:#?}");
    assert_eq!(
        at_receiver[0].frames.last().map(String::as_str),
        Some("[chan receive]")
    );
    assert_eq!(
        at_receiver[0].micros, RECEIVERS as u64,
        "the folded weight is goroutines"
    );
    assert_svg(&svg);
}

/// The pile-up of the story: senders blocked on a full channel behind one writer
/// blocked on a TCP peer that stopped reading.
fn check_pileup(stripped: bool) {
    let dir = TempDir::new(if stripped {
        "go-pileup-stripped"
    } else {
        "go-pileup"
    });
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", stripped);
    let (workload, port) = start_go_goroutines(&bin, "pileup", SENDERS, STARTUP_TIMEOUT);
    let oracle = wait_for_oracle(port, "main.sendStat", SENDERS as u64);
    assert_eq!(
        goroutines_at(&oracle, "main.writeToBackend"),
        1,
        "{oracle:#?}"
    );

    let (groups, stdout) = snapshot(workload.pid(), &[]);
    println!("{stdout}");
    let senders = group(&groups, "main.sendStat", &stdout);
    assert_eq!(senders.count, SENDERS as u64, "{stdout}");
    assert_eq!(senders.reason, "chan send", "{stdout}");
    let writer = group(&groups, "main.writeToBackend", &stdout);
    assert_eq!(writer.count, 1, "{stdout}");
    assert_eq!(writer.reason, "IO wait", "{stdout}");
    assert!(
        writer
            .functions
            .iter()
            .any(|name| name == "net.(*conn).Write"),
        "{stdout}"
    );
    assert_eq!(
        goroutines_at(&pprof_goroutines(port), "main.sendStat"),
        SENDERS as u64
    );
    // Most first: the pile-up heads the table.
    assert_eq!(groups[0].headline, "main.sendStat", "{stdout}");
}

#[test]
fn pileup_behind_a_stalled_writer() {
    check_pileup(false);
}

#[test]
fn pileup_in_a_stripped_binary_has_the_same_names() {
    check_pileup(true);
}

/// The scale: prints the time (no assertion on it; see the note).
#[test]
fn snapshot_of_a_hundred_thousand_goroutines() {
    let dir = TempDir::new("go-many");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, port) = start_go_goroutines(&bin, "recv", MANY_GOROUTINES, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.receiver", MANY_GOROUTINES as u64);
    let started = Instant::now();
    let (groups, stdout) = snapshot(workload.pid(), &[]);
    let elapsed = started.elapsed();
    let summary = stdout.lines().next().unwrap_or_default();
    println!("{summary}\ntracer snapshot of {MANY_GOROUTINES} goroutines: {elapsed:?} wall clock");
    assert_eq!(
        group(&groups, "main.receiver", &stdout).count,
        MANY_GOROUTINES as u64,
        "{summary}"
    );
}
