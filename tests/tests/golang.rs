//! Real-kernel tests of `tracer snapshot` and `tracer record` on Go programs: goroutines
//! read from the process's memory, checked against the program's own `runtime/pprof`
//! goroutine profile and what it says about itself (served on a loopback port). The programs are built with Debian's `golang-go`. They need
//! root (to read another process's memory) and run one at a time (`--test-threads=1`).

use std::time::{Duration, Instant};

use tracer_tests::{
    GO_GOROUTINES_SOURCE, GoroutineGroup, TempDir, assert_svg, build_go, goroutines_at,
    http_get, parse_goroutine_table, pprof_goroutines, read_folded, run_tool,
    start_go_goroutines, tracer_report, tracer_snapshot,
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
/// `tracer report` and `go tool pprof` read a profile of a few groups.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

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
    let json = dir.join("recv.json");
    let pprof = dir.join("recv.pb.gz");
    let utf8 = |path: &std::path::Path| path.to_str().expect("utf-8 path").to_owned();
    let (folded_arg, svg_arg, json_arg, pprof_arg) =
        (utf8(&folded), utf8(&svg), utf8(&json), utf8(&pprof));
    let (groups, stdout) = snapshot(
        workload.pid(),
        &[
            "--output", &folded_arg, "--output", &svg_arg, "--output", &json_arg, "--output",
            &pprof_arg,
        ],
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

    // The saved profiles read back: JSON into the same folded stacks, pprof by Go's tool.
    let refolded = dir.join("refolded.folded");
    let out = tracer_report(&[&json_arg, "--output", &utf8(&refolded)], TOOL_TIMEOUT);
    assert!(out.status.success(), "tracer report failed ({}): {}", out.status, out.stderr);
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    assert_eq!(read(&refolded), read(&folded), "the JSON profile reads back unchanged");
    let top = run_tool("go", &["tool", "pprof", "-top", &pprof_arg], TOOL_TIMEOUT).stdout;
    assert!(top.contains("main.receiver"), "go tool pprof -top does not name main.receiver:\n{top}");
}

/// The address (`127.0.0.1:PORT`) of the peer the pile-up workload's writer is stuck
/// writing to, as the workload itself reports it.
fn backend_of(port: u16) -> String {
    let response = http_get(port, "/backend", TOOL_TIMEOUT);
    assert_eq!(response.status, 200, "/backend: {}", response.text());
    let backend = response.text();
    assert!(backend.starts_with("127.0.0.1:"), "/backend: {backend:?}");
    backend
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
    // The writer's socket, found through the netpoller's pollDesc of its descriptor.
    let backend = backend_of(port);
    assert_eq!(writer.reason, format!("IO wait {backend}"), "{stdout}");
    let endpoint_row = stdout
        .lines()
        .find(|line| line.starts_with(&format!("{backend} ")))
        .unwrap_or_else(|| panic!("no BY ENDPOINT row for {backend}:\n{stdout}"));
    assert!(endpoint_row.contains("send buffer full"), "{stdout}");
    // The HTTP server's accept, a read of its listening socket to the netpoller, is named by
    // the listener's address and accept queue.
    let listener = format!("127.0.0.1:{port}");
    let server = groups
        .iter()
        .find(|group| group.reason == format!("IO wait {listener}"))
        .unwrap_or_else(|| panic!("no goroutine in IO wait on {listener}:\n{stdout}"));
    assert!(server.functions.iter().any(|name| name == "net/http.(*Server).Serve"), "{stdout}");
    let listener_row = stdout
        .lines()
        .find(|line| line.starts_with(&format!("{listener} ")))
        .unwrap_or_else(|| panic!("no BY ENDPOINT row for {listener}:\n{stdout}"));
    assert!(listener_row.contains("accept queue"), "{stdout}");
    assert!(stdout.contains(", 0 unresolved, 0 not on sockets"), "{stdout}");
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

/// A goroutine blocked in a function the compiler inlined (`main.awaitValue` into
/// `main.inlinedReceiver`) shows it as a frame of its own with its own line, as the
/// program's own profile does, in a normal and a stripped build (where the inline tree is
/// found through `runtime.firstmoduledata` instead of the `go.func.*` symbol).
fn check_inlined_frames(stripped: bool) {
    let dir = TempDir::new(if stripped { "go-inlined-stripped" } else { "go-inlined" });
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", stripped);
    let (workload, port) = start_go_goroutines(&bin, "inlined", RECEIVERS, STARTUP_TIMEOUT);
    let oracle = wait_for_oracle(port, "main.awaitValue", RECEIVERS as u64);
    let expected = oracle
        .iter()
        .find(|group| group.functions.iter().any(|name| name == "main.awaitValue"))
        .unwrap_or_else(|| panic!("no main.awaitValue in the program's profile: {oracle:#?}"));
    assert_eq!(
        expected.functions[..2],
        ["main.awaitValue", "main.inlinedReceiver"],
        "the program's own profile: {oracle:#?}"
    );

    let (groups, stdout) = snapshot(workload.pid(), &[]);
    println!("{stdout}");
    let receivers = group(&groups, "main.awaitValue", &stdout);
    assert_eq!(receivers.count, RECEIVERS as u64, "{stdout}");
    assert_eq!(receivers.reason, "chan receive", "{stdout}");
    // pprof's debug=1 profile leaves out the leading runtime frames and the `go` statement's
    // wrapper closure, which tracer keeps.
    let own = receivers
        .functions
        .iter()
        .position(|name| !name.starts_with("runtime."))
        .unwrap_or_else(|| panic!("only runtime frames:\n{stdout}"));
    let shown = &receivers.functions[own..];
    assert!(
        shown.starts_with(&expected.functions),
        "tracer shows {shown:?}, the program's profile {:?}:\n{stdout}",
        expected.functions
    );
    let frame_lines: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("#\tmain.awaitValue\t") || line.starts_with("#\tmain.inlinedReceiver\t"))
        .collect();
    let source = std::fs::read_to_string(GO_GOROUTINES_SOURCE)
        .unwrap_or_else(|e| panic!("read {GO_GOROUTINES_SOURCE}: {e}"));
    let line_of = |text: &str| {
        source
            .lines()
            .position(|line| line.trim() == text)
            .map(|index| index + 1)
            .unwrap_or_else(|| panic!("no line {text:?} in {GO_GOROUTINES_SOURCE}"))
    };
    // Each frame at its own line: the receive in the inlined function, the call in its caller.
    assert_eq!(
        frame_lines,
        [
            format!("#\tmain.awaitValue\t{GO_GOROUTINES_SOURCE}:{}", line_of("return <-ch")),
            format!("#\tmain.inlinedReceiver\t{GO_GOROUTINES_SOURCE}:{}", line_of("awaitValue(ch)")),
        ],
        "{stdout}"
    );
    wait_for_oracle(port, "main.awaitValue", RECEIVERS as u64);
}

#[test]
fn an_inlined_call_is_a_frame_of_its_own() {
    check_inlined_frames(false);
}

#[test]
fn an_inlined_call_is_a_frame_of_its_own_in_a_stripped_binary() {
    check_inlined_frames(true);
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

/// Goroutines in `tracer record`'s test: each waits about `pingPeriod` (10 ms) per value.
const PINGERS: usize = 20;
/// The recording: two hundred waits per pinger.
const RECORD_SECONDS: &str = "2s";
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);
/// Share of the recorded blocked time the pingers' own call site must carry: the rest is
/// the ticker's and the wakes reporter's waits (about 2/22 of the total here).
const PINGER_SHARE: f64 = 0.8;

#[test]
fn record_attributes_goroutine_waits_to_their_call_sites() {
    let dir = TempDir::new("go-record");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, _port) = start_go_goroutines(&bin, "pingpong", PINGERS, STARTUP_TIMEOUT);
    let folded = dir.join("waits.folded");
    let svg = dir.join("waits.svg");
    let out = tracer_tests::tracer_record(
        workload.pid(),
        &[
            "--duration",
            RECORD_SECONDS,
            "--output",
            folded.to_str().expect("utf-8 path"),
            "--output",
            svg.to_str().expect("utf-8 path"),
        ],
        RECORD_TIMEOUT,
    );
    assert!(out.status.success(), "tracer record failed ({}): {}", out.status, out.stderr);
    println!("{}", out.stdout);
    let stacks = read_folded(&folded);
    let total: u64 = stacks.iter().map(|stack| stack.micros).sum();
    let at_pinger: u64 =
        stacks_ending(&stacks, "main.pinger", "[chan receive]").iter().map(|stack| stack.micros).sum();
    assert!(total > 0, "nothing recorded:\n{}", out.stdout);
    assert!(
        at_pinger as f64 >= PINGER_SHARE * total as f64,
        "main.pinger [chan receive] holds {at_pinger} of {total} µs:\n{stacks:#?}"
    );
    let at_futex: u64 = stacks
        .iter()
        .filter(|stack| stack.has_function("runtime.futex"))
        .map(|stack| stack.micros)
        .sum();
    assert_eq!(at_futex, 0, "{stacks:#?}");
    assert_svg(&svg);
    assert!(out.stdout.contains("@ main.pinger [chan receive]"), "{}", out.stdout);
}

