//! Real-kernel tests of `tracer serve`: the real `go tool pprof` and a real Prometheus
//! read its endpoints, it follows a process by name across a restart, and bad input gets
//! clear answers. They need root and share the kernel, so they run one at a time
//! (`--test-threads=1`); none skips.

use std::{
    io::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use tracer_tests::{
    HTTP_TIMEOUT, Pileup, Profile, ProfileKind, Prometheus, ServeDaemon, TempDir, WaitKind,
    bpf_links_by_type, has_function, http_get_with, read_profile, run_with_timeout,
    start_rust_pileup, start_rust_stuck, start_workload, top_stacks, tracer_bin,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");
const RUST_PILEUP: &str = env!("CARGO_BIN_EXE_rust-pileup");
const RUST_STUCK: &str = env!("CARGO_BIN_EXE_rust-stuck");

/// Enough handlers for a clear pile-up on a 2-core machine (they are blocked nearly all
/// the time).
const HANDLERS: usize = 16;
/// The workloads outlive every test (their guards kill them at the end).
const WORKLOAD_SECONDS: f64 = 120.0;
/// Attaching loads and verifies the probes: seconds at most, even on a loaded machine.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Prometheus scrapes every second; this leaves room for its start-up and a slow scrape.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);
/// The issue asks for an exit within a second; this bound is generous so a loaded CI
/// machine does not fail the test, and the measured time is printed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The threads blocked now, as the daemon serves them (pprof), read back into the profile.
fn threads_now(daemon: &ServeDaemon, dir: &TempDir) -> Profile {
    let threads = daemon.get("/debug/pprof/threads");
    assert_eq!(threads.status, 200, "{}", threads.text());
    assert!(threads.body.starts_with(&[0x1f, 0x8b]), "/debug/pprof/threads is not gzip");
    let path = dir.join("threads.pb.gz");
    std::fs::write(&path, &threads.body)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let profile = read_profile(&path);
    assert_eq!(profile.kind, ProfileKind::Snapshot);
    profile
}

/// Waits until the daemon says it attached to `pid`.
fn wait_attached(daemon: &mut ServeDaemon, pid: u32) {
    let wanted = format!("attached to pid {pid} ");
    daemon.wait_for_log(|line| line.contains(&wanted), ATTACH_TIMEOUT);
}

#[test]
fn go_pprof_reads_the_block_profile_over_http() {
    block_profile_over_http(&[]);
}

#[test]
fn go_pprof_reads_the_block_profile_over_http_in_exact_mode() {
    block_profile_over_http(&["--mode", "exact"]);
}

#[test]
fn go_pprof_reads_the_block_profile_over_http_in_exact_mode_without_wakers() {
    block_profile_over_http(&["--mode", "exact", "--no-wakers"]);
}

/// How long a daemon may take to attach its links once it says it is attached (a
/// sampled one attaches its timers after its first read).
const LINKS_TIMEOUT: Duration = Duration::from_secs(10);

/// The BPF links a process holds that run on others' paths: every link but the task
/// iterator's, which runs only when read.
fn attached_links(pid: u32) -> u64 {
    bpf_links_by_type(pid).into_iter().filter(|(kind, _)| kind != "iter").map(|(_, n)| n).sum()
}

/// The pile-up's block profile from `serve` (sampled, its default, or as `options` say),
/// through go tool pprof.
fn block_profile_over_http(options: &[&str]) {
    let pileup = start_rust_pileup(SLOW_BACKEND, RUST_PILEUP, HANDLERS, WORKLOAD_SECONDS);
    let pid = pileup.workload.pid();
    let pid_arg = pid.to_string();
    let mut args = vec!["--pid", pid_arg.as_str()];
    args.extend(options);
    let mut daemon = ServeDaemon::start(&args);
    wait_attached(&mut daemon, pid);
    // Sampled, only the timers that make the passes in the kernel (a cpu-clock event of
    // each CPU, nothing on a tracepoint or the process); exact, `sched_switch` and the wake
    // probes (`sched_wakeup` and `csd_queue_cpu`, for wakes queued to the wakee's CPU), or
    // without wakers `sched_switch` alone.
    // SAFETY: sysconf reads a constant of the system.
    let cpus = u64::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap();
    let expected = match options {
        [] => cpus,
        [.., "--no-wakers"] => 1,
        _ => 3,
    };
    // The timers are attached after the sampler's first read, on its own thread.
    let deadline = Instant::now() + LINKS_TIMEOUT;
    let mut links = attached_links(daemon.pid());
    while links != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        links = attached_links(daemon.pid());
    }
    assert_eq!(links, expected, "serve {options:?} holds {links} BPF links");
    if options.is_empty() {
        let timers = bpf_links_by_type(daemon.pid()).get("perf").copied().unwrap_or(0);
        assert_eq!(timers, cpus, "serve's sampled passes: a perf link per CPU");
    }

    let dir = TempDir::new("serve-pprof");
    let url = format!("http://127.0.0.1:{}/debug/pprof/block?seconds=2", daemon.port);
    let mut cmd = Command::new("go");
    cmd.args(["tool", "pprof", "-top", &url]).env("PPROF_TMPDIR", dir.path());
    let out = run_with_timeout("go tool pprof", cmd, HTTP_TIMEOUT);
    assert!(
        out.status.success(),
        "go tool pprof failed ({}):\n{}\n{}\ntracer log:\n{}",
        out.status,
        out.stdout,
        out.stderr,
        daemon.log()
    );
    println!("{}", out.stdout.lines().filter(|l| l.contains('%')).collect::<Vec<_>>().join("\n"));
    assert!(
        out.stdout.contains("send_stat"),
        "go tool pprof -top names no send_stat:\n{}",
        out.stdout
    );
    assert!(out.stdout.contains("Duration: 2"), "not a 2 s window:\n{}", out.stdout);

    // Exact mode's waits under --min-wait, summed by kind in the kernel, are series too:
    // the pile-up's channel handoffs among them.
    let metrics = daemon.get("/metrics").text();
    let short_futex = metrics.lines().find_map(|line| {
        line.strip_prefix(r#"tracer_short_waits_total{kind="futex"} "#)?.parse::<u64>().ok()
    });
    match options {
        [] => assert_eq!(short_futex, None, "sampled: /metrics:\n{metrics}"),
        _ => assert!(short_futex > Some(0), "serve {options:?}: /metrics:\n{metrics}"),
    }

    // The threads blocked now, as pprof too: the handlers waiting at send_stat.
    let now = threads_now(&daemon, &dir);
    assert_eq!(now.pid, pid, "/debug/pprof/threads is of another process");
    assert!(
        now.stacks.iter().any(|s| s.kind == WaitKind::Futex && has_function(s, "send_stat")),
        "no thread blocked at send_stat in /debug/pprof/threads:\n{}",
        top_stacks(&now, |_| true, 20)
    );
}

#[test]
fn prometheus_scrapes_the_blocked_threads_of_the_stuck_site() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, HANDLERS, WORKLOAD_SECONDS);
    let pid = stuck.workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    wait_attached(&mut daemon, pid);
    let metrics = daemon.get("/metrics");
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    for name in [
        "tracer_blocked_threads{",
        "tracer_events_total ",
        "tracer_lost_events_total{reason=\"ring_buffer_full\"}",
        "tracer_cpu_seconds_total ",
        "tracer_resident_memory_bytes ",
    ] {
        assert!(metrics.text().contains(name), "/metrics has no {name}:\n{}", metrics.text());
    }

    let prometheus = Prometheus::start(daemon.port);
    println!("prometheus (pid {}) on 127.0.0.1:{}", prometheus.pid(), prometheus.port);
    let query = "tracer_blocked_threads{site=\"rust_stuck::send_stat\",kind=\"futex\"}";
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    let answer = loop {
        let answer = prometheus.query(query);
        if answer.contains("\"__name__\":\"tracer_blocked_threads\"") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus has no {query} after {PROMETHEUS_TIMEOUT:?}: {answer}\n/metrics:\n{}",
            daemon.get("/metrics").text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("{answer}");
    // Every handler is blocked for good: the gauge counts them all.
    assert!(answer.contains(&format!(",\"{HANDLERS}\"]")), "the gauge is not {HANDLERS}: {answer}");

    // Prometheus asked for OpenMetrics; a client that does not (curl, an older scraper)
    // gets Prometheus's text format, which promtool reads (it saw the counters untyped).
    assert!(metrics.head.contains("text/plain; version=0.0.4"), "{}", metrics.head);
    assert!(metrics.text().contains("# TYPE tracer_events_total counter"), "{}", metrics.text());
    assert!(!metrics.text().contains("# EOF"), "{}", metrics.text());
    let dir = tracer_tests::TempDir::new("metrics-text");
    let saved = dir.join("metrics.txt");
    std::fs::write(&saved, &metrics.body).expect("save /metrics");
    let mut promtool = Command::new("sh");
    promtool.arg("-c").arg(format!("promtool check metrics < '{}'", saved.display()));
    let checked = tracer_tests::run_with_timeout("promtool", promtool, PROMETHEUS_TIMEOUT);
    assert!(
        checked.status.success(),
        "promtool check metrics:\n{}{}",
        checked.stdout,
        checked.stderr
    );
}

#[test]
fn serve_follows_a_process_by_name_across_restarts() {
    // A copy of the workload under a name no other process has.
    let dir = TempDir::new("serve-follow");
    let name = format!("follow-{}", std::process::id() % 100_000);
    let bin = dir.join(&name);
    std::fs::copy(RUST_STUCK, &bin).unwrap_or_else(|e| panic!("copy {RUST_STUCK}: {e}"));
    let bin = bin.to_str().expect("utf-8 temp path").to_string();

    let first = start_rust_stuck(SLOW_BACKEND, &bin, 2, WORKLOAD_SECONDS);
    let first_pid = first.workload.pid();
    let mut daemon = ServeDaemon::start(&["--comm", &name]);
    wait_attached(&mut daemon, first_pid);
    drop(first); // kills the workload

    daemon.wait_for_log(
        |line| line.contains(&format!("pid {first_pid} ({name}) exited")),
        ATTACH_TIMEOUT,
    );
    let second = start_rust_stuck(SLOW_BACKEND, &bin, 2, WORKLOAD_SECONDS);
    let second_pid = second.workload.pid();
    wait_attached(&mut daemon, second_pid);
    println!("{}", daemon.log());

    // The threads served now are the second process's: its two handlers at send_stat.
    let now = threads_now(&daemon, &dir);
    assert_eq!(now.pid, second_pid, "/debug/pprof/threads is not of the restarted process");
    let at_send_stat = tracer_tests::thread_ids(&now, |s| {
        s.kind == WaitKind::Futex && has_function(s, "send_stat")
    });
    assert_eq!(
        at_send_stat.len(),
        2,
        "threads blocked at send_stat in /debug/pprof/threads:\n{}",
        top_stacks(&now, |_| true, 20)
    );
    // The human view is still served.
    let text = daemon.get("/debug/pprof/threads?debug=1");
    assert_eq!(text.status, 200, "{}", text.text());
    assert!(!text.text().trim().is_empty(), "/debug/pprof/threads?debug=1 is empty");
}

#[test]
fn bad_requests_get_clear_answers() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, 2, WORKLOAD_SECONDS);
    let pid = stuck.workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    wait_attached(&mut daemon, pid);

    for bad in ["abc", "0", "-3", "1.5"] {
        let response = daemon.get(&format!("/debug/pprof/block?seconds={bad}"));
        assert_eq!(response.status, 400, "seconds={bad}: {}", response.text());
        assert!(response.text().contains("whole number of seconds"), "{}", response.text());
    }
    let missing = daemon.get("/debug/pprof/heap");
    assert_eq!(missing.status, 404, "{}", missing.text());
    // Goroutines are a Go program's: a Rust one is told where its threads are.
    let goroutines = daemon.get("/debug/pprof/goroutine?debug=1");
    assert_eq!(goroutines.status, 404, "{}", goroutines.text());
    assert!(goroutines.text().contains("is not a Go program"), "{}", goroutines.text());
    assert!(
        !daemon.get("/metrics").text().contains("tracer_goroutines"),
        "a Rust program's metrics have goroutines"
    );
    let index = daemon.get("/");
    assert_eq!(index.status, 200);
    for endpoint in [
        "/debug/pprof/block",
        "/debug/pprof/threads",
        "/debug/pprof/goroutine",
        "/metrics",
        "/healthz",
    ] {
        assert!(index.text().contains(endpoint), "/ does not list {endpoint}:\n{}", index.text());
    }
    let health = daemon.get("/healthz");
    assert_eq!(health.status, 200);
    assert!(health.text().contains(&format!("pid {pid}")), "{}", health.text());
}

