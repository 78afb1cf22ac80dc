//! Real-kernel tests of `tracer snapshot` and `tracer record` on Go programs: goroutines
//! read from the process's memory, read back from the JSON profile (one stack per group of
//! goroutines, its object the wait reason, its threads the goroutine ids) and checked against
//! the program's own `runtime/pprof` goroutine profile and what it says about itself (served on
//! a loopback port). The programs are built with Debian's `golang-go`. They need root (to read
//! another process's memory) and run one at a time (`--test-threads=1`).

use std::time::{Duration, Instant};

use tracer::chains::Terminal;

use tracer_tests::{
    GO_GOROUTINES_SOURCE, Profile, ProfileKind, ProfileStack, TempDir, Traced, WaitKind,
    assert_svg, build_go, function_names, goroutines, goroutines_at, group, has_function, http_get,
    pprof_goroutines, record_profile, run_tool, snapshot_profile, start_go_goroutines, top_stacks,
    total_ns, tracer_report, wait_for_oracle,
};

/// The objects of the workload's channel waits: a receive on an unbuffered `chan int`, and
/// a send into the full stats channel (`make(chan []byte, statsBuffer)`, 16 slots).
const RECEIVE_ON_INT: &str = "chan receive on chan int 0/0";
const SEND_ON_STATS: &str = "chan send on chan []uint8 16/16";

/// Receivers in the channel test: enough that an off-by-a-few count shows, few enough to
/// start instantly.
const RECEIVERS: usize = 1_000;
/// Senders piled up behind the stalled writer.
const SENDERS: usize = 500;
/// The scale the issue asks about.
const MANY_GOROUTINES: usize = 100_000;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
/// `tracer report` and `go tool pprof` read a profile of a few groups.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The functions of a group's frames, leaf first (as pprof lists them).
fn leaf_first(stack: &ProfileStack) -> Vec<&str> {
    let mut names = function_names(stack);
    names.reverse();
    names
}

/// `tracer snapshot` of `pid` with `args` (and a JSON output in `dir`); prints its stdout.
fn snapshot(pid: u32, args: &[&str], dir: &TempDir) -> Profile {
    let Traced { out, profile } = snapshot_profile(pid, args, dir, SNAPSHOT_TIMEOUT);
    println!("{}", out.stdout);
    assert_eq!(profile.kind, ProfileKind::Snapshot);
    profile
}

