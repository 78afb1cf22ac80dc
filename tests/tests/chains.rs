//! Real-kernel tests of the wait chains: from the pile-up's call site, through the thread
//! that wakes it, to what that thread is blocked on and the process behind it.
//!
//! - C through glibc, two processes: handlers on a condition variable, woken by a reporter
//!   blocked in `send()` to slow-backend (another process);
//! - Rust without frame pointers: the same through a std `sync_channel`, again with
//!   slow-backend behind a Unix stream socket, and with slow-backend in a network
//!   namespace of its own, reached over a veth pair;
//! - a snapshot of threads on a pthread mutex names its holder and the holder's stack;
//! - a snapshot of a protocol deadlock names the peer's threads waiting on the connection;
//! - `tracer report` keeps the chains of a saved recording.
//!
//! They need root and share the kernel, so they run one at a time (`--test-threads=1`).

use std::process::Command;
use std::time::Duration;

use tracer::chains::{Terminal, ThreadState, WaitChain};
use tracer_tests::{
    C_DEADLOCK_SOURCE, C_OBJECTS_SOURCE, Pileup, Profile, TempDir, WaitKind, assert_success,
    build_c, build_c_pileup, read_profile, record_profile, run_tool, snapshot_profile,
    spawn_and_read_line, spawn_backend, start_c_pileup, start_rust_pileup,
    start_rust_pileup_over_unix, start_stuck, start_workload, tracer_report,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");
const RUST_PILEUP: &str = env!("CARGO_BIN_EXE_rust-pileup");

/// Handlers behind the queue: a pile-up no one can miss, quick to start.
const HANDLERS: usize = 16;
/// The workloads outlive every test; their guards kill them when the test ends.
const WORKLOAD_SECONDS: f64 = 120.0;
/// Long enough for hundreds of wakes of the handlers by the reporter.
const RECORD_DURATION: &str = "3s";
/// Recording, attaching, unwinding and symbolizing with a wide margin: only a hang reaches it.
const TIMEOUT: Duration = Duration::from_secs(90);

/// The one chain that starts at `site`, or a panic that shows them all.
fn chain_at<'a>(profile: &'a Profile, site: &str) -> &'a WaitChain {
    let at: Vec<&WaitChain> = profile.chains.iter().filter(|c| c.start.site == site).collect();
    assert_eq!(at.len(), 1, "one chain at {site}; the chains: {:#?}", profile.chains);
    at[0]
}

/// The pile-up's chain: the handlers at `waiting_site` (futex) ← woken by the reporter,
/// blocked in `send_site` [send] to the backend's endpoint → slow-backend's pid; and the
/// same in the printed line.
fn assert_pileup_chain(
    pileup: &Pileup,
    label: &str,
    waiting_site: &str,
    send_site: &str,
    backend_ip: &str,
) {
    let dir = TempDir::new(label);
    let towers = dir.join("waits.chains.svg");
    let towers_arg = towers.to_str().expect("utf-8 path");
    let args = ["--duration", RECORD_DURATION, "--output", towers_arg];
    let traced = record_profile(pileup.workload.pid(), &args, &dir, TIMEOUT);
    let chain = chain_at(&traced.profile, waiting_site);
    assert_eq!(chain.start.kind, WaitKind::Futex, "{chain:#?}");
    assert_eq!(chain.threads, HANDLERS as u64, "every handler at the start: {chain:#?}");
    assert_eq!(chain.hops.len(), 1, "{chain:#?}");
    let hop = &chain.hops[0];
    assert_eq!(hop.waker, "reporter", "{chain:#?}");
    assert_eq!((hop.at.site.as_str(), hop.at.kind), (send_site, WaitKind::Send), "{chain:#?}");
    let Terminal::Endpoint { endpoint, peer: Some(peer), .. } = &chain.terminal else {
        panic!("the chain ends at an endpoint with its peer: {chain:#?}");
    };
    assert_eq!(hop.at.object.as_ref(), Some(endpoint), "{chain:#?}");
    assert!(endpoint.starts_with(&format!("{backend_ip}:")), "{chain:#?}");
    assert_eq!(peer.pid, pileup.backend.pid(), "the peer is slow-backend: {chain:#?}");
    assert_eq!(peer.comm, "slow-backend", "{chain:#?}");
    assert!(!peer.threads.is_empty(), "what the peer's threads do: {chain:#?}");
    // Its reader sleeps between reads of a buffer that is never empty: no thread of it
    // waits on the connection.
    assert_eq!(peer.waiting_on_socket, Some(Vec::new()), "{chain:#?}");

    // The line the reader sees, at the top of the summary.
    let stdout = &traced.out.stdout;
    let section = stdout.split("WAIT CHAINS\n").nth(1).expect("a WAIT CHAINS section");
    let line = section.lines().next().expect("a chain line").trim();
    let expected_start = format!("{HANDLERS} threads at {waiting_site} [futex");
    let expected_hop = "← woken by reporter, blocked ".to_owned();
    let expected_send = format!("in {send_site} [send {endpoint}: send buffer full");
    let expected_peer = format!("→ peer pid {} (slow-backend): ", peer.pid);
    let expected_none = "; none of its threads waits on this connection".to_owned();
    for part in [&expected_start, &expected_hop, &expected_send, &expected_peer, &expected_none] {
        assert!(line.contains(part.as_str()), "{part:?} missing from the chain line:\n{line}");
    }
    assert!(line.starts_with(&expected_start), "{line}");
    assert!(
        stdout.find("WAIT CHAINS") < stdout.find("CALL SITE"),
        "the chains come first:\n{stdout}"
    );

    // The flamegraph of towers: well-formed, and the reporter's send stands on the
    // handlers' wait.
    run_tool("xmllint", &["--noout", towers_arg], TIMEOUT);
    let svg = std::fs::read_to_string(&towers).expect("read the chains flamegraph");
    for frame in ["[woken by reporter]", send_site, "→ peer pid"] {
        assert!(svg.contains(frame), "{frame:?} missing from the chains flamegraph");
    }
}