#[test]
fn an_address_in_use_is_one_line_and_exit_1() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, 2, WORKLOAD_SECONDS);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("local address").to_string();
    let mut cmd = Command::new(tracer_bin());
    cmd.args(["serve", "--pid", &stuck.workload.pid().to_string(), "--listen", &address]);
    let out = run_with_timeout("tracer serve", cmd, ATTACH_TIMEOUT);
    println!("{}", out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "not one line:\n{}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!("tracer: cannot listen on {address}: "))
            && out.stderr.contains("in use"),
        "{}",
        out.stderr
    );
}

/// Off loopback, serve needs a token or `--insecure`: refused in one line without either,
/// and warned of in one line with `--insecure`.
#[test]
fn off_loopback_serve_wants_a_token_or_insecure() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, 2, WORKLOAD_SECONDS);
    let pid = stuck.workload.pid().to_string();
    let serve = |extra: &[&str]| {
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "INT", "3"]).arg(tracer_bin());
        cmd.args(["serve", "--pid", &pid, "--listen", "0.0.0.0:0"]).args(extra);
        run_with_timeout("tracer serve", cmd, ATTACH_TIMEOUT)
    };
    let refused = serve(&[]);
    assert!(!refused.status.success(), "serve started off loopback without a token");
    assert_eq!(
        refused.stderr.lines().collect::<Vec<_>>(),
        ["tracer: 0.0.0.0:0 is not a loopback address: give --token-file (a bearer token every \
             request must carry), TLS (--tls-cert and --tls-key, with --tls-client-ca to ask for \
             client certificates), or --insecure to let anyone who reaches it read the target's \
             call stacks"]
    );
    let insecure = serve(&["--insecure"]);
    let warnings: Vec<&str> = insecure.stderr.lines().filter(|l| l.contains("loopback")).collect();
    assert!(
        warnings.len() == 1 && warnings[0].starts_with("tracer: warning: listening on 0.0.0.0:"),
        "stderr:\n{}",
        insecure.stderr
    );
}