#[test]
fn goroutines_receiving_on_a_channel_match_pprof() {
    let dir = TempDir::new("go-recv");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, port) = start_go_goroutines(&bin, "recv", RECEIVERS, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.receiver", RECEIVERS as u64);

    let folded = dir.join("recv.folded");
    let svg = dir.join("recv.svg");
    let pprof = dir.join("recv.pb.gz");
    let utf8 = |path: &std::path::Path| path.to_str().expect("utf-8 path").to_owned();
    let (folded_arg, svg_arg, pprof_arg) = (utf8(&folded), utf8(&svg), utf8(&pprof));
    let profile = snapshot(
        workload.pid(),
        &["--output", &folded_arg, "--output", &svg_arg, "--output", &pprof_arg],
        &dir,
    );
    let receivers = group(&profile, "main.receiver", |_| true);
    assert_eq!(goroutines(receivers), RECEIVERS as u64);
    assert_eq!(receivers.object.as_deref(), Some(RECEIVE_ON_INT));
    assert!(receivers.in_progress, "a snapshot's goroutines are blocked now");
    assert_eq!(
        leaf_first(receivers)[..3],
        ["runtime.gopark", "runtime.chanrecv", "runtime.chanrecv1"],
        "{}",
        tracer_tests::describe(receivers)
    );
    // No other group runs main.receiver.
    assert_eq!(
        profile.stacks.iter().filter(|stack| has_function(stack, "main.receiver")).count(),
        1,
        "{}",
        top_stacks(&profile, |_| true, 20)
    );
    // Still what the program itself says after the snapshot.
    wait_for_oracle(port, "main.receiver", RECEIVERS as u64);
    assert_svg(&svg);

    // The saved profiles read back: JSON and pprof into the same groups, JSON into the same
    // folded stacks, pprof by Go's tool.
    let from_pprof = tracer_tests::read_profile(&pprof);
    let again = group(&from_pprof, "main.receiver", |_| true);
    assert_eq!(
        (again.stats.waits, function_names(again), &again.object),
        (receivers.stats.waits, function_names(receivers), &receivers.object),
        "the pprof profile reads back another group"
    );
    let json = dir.join("snapshot.json");
    let refolded = dir.join("refolded.folded");
    let out = tracer_report(&[&utf8(&json), "--output", &utf8(&refolded)], TOOL_TIMEOUT);
    tracer_tests::assert_success("tracer report", &out);
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    assert_eq!(read(&refolded), read(&folded), "the JSON profile reads back unchanged");
    let top = run_tool("go", &["tool", "pprof", "-top", &pprof_arg], TOOL_TIMEOUT).stdout;
    assert!(
        top.contains("main.receiver"),
        "go tool pprof -top does not name main.receiver:\n{top}"
    );
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
    let dir = TempDir::new(if stripped { "go-pileup-stripped" } else { "go-pileup" });
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", stripped);
    let (workload, port) = start_go_goroutines(&bin, "pileup", SENDERS, STARTUP_TIMEOUT);
    let oracle = wait_for_oracle(port, "main.sendStat", SENDERS as u64);
    assert_eq!(goroutines_at(&oracle, "main.writeToBackend"), 1, "{oracle:#?}");

    let Traced { out, profile } = snapshot_profile(workload.pid(), &[], &dir, SNAPSHOT_TIMEOUT);
    println!("{}", out.stdout);
    let senders = group(&profile, "main.sendStat", |_| true);
    assert_eq!(goroutines(senders), SENDERS as u64);
    assert_eq!(senders.object.as_deref(), Some(SEND_ON_STATS));
    let writer = group(&profile, "main.writeToBackend", |_| true);
    assert_eq!(goroutines(writer), 1);
    // The writer's socket, found through the netpoller's pollDesc of its descriptor.
    let backend = backend_of(port);
    assert_eq!(writer.object, Some(format!("IO wait {backend}")));
    assert!(has_function(writer, "net.(*conn).Write"), "{}", tracer_tests::describe(writer));
    let state_of =
        |endpoint: &str| {
            profile.endpoint_states.get(endpoint).cloned().unwrap_or_else(|| {
                panic!("no state of {endpoint} in {:?}", profile.endpoint_states)
            })
        };
    let backend_state = state_of(&backend);
    assert!(backend_state.contains("send buffer full"), "{backend}: {backend_state:?}");
    // The HTTP server's accept, a read of its listening socket to the netpoller, is named by
    // the listener's address and accept queue.
    let listener = format!("127.0.0.1:{port} (listening)");
    let on_listener = format!("IO wait {listener}");
    let server = profile
        .stacks
        .iter()
        .find(|stack| stack.object.as_deref() == Some(on_listener.as_str()))
        .unwrap_or_else(|| {
            panic!("no goroutine in IO wait on {listener}:\n{}", top_stacks(&profile, |_| true, 20))
        });
    assert!(has_function(server, "net/http.(*Server).Serve"), "{}", tracer_tests::describe(server));
    let listener_state = state_of(&listener);
    assert!(listener_state.contains("accept queue"), "{listener}: {listener_state:?}");
    // Every IO wait's descriptor was resolved, to a socket.
    let counts = &profile.counts;
    assert_eq!(
        (counts.unresolved_descriptors, counts.non_socket_io),
        (0, 0),
        "IO waits (unresolved, not on sockets): {counts:?}"
    );
    assert_eq!(goroutines_at(&pprof_goroutines(port), "main.sendStat"), SENDERS as u64);
    // Most first: the pile-up heads the profile.
    assert_eq!(profile.stacks[0].call_site(), "main.sendStat");
    let waker = assert_pileup_chain(&profile, &backend, workload.pid());
    let line = out
        .stdout
        .lines()
        .find(|line| line.contains("at main.sendStat ["))
        .unwrap_or_else(|| panic!("no chain line from main.sendStat:\n{}", out.stdout));
    let expected = format!(
        "{SENDERS} goroutines at main.sendStat [goroutine {SEND_ON_STATS}] ← woken by {waker}, \
         blocked"
    );
    assert!(line.trim_start().starts_with(&expected), "{expected:?} does not start:\n{line}");
    let expected_at =
        format!("in main.writeToBackend [goroutine IO wait {backend}: send buffer full");
    assert!(line.contains(&expected_at), "{expected_at:?} missing:\n{line}");
    let expected_peer = format!("→ peer pid {} (goroutines)", workload.pid());
    assert!(line.contains(&expected_peer), "{line}");
}