#[test]
fn c_condition_variable_pileup_leads_to_the_slow_reader_in_another_process() {
    let build = TempDir::new("chains-c-build");
    let bin = build_c_pileup(build.path());
    let pileup = start_c_pileup(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    assert_pileup_chain(&pileup, "chains-c", "enqueue_stat", "send_to_backend", "127.0.0.1");
}

#[test]
fn rust_sync_channel_pileup_leads_to_the_slow_tcp_peer() {
    let pileup = start_rust_pileup(SLOW_BACKEND, RUST_PILEUP, HANDLERS, WORKLOAD_SECONDS);
    assert_pileup_chain(
        &pileup,
        "chains-rust",
        "rust_pileup::send_stat",
        "rust_pileup::write_to_backend",
        "127.0.0.1",
    );
}

/// The backend's address in its network namespace, and the host side's.
const NETNS_BACKEND_IP: &str = "10.213.0.2";
const NETNS_HOST_IP: &str = "10.213.0.1";

/// The Rust pile-up on the host, its backend in a network namespace of its own reached over
/// a veth pair, as a container on a bridge is: the peer is found in the other namespace.
#[test]
fn rust_pileup_leads_to_its_peer_in_another_network_namespace() {
    // Inside a new network namespace: a veth pair with its outer end in ours, both ends
    // addressed and up, then the backend on the inner address. The pair goes with the
    // namespace, when the backend exits.
    let script = r#"set -e
ip link set lo up
ip link add "$INNER" type veth peer name "$OUTER" netns "$HOST_PID"
nsenter -t "$HOST_PID" -n ip addr add "$HOST_IP/24" dev "$OUTER"
nsenter -t "$HOST_PID" -n ip link set "$OUTER" up
ip addr add "$BACKEND_IP/24" dev "$INNER"
ip link set "$INNER" up
exec "$BACKEND" --bind "$BACKEND_IP" --seconds "$SECONDS_LEFT"
"#;
    let suffix = std::process::id() % 100_000;
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "sh", "-c", script])
        .env("INNER", format!("tri{suffix}"))
        .env("OUTER", format!("tro{suffix}"))
        .env("HOST_PID", std::process::id().to_string())
        .env("HOST_IP", NETNS_HOST_IP)
        .env("BACKEND_IP", NETNS_BACKEND_IP)
        .env("BACKEND", SLOW_BACKEND)
        .env("SECONDS_LEFT", (WORKLOAD_SECONDS + 5.0).to_string());
    let (backend, port) = spawn_backend("slow-backend in a network namespace", cmd);
    let own = std::fs::read_link("/proc/self/ns/net").expect("our network namespace");
    let its = std::fs::read_link(format!("/proc/{}/ns/net", backend.pid())).expect("its");
    assert_ne!(own, its, "the backend has a network namespace of its own");
    let mut cmd = Command::new(RUST_PILEUP);
    cmd.args(["--backend", &format!("{NETNS_BACKEND_IP}:{port}")]).args([
        "--handlers",
        &HANDLERS.to_string(),
        "--seconds",
        &WORKLOAD_SECONDS.to_string(),
    ]);
    let workload = start_workload("rust-pileup", cmd);
    let pileup = Pileup { workload, backend };
    assert_pileup_chain(
        &pileup,
        "chains-netns",
        "rust_pileup::send_stat",
        "rust_pileup::write_to_backend",
        NETNS_BACKEND_IP,
    );
}

