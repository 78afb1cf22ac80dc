//! Real-kernel tests of time in the data (issue 19): a pile-up that builds up over a few
//! seconds (handlers coming to a lock held for good, one every 400 ms) is recorded in both
//! modes; the JSON's per-second counts show the build-up, the `.trace.json` timeline has a
//! track per thread, a slice per wait with its args, still-blocked waits running to the
//! end, and (exact mode) a flow arrow from each waker to the wait it ended; the SVG charts
//! the seconds above the flamegraph.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tracer_tests::{
    C_BUILDUP_SOURCE, ServeDaemon, TempDir, assert_svg, build_c, read_profile, record_profile,
    start_workload,
};

const HANDLERS: usize = 8;
/// One handler comes to the lock every STEP: all of them within 3.2 s.
const STEP_MS: u64 = 400;
const WORKLOAD_SECONDS: f64 = 120.0;
const RECORD_SECONDS: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(90);
const SITE: &str = "take_lock";

fn start_buildup(dir: &TempDir) -> tracer_tests::ChildGuard {
    start_buildup_with(dir, &[])
}

/// The build-up workload; with `on-signal`, its handlers come only after SIGUSR1.
fn start_buildup_with(dir: &TempDir, extra: &[&str]) -> tracer_tests::ChildGuard {
    let bin = build_c(dir.path(), C_BUILDUP_SOURCE, "c-buildup");
    let mut cmd = std::process::Command::new(bin);
    cmd.arg(HANDLERS.to_string()).arg(STEP_MS.to_string()).arg(WORKLOAD_SECONDS.to_string());
    cmd.args(extra);
    start_workload("c-buildup", cmd)
}

/// `tracer record --pid P ARGS --output DIR/record.json` over a build-up that starts
/// when the recording has: the workload gets SIGUSR1 once the tracer says it records, so
/// the build-up's timing does not depend on how long attaching took.
fn record_buildup(dir: &TempDir, args: &[&str]) -> tracer_tests::Profile {
    use std::io::BufRead as _;
    let workload = start_buildup_with(dir, &["on-signal"]);
    let json = dir.join("record.json");
    let mut cmd = std::process::Command::new(tracer_tests::tracer_bin());
    cmd.arg("record").arg("--pid").arg(workload.pid().to_string()).args(args);
    cmd.arg("--output").arg(&json);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn tracer record");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut tracer = tracer_tests::ChildGuard::new("tracer record", child);
    let mut lines = std::io::BufReader::new(stderr).lines();
    let said = lines.find(|line| line.as_ref().is_ok_and(|l| l.starts_with("tracer: recording")));
    assert!(said.is_some(), "tracer record never said it records");
    // SAFETY: kill takes a pid and a signal; the workload is our unreaped child.
    let sent = unsafe { libc::kill(workload.pid() as libc::pid_t, libc::SIGUSR1) };
    assert_eq!(sent, 0, "signal the workload");
    std::thread::spawn(move || lines.for_each(drop));
    let status = tracer.wait_timeout(TIMEOUT);
    assert!(status.success(), "tracer record: {status}");
    drop(workload);
    read_profile(&json)
}

/// The build-up in the profile's per-second counts: few handlers blocked at the first
/// second's end, every one of them by the last, never fewer from one second to the next.
fn assert_builds_up(profile: &tracer_tests::Profile, what: &str) {
    let timeline = profile.timeline.as_ref().unwrap_or_else(|| panic!("{what}: no timeline"));
    let site = timeline
        .seconds
        .iter()
        .find(|site| site.site == SITE)
        .unwrap_or_else(|| panic!("{what}: no seconds of {SITE}: {:#?}", timeline.seconds));
    let threads = &site.threads;
    // A count per second, and one for the last part of one (a recording stops a few
    // milliseconds past its duration).
    assert!(
        threads.len() == RECORD_SECONDS || threads.len() == RECORD_SECONDS + 1,
        "{what}: a count per second: {threads:?}"
    );
    // Handlers come at 0.4 s, 0.8 s, … after the recording began: 2 by the first second's
    // end (3 if the signal came late), all 8 by the fifth.
    assert!(threads[0] <= 3, "{what}: {threads:?}");
    assert_eq!(threads[RECORD_SECONDS - 1] as usize, HANDLERS, "{what}: {threads:?}");
    assert!(threads.windows(2).all(|pair| pair[0] <= pair[1]), "{what}: {threads:?}");
    let blocked = &site.blocked_ns;
    assert!(blocked[0] < blocked[RECORD_SECONDS - 2], "{what}: {blocked:?}");
    // At most every handler for the whole second.
    let second = Duration::from_secs(1).as_nanos() as u64;
    assert!(blocked.iter().all(|&ns| ns <= HANDLERS as u64 * second * 11 / 10), "{blocked:?}");
}