/// The pile-up's wait chain: from the senders on the full channel to the writer holding
/// it (its loop keeps the channel in its frame), blocked writing to the backend, and on
/// to the process holding the backend's end: the workload itself, which accepted it and
/// never reads. Returns the hop's waker as the line names it.
fn assert_pileup_chain(profile: &Profile, backend: &str, pid: u32) -> String {
    let chain = profile
        .chains
        .iter()
        .find(|chain| chain.start.site == "main.sendStat")
        .unwrap_or_else(|| panic!("no chain from main.sendStat: {:#?}", profile.chains));
    assert_eq!(chain.threads, SENDERS as u64, "{chain:#?}");
    assert_eq!(chain.start.object.as_deref(), Some(SEND_ON_STATS), "{chain:#?}");
    assert_eq!(chain.hops.len(), 1, "{chain:#?}");
    let hop = &chain.hops[0];
    assert_eq!(hop.at.site, "main.writeToBackend", "{chain:#?}");
    assert_eq!(hop.waker_threads.len(), 1, "the one writer: {chain:#?}");
    let waker = format!("goroutine {} (holds the channel)", hop.waker_threads[0]);
    assert_eq!(hop.waker, waker, "{chain:#?}");
    let Terminal::Endpoint { endpoint, state, peer: Some(peer) } = &chain.terminal else {
        panic!("the chain ends at the backend with its process: {chain:#?}");
    };
    assert_eq!(endpoint, backend, "{chain:#?}");
    let full = state.as_deref().is_some_and(|state| state.contains("send buffer full"));
    assert!(full, "{chain:#?}");
    assert_eq!(peer.pid, pid, "the workload holds the backend's end: {chain:#?}");
    // Go's netpoller holds every socket in its epoll set, edge-triggered: whether a
    // goroutine reads this one cannot be told from the threads.
    assert_eq!(peer.waiting_on_socket, None, "{chain:#?}");
    waker
}

/// A Go program's `.txt` report is the table printed on stdout: the same renderer as a
/// thread profile's (stdout adds only the tracer's own cost after it).
#[test]
fn go_text_report_is_what_stdout_shows() {
    let dir = TempDir::new("go-text");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, port) = start_go_goroutines(&bin, "pileup", SENDERS, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.sendStat", SENDERS as u64);
    let txt = dir.join("now.txt");
    let Traced { out, profile } = snapshot_profile(
        workload.pid(),
        &["--output", txt.to_str().expect("utf-8 path")],
        &dir,
        SNAPSHOT_TIMEOUT,
    );
    assert_eq!(profile.stacks[0].call_site(), "main.sendStat");
    let text = std::fs::read_to_string(&txt).expect("the .txt report");
    assert!(!text.is_empty());
    assert!(
        out.stdout.starts_with(&text),
        "stdout is not the .txt report:\n--- stdout\n{}\n--- .txt\n{text}",
        out.stdout
    );
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

    let profile = snapshot(workload.pid(), &[], &dir);
    let receivers = group(&profile, "main.awaitValue", |_| true);
    assert_eq!(goroutines(receivers), RECEIVERS as u64);
    assert_eq!(receivers.object.as_deref(), Some(RECEIVE_ON_INT));
    // pprof's debug=1 profile leaves out the leading runtime frames and the `go` statement's
    // wrapper closure, which tracer keeps.
    let functions = leaf_first(receivers);
    let own = functions
        .iter()
        .position(|name| !name.starts_with("runtime."))
        .unwrap_or_else(|| panic!("only runtime frames: {functions:?}"));
    let shown = &functions[own..];
    assert!(
        shown.starts_with(&expected.functions.iter().map(String::as_str).collect::<Vec<_>>()),
        "tracer shows {shown:?}, the program's profile {:?}",
        expected.functions
    );
    let frame_lines: Vec<(&str, Option<&str>, Option<u32>)> = receivers
        .frames
        .iter()
        .rev()
        .filter(|frame| frame.name == "main.awaitValue" || frame.name == "main.inlinedReceiver")
        .map(|frame| (frame.name.as_str(), frame.file.as_deref(), frame.line))
        .collect();
    let source = std::fs::read_to_string(GO_GOROUTINES_SOURCE)
        .unwrap_or_else(|e| panic!("read {GO_GOROUTINES_SOURCE}: {e}"));
    let line_of = |text: &str| {
        source
            .lines()
            .position(|line| line.trim() == text)
            .map(|index| u32::try_from(index + 1).expect("a short file"))
            .unwrap_or_else(|| panic!("no line {text:?} in {GO_GOROUTINES_SOURCE}"))
    };
    // Each frame at its own line: the receive in the inlined function, the call in its caller.
    assert_eq!(
        frame_lines,
        [
            ("main.awaitValue", Some(GO_GOROUTINES_SOURCE), Some(line_of("return <-ch"))),
            ("main.inlinedReceiver", Some(GO_GOROUTINES_SOURCE), Some(line_of("awaitValue(ch)"))),
        ],
        "{}",
        tracer_tests::describe(receivers)
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

/// The scale: every one of the goroutines in the profile, once, at its call site.
/// Prints the time for the reader of the log (no assertion on it: speed is the bench's).
#[test]
fn snapshot_of_a_hundred_thousand_goroutines() {
    let dir = TempDir::new("go-many");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, port) = start_go_goroutines(&bin, "recv", MANY_GOROUTINES, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.receiver", MANY_GOROUTINES as u64);
    let started = Instant::now();
    let Traced { out, profile } = snapshot_profile(workload.pid(), &[], &dir, SNAPSHOT_TIMEOUT);
    let elapsed = started.elapsed();
    let summary = out.stdout.lines().next().unwrap_or_default();
    println!("{summary}\ntracer snapshot of {MANY_GOROUTINES} goroutines: {elapsed:?} wall clock");
    let receivers = group(&profile, "main.receiver", |_| true);
    assert_eq!(goroutines(receivers), MANY_GOROUTINES as u64);
    assert_eq!(receivers.object.as_deref(), Some(RECEIVE_ON_INT));
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
    check_waits_at_call_sites(Mode::Sampled);
}

#[test]
fn exact_record_attributes_goroutine_waits_to_their_call_sites() {
    check_waits_at_call_sites(Mode::Exact);
}

/// Pairs passing a value back and forth in the relay below.
const RELAY_PAIRS: usize = 4;
const RELAY_RECORD: Duration = Duration::from_secs(3);
/// The most of the relayers' blocked time on a channel not named.
const RELAY_UNNAMED: f64 = 0.05;
/// What share of the relay's waiting the sampled reads must count, and the most over it
/// they may (a read counts its interval once for each goroutine it sees waiting).
const RELAY_SHARE: f64 = 0.8;
const RELAY_OVER: f64 = 1.05;

/// Pairs of goroutines relaying a value, one of each pair waiting for it at any time in
/// waits of tens of microseconds: most goroutines a sampled read finds waiting have parked
/// since the read before and many change while read, so their stacks come from their last
/// read wait at the same place. The reads count nearly the pairs x the recording at
/// main.relayer (Go's block profile counts all of it; 13-16% went uncounted before, 1-9%
/// after), and never more: no wait counted twice. Some are counted so (none were before:
/// what tells the two apart; the share is a guard against a gross loss).
#[test]
fn a_relays_waits_are_counted_once_and_nearly_whole() {
    let dir = TempDir::new("go-relay");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, _port) = start_go_goroutines(&bin, "relay", RELAY_PAIRS, STARTUP_TIMEOUT);
    let seconds = format!("{}s", RELAY_RECORD.as_secs());
    let profile = record_go(workload.pid(), Mode::Sampled, &["--duration", &seconds], &dir);
    let at_relayer = |s: &ProfileStack| s.call_site().starts_with("main.relayer");
    let blocked = Duration::from_nanos(total_ns(&profile, at_relayer));
    let waiting = RELAY_RECORD * RELAY_PAIRS as u32;
    let stacks = || top_stacks(&profile, |_| true, 10);
    assert!(
        blocked >= waiting.mul_f64(RELAY_SHARE) && blocked <= waiting.mul_f64(RELAY_OVER),
        "{blocked:?} of {waiting:?} blocked at main.relayer; stacks:\n{}",
        stacks()
    );
    // Some waits changed while read and were read with their last stack there.
    assert!(profile.counts.waits_at_last_place > 0, "{:?}", profile.counts);
    // Their channel too: the sudog read after the change is no longer theirs, so each
    // is named by the channel of its last wait there (a tenth of the time read as an
    // unnamed `[chan receive]` before).
    let unnamed = total_ns(&profile, |stack| {
        at_relayer(stack) && !stack.object.as_deref().is_some_and(|o| o.contains(" on chan "))
    });
    assert!(
        Duration::from_nanos(unnamed) <= blocked.mul_f64(RELAY_UNNAMED),
        "{unnamed} ns of {blocked:?} at main.relayer on no named channel; stacks:\n{}",
        stacks()
    );
}

/// How a test records: the default (sampled) or `--mode exact` (uprobes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Sampled,
    Exact,
}