/// With a token, every endpoint but /healthz refuses requests without it or with another
/// one, and a real Prometheus that sends it (`authorization: credentials_file`) scrapes.
#[test]
fn a_token_guards_every_endpoint_but_healthz() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, HANDLERS, WORKLOAD_SECONDS);
    let pid = stuck.workload.pid();
    let dir = TempDir::new("serve-token");
    let token_file = dir.join("token");
    let token = format!("tracer-test-{pid}-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("write the token file");
    let token_arg = token_file.to_str().expect("utf-8 path");
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string(), "--token-file", token_arg]);
    wait_attached(&mut daemon, pid);
    let right = format!("Bearer {token}");
    let wrong = format!("Bearer {token}x");
    for path in ["/", "/metrics", "/debug/pprof/threads", "/debug/pprof/block?seconds=1"] {
        for headers in [&[][..], &[("Authorization", wrong.as_str())][..]] {
            let refused = http_get_with(daemon.port, path, headers, HTTP_TIMEOUT);
            assert_eq!(refused.status, 401, "{path} with {headers:?}: {}", refused.text());
        }
        let answered = http_get_with(daemon.port, path, &[("Authorization", &right)], HTTP_TIMEOUT);
        assert_eq!(answered.status, 200, "{path} with the token: {}", answered.text());
    }
    let health = daemon.get("/healthz");
    assert_eq!(health.status, 200, "/healthz stays open: {}", health.text());

    let prometheus = Prometheus::start_with_token(daemon.port, Some(&token_file));
    let query = "tracer_blocked_threads{site=\"rust_stuck::send_stat\",kind=\"futex\"}";
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    loop {
        let answer = prometheus.query(query);
        if answer.contains(&format!(",\"{HANDLERS}\"]")) {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus never scraped {query}: {answer}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn sigterm_detaches_and_exits_promptly() {
    stops_promptly_at(libc::SIGTERM, "SIGTERM");
}

/// SIGHUP (the terminal serve was started from closed) stops it as SIGTERM does: it
/// killed the daemon on the spot, and the open window's client got an empty reply.
#[test]
fn sighup_detaches_and_exits_promptly() {
    // A daemon started with SIGHUP ignored (the tests run under nohup) rightly outlives
    // it: the daemon gets the default, as from a terminal.
    // SAFETY: sets this process's disposition of one signal to the default.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_DFL) };
    stops_promptly_at(libc::SIGHUP, "SIGHUP");
}

fn stops_promptly_at(signal: libc::c_int, name: &str) {
    let pileup = start_rust_pileup(SLOW_BACKEND, RUST_PILEUP, HANDLERS, WORKLOAD_SECONDS);
    let pid = pileup.workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    wait_attached(&mut daemon, pid);
    // A long profile in flight must not hold the exit up: it is answered with what it
    // held.
    let mut pending = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    pending
        .write_all(b"GET /debug/pprof/block?seconds=60 HTTP/1.1\r\nHost: tracer\r\n\r\n")
        .expect("send a request");
    daemon.wait_for_log(|line| line.contains("a window of 60s open"), HTTP_TIMEOUT);
    let (status, took) = daemon.stop_by(signal, EXIT_TIMEOUT);
    println!("tracer serve exited {took:?} after {name} ({status})");
    assert!(status.success(), "exit status {status}; log:\n{}", daemon.log());
    assert!(took < EXIT_TIMEOUT);
    assert!(daemon.log().contains(name), "{}", daemon.log());
    let mut answer = Vec::new();
    pending.set_read_timeout(Some(HTTP_TIMEOUT)).expect("a read timeout");
    std::io::Read::read_to_end(&mut pending, &mut answer).expect("read the answer");
    let head = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "the open window answered: {head:?}");
    assert!(daemon.log().contains("serve is stopping"), "{}", daemon.log());
    // The probes are gone: the workload keeps running untraced.
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
}

/// A block window open when its target exits ends then, and its client gets the waits
/// of the process's last seconds (`serve --pid` stops after its target).
#[test]
fn a_block_window_open_when_the_target_exits_gets_its_waits() {
    let pileup = start_rust_pileup(SLOW_BACKEND, RUST_PILEUP, HANDLERS, WORKLOAD_SECONDS);
    let pid = pileup.workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string(), "--mode", "exact"]);
    wait_attached(&mut daemon, pid);
    let port = daemon.port;
    let window = std::thread::spawn(move || {
        let started = Instant::now();
        let answer = http_get_with(port, "/debug/pprof/block?seconds=60", &[], HTTP_TIMEOUT);
        (answer, started.elapsed())
    });
    // The window holds two seconds of the pile-up, then its target is killed.
    daemon.wait_for_log(|line| line.contains("block profile: a window of 60s open"), HTTP_TIMEOUT);
    std::thread::sleep(Duration::from_secs(2));
    let Pileup { workload, backend: _backend } = pileup;
    drop(workload);
    let status = daemon.wait_exit(HTTP_TIMEOUT);
    assert!(status.success(), "exit status {status}; log:\n{}", daemon.log());
    let (answer, took) = window.join().expect("the client thread");
    println!("the 60 s window answered after {took:?}");
    assert!(daemon.log().contains("serve is stopping"), "{}", daemon.log());
    assert_eq!(answer.status, 200, "{}\nlog:\n{}", answer.text(), daemon.log());
    assert!(took < Duration::from_secs(30), "ended with its target, not at 60 s: {took:?}");
    let dir = TempDir::new("serve-window-exit");
    let path = dir.join("block.pb.gz");
    std::fs::write(&path, &answer.body).expect("write the profile");
    let profile = read_profile(&path);
    assert_eq!(profile.pid, pid);
    assert!(
        profile.stacks.iter().any(|s| s.kind == WaitKind::Futex && has_function(s, "send_stat")),
        "the handlers' waits before the exit:\n{}",
        top_stacks(&profile, |_| true, 20)
    );
    // Its counts run to the detach, which came before the window closed.
    assert!(profile.counts.long_waits > 0, "counts: {:?}", profile.counts);
}

