//! Real-kernel tests of the wait chains: from the pile-up's call site, through the thread
//! that wakes it, to what that thread is blocked on and the process behind it.
//!
//! - C through glibc, two processes: handlers on a condition variable, woken by a reporter
//!   blocked in `send()` to slow-backend (another process);
//! - Rust without frame pointers: the same through a std `sync_channel`, again with
//!   slow-backend behind a Unix stream socket, with slow-backend in a network namespace
//!   of its own, reached over a veth pair, and with that address rewritten by a DNAT
//!   rule (found through conntrack);
//! - a snapshot of threads on a pthread mutex names its holder and the holder's stack;
//! - C handlers logging to a pipe whose reader stopped, under a mutex or through stderr
//!   (stdio's FILE lock): the chain goes from the lock's waiters through its holder's
//!   write to the collector process, with the pipe's fill, in a snapshot and in both
//!   modes of a recording;
//! - a snapshot of a protocol deadlock names the peer's threads waiting on the connection;
//! - a pool of connections to one endpoint, each served by a process of its own, leads
//!   to every process behind it;
//! - `tracer report` keeps the chains of a saved recording.
//!
//! They need root and share the kernel, so they run one at a time (`--test-threads=1`).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use tracer::chains::{PeerProcess, Terminal, ThreadState, WaitChain};
use tracer_tests::{
    C_DEADLOCK_SOURCE, C_LOGGER_SOURCE, C_OBJECTS_SOURCE, ChildGuard, Pileup, Profile, TempDir,
    WaitKind, assert_success, build_c, build_c_pileup, live_thread_ids, read_profile,
    record_profile, run_tool, snapshot_profile, spawn_and_read_line, spawn_backend, start_c_pileup,
    start_rust_pileup, start_rust_pileup_over_unix, start_stuck, start_workload, tracer_report,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");
const RUST_PILEUP: &str = env!("CARGO_BIN_EXE_rust-pileup");

/// Handlers behind the queue: a pile-up no one can miss, quick to start.
const HANDLERS: usize = 16;
/// The workloads outlive every test; their guards kill them when the test ends.
const WORKLOAD_SECONDS: f64 = 120.0;
/// Long enough for hundreds of wakes of the handlers by the reporter.
const RECORD_DURATION: &str = "3s";
/// x86_64's write(2).
const SYS_WRITE: u32 = 1;
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
) -> PeerProcess {
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
    // Every table of sockets searched was read (no failed lookup said where none failed).
    assert_eq!(traced.profile.counts.peer_lookups_failed, 0);

    // The line the reader sees, at the top of the summary.
    let stdout = &traced.out.stdout;
    let section = stdout.split("WAIT CHAINS\n").nth(1).expect("a WAIT CHAINS section");
    let line = section.lines().next().expect("a chain line").trim();
    let expected_start = format!("{HANDLERS} threads at {waiting_site} [futex");
    let expected_hop = "← woken by reporter, blocked ".to_owned();
    let expected_send = format!("in {send_site} [send {endpoint}: send buffer full");
    let reached_at = match &peer.reached_at {
        Some(address) => format!(" at {address} (address translated)"),
        None => String::new(),
    };
    let expected_peer = format!("→ peer pid {} (slow-backend){reached_at}: ", peer.pid);
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
    peer.clone()
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

/// The processes `pid`'s threads forked, from each thread's `children` list.
fn children_of(pid: u32) -> BTreeSet<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the backend's threads");
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace().filter_map(|pid| pid.parse().ok()).collect::<Vec<u32>>()
        })
        .collect()
}