impl Mode {
    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Sampled => &[],
            Mode::Exact => &["--mode", "exact"],
        }
    }
}

fn check_waits_at_call_sites(mode: Mode) {
    let dir = TempDir::new("go-record");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, _port) = start_go_goroutines(&bin, "pingpong", PINGERS, STARTUP_TIMEOUT);
    let svg = dir.join("waits.svg");
    let profile = record_go(
        workload.pid(),
        mode,
        &["--duration", RECORD_SECONDS, "--output", svg.to_str().expect("utf-8 path")],
        &dir,
    );
    // How it was taken is in the profile: a sampling period, or none (exact).
    assert_eq!(profile.sampling.is_some(), mode == Mode::Sampled, "{:?}", profile.sampling);
    // Waits that ended during the recording: the still-blocked ones are aged from before it
    // (the listener's accept since the program started), not part of the share.
    let total = total_ns(&profile, |stack| !stack.in_progress);
    // The exact mode's ended waits are summed in the kernel by stack and reason: they name
    // no channel. The sampled mode reads each new wait's channel, as a snapshot does.
    let ended_object = if mode == Mode::Sampled { RECEIVE_ON_INT } else { "chan receive" };
    let is_pinger_wait = |stack: &ProfileStack| {
        let object = if stack.in_progress { RECEIVE_ON_INT } else { ended_object };
        stack.kind == WaitKind::Goroutine
            && stack.call_site() == "main.pinger"
            && stack.object.as_deref() == Some(object)
    };
    let at_pinger = total_ns(&profile, |stack| is_pinger_wait(stack) && !stack.in_progress);
    assert!(total > 0, "nothing recorded");
    assert!(
        at_pinger as f64 >= PINGER_SHARE * total as f64,
        "main.pinger chan receive holds {at_pinger} of {total} ns:\n{}",
        top_stacks(&profile, |_| true, 20)
    );
    // Each pinger's waits end and are counted for it (sampled: each read tells them
    // apart). The exact mode's kernel sums keep no goroutine ids: only the pingers parked
    // at the end's read are told apart (a pinger woken while that read ran is skipped, and
    // under load most of them can be), so there it is the count of ended waits that shows
    // every pinger's waits ending.
    let pingers = tracer_tests::thread_ids(&profile, is_pinger_wait).len();
    let ended = tracer_tests::total_waits(&profile, |s| is_pinger_wait(s) && !s.in_progress);
    match mode {
        Mode::Sampled => assert_eq!(pingers, PINGERS, "goroutines waiting at main.pinger"),
        Mode::Exact => assert!(
            pingers >= 1 && ended >= 10 * PINGERS as u64,
            "{pingers} pingers told apart, {ended} of their waits ended"
        ),
    }
    // The runtime's own futex waits under the goroutines are not the goroutines' waits.
    let at_futex = total_ns(&profile, |stack| has_function(stack, "runtime.futex"));
    assert_eq!(at_futex, 0, "{}", top_stacks(&profile, |_| true, 20));
    assert_svg(&svg);
}