/// Receives two datagrams on a Unix socket bound at `argv[1]`, each in its own function,
/// then creates `argv[2]` and sleeps (nanosleep is not traced). The store after each
/// receive keeps it from being a tail call.
const WORD_READER_SOURCE: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
static volatile int words;
__attribute__((noinline)) int wait_for_first_word(int fd) {
    char word;
    int received = (int)recv(fd, &word, 1, 0);
    words++;
    return received;
}
__attribute__((noinline)) int wait_for_last_word(int fd) {
    char word;
    int received = (int)recv(fd, &word, 1, 0);
    words++;
    return received;
}
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    strncpy(address.sun_path, argv[1], sizeof address.sun_path - 1);
    int words_in = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (words_in < 0 || bind(words_in, (struct sockaddr *)&address, sizeof address) < 0)
        return 1;
    printf("ready\n");
    fflush(stdout);
    if (wait_for_first_word(words_in) != 1 || wait_for_last_word(words_in) != 1) return 1;
    if (open(argv[2], O_CREAT | O_WRONLY, 0600) < 0) return 1;
    for (;;) sleep(1000);
}
"#;

#[test]
fn a_wait_ended_just_before_sigterm_is_in_the_open_window() {
    let dir = TempDir::new("serve-last-drain");
    let reader = dir.join("word-reader");
    gcc(WORD_READER_SOURCE, &[], &reader);
    let socket = dir.join("words");
    let woke = dir.join("woke");
    let mut cmd = Command::new(&reader);
    cmd.arg(&socket).arg(&woke);
    let workload = start_workload("word-reader", cmd);
    let pid = workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string(), "--mode", "exact"]);
    wait_attached(&mut daemon, pid);
    let port = daemon.port;
    let window = std::thread::spawn(move || {
        http_get_with(port, "/debug/pprof/block?seconds=60", &[], HTTP_TIMEOUT)
    });
    daemon.wait_for_log(|line| line.contains("block profile: a window of 60s open"), HTTP_TIMEOUT);
    // The first word ends the receive begun before the attach; the second, begun under
    // the probes, is blocked a good while (well over --min-wait), then woken, and SIGTERM
    // follows as soon as the reader is past it: its record has not been drained yet.
    let sender = std::os::unix::net::UnixDatagram::unbound().expect("a Unix socket");
    let write_word = || {
        sender.send_to(b"w", &socket).unwrap_or_else(|e| panic!("send to the reader: {e}"));
    };
    write_word();
    std::thread::sleep(Duration::from_millis(500));
    write_word();
    let deadline = Instant::now() + HTTP_TIMEOUT;
    while !woke.exists() {
        assert!(Instant::now() < deadline, "the reader never woke");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (status, took) = daemon.terminate(EXIT_TIMEOUT);
    println!("tracer serve exited {took:?} after SIGTERM ({status})");
    assert!(status.success(), "exit status {status}; log:\n{}", daemon.log());
    let answer = window.join().expect("the client thread");
    assert_eq!(answer.status, 200, "{}\nlog:\n{}", answer.text(), daemon.log());
    let path = dir.join("block.pb.gz");
    std::fs::write(&path, &answer.body).expect("write the profile");
    let profile = read_profile(&path);
    let reads: Vec<_> = profile
        .stacks
        .iter()
        .filter(|stack| stack.kind == WaitKind::Recv && has_function(stack, "wait_for_last_word"))
        .collect();
    assert!(
        reads.iter().any(|stack| stack.stats.total_ns >= 400_000_000),
        "the read that ended just before SIGTERM:\n{}\nlog:\n{}",
        top_stacks(&profile, |_| true, 20),
        daemon.log()
    );
    // Its counts are the attachment's to its end, though the window closed after the
    // detach.
    assert!(profile.counts.long_waits >= 1, "counts: {:?}", profile.counts);
    drop(workload);
}

