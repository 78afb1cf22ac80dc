//! Real-kernel tests of Python programs (issue 20): a CPython pile-up (handlers blocked in
//! `Queue.put`, a reporter in `sendall` to a backend that stopped reading, a poster in an
//! `http.client` POST waiting for its answer, auditors on a `threading.Lock` a holder
//! keeps) read from outside by `snapshot`, a sampled `record` and `serve`, its call sites
//! named by their Python frames with file and line, its queue, lock and endpoints named,
//! and every Python frame checked against `py-spy dump` (PyPI's py-spy, the oracle) of the
//! same threads. On Debian's CPython 3.11 and on every other 3.11-3.13 build pyenv has.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tracer_tests::{
    PY_PILEUP_SOURCE, Profile, ProfileStack, ServeDaemon, TempDir, WaitKind, line_of, py_spy_dump,
    python_interpreters, read_profile, record_profile, run_tool, snapshot_profile,
    spawn_and_read_line,
};

const HANDLERS: usize = 8;
const WORKLOAD_SECONDS: &str = "120";
const TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at a snapshot that shows the whole pile-up (the handlers fill the queue within
/// milliseconds of starting; a loaded machine may take longer).
const ATTEMPTS: usize = 10;

/// The pile-up on `python`, and the ports of its stats and metrics backends.
fn start_pileup(python: &Path) -> (tracer_tests::ChildGuard, u16, u16) {
    let mut cmd = Command::new(python);
    cmd.arg(PY_PILEUP_SOURCE).arg(HANDLERS.to_string()).arg(WORKLOAD_SECONDS);
    let (guard, line) = spawn_and_read_line("pypileup", cmd);
    let ports: Vec<u16> =
        line.split_whitespace().skip(1).filter_map(|port| port.parse().ok()).collect();
    assert_eq!(ports.len(), 2, "pypileup said {line:?}");
    (guard, ports[0], ports[1])
}

/// `function (pypileup.py:LINE)` for the line of the pile-up that holds `text`.
fn site(function: &str, text: &str) -> String {
    format!("{function} (pypileup.py:{})", line_of(PY_PILEUP_SOURCE, text))
}

fn at<'a>(profile: &'a Profile, site: &str) -> Vec<&'a ProfileStack> {
    profile.stacks.iter().filter(|stack| stack.call_site() == site).collect()
}

/// The threads seen at `site`, each once: a thread whose wait there ended during a
/// recording and began again (the reporter's send, when the idle backend's kernel frees
/// room in its receive buffer) is in two stacks, one ended and one in progress.
fn threads_at(profile: &Profile, site: &str) -> usize {
    let threads: std::collections::BTreeSet<u64> =
        at(profile, site).iter().flat_map(|stack| stack.stats.threads.iter().copied()).collect();
    threads.len()
}

/// A stack's Python frames, innermost first, as py-spy names them.
fn python_frames(stack: &ProfileStack) -> Vec<String> {
    stack
        .frames
        .iter()
        .rev()
        .filter(|frame| frame.module == "[python]")
        .map(|f| f.name.clone())
        .collect()
}

/// Whether the profile shows the whole pile-up (every handler at `report_stat`).
fn piled_up(profile: &Profile) -> bool {
    threads_at(profile, &site("report_stat", "STATS_QUEUE.put(stat)")) == HANDLERS
        && threads_at(profile, &site("post_stats", "connection.sendall(payload)")) == 1
        && threads_at(profile, &site("send_metrics", "return client.getresponse()")) == 1
}

/// What each Python site of the pile-up must be: its threads, kind and object.
fn assert_pileup(profile: &Profile, stats_port: u16, metrics_port: u16, names_locks: bool) {
    let summary = || tracer_tests::top_stacks(profile, |_| true, 12);
    let expect = |site: String, threads: usize, kind: WaitKind, object: Option<String>| {
        assert_eq!(threads_at(profile, &site), threads, "threads at {site}:\n{}", summary());
        for stack in at(profile, &site) {
            assert_eq!(stack.kind, kind, "{site}:\n{}", summary());
            if let Some(object) = &object {
                assert_eq!(stack.object.as_ref(), Some(object), "{site}'s object:\n{}", summary());
            }
        }
    };
    let queue = Some("Queue STATS_QUEUE".to_owned());
    expect(site("report_stat", "STATS_QUEUE.put(stat)"), HANDLERS, WaitKind::Futex, queue);
    let stats = Some(format!("127.0.0.1:{stats_port}"));
    expect(site("post_stats", "connection.sendall(payload)"), 1, WaitKind::Send, stats);
    let metrics = Some(format!("127.0.0.1:{metrics_port}"));
    expect(site("send_metrics", "return client.getresponse()"), 1, WaitKind::Recv, metrics);
    let lock = names_locks.then(|| "lock AUDIT_LOCK".to_owned());
    expect(site("audit", "with AUDIT_LOCK:"), 2, WaitKind::Futex, lock);
    // The handlers' frames under the call site are the runtime's, then the native ones.
    let handler = at(profile, &site("report_stat", "STATS_QUEUE.put(stat)"))[0];
    let frames = python_frames(handler);
    assert!(frames[0].starts_with("Condition.wait (threading.py:"), "{frames:?}");
    assert!(frames[1].starts_with("Queue.put (queue.py:"), "{frames:?}");
    assert!(frames.last().is_some_and(|root| root.starts_with("Thread._bootstrap ")), "{frames:?}");
    let native_leaf = handler.frames.last().expect("frames");
    assert_ne!(native_leaf.module, "[python]", "the native frames stay below the Python ones");
}