/// `tracer record` of `pid` in `mode` with `args` (and a JSON output in `dir`); prints its
/// stdout.
fn record_go(pid: u32, mode: Mode, args: &[&str], dir: &TempDir) -> Profile {
    let args: Vec<&str> = mode.args().iter().chain(args).copied().collect();
    let Traced { out, profile } = record_profile(pid, &args, dir, RECORD_TIMEOUT);
    println!("{}", out.stdout);
    assert_eq!(profile.kind, ProfileKind::Recording);
    profile
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
    check_still_blocked_at_the_end(Mode::Sampled);
}

#[test]
fn exact_record_reports_goroutines_still_blocked_at_the_end() {
    check_still_blocked_at_the_end(Mode::Exact);
}

fn check_still_blocked_at_the_end(mode: Mode) {
    let dir = TempDir::new("go-record-stuck");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, port) = start_go_goroutines(&bin, "pileup", SENDERS, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.sendStat", SENDERS as u64);
    let backend = backend_of(port);
    let profile = record_go(workload.pid(), mode, &["--duration", STUCK_RECORD_SECONDS], &dir);
    let still = |stack: &ProfileStack| stack.in_progress;
    let senders = group(&profile, "main.sendStat", still);
    assert_eq!(goroutines(senders), SENDERS as u64);
    assert_eq!(senders.object.as_deref(), Some(SEND_ON_STATS));
    let writer = group(&profile, "main.writeToBackend", still);
    assert_eq!(goroutines(writer), 1);
    assert_eq!(writer.object, Some(format!("IO wait {backend}")));
    assert!(has_function(writer, "net.(*conn).Write"), "{}", tracer_tests::describe(writer));
    // The chain, from the goroutines still parked at the end (the last read's, or those
    // read when an exact recording stops).
    assert_pileup_chain(&profile, &backend, workload.pid());
    // Nothing moved: no wait at either site ended.
    let ended = |stack: &ProfileStack| {
        !stack.in_progress
            && (has_function(stack, "main.sendStat") || has_function(stack, "main.writeToBackend"))
    };
    assert!(
        !profile.stacks.iter().any(ended),
        "waits that never ended are reported as completed:\n{}",
        top_stacks(&profile, ended, 10)
    );

    // Weighted by at least the recording: blocked before it began, still blocked at its end.
    // A sampled read that found a goroutine changing (a GC scanning it) skips it, counted;
    // the next read sees it again, a period later.
    let recording_ns = u64::try_from(STUCK_RECORD.as_nanos()).expect("fits u64");
    let skipped_ns = profile.counts.go_goroutines_skipped
        * profile.sampling.map_or(0, |sampling| sampling.period.as_nanos() as u64);
    assert!(
        senders.stats.total_ns + skipped_ns >= SENDERS as u64 * recording_ns,
        "{SENDERS} senders stuck for the whole {STUCK_RECORD_SECONDS} weigh only {} ns \
         ({} goroutine reads skipped)",
        senders.stats.total_ns,
        profile.counts.go_goroutines_skipped
    );
    assert!(
        writer.stats.min_ns >= recording_ns,
        "the writer weighs only {} ns",
        writer.stats.min_ns
    );
    // Still what the program itself says: nothing moved.
    assert_eq!(goroutines_at(&pprof_goroutines(port), "main.sendStat"), SENDERS as u64);
}