/// The same pile-up with the backend behind a Unix stream socket: the chain ends at the
/// socket's path, and its peer (found by the peer socket's inode) is slow-backend.
#[test]
fn rust_pileup_over_a_unix_socket_leads_to_the_slow_peer() {
    let dir = TempDir::new("chains-unix");
    let path = dir.join("backend.sock");
    let pileup =
        start_rust_pileup_over_unix(SLOW_BACKEND, RUST_PILEUP, &path, HANDLERS, WORKLOAD_SECONDS);
    let args = ["--duration", RECORD_DURATION];
    let traced = record_profile(pileup.workload.pid(), &args, &dir, TIMEOUT);
    let chain = chain_at(&traced.profile, "rust_pileup::send_stat");
    assert_eq!(chain.threads, HANDLERS as u64, "every handler at the start: {chain:#?}");
    assert_eq!(chain.hops.len(), 1, "{chain:#?}");
    let hop = &chain.hops[0];
    assert_eq!(hop.waker, "reporter", "{chain:#?}");
    let at = (hop.at.site.as_str(), hop.at.kind);
    assert_eq!(at, ("rust_pileup::write_to_backend", WaitKind::Send), "{chain:#?}");
    let Terminal::Endpoint { endpoint, peer: Some(peer), .. } = &chain.terminal else {
        panic!("the chain ends at the Unix socket with its peer: {chain:#?}");
    };
    assert_eq!(endpoint.as_str(), path.to_str().expect("utf-8 path"), "{chain:#?}");
    assert_eq!(peer.pid, pileup.backend.pid(), "the peer is slow-backend: {chain:#?}");
    assert_eq!(peer.comm, "slow-backend", "{chain:#?}");
    // The root cause: the peer's reading thread, asleep between its slow reads.
    let reading = peer.threads.iter().any(|thread| {
        matches!(&thread.state, ThreadState::Blocked { call_site: Some(site), .. }
            if site == "slow_backend::drain_slowly")
    });
    assert!(reading, "the peer's reader at slow_backend::drain_slowly: {chain:#?}");
    let expected_peer = format!("→ peer pid {} (slow-backend): ", peer.pid);
    assert!(traced.out.stdout.contains(&expected_peer), "{}", traced.out.stdout);
}