/// A pool: three reporters, each on a connection of its own to one endpoint, each
/// connection served by a backend process of its own (as Postgres serves each client
/// connection): every chain through a reporter's send names all three processes.
#[test]
fn a_pool_of_connections_to_one_endpoint_leads_to_every_process_behind_it() {
    const REPORTERS: usize = 3;
    let mut cmd = Command::new(SLOW_BACKEND);
    cmd.args(["--fork-per-connection", "--seconds", &(WORKLOAD_SECONDS + 5.0).to_string()]);
    let (backend, port) = spawn_backend("slow-backend --fork-per-connection", cmd);
    let mut cmd = Command::new(RUST_PILEUP);
    cmd.args(["--backend", &format!("127.0.0.1:{port}")]).args([
        "--handlers",
        &(4 * REPORTERS).to_string(),
        "--reporters",
        &REPORTERS.to_string(),
        "--seconds",
        &WORKLOAD_SECONDS.to_string(),
    ]);
    let workload = start_workload("rust-pileup --reporters 3", cmd);
    let pileup = Pileup { workload, backend };
    // Each connection is accepted, and its process forked, after the pile-up's connect.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut children = children_of(pileup.backend.pid());
    while children.len() < REPORTERS && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        children = children_of(pileup.backend.pid());
    }
    assert_eq!(children.len(), REPORTERS, "a backend process per connection: {children:?}");

    let dir = TempDir::new("chains-pool");
    let traced =
        record_profile(pileup.workload.pid(), &["--duration", RECORD_DURATION], &dir, TIMEOUT);
    let chains: Vec<&WaitChain> = traced
        .profile
        .chains
        .iter()
        .filter(|chain| chain.start.site == "rust_pileup::send_stat")
        .collect();
    assert!(!chains.is_empty(), "chains at the handlers' site: {:#?}", traced.profile.chains);
    for chain in &chains {
        let Terminal::Endpoint { endpoint, peer: Some(peer), .. } = &chain.terminal else {
            panic!("the chain ends at the endpoint with its peers: {chain:#?}");
        };
        assert_eq!(endpoint, &format!("127.0.0.1:{port}"), "{chain:#?}");
        let mut behind: BTreeSet<u32> = peer.other_pids.iter().copied().collect();
        behind.insert(peer.pid);
        assert_eq!(behind, children, "every backend process, not the listener: {chain:#?}");
        assert_eq!(peer.other_pids.len(), REPORTERS - 1, "each once: {chain:#?}");
        assert_eq!(peer.comm, "slow-backend", "{chain:#?}");
    }
    // The line the reader sees names them.
    let stdout = &traced.out.stdout;
    let section = stdout.split("WAIT CHAINS\n").nth(1).expect("a WAIT CHAINS section");
    let line = section
        .lines()
        .find(|line| line.contains("rust_pileup::send_stat"))
        .expect("a chain line at the handlers' site");
    let others: Vec<String> = match &chains[0].terminal {
        Terminal::Endpoint { peer: Some(peer), .. } => {
            peer.other_pids.iter().map(u32::to_string).collect()
        }
        _ => unreachable!(),
    };
    let others = others.join(", ");
    let expected = format!("; 2 more processes behind other connections: pids {others}");
    assert!(line.contains(&expected), "{expected:?} missing from the chain line:\n{line}");
}

/// A network namespace of the tests' own: the veth pair's names and addresses.
struct Namespace {
    /// Prefix of the pair's names, unique per test (`tri`: inner end, `tro`: outer).
    pair: &'static str,
    host_ip: &'static str,
    backend_ip: &'static str,
}

/// The one the backend lives in when it is reached untranslated.
const BRIDGED: Namespace =
    Namespace { pair: "tr", host_ip: "10.213.0.1", backend_ip: "10.213.0.2" };
/// The one for the address-translated connection, and the address its clients dial
/// (on the pair's subnet, so that it routes), rewritten to the backend's.
const TRANSLATED: Namespace =
    Namespace { pair: "td", host_ip: "10.214.0.1", backend_ip: "10.214.0.2" };
const SERVICE_ADDRESS: &str = "10.214.0.9:80";

/// slow-backend in a new network namespace, reached over a veth pair as a container on
/// a bridge is: the backend and the port it listens on.
fn start_backend_in_namespace(namespace: &Namespace) -> (ChildGuard, u16) {
    // Inside the new namespace: a veth pair with its outer end in ours, both ends
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
        .env("INNER", format!("{}i{suffix}", namespace.pair))
        .env("OUTER", format!("{}o{suffix}", namespace.pair))
        .env("HOST_PID", std::process::id().to_string())
        .env("HOST_IP", namespace.host_ip)
        .env("BACKEND_IP", namespace.backend_ip)
        .env("BACKEND", SLOW_BACKEND)
        .env("SECONDS_LEFT", (WORKLOAD_SECONDS + 5.0).to_string());
    let (backend, port) = spawn_backend("slow-backend in a network namespace", cmd);
    let own = std::fs::read_link("/proc/self/ns/net").expect("our network namespace");
    let its = std::fs::read_link(format!("/proc/{}/ns/net", backend.pid())).expect("its");
    assert_ne!(own, its, "the backend has a network namespace of its own");
    (backend, port)
}

