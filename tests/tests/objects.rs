//! Real-kernel tests of what each wait waits on: the profile names the remote endpoint of a
//! socket wait (`127.0.0.1:PORT` for a send, recv or connect) and the lock of a futex wait
//! (`rust_objects::STATS_QUEUE`, `stats_lock`) as the stack's object, and keeps the socket state
//! that explains each endpoint's wait. They need root and share the kernel, so they run one at a
//! time (`--test-threads=1`); none skips.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use tracer_tests::{
    C_OBJECTS_SOURCE, ChildGuard, FullListener, Profile, ProfileKind, ProfileStack, TempDir,
    WaitKind, assert_threads, build_c, has_function, record_profile, snapshot_profile,
    stacks_where, start_dead_backend, start_rust_stuck, start_stuck, top_stacks,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");
const RUST_STUCK: &str = env!("CARGO_BIN_EXE_rust-stuck");
const RUST_OBJECTS: &str = env!("CARGO_BIN_EXE_rust-objects");

/// Every workload and backend here listens or connects on loopback.
const LOOPBACK: &str = "127.0.0.1";
/// Handler threads behind the one mutex: enough that a thread missed, counted twice or put on
/// another lock shows, few enough to start in milliseconds.
const HANDLERS: usize = 16;
/// The workloads and backends outlive every test; their guards kill them when the test ends.
const WORKLOAD_SECONDS: f64 = 120.0;
/// Reading a few threads' stacks, resolving their sockets and symbolizing takes well under a
/// second; only a hang should reach this.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);
/// Long enough for the tracer to see the send wait still in flight at the end.
const RECORD_DURATION: &str = "2s";
/// Recording plus attaching, unwinding and symbolizing, with a wide margin; only a hang
/// should reach it.
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);
/// The backlog of the listener that the connect test fills: with 0 the accept queue holds one
/// connection, and every SYN after it is dropped.
const FULL_BACKLOG: libc::c_int = 0;

/// Where each workload's thread waits: the function the tests look for on its stack.
const RUST_STUCK_SEND_SITE: &str = "write_to_backend";
const RECV_SITE: &str = "wait_for_reply";
const CONNECT_SITE: &str = "connect_to_backend";
const LOCK_SITE: &str = "record_stat";
/// The static each mutex workload's handlers queue behind.
const RUST_LOCK: &str = "STATS_QUEUE";
const C_LOCK: &str = "stats_lock";

/// The phrases of an endpoint's state that explain each wait.
const SEND_STATE: &str = "send buffer full";
const RECV_STATE: &str = "waiting for data";
const CONNECT_STATE: &str = "SYN";

fn all_stacks(profile: &Profile) -> String {
    top_stacks(profile, |_| true, 30)
}

/// `tracer snapshot` of `workload`, read back from its JSON profile.
fn snapshot(label: &str, workload: &ChildGuard) -> Profile {
    let dir = TempDir::new(label);
    let traced = snapshot_profile(workload.pid(), &[], &dir, SNAPSHOT_TIMEOUT);
    println!(
        "{label}: snapshot of {} took {:?}:\n{}",
        workload.name(),
        traced.out.elapsed,
        traced.out.stdout
    );
    let profile = traced.profile;
    assert_eq!(profile.kind, ProfileKind::Snapshot);
    assert!(!profile.stacks.is_empty(), "a snapshot of {} holds no stacks", workload.name());
    profile
}

/// Asserts that exactly one thread waits in `kind` at `site` (and only one in `kind` at all),
/// and that its wait's object is exactly `endpoint`.
fn assert_one_socket_wait(profile: &Profile, kind: WaitKind, site: &str, endpoint: &str) {
    let is_kind = |s: &ProfileStack| s.kind == kind;
    assert_threads(profile, is_kind, 1, &format!("{} waiters in all", kind.name()));
    let named = |s: &ProfileStack| {
        is_kind(s) && s.object.as_deref() == Some(endpoint) && has_function(s, site)
    };
    assert_threads(
        profile,
        named,
        1,
        &format!(
            "{} waiters in {site} on {endpoint} (objects of {} stacks: {:?})",
            kind.name(),
            kind.name(),
            stacks_where(profile, is_kind).iter().map(|s| &s.object).collect::<Vec<_>>()
        ),
    );
}