/// Every thread of every stack with Python frames has exactly the frames py-spy reads,
/// and the name py-spy reads (`Thread-3 (handler)`: the kernel's is `python3` for all).
fn assert_frames_match_py_spy(profile: &Profile, pid: u32, at_least: usize) {
    let oracle = py_spy_dump(pid);
    let mut compared = 0;
    for stack in &profile.stacks {
        let ours = python_frames(stack);
        if ours.is_empty() {
            continue;
        }
        if stack.kind == WaitKind::Task {
            continue; // tasks are not threads: py-spy does not see them
        }
        for tid in stack.stats.threads.iter().map(|&tid| u32::try_from(tid).expect("a tid")) {
            let theirs = oracle.get(&tid).unwrap_or_else(|| panic!("py-spy has no thread {tid}"));
            assert_eq!(ours, theirs.frames, "thread {tid}'s Python frames: ours, then py-spy's");
            let name = profile.thread_names.get(&tid);
            assert!(theirs.name.is_some(), "py-spy names no thread {tid}");
            assert_eq!(name, theirs.name.as_ref(), "thread {tid}'s name: ours, then py-spy's");
            compared += 1;
        }
    }
    assert!(compared >= at_least, "only {compared} threads compared with py-spy");
}

/// `serve --pid PID`'s `/debug/pprof/threads`, saved in `dir` and read back.
fn served_threads(pid: u32, dir: &TempDir) -> (Profile, std::path::PathBuf) {
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    let attached = format!("attached to pid {pid} ");
    daemon.wait_for_log(|line| line.contains(&attached), TIMEOUT);
    let response = daemon.get("/debug/pprof/threads");
    assert_eq!(response.status, 200, "{}", response.text());
    let saved = dir.join("threads.pb.gz");
    std::fs::write(&saved, &response.body).expect("write the pprof");
    (read_profile(&saved), saved)
}