/// The Rust pile-up writing to `address`.
fn start_rust_pileup_to(address: &str) -> ChildGuard {
    let mut cmd = Command::new(RUST_PILEUP);
    cmd.args(["--backend", address]).args([
        "--handlers",
        &HANDLERS.to_string(),
        "--seconds",
        &WORKLOAD_SECONDS.to_string(),
    ]);
    start_workload("rust-pileup", cmd)
}

/// The Rust pile-up on the host, its backend in a network namespace of its own: the peer
/// is found in the other namespace.
#[test]
fn rust_pileup_leads_to_its_peer_in_another_network_namespace() {
    let (backend, port) = start_backend_in_namespace(&BRIDGED);
    let workload = start_rust_pileup_to(&format!("{}:{port}", BRIDGED.backend_ip));
    let pileup = Pileup { workload, backend };
    let peer = assert_pileup_chain(
        &pileup,
        "chains-netns",
        "rust_pileup::send_stat",
        "rust_pileup::write_to_backend",
        BRIDGED.backend_ip,
    );
    assert_eq!(peer.reached_at, None, "an untranslated connection: {peer:#?}");
}

/// An nftables table of ours, deleted when dropped (a failed test leaves no rule behind).
struct NftTable(String);

impl NftTable {
    /// `table ip NAME` holding `rules` (nft syntax, inside the table).
    fn create(name: String, rules: &str) -> Self {
        let script = format!("table ip {name} {{\n{rules}\n}}\n");
        let dir = TempDir::new("chains-nft");
        let path = dir.join("rules.nft");
        std::fs::write(&path, script).expect("write the nft script");
        run_tool("nft", &["-f", path.to_str().expect("utf-8 path")], TIMEOUT);
        Self(name)
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "ip", &self.0]).status();
    }
}