/// Asserts that the waits on `endpoint` are all of `kind`, that `now` threads are blocked on it
/// (at the snapshot, or at the end of the recording), and that its state says `state`.
fn assert_endpoint(profile: &Profile, endpoint: &str, kind: WaitKind, now: u64, state: &str) {
    let on_endpoint = |s: &ProfileStack| s.object.as_deref() == Some(endpoint);
    let kinds: BTreeSet<WaitKind> =
        stacks_where(profile, on_endpoint).iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([kind]),
        "wait kinds on {endpoint}; stacks:\n{}",
        all_stacks(profile)
    );
    assert_threads(
        profile,
        |s| on_endpoint(s) && s.in_progress,
        now,
        &format!("threads blocked on {endpoint} now"),
    );
    let known = profile
        .endpoint_states
        .get(endpoint)
        .unwrap_or_else(|| panic!("no state of {endpoint} in {:?}", profile.endpoint_states));
    assert!(known.contains(state), "the state of {endpoint}, {known:?}, does not say {state:?}");
}

fn endpoint(port: u16) -> String {
    format!("{LOOPBACK}:{port}")
}

#[test]
fn send_wait_names_the_backend_and_its_full_send_buffer() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, HANDLERS, WORKLOAD_SECONDS);
    let backend = endpoint(stuck.backend_port);
    let profile = snapshot("objects-send", &stuck.workload);
    assert_one_socket_wait(&profile, WaitKind::Send, RUST_STUCK_SEND_SITE, &backend);
    assert_endpoint(&profile, &backend, WaitKind::Send, 1, SEND_STATE);
}

#[test]
fn record_names_the_send_still_blocked_at_the_end() {
    let stuck = start_rust_stuck(SLOW_BACKEND, RUST_STUCK, HANDLERS, WORKLOAD_SECONDS);
    let backend = endpoint(stuck.backend_port);
    let dir = TempDir::new("objects-record-send");
    let traced = record_profile(
        stuck.workload.pid(),
        &["--duration", RECORD_DURATION],
        &dir,
        RECORD_TIMEOUT,
    );
    println!("objects-record-send: tracer took {:?}:\n{}", traced.out.elapsed, traced.out.stdout);
    let profile = &traced.profile;
    let is_still_send = |s: &ProfileStack| {
        s.in_progress
            && s.kind == WaitKind::Send
            && s.object.as_deref() == Some(backend.as_str())
            && has_function(s, RUST_STUCK_SEND_SITE)
    };
    assert_threads(profile, is_still_send, 1, "sends to the backend still blocked at the end");
    // The sender never wakes, so no send to the backend may be reported as ended.
    let ended_send = |s: &ProfileStack| s.kind == WaitKind::Send && !s.in_progress;
    assert!(
        !profile.stacks.iter().any(ended_send),
        "send waits that never ended are reported as completed:\n{}",
        top_stacks(profile, ended_send, 10)
    );
    assert_endpoint(profile, &backend, WaitKind::Send, 1, SEND_STATE);
}

#[test]
fn recv_wait_names_the_backend_that_never_replies() {
    let (_backend, port) = start_dead_backend(SLOW_BACKEND, WORKLOAD_SECONDS);
    let backend = endpoint(port);
    let mut cmd = Command::new(RUST_OBJECTS);
    cmd.args(["recv", "--backend", &backend]).arg("--seconds").arg(WORKLOAD_SECONDS.to_string());
    let workload = start_stuck("rust-objects recv", cmd);
    let profile = snapshot("objects-recv", &workload);
    assert_one_socket_wait(&profile, WaitKind::Recv, RECV_SITE, &backend);
    assert_endpoint(&profile, &backend, WaitKind::Recv, 1, RECV_STATE);
}