fn read_trace(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    let trace: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert_eq!(trace["displayTimeUnit"], "ms");
    let events = trace["traceEvents"].as_array().expect("traceEvents is an array").clone();
    // Every event has what its phase needs, of the types the format gives them.
    for event in &events {
        let phase = event["ph"].as_str().unwrap_or_else(|| panic!("no ph: {event}"));
        assert!(event["pid"].is_u64() && event["name"].is_string(), "{event}");
        match phase {
            "M" => assert!(event["args"]["name"].is_string(), "{event}"),
            "X" => {
                assert!(event["tid"].is_u64(), "{event}");
                // Within the recording (well under a minute here), never before it.
                let (ts, dur) = (event["ts"].as_f64(), event["dur"].as_f64());
                let (ts, dur) = (ts.expect("ts"), dur.expect("dur"));
                assert!(ts >= 0.0 && dur >= 0.0 && ts + dur <= 60e6, "{event}");
            }
            "s" | "f" => assert!(event["id"].is_u64() && event["ts"].is_f64(), "{event}"),
            other => panic!("unexpected phase {other}: {event}"),
        }
    }
    events
}

/// The handlers' waits as slices on their own tracks, still blocked at the end, with
/// their kind, lock and stack; their starts spread over the build-up.
fn assert_handler_slices(events: &[Value], what: &str) {
    let handler_tracks: BTreeSet<u64> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .filter(|e| e["args"]["name"].as_str().is_some_and(|name| name.starts_with("handler (")))
        .filter_map(|e| e["tid"].as_u64())
        .collect();
    assert_eq!(handler_tracks.len(), HANDLERS, "{what}: a named track per handler");
    let slices: Vec<&Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["name"] == format!("{SITE} (still blocked)").as_str())
        .collect();
    let tids: BTreeSet<u64> = slices.iter().filter_map(|e| e["tid"].as_u64()).collect();
    assert_eq!(tids, handler_tracks, "{what}: one still-blocked slice on each handler's track");
    for slice in &slices {
        let args = &slice["args"];
        assert_eq!(args["still_blocked"], true, "{slice}");
        assert_eq!(args["kind"], "futex", "{slice}");
        assert_eq!(args["object"], "shared_lock", "{slice}");
        let stack: Vec<&str> =
            args["stack"].as_array().expect("a stack").iter().filter_map(Value::as_str).collect();
        assert!(stack.contains(&SITE) && stack.contains(&"handler"), "{slice}");
        assert!(args["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{slice}");
    }
    // They start as the handlers come: spread over the build-up, and the last one runs to
    // the recording's end.
    let starts: Vec<f64> = slices.iter().filter_map(|e| e["ts"].as_f64()).collect();
    let spread_us = starts.iter().copied().fold(f64::MIN, f64::max)
        - starts.iter().copied().fold(f64::MAX, f64::min);
    assert!(spread_us >= 2.0e6, "{what}: the handlers' waits start {spread_us} µs apart");
}