/// `tracer record` of `pid` for `seconds`, writing `folded`; its stdout.
fn record_go(pid: u32, seconds: &str, folded: &std::path::Path) -> String {
    let out = tracer_tests::tracer_record(
        pid,
        &["--duration", seconds, "--output", folded.to_str().expect("utf-8 path")],
        RECORD_TIMEOUT,
    );
    assert!(out.status.success(), "tracer record failed ({}): {}", out.status, out.stderr);
    println!("{}", out.stdout);
    out.stdout
}

/// The groups of a recording's still-blocked section (only it has `N @ function [reason,
/// longest …]` lines).
fn still_blocked(stdout: &str) -> Vec<GoroutineGroup> {
    let (_, still_section) = stdout
        .split_once("still blocked at the end of the recording:")
        .unwrap_or_else(|| panic!("no still-blocked section:\n{stdout}"));
    parse_goroutine_table(still_section)
}

/// The folded stacks through `function` that end in `kind_frame`.
fn stacks_ending<'a>(
    stacks: &'a [tracer_tests::FoldedStack],
    function: &str,
    kind_frame: &str,
) -> Vec<&'a tracer_tests::FoldedStack> {
    stacks
        .iter()
        .filter(|stack| {
            stack.has_function(function) && stack.frames.last().map(String::as_str) == Some(kind_frame)
        })
        .collect()
}