#[test]
fn connect_wait_names_the_listener_that_drops_syns() {
    // Declared before the workload, so the workload is killed first.
    let listener = FullListener::new(FULL_BACKLOG);
    println!(
        "objects-connect: {} connection(s) filled the accept queue of {LOOPBACK}:{} \
         (backlog {FULL_BACKLOG})",
        listener.fillers(),
        listener.port
    );
    let target = endpoint(listener.port);
    let mut cmd = Command::new(RUST_OBJECTS);
    cmd.args(["connect", "--target", &target]).arg("--seconds").arg(WORKLOAD_SECONDS.to_string());
    let workload = start_stuck("rust-objects connect", cmd);
    let profile = snapshot("objects-connect", &workload);
    assert_one_socket_wait(&profile, WaitKind::Connect, CONNECT_SITE, &target);
    assert_endpoint(&profile, &target, WaitKind::Connect, 1, CONNECT_STATE);
}

/// Asserts that exactly `HANDLERS` threads wait in futex at `LOCK_SITE`, all on one object
/// that `is_lock` accepts (`describe` says what it should be), and that no other thread waits on
/// it.
fn assert_one_lock(profile: &Profile, is_lock: impl Fn(&str) -> bool, describe: &str) {
    let want = HANDLERS as u64;
    let is_handler_wait =
        |s: &ProfileStack| s.kind == WaitKind::Futex && has_function(s, LOCK_SITE);
    assert_threads(profile, is_handler_wait, want, &format!("futex waiters in {LOCK_SITE}"));
    let objects: BTreeSet<Option<&str>> =
        stacks_where(profile, is_handler_wait).iter().map(|s| s.object.as_deref()).collect();
    let objects: Vec<Option<&str>> = objects.into_iter().collect();
    let [Some(lock)] = objects.as_slice() else {
        panic!(
            "the {want} handlers in {LOCK_SITE} wait on {objects:?}, want one lock, {describe}; \
             stacks:\n{}",
            top_stacks(profile, is_handler_wait, 10)
        );
    };
    assert!(
        is_lock(lock),
        "the handlers in {LOCK_SITE} wait on {lock:?}, want {describe}; stacks:\n{}",
        top_stacks(profile, is_handler_wait, 10)
    );
    // The holder waits too (Rust: parked on its own parker), but not on the lock it holds.
    let on_lock =
        |s: &ProfileStack| s.kind == WaitKind::Futex && s.object.as_deref() == Some(*lock);
    assert_threads(profile, on_lock, want, &format!("futex waiters on {lock}, only the handlers"));
    assert_threads(
        profile,
        |s| on_lock(s) && s.in_progress,
        want,
        &format!("threads blocked on {lock} now"),
    );
}

#[test]
fn rust_handlers_behind_one_static_mutex_show_one_lock_by_its_symbol() {
    let mut cmd = Command::new(RUST_OBJECTS);
    cmd.args(["mutex", "--handlers", &HANDLERS.to_string()])
        .arg("--seconds")
        .arg(WORKLOAD_SECONDS.to_string());
    let workload = start_stuck("rust-objects mutex", cmd);
    let profile = snapshot("objects-rust-mutex", &workload);
    // Demangled without its hash: `rust_objects::STATS_QUEUE`.
    assert_one_lock(
        &profile,
        |lock| lock == RUST_LOCK || lock.ends_with(&format!("::{RUST_LOCK}")),
        &format!("a path ending in {RUST_LOCK}"),
    );
}

/// The same handlers built as many services are, with line tables for profiling
/// (`debug = "line-tables-only"`): the debug info names functions without their path
/// (`record_stat`, `lock<alloc::vec::Vec<u64>>`, `park`), and std's inlined into the
/// program are told only by their files. The call sites are the program's, qualified as
/// its symbol table names them, not std's (`lock` was the site).
#[test]
fn rust_built_with_line_tables_is_named_by_its_own_functions() {
    let build = TempDir::new("rust-objects-lines-build");
    let bin = build.path().join("rust-objects-lines");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/workloads/rust_objects.rs");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--edition", "2024", "-C", "opt-level=3", "-C", "debuginfo=line-tables-only"])
        .args(["--crate-name", "rust_objects", "-o"])
        .arg(&bin)
        .arg(source)
        .output()
        .expect("run rustc");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut cmd = Command::new(&bin);
    cmd.args(["mutex", "--handlers", &HANDLERS.to_string()])
        .arg("--seconds")
        .arg(WORKLOAD_SECONDS.to_string());
    let workload = start_stuck("rust-objects-lines mutex", cmd);
    let profile = snapshot("objects-rust-lines", &workload);
    let sites: BTreeSet<&str> = profile.stacks.iter().map(|stack| stack.call_site()).collect();
    assert!(sites.contains("rust_objects::record_stat"), "{sites:?}\n{}", all_stacks(&profile));
    assert!(sites.contains("rust_objects::holder"), "{sites:?}\n{}", all_stacks(&profile));
    assert_one_lock(
        &profile,
        |lock| lock.ends_with(&format!("::{RUST_LOCK}")),
        &format!("a path ending in {RUST_LOCK}"),
    );
}