#[test]
fn an_exact_recording_shows_the_buildup_in_seconds_slices_and_wake_arrows() {
    let dir = TempDir::new("timeline-exact");
    let (trace, svg) = (dir.join("waits.trace.json"), dir.join("waits.svg"));
    let args = [
        "--duration",
        "5s",
        "--output",
        trace.to_str().expect("utf-8"),
        "--output",
        svg.to_str().expect("utf-8"),
    ];
    let profile = record_buildup(&dir, &args);
    assert!(profile.sampling.is_none(), "exact by default");
    assert_builds_up(&profile, "exact");
    let events = read_trace(&trace);
    assert_handler_slices(&events, "exact");

    // The token handed back and forth: each wait ended by the other thread's wake, an
    // arrow from the waker's track to the woken wait.
    let names = |name: &str| -> BTreeSet<u64> {
        events
            .iter()
            .filter(|e| {
                e["ph"] == "M" && e["args"]["name"].as_str().is_some_and(|n| n.starts_with(name))
            })
            .filter_map(|e| e["tid"].as_u64())
            .collect()
    };
    let (ping, pong) = (names("ping ("), names("pong ("));
    assert!(ping.len() == 1 && pong.len() == 1, "ping {ping:?} pong {pong:?}");
    let starts: Vec<&Value> = events.iter().filter(|e| e["ph"] == "s").collect();
    let ends: Vec<&Value> = events.iter().filter(|e| e["ph"] == "f").collect();
    assert!(starts.len() >= 100, "5 s of 5 ms hand-offs: {} arrows", starts.len());
    assert_eq!(starts.len(), ends.len());
    let pair = ping.union(&pong).copied().collect::<BTreeSet<u64>>();
    let mut crossing = 0;
    for (start, end) in starts.iter().zip(&ends) {
        assert_eq!(start["id"], end["id"]);
        assert_eq!(end["bp"], "e");
        let (waker, wakee) = (start["tid"].as_u64().unwrap(), end["tid"].as_u64().unwrap());
        if pair.contains(&waker) && pair.contains(&wakee) && waker != wakee {
            crossing += 1;
        }
        // The arrow lands inside the woken wait's slice.
        let ts = end["ts"].as_f64().unwrap();
        let inside = events.iter().any(|slice| {
            slice["ph"] == "X"
                && slice["tid"].as_u64() == Some(wakee)
                && slice["args"]["woken_by"].as_u64() == Some(waker)
                && slice["ts"].as_f64().is_some_and(|from| from <= ts)
                && slice["dur"]
                    .as_f64()
                    .is_some_and(|dur| ts <= slice["ts"].as_f64().unwrap() + dur)
        });
        assert!(inside, "the arrow {end} lands in no slice of {wakee} woken by {waker}");
    }
    assert!(
        crossing * 10 >= starts.len() * 9,
        "{crossing} of {} arrows between ping and pong",
        starts.len()
    );

    // A real reader opens it: speedscope (npm) in headless Chromium, a track per thread.
    let (title, tracks) = tracer_tests::speedscope_tracks(&trace);
    assert_eq!(title, "waits.trace.json - speedscope", "{tracks:?}");
    let handlers = tracks.iter().filter(|track| track.contains(", handler (")).count();
    assert_eq!(handlers, HANDLERS, "speedscope's tracks: {tracks:?}");
    assert!(tracks.iter().any(|track| track.contains(", ping (")), "{tracks:?}");

    // The seconds, charted above the flamegraph.
    assert_svg(&svg);
    let drawing = std::fs::read_to_string(&svg).expect("read the SVG");
    assert!(drawing.contains("<g id=\"timechart\">"), "no time chart");
    assert!(drawing.contains("<polyline points=\"1000,"), "no line in the chart");
    assert!(drawing.contains(&format!(">{SITE}</text>")), "the chart's legend names {SITE}");
}

#[test]
fn a_sampled_recording_shows_the_buildup_too() {
    let dir = TempDir::new("timeline-sampled");
    let trace = dir.join("waits.trace.json");
    let args =
        ["--mode", "sampled", "--duration", "5s", "--output", trace.to_str().expect("utf-8")];
    let profile = record_buildup(&dir, &args);
    assert!(profile.sampling.is_some());
    assert_builds_up(&profile, "sampled");
    assert_handler_slices(&read_trace(&trace), "sampled");
}