/// Goroutines of the `late` mode, which park a second after the recording has
/// attached and signalled them.
const LATE: usize = 200;
const LATE_RECORD_SECONDS: &str = "3s";
const LATE_RECORD: Duration = Duration::from_secs(3);

/// Goroutines that park while the probes watch and stay parked are still blocked at the
/// end, aged from the moment the park probe saw them park (the runtime keeps no park time
/// unless a GC ran meanwhile): about two seconds each here, never the whole recording.
#[test]
fn goroutines_parked_during_the_recording_are_aged_from_their_park() {
    check_aged_from_their_park(Mode::Sampled);
}

#[test]
fn exact_goroutines_parked_during_the_recording_are_aged_from_their_park() {
    check_aged_from_their_park(Mode::Exact);
}

fn check_aged_from_their_park(mode: Mode) {
    let dir = TempDir::new("go-record-late");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, _port) = start_go_goroutines(&bin, "late", LATE, STARTUP_TIMEOUT);
    let profile = record_go_signalling(workload.pid(), mode, LATE_RECORD_SECONDS, &dir);
    let late = group(&profile, "main.lateReceiver", |stack| stack.in_progress);
    assert_eq!(goroutines(late), LATE as u64);
    assert_eq!(late.object.as_deref(), Some(RECEIVE_ON_INT));
    // Parked a second into a three-second recording: each waited about two seconds.
    let record_ns = u64::try_from(LATE_RECORD.as_nanos()).expect("fits u64");
    let weight = late.stats.total_ns;
    assert!(
        weight >= LATE as u64 * record_ns / 3 && weight < LATE as u64 * record_ns,
        "{LATE} goroutines parked during the recording weigh {weight} ns: {}",
        tracer_tests::describe(late)
    );
    assert!(
        late.stats.max_ns < record_ns,
        "a goroutine parked during the recording is aged {} ns, more than the recording",
        late.stats.max_ns
    );
}

/// `tracer record` of `pid` for `duration`, sending `pid` SIGUSR1 once the tracer says it
/// is recording (its probes attached, its first read done).
fn record_go_signalling(pid: u32, mode: Mode, duration: &str, dir: &TempDir) -> Profile {
    use std::io::BufRead as _;
    let json = dir.join("record.json");
    let mut child = std::process::Command::new(tracer_tests::tracer_bin())
        .args(["record", "--pid", &pid.to_string()])
        .args(mode.args())
        .args(["--duration", duration, "--output"])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tracer record");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut said = String::new();
    loop {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).expect("read the tracer's stderr");
        said.push_str(&line);
        assert!(read > 0, "tracer record ended without recording: {said}");
        if line.starts_with("tracer: recording") {
            break;
        }
    }
    // The rest of stderr, read meanwhile so that the tracer never blocks on it.
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    // SAFETY: kill takes a pid and a signal number.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0, "signal the workload");
    let out = child.wait_with_output().expect("tracer record ends");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let rest = rest.join().unwrap_or_default();
    assert!(out.status.success(), "tracer record failed: {}: {said}{rest}", out.status);
    let profile = tracer_tests::read_profile(&json);
    assert_eq!(profile.kind, ProfileKind::Recording);
    profile
}

/// Pairs of goroutines passing a value back and forth as fast as they can.
const FLOOD_PAIRS: usize = 4;
/// Seconds of throughput averaged for each side of the comparison.
const FLOOD_SAMPLES: usize = 3;

/// The exact mode's cost on a goroutine-switch-heavy program (its uprobes run on every
/// switch): prints the wakes per second with and without `tracer record --mode exact` (for
/// the note; no assertion on the number: `cargo xtask bench` measures costs).
#[test]
fn exact_record_of_a_goroutine_flood() {
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
    let json = dir.join("flood.json");
    let json_arg = json.to_str().expect("utf-8 path").to_owned();
    let recorder = std::thread::spawn(move || {
        tracer_tests::tracer_record(
            pid,
            &["--mode", "exact", "--duration", "6s", "--output", &json_arg],
            RECORD_TIMEOUT,
        )
    });
    // Skip the seconds that straddle the attach.
    let traced = mean(2);
    let out = recorder.join().expect("tracer thread");
    tracer_tests::assert_success("tracer record", &out);
    let summary = out.stdout.lines().next().unwrap_or_default();
    println!(
        "{summary}\ngoroutine flood: {baseline} wakes/s untraced, {traced} wakes/s under tracer \
         record ({:.1}% slower)",
        100.0 * (1.0 - traced as f64 / baseline.max(1) as f64)
    );
    // Whatever the cost, the flood's waits are recorded at the flooders' call site.
    let profile = tracer_tests::read_profile(&json);
    let at_flooder = |stack: &ProfileStack| {
        stack.kind == WaitKind::Goroutine && stack.call_site() == "main.flooder"
    };
    assert!(
        tracer_tests::total_waits(&profile, at_flooder) > 0,
        "no goroutine wait at main.flooder:\n{}",
        top_stacks(&profile, |_| true, 20)
    );
}