#[test]
fn c_handlers_behind_one_static_mutex_show_one_lock_by_its_symbol() {
    let build = TempDir::new("c-objects-build");
    let bin = build_c(build.path(), C_OBJECTS_SOURCE, "c-objects");
    let mut cmd = Command::new(&bin);
    cmd.arg(HANDLERS.to_string()).arg(WORKLOAD_SECONDS.to_string());
    let workload = start_stuck("c-objects", cmd);
    let profile = snapshot("objects-c-mutex", &workload);
    assert_one_lock(&profile, |lock| lock == C_LOCK, C_LOCK);
}

/// A process that listens and is a client of its own listener (a server and its local
/// client, as one profile of both holds them): the listener's accept and the connection's
/// receive have the same address, yet are two endpoints, each with its own state (one
/// state was shown for both: whichever was resolved last).
#[test]
fn a_listener_and_a_connection_to_it_are_two_endpoints() {
    const SCRIPT: &str = "
import socket, threading, time
listener = socket.socket()
listener.bind(('127.0.0.1', 0))
listener.listen(8)
client = socket.create_connection(listener.getsockname())
accepted, _ = listener.accept()
threading.Thread(target=client.recv, args=(1,), daemon=True).start()
threading.Thread(target=listener.accept, daemon=True).start()
print(listener.getsockname()[1], flush=True)
time.sleep(120)
";
    let mut cmd = Command::new(tracer_tests::DEBIAN_PYTHON);
    cmd.args(["-c", SCRIPT]);
    let (workload, line) = tracer_tests::spawn_and_read_line("self-client", cmd);
    let port: u16 = line.parse().expect("the listener's port");
    // Both threads reach their wait soon after the line; a snapshot that comes first finds
    // one of them elsewhere.
    let deadline = std::time::Instant::now() + SNAPSHOT_TIMEOUT;
    let profile = loop {
        let profile = snapshot("self-client", &workload);
        let waits: BTreeSet<WaitKind> = profile.stacks.iter().map(|stack| stack.kind).collect();
        if waits.contains(&WaitKind::Accept) && waits.contains(&WaitKind::Recv) {
            break profile;
        }
        assert!(std::time::Instant::now() < deadline, "{}", all_stacks(&profile));
        std::thread::sleep(Duration::from_millis(200));
    };
    let address = endpoint(port);
    assert_endpoint(&profile, &address, WaitKind::Recv, 1, "waiting for data");
    let listening = format!("{address} (listening)");
    assert_endpoint(&profile, &listening, WaitKind::Accept, 1, "accept queue 0/");
}