/// A library the workload loads only when told to (after the daemon attached), and the
/// function in it that waits: poll(2) with no descriptors, then a store, so the call
/// is not a tail call and the function stays on the stack.
const LATE_LIBRARY_SOURCE: &str = r#"
#include <poll.h>
static volatile unsigned long calls;
__attribute__((noinline)) void late_library_wait(void) {
    poll(0, 0, LATE_WAIT_MS);
    calls++;
}
"#;

/// Waits (in nanosleep, which is not traced) until the trigger file exists, then loads
/// the library and waits in it forever.
const LATE_MAIN_SOURCE: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    printf("ready\n");
    fflush(stdout);
    while (access(argv[2], F_OK) != 0) usleep(20000);
    void *library = dlopen(argv[1], RTLD_NOW);
    if (!library) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    void (*wait_in_library)(void) = (void (*)(void))dlsym(library, "late_library_wait");
    if (!wait_in_library) return 1;
    for (;;) wait_in_library();
}
"#;

/// Each wait in the late library: well over --min-wait, and many fit in the window.
const LATE_WAIT_MS: u32 = 200;

/// Compiles C `source` with gcc and `flags` into `out`.
fn gcc(source: &str, flags: &[&str], out: &std::path::Path) {
    let dir = out.parent().expect("a directory");
    let file =
        dir.join(format!("{}.c", out.file_name().and_then(|n| n.to_str()).expect("a file name")));
    std::fs::write(&file, source).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    let output = Command::new("gcc")
        .args(["-O2", "-g", "-Wall", "-Werror"])
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("spawn gcc: {e}"));
    assert!(
        output.status.success(),
        "gcc {} failed ({}):\n{}",
        file.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn block_profile_names_a_library_loaded_after_attach() {
    let dir = TempDir::new("serve-dlopen");
    let library = dir.join("liblate.so");
    let wait_ms = format!("-DLATE_WAIT_MS={LATE_WAIT_MS}");
    gcc(LATE_LIBRARY_SOURCE, &["-shared", "-fPIC", &wait_ms], &library);
    let main = dir.join("late-dlopen");
    gcc(LATE_MAIN_SOURCE, &["-ldl"], &main);
    let trigger = dir.join("load-now");

    let mut cmd = Command::new(&main);
    cmd.arg(&library).arg(&trigger);
    let workload = start_workload("late-dlopen", cmd);
    let pid = workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    wait_attached(&mut daemon, pid);
    std::fs::write(&trigger, b"").unwrap_or_else(|e| panic!("create the trigger: {e}"));

    let url = format!("http://127.0.0.1:{}/debug/pprof/block?seconds=3", daemon.port);
    let mut cmd = Command::new("go");
    cmd.args(["tool", "pprof", "-traces", &url]).env("PPROF_TMPDIR", dir.path());
    let out = run_with_timeout("go tool pprof", cmd, HTTP_TIMEOUT);
    assert!(
        out.status.success(),
        "go tool pprof failed ({}):\n{}\n{}\ntracer log:\n{}",
        out.status,
        out.stdout,
        out.stderr,
        daemon.log()
    );
    println!("{}", out.stdout);
    assert!(
        out.stdout.contains("late_library_wait"),
        "the block profile does not name late_library_wait of the library loaded after \
         attach:\n{}\ntracer log:\n{}",
        out.stdout,
        daemon.log()
    );
    // The call site is the library's function, the innermost frame of the program's own
    // modules, not `main` below it nor libc's poll above it.
    drop(daemon);
    let recorded = tracer_tests::record_profile(pid, &["--duration", "1s"], &dir, HTTP_TIMEOUT);
    let sites: Vec<&str> = recorded
        .profile
        .stacks
        .iter()
        .filter(|stack| has_function(stack, "late_library_wait"))
        .map(|stack| stack.call_site())
        .collect();
    assert!(
        !sites.is_empty() && sites.iter().all(|site| *site == "late_library_wait"),
        "call sites of the waits in the late library: {sites:?}"
    );
    drop(workload);
}

/// Scrapes in a row, as several Prometheus servers would send.
const SCRAPES: usize = 20;

#[test]
fn metrics_show_every_loss_and_frequent_scrapes_are_answered() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, HANDLERS, WORKLOAD_SECONDS);
    let pid = stuck.workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    wait_attached(&mut daemon, pid);
    let started = Instant::now();
    for scrape in 0..SCRAPES {
        let metrics = daemon.get("/metrics");
        assert_eq!(metrics.status, 200, "scrape {scrape}: {}", metrics.text());
        let text = metrics.text();
        for line in [
            "tracer_lost_events_total{reason=\"metrics_window\"} 0",
            "tracer_lost_events_total{reason=\"block_window\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "scrape {scrape}: no line {line}:\n{text}");
        }
        let blocked: u64 = text
            .lines()
            .filter(|l| {
                l.starts_with(r#"tracer_blocked_threads{kind="futex",site="rust_stuck::send_stat""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(
            blocked, HANDLERS as u64,
            "scrape {scrape}: the blocked handlers are not all counted:\n{text}"
        );
    }
    println!("{SCRAPES} scrapes in {:?}", started.elapsed());
}

/// Clients that connect, send nothing and reconnect when closed.
const IDLE_CLIENTS: usize = 64;
/// Each request must be answered within this while they do.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections do not starve the endpoints: with 64 loopback clients that connect,
/// send nothing and reconnect whenever closed, `/metrics` and `/healthz` are still
/// answered (issue 16, item 3: none of 4 were, within 10 s).
#[test]
fn idle_connections_do_not_starve_the_endpoints() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, 2, WORKLOAD_SECONDS);
    let pid = stuck.workload.pid();
    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    wait_attached(&mut daemon, pid);
    let port = daemon.port;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let idlers: Vec<_> = (0..IDLE_CLIENTS)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                    // Wait, sending nothing, until the daemon closes the connection.
                    let mut byte = [0u8; 1];
                    while !stop.load(Ordering::Relaxed) {
                        match std::io::Read::read(&mut stream, &mut byte) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                }
            })
        })
        .collect();
    // Let the idle clients take their connections first.
    std::thread::sleep(Duration::from_millis(500));
    for path in ["/metrics", "/healthz", "/metrics", "/healthz", "/metrics", "/metrics"] {
        let started = Instant::now();
        let response = tracer_tests::http_get(port, path, ANSWER_TIMEOUT);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        println!("{path} answered in {:?} beside {IDLE_CLIENTS} idle clients", started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for idler in idlers {
        idler.join().expect("idle client");
    }
}

/// An event-driven writer whose peers stopped reading: its one thread waits in epoll,
/// and its backed-up sockets (to the backend, and a socketpair's end; the pair's other
/// end, which it never reads) are what /metrics says, as Prometheus reads it; the daemon of a cgroup's processes labels them with the
/// process.
#[test]
fn prometheus_scrapes_the_backed_up_sockets_of_an_event_driven_writer() {
    const NAME: &str = "c-event-writer";
    let build = TempDir::new("serve-backed-up-build");
    let bin = tracer_tests::build_c(build.path(), tracer_tests::C_EVENT_WRITER_SOURCE, NAME);
    // Made first, so it is removed after the processes in it are killed.
    let cgroup = tracer_tests::TestCgroup::make("tracer-backed-up");
    let (backend, port) = tracer_tests::start_dead_backend(SLOW_BACKEND, WORKLOAD_SECONDS);
    let mut cmd = Command::new(&bin);
    cmd.arg(port.to_string()).arg(WORKLOAD_SECONDS.to_string());
    let writer = start_workload(NAME, cmd);
    let pid = writer.pid();
    cgroup.add(pid);
    cgroup.add(backend.pid());
    // Another writer, to a backend that reads slowly: held back, not stopped.
    let (slow_backend, slow_port) = tracer_tests::start_backend(SLOW_BACKEND, WORKLOAD_SECONDS);
    let mut cmd = Command::new(&bin);
    cmd.arg(slow_port.to_string()).arg(WORKLOAD_SECONDS.to_string());
    let slow_writer = start_workload(NAME, cmd);
    cgroup.add(slow_writer.pid());
    cgroup.add(slow_backend.pid());
    // A TCP socket counts once nothing moved for a second.
    std::thread::sleep(Duration::from_millis(1200));

    let mut daemon = ServeDaemon::start(&["--pid", &pid.to_string()]);
    wait_attached(&mut daemon, pid);
    let prometheus = Prometheus::start(daemon.port);
    let query = "tracer_backed_up_sockets{way=\"unsent\"}";
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    let answer = loop {
        let answer = prometheus.query(query);
        if answer.contains("\"__name__\":\"tracer_backed_up_sockets\"") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus has no {query}: {answer}\n/metrics:\n{}",
            daemon.get("/metrics").text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("{answer}");
    assert!(answer.contains(",\"2\"]"), "two sockets backed up: {answer}");
    let metrics = daemon.get("/metrics").text();
    assert!(metrics.contains("tracer_backed_up_unreadable_processes 0"), "{metrics}");
    assert!(
        metrics.lines().any(|line| line == "tracer_backed_up_sockets{way=\"unread\"} 1"),
        "the pair's end the writer never reads: {metrics}"
    );
    drop(prometheus);
    daemon.terminate(EXIT_TIMEOUT);

    // A cgroup's, the writers and the backends (one read of their namespace's table): one
    // series per process and way, labelled with the process; the slow reader's writer's
    // connection in a gauge of its own.
    let daemon = ServeDaemon::start(&["--cgroup", cgroup.path().to_str().expect("utf-8")]);
    let series =
        |pid: u32, comm: &str| format!("tracer_backed_up_sockets{{pid=\"{pid}\",comm=\"{comm}\"");
    let (writer_series, backend_series) =
        (series(pid, NAME), series(backend.pid(), "slow-backend"));
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        let metrics = daemon.get("/metrics").text();
        let lines = |wanted: &str| -> Vec<&str> {
            metrics.lines().filter(|line| line.starts_with(wanted)).collect()
        };
        let (writer, backend) = (lines(&writer_series), lines(&backend_series));
        let slow =
            format!("tracer_slow_reader_sockets{{pid=\"{}\",comm=\"{NAME}\"", slow_writer.pid());
        let slow = lines(&slow);
        if !writer.is_empty() && !backend.is_empty() && !slow.is_empty() {
            assert!(slow.len() == 1 && slow[0].ends_with("way=\"unsent\"} 1"), "{slow:?}");
            // Its connection to the slow backend is not among the stopped: only the
            // socketpair's end is.
            let stopped =
                format!("tracer_backed_up_sockets{{pid=\"{}\",comm=\"{NAME}\"", slow_writer.pid());
            let stopped = lines(&stopped);
            let unsent = stopped.iter().find(|line| line.contains("way=\"unsent\""));
            assert!(unsent.is_some_and(|line| line.ends_with("} 1")), "{stopped:?}");
            let way = |way: &str, count: u32| format!("way=\"{way}\"}} {count}");
            assert_eq!(writer.len(), 2, "{writer:?}");
            assert!(writer.iter().any(|line| line.ends_with(&way("unsent", 2))), "{writer:?}");
            assert!(writer.iter().any(|line| line.ends_with(&way("unread", 1))), "{writer:?}");
            assert!(backend.len() == 1 && backend[0].ends_with(&way("unread", 1)), "{backend:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no backed-up series of both in /metrics:\n{metrics}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