/// The recording of a pile-up that never moves: every goroutine in it parked before the
/// probes attached.
const STUCK_RECORD_SECONDS: &str = "2s";
const STUCK_RECORD: Duration = Duration::from_secs(2);

/// Goroutines parked before the recording and stuck through it are reported as still
/// blocked at its end, at their call sites, with their wait reasons (the writer's with its
/// peer) and at least the recording's length as their age.
#[test]
fn record_reports_goroutines_still_blocked_at_the_end() {
    let dir = TempDir::new("go-record-stuck");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, port) = start_go_goroutines(&bin, "pileup", SENDERS, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.sendStat", SENDERS as u64);
    let backend = backend_of(port);
    let folded = dir.join("stuck.folded");
    let stdout = &record_go(workload.pid(), STUCK_RECORD_SECONDS, &folded);
    let still = still_blocked(stdout);
    let senders = group(&still, "main.sendStat", stdout);
    assert_eq!(senders.count, SENDERS as u64, "{stdout}");
    assert_eq!(senders.reason, "chan send", "{stdout}");
    let writer = group(&still, "main.writeToBackend", stdout);
    assert_eq!((writer.count, writer.reason.as_str()), (1, format!("IO wait {backend}").as_str()));
    assert!(writer.functions.iter().any(|name| name == "net.(*conn).Write"), "{stdout}");

    // In the folded stacks, marked still blocked and weighted by at least the recording.
    let stacks = read_folded(&folded);
    let weight_of = |function: &str, kind_frame: &str| -> u64 {
        let matching = stacks_ending(&stacks, function, kind_frame);
        assert_eq!(matching.len(), 1, "one {function} {kind_frame} stack expected: {stacks:#?}");
        matching[0].micros
    };
    let recording_us = STUCK_RECORD.as_micros() as u64;
    let senders_us = weight_of("main.sendStat", "[chan send still-blocked]");
    assert!(
        senders_us >= SENDERS as u64 * recording_us,
        "{SENDERS} senders stuck for the whole {STUCK_RECORD_SECONDS} weigh only {senders_us} µs"
    );
    let writer_us = weight_of("main.writeToBackend", &format!("[IO wait {backend} still-blocked]"));
    assert!(writer_us >= recording_us, "the writer weighs only {writer_us} µs");
    // Still what the program itself says: nothing moved.
    assert_eq!(goroutines_at(&pprof_goroutines(port), "main.sendStat"), SENDERS as u64);
}