/// A client that makes a connection per request and closes it at once: the number of
/// the descriptor its wait was on is taken by its next connection (here to an idle
/// listener) before the tracer reads what it is. The waits are named by their own
/// socket or left unresolved (counted), never by the idle listener's connection (the
/// exact mode named them so: the probe now reads the descriptor's inode as the wait ends).
#[test]
fn a_wait_on_a_connection_closed_and_reused_at_once_is_not_named_by_the_next() {
    const SCRIPT: &str = "
import ctypes, os, signal, socket, time
backend = socket.socket()
backend.bind(('127.0.0.1', 0))
backend.listen(64)
if os.fork() == 0:
    # Dies with the client, and holds none of the test's pipes.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    while True:
        conn, _ = backend.accept()
        conn.recv(1)
        time.sleep(0.05)
        conn.sendall(b'x')
        conn.close()
idle = socket.socket()
idle.bind(('127.0.0.1', 0))
idle.listen(1024)
print(backend.getsockname()[1], idle.getsockname()[1], flush=True)
kept = []
while True:
    request = socket.create_connection(backend.getsockname())
    request.sendall(b'q')
    request.recv(1)
    request.close()
    kept.append(socket.create_connection(idle.getsockname()))
    if len(kept) > 100:
        kept.pop(0).close()
";
    let mut cmd = Command::new(tracer_tests::DEBIAN_PYTHON);
    cmd.args(["-c", SCRIPT]);
    let (workload, line) = tracer_tests::spawn_and_read_line("reused-descriptors", cmd);
    let ports: Vec<u16> = line.split(' ').map(|port| port.parse().expect("a port")).collect();
    let (backend, idle) = (endpoint(ports[0]), endpoint(ports[1]));
    let dir = TempDir::new("reused-descriptors");
    let args = ["-d", "2s", "--mode", "exact"];
    let traced = record_profile(workload.pid(), &args, &dir, RECORD_TIMEOUT);
    let profile = &traced.profile;
    let receives: Vec<&ProfileStack> =
        profile.stacks.iter().filter(|stack| stack.kind == WaitKind::Recv).collect();
    let waits: u64 = receives.iter().map(|stack| stack.stats.waits).sum();
    // About 20 requests a second, each a recv of 50 ms.
    assert!(waits >= 10, "{waits} recv waits:\n{}", all_stacks(profile));
    for stack in &receives {
        let named = stack.object.as_deref();
        assert_ne!(named, Some(idle.as_str()), "{}", all_stacks(profile));
        let own =
            named.is_none_or(|named| named == backend || named == tracer::model::UNRESOLVED_SOCKET);
        assert!(own, "{}", all_stacks(profile));
    }
}

/// A read from a named pipe (FIFO) is a pipe wait, named by the pipe's inode, as one from
/// an anonymous pipe is (its descriptor's link is the FIFO's path, not `pipe:[…]`: it was
/// left out as a read on a descriptor neither socket nor pipe).
#[test]
fn a_read_from_a_named_pipe_is_a_pipe_wait() {
    let dir = TempDir::new("fifo");
    let fifo = dir.join("stats.fifo");
    let path = std::ffi::CString::new(fifo.to_str().expect("utf-8 path")).expect("no nul");
    // SAFETY: mkfifo reads a nul-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    // A writer that holds the FIFO open and writes nothing: the reader waits for good.
    let writer = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3>'{}'; sleep 60", fifo.display()))
        .spawn()
        .expect("spawn the writer");
    let _writer = ChildGuard::new("fifo writer", writer);
    let reader = Command::new("cat").arg(&fifo).spawn().expect("spawn cat");
    let reader = ChildGuard::new("fifo reader", reader);
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&fifo).expect("stat"));
    // cat opens the FIFO (which waits for the writer) before it blocks in read(2).
    let deadline = std::time::Instant::now() + SNAPSHOT_TIMEOUT;
    let syscall = format!("/proc/{}/syscall", reader.pid());
    while !std::fs::read_to_string(&syscall).is_ok_and(|line| line.starts_with("0 ")) {
        assert!(std::time::Instant::now() < deadline, "cat never blocked in read(2)");
        std::thread::sleep(Duration::from_millis(20));
    }
    let profile = snapshot("fifo", &reader);
    let wanted = format!("pipe:[{inode}]");
    assert!(
        profile.stacks.iter().any(|stack| {
            stack.kind == WaitKind::Read && stack.object.as_deref() == Some(wanted.as_str())
        }),
        "no read on {wanted}:\n{}",
        all_stacks(&profile)
    );
    assert_eq!(profile.counts.non_socket_io, 0, "{}", all_stacks(&profile));
}