/// Reads per second asked of the sampled recording below.
const SAMPLE_RATE: u32 = 25;
const SAMPLED_RECORD: Duration = Duration::from_secs(3);

/// A sampled recording (the default for Go) attaches nothing to the process: while it
/// runs, the tracer holds no BPF program, link or perf event. It reads at the rate asked,
/// and says so in the report's header and in the profile.
#[test]
fn sampled_record_attaches_nothing_and_states_its_rate() {
    use std::io::BufRead as _;
    let dir = TempDir::new("go-sampled");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, _port) = start_go_goroutines(&bin, "pingpong", PINGERS, STARTUP_TIMEOUT);
    let json = dir.join("sampled.json");
    let mut child = std::process::Command::new(tracer_tests::tracer_bin())
        .args(["record", "--pid", &workload.pid().to_string(), "--rate"])
        .arg(SAMPLE_RATE.to_string())
        .args(["--duration", &format!("{}s", SAMPLED_RECORD.as_secs()), "--output"])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tracer record");
    let tracer_pid = child.id();
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut stderr = std::io::BufReader::new(stderr);
    let mut line = String::new();
    stderr.read_line(&mut line).expect("tracer's first line");
    assert!(line.starts_with("tracer: recording"), "tracer said: {line}");
    assert!(line.contains(&format!("sampled every {}.0ms", 1000 / SAMPLE_RATE)), "{line}");
    // Recording now: what the tracer holds open.
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{tracer_pid}/fd"))
        .expect("the tracer's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|link| link.to_string_lossy().into_owned())
        .collect();
    let probes: Vec<&String> =
        held.iter().filter(|link| link.contains("bpf") || link.contains("perf_event")).collect();
    assert!(probes.is_empty(), "a sampled recording holds probes: {probes:?}");
    let out = child.wait_with_output().expect("tracer record ends");
    assert!(out.status.success(), "tracer record failed: {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    let header = stdout.lines().next().unwrap_or_default();
    assert!(
        header.contains(&format!("sampled at {SAMPLE_RATE} Hz")) && header.contains("statistical"),
        "the header does not say how the recording was taken: {header}"
    );
    let profile = tracer_tests::read_profile(&json);
    let sampling = profile.sampling.expect("a sampled profile says so");
    assert_eq!(sampling.period, Duration::from_secs(1) / SAMPLE_RATE);
    let expected = SAMPLED_RECORD.as_secs() * u64::from(SAMPLE_RATE);
    assert!(
        sampling.reads >= expected / 2 && sampling.reads <= expected + 2,
        "{} reads at {SAMPLE_RATE} Hz over {SAMPLED_RECORD:?}",
        sampling.reads
    );
    // The pingers' waits (10 ms each, shorter than the 40 ms period) are caught in
    // proportion to their length: most of each pinger's time.
    let at_pinger =
        total_ns(&profile, |stack| stack.call_site() == "main.pinger" && !stack.in_progress);
    let recorded = u64::try_from(SAMPLED_RECORD.as_nanos()).expect("fits u64");
    assert!(
        at_pinger as f64 >= 0.5 * (PINGERS as u64 * recorded) as f64,
        "{PINGERS} pingers blocked most of {SAMPLED_RECORD:?} weigh {at_pinger} ns"
    );
}

/// Goroutines of the `locked` mode blocked on the global mutex.
const LOCKERS: usize = 100;

/// Goroutines blocked in package sync name the lock they wait on, found in the runtime's
/// semaphore table: a global by its symbol (Go names the wait `sync.Mutex.Lock`; Debian's
/// 1.19 says `semacquire`, and the frames it is parked under tell a mutex from a
/// `WaitGroup`, so the object is named, not the semaphore inside it); in a stripped binary,
/// by its address, one for all of them.
#[test]
fn sync_waits_name_their_lock() {
    let newest = tracer_tests::go_toolchain("1.27.3");
    let cases = [
        (None, false, "semacquire on main.statsMu", Some("semacquire on main.flushes")),
        (Some(&newest), false, "sync.Mutex.Lock on main.statsMu", None),
        (Some(&newest), true, "sync.Mutex.Lock on anon 0x", None),
    ];
    for (go, stripped, lockers_object, flush_object) in cases {
        let dir = TempDir::new("go-locked");
        let bin = match go {
            Some(go) => {
                tracer_tests::build_go_with(go, dir.path(), GO_GOROUTINES_SOURCE, "g", stripped)
            }
            None => build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", stripped),
        };
        let case = format!("{} (stripped: {stripped})", bin.display());
        let (workload, port) = start_go_goroutines(&bin, "locked", LOCKERS, STARTUP_TIMEOUT);
        wait_for_oracle(port, "main.lockStats", LOCKERS as u64);
        let profile = snapshot(workload.pid(), &[], &dir);
        let lockers = group(&profile, "main.lockStats", |_| true);
        assert_eq!(goroutines(lockers), LOCKERS as u64, "{case}");
        let object = lockers.object.as_deref().unwrap_or_default();
        assert!(object.starts_with(lockers_object), "{case}: the lockers wait on {object:?}");
        let flusher = group(&profile, "main.awaitFlushes", |_| true);
        let flush = flusher.object.as_deref().unwrap_or_default();
        let expected = flush_object.map_or_else(
            || {
                format!(
                    "sync.WaitGroup.Wait on {}",
                    if stripped { "anon 0x" } else { "main.flushes" }
                )
            },
            str::to_owned,
        );
        assert!(flush.starts_with(&expected), "{case}: the flusher waits on {flush:?}");
        assert_eq!(profile.counts.go_objects_unnamed, 0, "{case}");
    }
}

/// Goroutines parked in a select on a full channel are its senders, as those blocked
/// sending are: the channel's holder is its one reader (asleep between reads), not them
/// (the chain named the selects, whose frames hold the channel too, as its holders).
#[test]
fn a_select_on_a_full_channel_does_not_hold_it() {
    const EACH: usize = 50;
    let dir = TempDir::new("go-selected");
    let go = tracer_tests::go_toolchain("1.27.3");
    let bin = tracer_tests::build_go_with(&go, dir.path(), GO_GOROUTINES_SOURCE, "g", false);
    let (workload, port) = start_go_goroutines(&bin, "selected", EACH, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.queueOrDrop", EACH as u64);
    wait_for_oracle(port, "main.queueStat", EACH as u64);
    let profile = snapshot(workload.pid(), &[], &dir);
    let reader = group(&profile, "main.drainSlowly", |_| true);
    assert_eq!(goroutines(reader), 1);
    let reader_id = *reader.stats.threads.iter().next().expect("the reader's goroutine id");
    let chain = profile
        .chains
        .iter()
        .find(|chain| chain.start.site == "main.queueStat")
        .unwrap_or_else(|| panic!("no chain from the senders: {:#?}", profile.chains));
    let [hop] = chain.hops.as_slice() else {
        panic!("one hop, to the reader: {chain:#?}");
    };
    assert_eq!(hop.at.site, "main.drainSlowly", "{chain:#?}");
    assert_eq!(hop.waker_threads, [reader_id], "{chain:#?}");
}

/// Go 1.24+ listens and accepts with Multipath TCP by default, and sock_diag's TCP dump does
/// not list MPTCP sockets: a Go HTTP server's idle keep-alive connection is still named by
/// its client, and its listener by its address (they read `IO wait other` before).
#[test]
fn a_go_servers_mptcp_connections_are_named() {
    use std::io::{Read as _, Write as _};
    let dir = TempDir::new("go-mptcp");
    let go = tracer_tests::go_toolchain("1.27.3");
    let bin = tracer_tests::build_go_with(
        &go,
        dir.path(),
        tracer_tests::GO_HTTP_SERVICE_SOURCE,
        "httpservice",
        false,
    );
    let (service, line) = tracer_tests::spawn_and_read_line("go http service", {
        let mut cmd = std::process::Command::new(&bin);
        // What a module built for go1.24 or later gets by default (the tests build outside
        // modules, which keeps the old default).
        cmd.env("GODEBUG", "multipathtcp=1").stdout(std::process::Stdio::piped());
        cmd
    });
    let port: u16 = line
        .trim()
        .strip_prefix("ready ")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("not a ready line: {line:?}"));
    // One request on a connection kept open: its goroutine then waits for the next.
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send a request");
    let mut answer = [0u8; 256];
    let read = client.read(&mut answer).expect("an answer");
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"), "{:?}", &answer[..read]);
    let client_address = client.local_addr().expect("the client's address").to_string();
    let profile = snapshot(service.pid(), &[], &dir);
    let connection = group(&profile, "net/http.(*conn).serve", |_| true);
    assert_eq!(connection.object, Some(format!("IO wait {client_address}")));
    let listener = group(&profile, "main.main", |_| true);
    assert_eq!(listener.object, Some(format!("IO wait 127.0.0.1:{port} (listening)")));
    assert_eq!(profile.counts.unresolved_descriptors, 0);
}