/// Goroutines of the `late` mode, which park about a second into the recording.
const LATE: usize = 200;
/// Longer than the workload's one-second delay before its goroutines park.
const LATE_RECORD_SECONDS: &str = "3s";

/// Goroutines that park while the probes watch and stay parked are still blocked at the
/// end, aged from the moment the park probe saw them park (the runtime keeps no park time
/// unless a GC ran meanwhile): about two seconds each here, never the whole recording.
#[test]
fn goroutines_parked_during_the_recording_are_aged_from_their_park() {
    let dir = TempDir::new("go-record-late");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, _port) = start_go_goroutines(&bin, "late", LATE, STARTUP_TIMEOUT);
    let folded = dir.join("late.folded");
    let stdout = &record_go(workload.pid(), LATE_RECORD_SECONDS, &folded);
    let still = still_blocked(stdout);
    let late = group(&still, "main.lateReceiver", stdout);
    assert_eq!((late.count, late.reason.as_str()), (LATE as u64, "chan receive"), "{stdout}");
    let stacks = read_folded(&folded);
    let weight: u64 = stacks_ending(&stacks, "main.lateReceiver", "[chan receive still-blocked]")
        .iter()
        .map(|stack| stack.micros)
        .sum();
    // Parked one second into a three-second recording: each waited about two seconds.
    let record_us = 3_000_000;
    assert!(
        weight >= LATE as u64 * record_us / 3 && weight < LATE as u64 * record_us,
        "{LATE} goroutines parked during the recording weigh {weight} µs in {stacks:#?}"
    );
}

/// Pairs of goroutines passing a value back and forth as fast as they can.
const FLOOD_PAIRS: usize = 4;
/// Seconds of throughput averaged for each side of the comparison.
const FLOOD_SAMPLES: usize = 3;

/// The probes' cost on a goroutine-switch-heavy program: prints the wakes per second with
/// and without `tracer record` (for the note; no assertion on the number).
#[test]
fn record_overhead_on_a_goroutine_flood() {
    use std::io::BufRead as _;
    let dir = TempDir::new("go-flood");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let mut child = std::process::Command::new(&bin)
        .args(["flood", &FLOOD_PAIRS.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn goroutines flood: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let workload = tracer_tests::ChildGuard::new("goroutines flood", child);
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(wakes) = line.strip_prefix("wakes ").and_then(|n| n.parse().ok()) {
                let _ = tx.send(wakes);
            }
        }
    });
    let mean = |skip: usize| {
        let samples: Vec<u64> = rx.iter().skip(skip).take(FLOOD_SAMPLES).collect();
        samples.iter().sum::<u64>() / samples.len().max(1) as u64
    };
    let baseline = mean(1);
    let pid = workload.pid();
    let recorder = std::thread::spawn(move || {
        tracer_tests::tracer_record(pid, &["--duration", "6s"], RECORD_TIMEOUT)
    });
    // Skip the seconds that straddle the attach.
    let traced = mean(2);
    let out = recorder.join().expect("tracer thread");
    assert!(out.status.success(), "tracer record failed ({}): {}", out.status, out.stderr);
    let summary = out.stdout.lines().next().unwrap_or_default();
    println!(
        "{summary}\ngoroutine flood: {baseline} wakes/s untraced, {traced} wakes/s under tracer record ({:.1}% slower)",
        100.0 * (1.0 - traced as f64 / baseline.max(1) as f64)
    );
}