/// An event-driven server never blocks in `send`: when its client stops reading, the
/// queue is all there is to see. A recording of the writer (a single-threaded epoll loop
/// over non-blocking sockets) and of the backend that never reads lists, as backed up,
/// the writer's TCP socket to the backend (the peer's window closed), its socketpair end
/// (send buffer full), the pair's other end, which it holds and never reads (the first
/// end's buffer full), and the backend's socket (its own window closed); an exact
/// recording and a snapshot of the writer alone, with no thread blocked anywhere but
/// epoll, list its three.
#[test]
fn sockets_backed_up_behind_a_peer_that_stopped_reading_are_listed() {
    use tracer::model::{BackedUpSocket, Backlog};
    use tracer_tests::C_EVENT_WRITER_SOURCE;

    let build = TempDir::new("event-writer-build");
    let bin = build_c(build.path(), C_EVENT_WRITER_SOURCE, "c-event-writer");
    let (backend, port) = start_dead_backend(SLOW_BACKEND, WORKLOAD_SECONDS);
    let mut cmd = Command::new(&bin);
    cmd.arg(port.to_string()).arg(WORKLOAD_SECONDS.to_string());
    let writer = tracer_tests::start_workload("c-event-writer", cmd);
    let backend_address = endpoint(port);

    let dir = TempDir::new("backed-up-record");
    let (writer_pid, backend_pid) = (writer.pid().to_string(), backend.pid().to_string());
    let traced = record_profile(
        writer.pid(),
        &["-p", &backend_pid, "-d", RECORD_DURATION],
        &dir,
        RECORD_TIMEOUT,
    );
    println!("{}", traced.out.stdout);
    let sockets = &traced.profile.backed_up.sockets;
    let of = |pid: &str, backlog: Backlog| -> Vec<&BackedUpSocket> {
        sockets
            .iter()
            .filter(|socket| {
                socket.backlog == backlog
                    && socket.process.as_ref().is_some_and(|process| process.pid.to_string() == pid)
            })
            .collect()
    };
    let unsent = of(&writer_pid, Backlog::Unsent);
    assert_eq!(unsent.len(), 2, "the writer's backed-up sockets: {sockets:#?}");
    let tcp = unsent.iter().find(|socket| socket.peer == backend_address);
    let tcp = tcp.unwrap_or_else(|| panic!("no socket to {backend_address}: {sockets:#?}"));
    assert!(tcp.window_closed, "the backend's window is closed: {tcp:#?}");
    // Where the peer that stopped reading is: the backend, on this host.
    let backend_named = format!("peer pid {backend_pid} (slow-backend): ");
    assert!(
        tcp.peer_process.as_deref().is_some_and(|peer| peer.starts_with(&backend_named)),
        "{tcp:#?}"
    );
    assert!(tcp.queued_bytes > 0 && tcp.idle.is_some(), "{tcp:#?}");
    let unix = unsent.iter().find(|socket| socket.peer == "unix");
    let unix = unix.unwrap_or_else(|| panic!("no socketpair end: {sockets:#?}"));
    assert!(
        unix.buffer_bytes.is_some_and(|buffer| unix.queued_bytes >= buffer),
        "the socketpair's send buffer is full: {unix:#?}"
    );
    // The pair's other end holds what the first end wrote, charged to that end's buffer.
    let unread_pair = of(&writer_pid, Backlog::Unread);
    assert_eq!(unread_pair.len(), 1, "the writer's unread socket: {sockets:#?}");
    let pair_end = unread_pair[0];
    assert!(!pair_end.tcp && !pair_end.window_closed && pair_end.peer == "unix", "{pair_end:#?}");
    assert!(
        pair_end.queued_bytes > 0 && pair_end.buffer_bytes == unix.buffer_bytes,
        "{pair_end:#?}"
    );
    // Both ends are the writer's own, and said so.
    for end in [unix, pair_end] {
        let peer = end.peer_process.as_deref();
        assert!(peer.is_some_and(|peer| peer.starts_with("peer is this process: ")), "{end:#?}");
    }
    let unread = of(&backend_pid, Backlog::Unread);
    assert_eq!(unread.len(), 1, "the backend's backed-up sockets: {sockets:#?}");
    assert!(unread[0].window_closed && unread[0].queued_bytes > 0, "{:#?}", unread[0]);
    assert_eq!(unread[0].local.as_deref(), Some(backend_address.as_str()), "{:#?}", unread[0]);
    // Nothing else of either process is backed up (the backend's listener is not).
    assert_eq!(sockets.len(), 4, "{sockets:#?}");
    assert!(
        traced.out.stdout.contains("peer stopped reading"),
        "the summary says why:\n{}",
        traced.out.stdout
    );

    // The writer alone: no thread blocked but in epoll, and still its queues.
    let exact_dir = TempDir::new("backed-up-exact");
    let exact = ["-d", RECORD_DURATION, "--mode", "exact"];
    let recorded = record_profile(writer.pid(), &exact, &exact_dir, RECORD_TIMEOUT);
    let snapshot_dir = TempDir::new("backed-up-snapshot");
    let snapped = snapshot_profile(writer.pid(), &[], &snapshot_dir, SNAPSHOT_TIMEOUT);
    for traced in [recorded, snapped] {
        println!("{}", traced.out.stdout);
        let sockets = &traced.profile.backed_up.sockets;
        let peers: BTreeSet<&str> = sockets.iter().map(|socket| socket.peer.as_str()).collect();
        assert_eq!(peers, BTreeSet::from([backend_address.as_str(), "unix"]), "{sockets:#?}");
        assert!(sockets.iter().all(|socket| socket.process.is_none()), "{sockets:#?}");
        let ways: Vec<(&str, Backlog)> =
            sockets.iter().map(|socket| (socket.peer.as_str(), socket.backlog)).collect();
        assert_eq!(sockets.len(), 3, "{sockets:#?}");
        for way in [
            (backend_address.as_str(), Backlog::Unsent),
            ("unix", Backlog::Unsent),
            ("unix", Backlog::Unread),
        ] {
            assert!(ways.contains(&way), "{way:?} in {sockets:#?}");
        }
        let to_backend = sockets.iter().find(|socket| socket.peer == backend_address);
        let peer = to_backend.and_then(|socket| socket.peer_process.as_deref());
        assert!(peer.is_some_and(|peer| peer.starts_with(&backend_named)), "{sockets:#?}");
        assert!(
            traced.out.stdout.contains(&format!("    → {backend_named}")),
            "{}",
            traced.out.stdout
        );
    }
}