/// The pile-up's backend behind an address that a DNAT rule rewrites, as a Kubernetes
/// service address or a published container port is: no socket has the address the
/// reporter sends to, and conntrack leads to the backend in its namespace.
#[test]
fn rust_pileup_leads_through_address_translation_to_its_peer() {
    let (backend, port) = start_backend_in_namespace(&TRANSLATED);
    let (service_ip, service_port) = SERVICE_ADDRESS.split_once(':').expect("ip:port");
    let backend_address = format!("{}:{port}", TRANSLATED.backend_ip);
    let _table = NftTable::create(
        format!("tracer_test_{}", std::process::id()),
        &format!(
            "chain out {{ type nat hook output priority -100; \
             ip daddr {service_ip} tcp dport {service_port} dnat to {backend_address}; }}"
        ),
    );
    let workload = start_rust_pileup_to(SERVICE_ADDRESS);
    let pileup = Pileup { workload, backend };
    let peer = assert_pileup_chain(
        &pileup,
        "chains-dnat",
        "rust_pileup::send_stat",
        "rust_pileup::write_to_backend",
        service_ip,
    );
    assert_eq!(peer.reached_at, Some(backend_address), "{peer:#?}");
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
fn a_mutex_held_across_a_write_to_a_stalled_pipe_leads_to_the_pipe_s_reader() {
    assert_logger_chain("mutex", "log_lock");
}

#[test]
fn stderr_s_lock_held_across_a_write_to_a_stalled_pipe_leads_to_the_pipe_s_reader() {
    assert_logger_chain("stdio", "stderr");
}

#[test]
fn a_mutex_in_an_object_a_global_points_to_is_named_by_that_global() {
    assert_logger_chain("heap", "*logger");
}

/// c-logger in `mode`: its handlers' chain, from their waits on `lock` through the
/// holder's write to the full pipe, to the collector that never reads it; in a snapshot
/// and in both modes of a recording.
fn assert_logger_chain(mode: &str, lock: &str) {
    let build = TempDir::new("chains-logger-build");
    let bin = build_c(build.path(), C_LOGGER_SOURCE, "c-logger");
    let mut cmd = Command::new(&bin);
    cmd.arg(HANDLERS.to_string()).arg(WORKLOAD_SECONDS.to_string()).arg(mode);
    let (workload, line) = spawn_and_read_line("c-logger", cmd);
    let collector: u32 = line
        .strip_prefix("stuck ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("c-logger printed {line:?}"));
    let pid = workload.pid();
    let writer = thread_in_syscall(pid, SYS_WRITE);
    // The log pipe is the one descriptor the collector keeps (its read end).
    let pipe = (0..16)
        .filter_map(|fd| std::fs::read_link(format!("/proc/{collector}/fd/{fd}")).ok())
        .filter_map(|link| link.to_str().map(str::to_owned))
        .find(|link| link.starts_with("pipe:["))
        .expect("the log pipe among the collector's descriptors");
    let runs = [
        ("snapshot", Vec::new()),
        ("exact", vec!["--duration", RECORD_DURATION, "--mode", "exact"]),
        ("sampled", vec!["--duration", RECORD_DURATION, "--mode", "sampled"]),
    ];
    for (run, args) in runs {
        let dir = TempDir::new(&format!("chains-logger-{run}"));
        let traced = match run {
            "snapshot" => snapshot_profile(pid, &args, &dir, TIMEOUT),
            _ => record_profile(pid, &args, &dir, TIMEOUT),
        };
        let chain = chain_at(&traced.profile, "log_line");
        assert_eq!(chain.start.kind, WaitKind::Futex, "{run}: {chain:#?}");
        assert_eq!(chain.start.object.as_deref(), Some(lock), "{run}: {chain:#?}");
        assert_eq!(chain.threads, HANDLERS as u64 - 1, "{run}: {chain:#?}");
        assert_eq!(chain.hops.len(), 1, "{run}: the holder's write: {chain:#?}");
        let hop = &chain.hops[0];
        assert_eq!(hop.waker_threads, [u64::from(writer)], "{run}: {chain:#?}");
        assert_eq!(hop.waker, format!("handler (tid {writer}, holds the lock)"), "{run}");
        assert_eq!((hop.at.site.as_str(), hop.at.kind), ("log_line", WaitKind::Write), "{run}");
        assert_eq!(hop.at.object.as_ref(), Some(&pipe), "{run}: {chain:#?}");
        let Terminal::Endpoint { endpoint, state, peer: Some(peer) } = &chain.terminal else {
            panic!("{run}: the chain ends at the pipe with its reader: {chain:#?}");
        };
        assert_eq!(endpoint, &pipe, "{run}: {chain:#?}");
        let state = state.as_deref().unwrap_or_default();
        assert!(state.starts_with("pipe full ("), "{run}: {chain:#?}");
        assert_eq!((peer.pid, peer.comm.as_str()), (collector, "collector"), "{run}");
        assert_eq!(peer.waiting_on_socket, Some(Vec::new()), "{run}: never reads: {chain:#?}");

        let stdout = &traced.out.stdout;
        let section = stdout.split("WAIT CHAINS\n").nth(1).expect("a WAIT CHAINS section");
        let line = section.lines().next().expect("a chain line").trim();
        let expected = [
            format!(
                "{} threads at log_line [futex {lock}] ← woken by handler (tid {writer}, holds \
                 the lock), blocked ",
                HANDLERS - 1
            ),
            format!("in log_line [write {pipe}: {state}] → peer pid {collector} (collector): "),
            "; none of its threads waits on this pipe".to_owned(),
        ];
        for part in &expected {
            assert!(line.contains(part.as_str()), "{run}: {part:?} missing from:\n{line}");
        }
    }
}

/// The one thread of `pid` blocked in system call `nr`, or a panic.
fn thread_in_syscall(pid: u32, nr: u32) -> u32 {
    let in_call: Vec<u32> = live_thread_ids(pid)
        .into_iter()
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
                .is_ok_and(|call| call.split(' ').next() == Some(nr.to_string().as_str()))
        })
        .collect();
    assert_eq!(in_call.len(), 1, "one thread of {pid} in syscall {nr}: {in_call:?}");
    in_call[0]
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
    live_thread_ids(pid)
        .into_iter()
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .unwrap_or_else(|| panic!("no thread named {name} in pid {pid}"))
}