/// Two processes each waiting for the other to speak first: the client's recv leads to
/// the peer, whose threads waiting on that connection (one in epoll_wait, one in poll) are
/// named, and its idle thread is not.
#[test]
fn a_snapshot_names_the_peer_threads_waiting_on_the_same_connection() {
    let build = TempDir::new("chains-deadlock-build");
    let bin = build_c(build.path(), C_DEADLOCK_SOURCE, "c-deadlock");
    let mut cmd = Command::new(&bin);
    cmd.arg(WORKLOAD_SECONDS.to_string());
    let (workload, line) = spawn_and_read_line("c-deadlock", cmd);
    let child: u32 = line
        .strip_prefix("ready ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("c-deadlock printed {line:?}, not `ready PID`"));
    let tid_of = |name: &str| thread_named(child, name);
    let dir = TempDir::new("chains-deadlock");
    let traced = snapshot_profile(workload.pid(), &[], &dir, TIMEOUT);
    let chain = chain_at(&traced.profile, "wait_for_greeting");
    assert_eq!(chain.start.kind, WaitKind::Recv, "{chain:#?}");
    let Terminal::Endpoint { peer: Some(peer), .. } = &chain.terminal else {
        panic!("the chain ends at the connection with its peer: {chain:#?}");
    };
    assert_eq!(peer.pid, child, "{chain:#?}");
    let mut waiting = peer.waiting_on_socket.clone().expect("the peer's threads were read");
    waiting.sort_unstable();
    let mut expected = vec![tid_of("peer-epoll"), tid_of("peer-poll")];
    expected.sort_unstable();
    assert_eq!(waiting, expected, "the epoll and poll waiters, not peer-idle: {chain:#?}");
    let stdout = &traced.out.stdout;
    for part in [
        format!("peer-epoll (tid {}) in epoll_wait", tid_of("peer-epoll")),
        format!("peer-poll (tid {}) in poll", tid_of("peer-poll")),
    ] {
        assert!(stdout.contains(&part), "{part:?} missing from the summary:\n{stdout}");
    }
}

#[test]
fn a_snapshot_names_the_mutex_holder_and_its_stack() {
    let build = TempDir::new("chains-mutex-build");
    let bin = build_c(build.path(), C_OBJECTS_SOURCE, "c-objects");
    let mut cmd = Command::new(&bin);
    cmd.arg(HANDLERS.to_string()).arg(WORKLOAD_SECONDS.to_string());
    let workload = start_stuck("c-objects", cmd);
    let holder_tid = thread_named(workload.pid(), "holder");
    let dir = TempDir::new("chains-mutex");
    let traced = snapshot_profile(workload.pid(), &[], &dir, TIMEOUT);
    let chain = chain_at(&traced.profile, "record_stat");
    assert_eq!(chain.threads, HANDLERS as u64, "{chain:#?}");
    assert_eq!(chain.start.object.as_deref(), Some("stats_lock"), "{chain:#?}");
    let Terminal::LockHolder(holder) = &chain.terminal else {
        panic!("the chain ends at the lock's holder: {chain:#?}");
    };
    assert_eq!((holder.tid, holder.name.as_str()), (holder_tid, "holder"), "{chain:#?}");
    let ThreadState::Blocked { syscall, call_site, stack } = &holder.state else {
        panic!("the holder is blocked in pause(): {chain:#?}");
    };
    assert_eq!(syscall, "pause", "{chain:#?}");
    assert_eq!(call_site.as_deref(), Some("holder"), "{chain:#?}");
    assert!(stack.iter().any(|f| f == "start_thread"), "the holder's whole stack: {stack:?}");
    let stdout = &traced.out.stdout;
    let expected = format!(
        "{HANDLERS} threads at record_stat [futex stats_lock] → held by holder (tid {holder_tid}): \
         blocked in pause at holder"
    );
    assert!(stdout.contains(&expected), "{expected:?} missing from:\n{stdout}");
}

#[test]
fn tracer_report_keeps_the_chains_of_a_saved_recording() {
    let pileup = start_rust_pileup(SLOW_BACKEND, RUST_PILEUP, HANDLERS, WORKLOAD_SECONDS);
    let dir = TempDir::new("chains-report");
    let traced =
        record_profile(pileup.workload.pid(), &["--duration", RECORD_DURATION], &dir, TIMEOUT);
    assert!(!traced.profile.chains.is_empty(), "the recording has chains");
    let saved = dir.join("record.json");
    let again = dir.join("again.json");
    let out = tracer_report(
        &[saved.to_str().expect("utf-8 path"), "-o", again.to_str().expect("utf-8 path")],
        TIMEOUT,
    );
    assert_success("tracer report", &out);
    let reread = read_profile(&again);
    assert_eq!(reread.chains, traced.profile.chains, "the chains survive the round trip");
    let line = |text: &str| {
        text.split("WAIT CHAINS\n").nth(1).and_then(|rest| rest.lines().next()).map(str::to_owned)
    };
    assert_eq!(line(&out.stdout), line(&traced.out.stdout), "the same line from the report");
}

/// The thread of `pid` named `name` (its comm).
fn thread_named(pid: u32, name: &str) -> u32 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the threads");
    tasks
        .flatten()
        .filter_map(|task| task.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .unwrap_or_else(|| panic!("no thread named {name} in pid {pid}"))
}