/// An event-driven client (no thread blocked in `recv`: it sleeps, as an event loop
/// would sit in `epoll_wait`) whose request to a server that never replies is listed as
/// awaiting its reply, its peer named; its connection to a server that replied (an idle
/// pooled connection), and a connection its own listener accepted whose reply it sent
/// last, are not.
#[test]
fn a_request_without_its_reply_is_listed_as_awaiting_it() {
    const SCRIPT: &str = "
import ctypes, os, signal, socket, time
silent = socket.socket()
silent.bind(('127.0.0.1', 0))
silent.listen(8)
answering = socket.socket()
answering.bind(('127.0.0.1', 0))
answering.listen(8)
if os.fork() == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    kept = [silent.accept()[0]]
    conn, _ = answering.accept()
    conn.recv(16)
    conn.sendall(b'reply')
    kept.append(conn)
    time.sleep(3600)
own = socket.socket()
own.bind(('127.0.0.1', 0))
own.listen(8)
waiting = socket.create_connection(silent.getsockname())
waiting.sendall(b'request')
pooled = socket.create_connection(answering.getsockname())
pooled.sendall(b'request')
pooled.recv(16)
client = socket.create_connection(own.getsockname())
served, _ = own.accept()
client.sendall(b'request')
served.recv(16)
served.sendall(b'reply')
client.recv(16)
print(silent.getsockname()[1], waiting.fileno(), flush=True)
time.sleep(3600)
";
    let mut cmd = Command::new(tracer_tests::DEBIAN_PYTHON);
    cmd.args(["-c", SCRIPT]);
    let (workload, line) = tracer_tests::spawn_and_read_line("awaiting-client", cmd);
    let mut fields = line.split(' ');
    let port: u16 = fields.next().and_then(|port| port.parse().ok()).expect("the port");
    let fd: u64 = fields.next().and_then(|fd| fd.parse().ok()).expect("the descriptor");
    // A request is awaited once a second has passed since it went out.
    std::thread::sleep(Duration::from_millis(1500));
    let dir = TempDir::new("awaiting-snapshot");
    let traced = snapshot_profile(workload.pid(), &[], &dir, SNAPSHOT_TIMEOUT);
    let sockets = &traced.profile.backed_up.sockets;
    let ways: Vec<(&str, u64, &str)> = sockets
        .iter()
        .map(|socket| (socket.peer.as_str(), socket.fd, socket.backlog.name()))
        .collect();
    assert_eq!(ways, [(endpoint(port).as_str(), fd, "awaiting")], "{sockets:#?}");
    let awaiting = &sockets[0];
    assert!(awaiting.idle.is_some_and(|idle| idle >= Duration::from_secs(1)), "{awaiting:#?}");
    let peer = awaiting.peer_process.as_deref().unwrap_or_default();
    assert!(peer.starts_with("peer pid ") && peer.contains("(python3"), "{awaiting:#?}");
    assert!(
        traced.out.stdout.contains("no reply yet (request acknowledged)"),
        "{}",
        traced.out.stdout
    );
}