/// The version `python` says it is ("3.11").
fn version_of(python: &Path) -> String {
    let out = run_tool(
        python.to_str().expect("utf-8 path"),
        &["-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        TIMEOUT,
    );
    out.stdout.trim().to_owned()
}

#[test]
fn snapshot_names_python_call_sites_and_objects_with_the_frames_py_spy_reads() {
    for python in python_interpreters() {
        let version = version_of(&python);
        eprintln!("{}: CPython {version}", python.display());
        let (workload, stats_port, metrics_port) = start_pileup(&python);
        let dir = TempDir::new("python-snapshot");
        let mut profile = None;
        for _ in 0..ATTEMPTS {
            let traced = snapshot_profile(workload.pid(), &[], &dir, TIMEOUT);
            let done = piled_up(&traced.profile);
            profile = Some(traced);
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let traced = profile.expect("a snapshot");
        let python_info = traced.profile.python.as_ref().expect("the profile names its CPython");
        assert_eq!(python_info.version, version);
        assert_eq!(python_info.missing, None);
        assert!(traced.out.stdout.contains(&format!("CPython {version}: Python frames")));
        // 3.13's locks park on the parking lot, not on a futex of their own.
        let names_locks = version != "3.13";
        assert_pileup(&traced.profile, stats_port, metrics_port, names_locks);
        assert_frames_match_py_spy(&traced.profile, workload.pid(), HANDLERS + 4);
    }
}

#[test]
fn sampled_record_and_serve_show_python_frames_and_exact_mode_says_where_they_are_missing() {
    let python = Path::new(tracer_tests::DEBIAN_PYTHON);
    let (workload, stats_port, metrics_port) = start_pileup(python);
    let dir = TempDir::new("python-record");
    // Settled: every handler at the full queue.
    for _ in 0..ATTEMPTS {
        if piled_up(&snapshot_profile(workload.pid(), &[], &dir, TIMEOUT).profile) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // A recording of a CPython process is sampled unless asked otherwise.
    let recorded = record_profile(workload.pid(), &["--duration", "2s"], &dir, TIMEOUT);
    assert!(recorded.profile.sampling.is_some(), "recorded exact:\n{}", recorded.out.stdout);
    assert_pileup(&recorded.profile, stats_port, metrics_port, true);
    assert_frames_match_py_spy(&recorded.profile, workload.pid(), HANDLERS + 4);

    // Exact: the waits still blocked at the end have their Python frames; the report says
    // the others cannot, and where to get them.
    let exact =
        record_profile(workload.pid(), &["--duration", "1s", "--mode", "exact"], &dir, TIMEOUT);
    let missing = exact.profile.python.as_ref().and_then(|python| python.missing.clone());
    assert!(missing.as_deref().is_some_and(|why| why.contains("--mode sampled")), "{missing:?}");
    assert!(exact.out.stdout.contains("--mode sampled"), "{}", exact.out.stdout);
    assert_pileup(&exact.profile, stats_port, metrics_port, true);
    assert_frames_match_py_spy(&exact.profile, workload.pid(), HANDLERS + 4);

    // serve: pprof with the Python frames as functions, files and lines.
    let (served, saved) = served_threads(workload.pid(), &dir);
    assert_pileup(&served, stats_port, metrics_port, true);
    let raw = run_tool("go", &["tool", "pprof", "-raw", saved.to_str().expect("utf-8")], TIMEOUT);
    tracer_tests::assert_success("go tool pprof -raw", &raw);
    let line = line_of(PY_PILEUP_SOURCE, "STATS_QUEUE.put(stat)");
    let location = format!(" report_stat {PY_PILEUP_SOURCE}:{line} ");
    assert!(raw.stdout.contains(&location), "no {location:?} in:\n{}", raw.stdout);
}

/// The asyncio pile-up on `python`, its pending tasks' coroutine stacks as the program
/// itself sees them (the oracle it writes), and its event loop's port.
fn start_async_pileup(
    python: &Path,
    dir: &TempDir,
) -> (tracer_tests::ChildGuard, u16, serde_json::Value) {
    let oracle = dir.join("tasks.json");
    let mut cmd = Command::new(python);
    cmd.arg(tracer_tests::PY_ASYNC_SOURCE)
        .args([REFRESHERS.to_string(), FETCHERS.to_string(), WORKLOAD_SECONDS.to_owned()])
        .arg(&oracle);
    let (guard, line) = spawn_and_read_line("pyasync", cmd);
    let port = line.split_whitespace().nth(1).and_then(|port| port.parse().ok());
    let port = port.unwrap_or_else(|| panic!("pyasync said {line:?}"));
    let text = std::fs::read_to_string(&oracle).expect("the workload's task stacks");
    (guard, port, serde_json::from_str(&text).expect("JSON task stacks"))
}

const REFRESHERS: usize = 6;
const FETCHERS: usize = 4;

#[test]
fn snapshot_and_record_group_asyncio_tasks_by_coroutine_stack_with_what_they_await() {
    for python in python_interpreters() {
        eprintln!("{}: CPython {}", python.display(), version_of(&python));
        assert_async_pileup(&python);
    }
}

/// One asyncio pile-up on `python`, as `snapshot` and `serve` show its tasks.
fn assert_async_pileup(python: &Path) {
    let dir = TempDir::new("python-asyncio");
    let (workload, port, oracle) = start_async_pileup(python, &dir);
    let traced = snapshot_profile(workload.pid(), &[], &dir, TIMEOUT);
    let profile = &traced.profile;
    let summary = tracer_tests::top_stacks(profile, |_| true, 12);
    let tasks_at = |function: &str, text: &str| {
        let wanted =
            format!("{function} (pyasync.py:{})", line_of(tracer_tests::PY_ASYNC_SOURCE, text));
        let stacks: Vec<&ProfileStack> = profile
            .stacks
            .iter()
            .filter(|stack| stack.kind == WaitKind::Task && stack.call_site() == wanted)
            .collect();
        assert_eq!(stacks.len(), 1, "one coroutine stack at {wanted}:\n{summary}");
        stacks[0]
    };
    let refreshers = tasks_at("refresh_cache", "async with CACHE_LOCK:");
    assert_eq!(refreshers.stats.threads.len(), REFRESHERS, "{summary}");
    assert_eq!(refreshers.object.as_deref(), Some("Lock CACHE_LOCK"));
    let fetchers = tasks_at("fetch_quote", "return await reader.read(100)");
    assert_eq!(fetchers.stats.threads.len(), FETCHERS, "{summary}");
    assert_eq!(fetchers.object, Some(format!("recv 127.0.0.1:{port}")));
    assert!(traced.out.stdout.contains("[Lock CACHE_LOCK]"), "{}", traced.out.stdout);

    // Every task's coroutine stack is the one the program sees (outermost first).
    let mut compared = 0;
    for stack in profile.stacks.iter().filter(|stack| stack.kind == WaitKind::Task) {
        let ours: Vec<&str> = stack.frames.iter().map(|frame| frame.name.as_str()).collect();
        for number in &stack.stats.threads {
            // The main task wrote the oracle, running: it is not in it.
            let Some(theirs) = oracle[format!("Task-{number}")].as_array() else {
                assert_eq!(*number, 1, "the program has no Task-{number}");
                continue;
            };
            let theirs: Vec<&str> = theirs.iter().filter_map(|frame| frame.as_str()).collect();
            assert_eq!(ours, theirs, "Task-{number}'s coroutines: ours, then the program's");
            compared += 1;
        }
    }
    assert!(compared >= REFRESHERS + FETCHERS, "only {compared} tasks compared");
    // The event loop's own thread, and the backend's, as py-spy reads them.
    assert_frames_match_py_spy(profile, workload.pid(), 2);

    // A recording, sampled or exact, ends with the tasks still pending, as a snapshot.
    for mode in ["sampled", "exact"] {
        let args = ["--duration", "1s", "--mode", mode];
        let recorded = record_profile(workload.pid(), &args, &dir, TIMEOUT);
        let tasks_at = |site: &str| -> usize {
            let tasks = recorded.profile.stacks.iter().filter(|stack| stack.kind == WaitKind::Task);
            tasks.filter(|stack| stack.call_site() == site).map(|s| s.stats.threads.len()).sum()
        };
        let recorded_summary = &recorded.out.stdout;
        assert_eq!(tasks_at(refreshers.call_site()), REFRESHERS, "{mode}:\n{recorded_summary}");
        assert_eq!(tasks_at(fetchers.call_site()), FETCHERS, "{mode}:\n{recorded_summary}");
    }

    // serve's snapshot of the process has the tasks too, in pprof.
    let (served, _) = served_threads(workload.pid(), &dir);
    let refreshers_served: usize = served
        .stacks
        .iter()
        .filter(|stack| stack.kind == WaitKind::Task && stack.call_site() == refreshers.call_site())
        .map(|stack| stack.stats.waits as usize)
        .sum();
    let served_summary = tracer_tests::top_stacks(&served, |_| true, 12);
    assert_eq!(refreshers_served, REFRESHERS, "served:\n{served_summary}");
}

/// A CPU-bound service: its worker threads take turns at the GIL, and their waits for it
/// are named so, on every CPython build at hand.
#[test]
fn waits_for_the_gil_are_named_the_gil() {
    for python in python_interpreters() {
        let mut cmd = Command::new(&python);
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/pycpu.py")).args(["4", "60"]);
        let (workload, _) = spawn_and_read_line("pycpu", cmd);
        let dir = TempDir::new("python-gil");
        let recorded = record_profile(workload.pid(), &["--duration", "1s"], &dir, TIMEOUT);
        let profile = &recorded.profile;
        let gil_threads: std::collections::BTreeSet<u64> = profile
            .stacks
            .iter()
            .filter(|stack| stack.object.as_deref() == Some("GIL"))
            .flat_map(|stack| stack.stats.threads.iter().copied())
            .collect();
        let summary = tracer_tests::top_stacks(profile, |_| true, 8);
        // Four workers and the main thread between its sleeps want the GIL.
        assert!(
            gil_threads.len() >= 4,
            "{}: GIL waits of {gil_threads:?}:\n{summary}",
            python.display()
        );
        let gil_sites = profile.stacks.iter().filter(|s| s.object.as_deref() == Some("GIL"));
        for stack in gil_sites {
            let frames: Vec<&str> = stack.frames.iter().map(|f| f.name.as_str()).collect();
            assert!(
                stack.call_site().contains("(pycpu.py:"),
                "{}: {} {frames:?}:\n{summary}",
                python.display(),
                stack.call_site()
            );
        }
    }
}