#[test]
fn a_snapshot_or_a_saved_profile_has_no_timeline_to_write() {
    let dir = TempDir::new("timeline-refused");
    let workload = start_buildup(&dir);
    let trace = dir.join("now.trace.json");
    let out = tracer_tests::tracer_snapshot(
        workload.pid(),
        &["--output", trace.to_str().expect("utf-8")],
        TIMEOUT,
    );
    assert!(!out.status.success());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("tracer record --output FILE.trace.json"), "{}", out.stderr);
    assert!(!trace.exists(), "nothing written");
    // A saved recording keeps its seconds (read back), not its waits.
    let traced = record_profile(workload.pid(), &["--duration", "2s"], &dir, TIMEOUT);
    assert!(traced.profile.timeline.is_some());
    let json = dir.join("record.json");
    let again = read_profile(&json);
    assert_eq!(
        again.timeline.as_ref().map(|t| &t.seconds),
        traced.profile.timeline.as_ref().map(|t| &t.seconds)
    );
    let out = tracer_tests::tracer_report(
        &[json.to_str().expect("utf-8"), "--output", trace.to_str().expect("utf-8")],
        TIMEOUT,
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains("writes the timeline"), "{}", out.stderr);
}

/// `serve --trigger`: as the pile-up builds up, the trigger fires once (the cooldown holds
/// while it grows on), and its files hold the pile-up: the snapshot, and the last window
/// as a recording whose seconds show the build-up, charted, with its timeline.
#[test]
fn a_trigger_catches_the_buildup_once_and_its_files_hold_it() {
    let dir = TempDir::new("timeline-trigger");
    let workload = start_buildup(&dir);
    let fired_dir = dir.join("fired");
    let pid = workload.pid().to_string();
    let mut daemon = ServeDaemon::start(&[
        "--pid",
        &pid,
        "--trigger",
        "threads>=6",
        "--trigger-dir",
        fired_dir.to_str().expect("utf-8"),
        "--trigger-window",
        "10s",
    ]);
    let line =
        daemon.wait_for_log(|line| line.contains("tracer: trigger threads>=6 fired"), TIMEOUT);
    assert!(line.contains(&format!("threads at {SITE} of c-buildup (pid {pid})")), "{line}");
    // The pile-up grows on to all 8 handlers; the cooldown (5 minutes) keeps it to one.
    std::thread::sleep(Duration::from_secs(3));
    let log = daemon.log();
    assert_eq!(log.matches("tracer: trigger threads>=6 fired").count(), 1, "fired once:\n{log}");
    let metrics = daemon.get("/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l
                == "tracer_trigger_firings_total{trigger=\"threads>=6\",result=\"written\"} 1"),
        "{metrics}"
    );

    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&fired_dir)
        .expect("the trigger's directory")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    files.sort();
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    let find = |suffix: &str| {
        files
            .iter()
            .find(|f| f.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no *{suffix} in {names:?}"))
            .clone()
    };
    // Stamped with the UTC time, then the process.
    let stamp = &names[0][..16];
    assert!(stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T', "{names:?}");
    assert!(names.iter().all(|name| name.contains(&format!("-c-buildup-{pid}."))), "{names:?}");

    // The snapshot: at least 6 handlers at the lock when it fired.
    let snapshot = read_profile(&find(".snapshot.json"));
    let at_site: BTreeSet<u64> = snapshot
        .stacks
        .iter()
        .filter(|stack| stack.call_site() == SITE)
        .flat_map(|stack| stack.stats.threads.iter().copied())
        .collect();
    assert!(at_site.len() >= 6, "{} handlers at {SITE}", at_site.len());

    // The window before it, second by second: the build-up.
    let window = read_profile(&find(".window.json"));
    let seconds = window.timeline.as_ref().expect("the window's seconds");
    let site = seconds.seconds.iter().find(|site| site.site == SITE).expect("the site's seconds");
    let threads = &site.threads;
    assert!(threads.windows(2).all(|pair| pair[0] <= pair[1]), "{threads:?}");
    assert!(threads.first().is_some_and(|&first| first <= 2), "{threads:?}");
    assert!(threads.last().is_some_and(|&last| last >= 6), "{threads:?}");
    let svg = find(".window.svg");
    assert_svg(&svg);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<g id=\"timechart\">"));
    assert_handler_slices_at_least(&read_trace(&find(".window.trace.json")), 6);
}

/// At least `handlers` still-blocked slices at the lock, each on its own track.
fn assert_handler_slices_at_least(events: &[Value], handlers: usize) {
    let tids: BTreeSet<u64> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["name"] == format!("{SITE} (still blocked)").as_str())
        .filter_map(|e| e["tid"].as_u64())
        .collect();
    assert!(tids.len() >= handlers, "{} handlers' slices", tids.len());
}