/// The event-driven writer against a backend that reads, slowly (25 KiB/s): its
/// connection never stops, so the stopped rules leave it out, but the peer's window holds
/// back nearly all of its sends. A snapshot and a recording list it as backed up behind
/// a slow reader, with the share of the time, and name the backend.
#[test]
fn a_connection_held_back_by_a_slow_reader_is_listed() {
    use tracer::model::Backlog;
    use tracer_tests::{C_EVENT_WRITER_SOURCE, start_backend};

    let build = TempDir::new("slow-reader-build");
    let bin = build_c(build.path(), C_EVENT_WRITER_SOURCE, "c-event-writer");
    let (backend, port) = start_backend(SLOW_BACKEND, WORKLOAD_SECONDS);
    let mut cmd = Command::new(&bin);
    cmd.arg(port.to_string()).arg(WORKLOAD_SECONDS.to_string());
    let writer = tracer_tests::start_workload("c-event-writer", cmd);
    let backend_address = endpoint(port);
    let backend_named = format!("peer pid {} (slow-backend): ", backend.pid());

    let snapshot_dir = TempDir::new("slow-reader-snapshot");
    let snapped = snapshot_profile(writer.pid(), &[], &snapshot_dir, SNAPSHOT_TIMEOUT);
    let record_dir = TempDir::new("slow-reader-record");
    let recorded = record_profile(writer.pid(), &["-d", "1s"], &record_dir, RECORD_TIMEOUT);
    // A sampled recording's reads are of the writer's threads alone: the peer's saved
    // registers come from a read of the host's at the end.
    let sampled_dir = TempDir::new("slow-reader-sampled");
    let sampled_args = ["-d", "1s", "--mode", "sampled"];
    let sampled = record_profile(writer.pid(), &sampled_args, &sampled_dir, RECORD_TIMEOUT);
    for traced in [snapped, recorded, sampled] {
        println!("{}", traced.out.stdout);
        let sockets = &traced.profile.backed_up.sockets;
        let to_backend = sockets.iter().find(|socket| socket.peer == backend_address);
        let slow = to_backend.unwrap_or_else(|| panic!("no {backend_address}: {sockets:#?}"));
        assert_eq!(slow.backlog, Backlog::Unsent, "{slow:#?}");
        assert!(
            slow.window_limited_percent.is_some_and(|percent| percent >= 50),
            "held back by the window most of the time: {slow:#?}"
        );
        // Still moving: not the stopped reader's closed window, and sent within a second.
        let moving = slow.idle.is_some_and(|idle| idle < Duration::from_secs(1));
        assert!(!slow.window_closed && moving, "{slow:#?}");
        assert!(slow.queued_bytes > 0, "{slow:#?}");
        let peer = slow.peer_process.as_deref();
        assert!(peer.is_some_and(|peer| peer.starts_with(&backend_named)), "{slow:#?}");
        // Its reading thread named by its own function, past libc's sleep (whose frame
        // needs the saved rbp the chains read too).
        assert!(
            peer.is_some_and(|peer| peer.contains("at slow_backend::drain_slowly")),
            "{slow:#?}"
        );
        assert!(
            traced.out.stdout.contains("peer reads slowly (window-limited "),
            "{}",
            traced.out.stdout
        );
        // The socketpair's ends are backed up as before, neither of them slow.
        let pair: Vec<_> = sockets.iter().filter(|socket| socket.peer == "unix").collect();
        assert_eq!(pair.len(), 2, "{sockets:#?}");
        assert!(pair.iter().all(|end| end.window_limited_percent.is_none()), "{sockets:#?}");
    }
}
