use std::time::Duration;

use super::*;
use crate::{
    model::{WaitStats, WakerRow},
    stacks::Frame,
};

const SECOND: u64 = 1_000_000_000;

fn frame(name: &str) -> Frame {
    Frame {
        name: name.to_string(),
        module: "app".to_string(),
        module_is_main: true,
        file: None,
        line: None,
        inlined: false,
        address: 0x1000,
    }
}

/// `threads` blocked `ns_each` at `site` (a one-frame stack).
fn stack(
    site: &str,
    kind: WaitKind,
    object: Option<&str>,
    threads: &[u32],
    ns_each: u64,
) -> ProfileStack {
    let mut stats = WaitStats::default();
    for &tid in threads {
        stats.add(u64::from(tid), ns_each);
    }
    ProfileStack {
        frames: vec![frame(site)],
        kind,
        object: object.map(str::to_string),
        truncated: false,
        in_progress: false,
        stats,
        process: None,
    }
}

fn woken(site: &str, by: &[u32]) -> WakerRow {
    WakerRow {
        waiting_site: site.to_string(),
        kind: WaitKind::Futex,
        waker_site: "wake".to_string(),
        waker_frames: Vec::new(),
        wakes: 10,
        waker_threads: by.iter().copied().collect(),
    }
}

fn recording(stacks: Vec<ProfileStack>, wakers: Vec<WakerRow>, names: &[(u32, &str)]) -> Profile {
    let mut profile = Profile::new(ProfileKind::Recording, 1, "app".to_string());
    profile.duration = Duration::from_secs(4);
    profile.stacks = stacks;
    profile.wakers = wakers;
    profile.thread_names = names.iter().map(|&(tid, name)| (tid, name.to_string())).collect();
    profile
}

fn lines(profile: &Profile, facts: &ChainFacts) -> Vec<String> {
    build(profile, facts)
        .iter()
        .map(|chain| chain_line(chain, |ns| format!("{}s", ns / SECOND)))
        .collect()
}

#[test]
fn a_pile_up_leads_through_two_hops_to_the_endpoint() {
    // Handlers wait for the batcher, the batcher for the sender, the sender on a socket.
    let profile = recording(
        vec![
            stack("handle", WaitKind::Futex, Some("queue"), &[1, 2, 3], 4 * SECOND),
            stack("batch", WaitKind::Futex, Some("outbox"), &[10], 3 * SECOND),
            stack("flush", WaitKind::Send, Some("10.0.0.5:80"), &[20], 4 * SECOND),
        ],
        vec![woken("handle", &[10]), woken("batch", &[20])],
        &[(10, "batcher"), (20, "sender")],
    );
    let mut facts = ChainFacts::default();
    let backend = ThreadNow { tid: 99, name: "backend".to_string(), state: ThreadState::Running };
    facts.peers.insert(
        "10.0.0.5:80".to_string(),
        PeerProcess {
            pid: 99,
            comm: "backend".to_string(),
            threads: vec![backend],
            thread_count: 1,
            waiting_on_socket: Some(Vec::new()),
            reached_at: None,
            other_pids: Vec::new(),
        },
    );
    assert_eq!(
        lines(&profile, &facts),
        ["3 threads at handle [futex queue] ← woken by batcher, blocked 3s in batch [futex \
             outbox] ← woken by sender, blocked 4s in flush [send 10.0.0.5:80] → peer pid 99 \
             (backend): running; none of its threads waits on this connection"],
        "the batcher's and the sender's own chains are inside the handlers'"
    );
}

#[test]
fn threads_waiting_in_accept_lead_to_no_peer() {
    // A server's acceptors and a client of the same address, in one process: the peer
    // found for the client's connection is not the acceptors' (a listener has none), so
    // idle acceptors make no chain; the client's recv still leads to its peer.
    let profile = recording(
        vec![
            stack("serve", WaitKind::Accept, Some("127.0.0.1:8080"), &[1, 2], 4 * SECOND),
            stack("fetch", WaitKind::Recv, Some("127.0.0.1:8080"), &[3], 4 * SECOND),
        ],
        Vec::new(),
        &[],
    );
    let mut facts = ChainFacts::default();
    let server = ThreadNow { tid: 9, name: "server".to_string(), state: ThreadState::Running };
    facts.peers.insert(
        "127.0.0.1:8080".to_string(),
        PeerProcess {
            pid: 1,
            comm: "app".to_string(),
            threads: vec![server],
            thread_count: 3,
            waiting_on_socket: None,
            reached_at: None,
            other_pids: Vec::new(),
        },
    );
    assert_eq!(
        lines(&profile, &facts),
        ["1 thread at fetch [recv 127.0.0.1:8080] → peer pid 1 (app): running (1 of its 3 \
          threads read)"]
    );
}

#[test]
fn a_peer_waiting_to_receive_on_the_same_connection_is_named() {
    // Both ends wait to receive: a protocol deadlock, which the line names by the peer
    // thread in recvfrom; only a few of many waiters are named.
    let profile = recording(
        vec![stack("fetch", WaitKind::Recv, Some("10.0.0.5:80"), &[3], 4 * SECOND)],
        Vec::new(),
        &[],
    );
    let blocked = |tid: u32, name: &str| ThreadNow {
        tid,
        name: name.to_string(),
        state: ThreadState::Blocked {
            syscall: "recvfrom".to_string(),
            call_site: Some("serve".to_string()),
            stack: Vec::new(),
        },
    };
    let mut peer = PeerProcess {
        pid: 7,
        comm: "server".to_string(),
        threads: vec![blocked(70, "conn"), blocked(71, "conn"), blocked(72, "conn")],
        thread_count: 3,
        waiting_on_socket: Some(vec![70]),
        reached_at: None,
        other_pids: Vec::new(),
    };
    let mut facts = ChainFacts::default();
    facts.peers.insert("10.0.0.5:80".to_string(), peer.clone());
    assert_eq!(
        lines(&profile, &facts),
        ["1 thread at fetch [recv 10.0.0.5:80] → peer pid 7 (server): 3 threads blocked in \
          recvfrom at serve; waiting on this connection: conn (tid 70) in recvfrom"]
    );
    peer.waiting_on_socket = Some(vec![70, 71, 72, 73, 74]);
    assert_eq!(
        super::peer_text(&peer, "10.0.0.5:80"),
        "peer pid 7 (server): 3 threads blocked in recvfrom at serve; waiting on this \
         connection: conn (tid 70) in recvfrom, conn (tid 71) in recvfrom, conn (tid 72) in \
         recvfrom, 2 more"
    );
    peer.waiting_on_socket = Some(Vec::new());
    assert!(
        super::peer_text(&peer, "pipe:[4711]")
            .ends_with("; none of its threads waits on this pipe")
    );
}

#[test]
fn a_peer_behind_address_translation_is_named_with_the_address_it_is_reached_at() {
    // A client of a service address (rewritten by DNAT to a pod's): the endpoint stays
    // the address the client sees, the peer says where the connection really goes.
    let profile = recording(
        vec![stack("fetch", WaitKind::Recv, Some("10.96.0.10:80"), &[3], 4 * SECOND)],
        Vec::new(),
        &[],
    );
    let peer = PeerProcess {
        pid: 7,
        comm: "server".to_string(),
        threads: vec![ThreadNow {
            tid: 70,
            name: "server".to_string(),
            state: ThreadState::Running,
        }],
        thread_count: 1,
        waiting_on_socket: Some(Vec::new()),
        reached_at: Some("10.244.1.7:8080".to_string()),
        other_pids: Vec::new(),
    };
    let mut facts = ChainFacts::default();
    facts.peers.insert("10.96.0.10:80".to_string(), peer);
    assert_eq!(
        lines(&profile, &facts),
        ["1 thread at fetch [recv 10.96.0.10:80] → peer pid 7 (server) at 10.244.1.7:8080 \
          (address translated): running; none of its threads waits on this connection"]
    );
}

#[test]
fn a_pool_s_connections_to_one_endpoint_name_every_process_behind_them() {
    // Five connections to one database port, each served by a backend process of its own
    // (as Postgres forks one per connection): the first is described, the others named.
    let profile = recording(
        vec![stack("query", WaitKind::Recv, Some("127.0.0.1:5432"), &[3, 4, 5, 6, 7], SECOND)],
        Vec::new(),
        &[],
    );
    let mut peer = PeerProcess {
        pid: 101,
        comm: "postgres".to_string(),
        threads: vec![ThreadNow {
            tid: 101,
            name: "postgres".to_string(),
            state: ThreadState::Running,
        }],
        thread_count: 1,
        waiting_on_socket: Some(Vec::new()),
        reached_at: None,
        other_pids: vec![102, 103, 104, 105],
    };
    let mut facts = ChainFacts::default();
    facts.peers.insert("127.0.0.1:5432".to_string(), peer.clone());
    assert_eq!(
        lines(&profile, &facts),
        ["5 threads at query [recv 127.0.0.1:5432] → peer pid 101 (postgres): running; none \
          of its threads waits on this connection; 4 more processes behind other \
          connections: pids 102, 103, 104, 105"]
    );
    let chain = &super::build(&profile, &facts)[0];
    assert_eq!(super::terminal_name(&chain.terminal), "→ peer pid 101 (postgres) and 4 more");
    peer.other_pids = (102..=108).collect();
    let text = super::peer_text(&peer, "127.0.0.1:5432");
    assert!(
        text.ends_with(
            "; 7 more processes behind other connections: pids 102, 103, 104, 105, 106, 2 more"
        ),
        "{text}"
    );
    peer.other_pids = vec![102];
    assert!(
        super::peer_text(&peer, "127.0.0.1:5432")
            .ends_with("; 1 more process behind other connections: pid 102")
    );
}

#[test]
fn a_waker_that_mostly_ran_ends_the_chain_with_what_it_does_now() {
    // The waker was blocked 0.1 s of 4 s: it is the work, not a wait.
    let profile = recording(
        vec![
            stack("handle", WaitKind::Futex, Some("queue"), &[1, 2], 4 * SECOND),
            stack("idle", WaitKind::Futex, Some("tick"), &[10], SECOND / 10),
        ],
        vec![woken("handle", &[10])],
        &[(10, "worker")],
    );
    assert_eq!(
        lines(&profile, &ChainFacts::default()),
        Vec::<String>::new(),
        "without knowing what the worker does now, the chain leads nowhere"
    );
    let mut facts = ChainFacts::default();
    let state = ThreadState::Blocked {
        syscall: "read".to_string(),
        call_site: Some("load_file".to_string()),
        stack: vec!["main".to_string(), "load_file".to_string()],
    };
    facts.threads_now.insert(10, ThreadNow { tid: 10, name: "worker".to_string(), state });
    let chains = build(&profile, &facts);
    assert_eq!(chains.len(), 1);
    assert!(chains[0].hops.is_empty());
    assert!(matches!(&chains[0].terminal, Terminal::Thread(now) if now.tid == 10));
    assert_eq!(
        chain_line(&chains[0], |ns| format!("{}s", ns / SECOND)),
        "2 threads at handle [futex queue] → worker (tid 10) blocked in read at load_file"
    );
}

#[test]
fn a_cycle_of_wakes_ends_as_unknown() {
    // Two pools that wake each other, each mostly blocked: a wait cycle.
    let profile = recording(
        vec![
            stack("ping", WaitKind::Futex, Some("a"), &[1], 4 * SECOND),
            stack("pong", WaitKind::Futex, Some("b"), &[2], 4 * SECOND),
        ],
        vec![woken("ping", &[2]), woken("pong", &[1])],
        &[(1, "pinger"), (2, "ponger")],
    );
    let chains = build(&profile, &ChainFacts::default());
    assert!(!chains.is_empty());
    for chain in &chains {
        assert_eq!(chain.hops.len(), 1, "{chain:?}");
        assert!(
            matches!(&chain.terminal, Terminal::Unknown(why) if why.starts_with("a cycle back to")),
            "{chain:?}"
        );
    }
}

#[test]
fn a_snapshot_names_the_holder_of_the_lock_its_threads_wait_for() {
    let mut profile = Profile::new(ProfileKind::Snapshot, 1, "app".to_string());
    // A condition variable's two futex words are one site; the lock is another.
    profile.stacks = vec![
        stack("record_stat", WaitKind::Futex, Some("stats_lock"), &[1, 2, 3], SECOND),
        stack("wait_turn", WaitKind::Futex, Some("turn+0x50"), &[4], SECOND),
        stack("wait_turn", WaitKind::Futex, Some("turn+0x54"), &[5, 6], SECOND),
    ];
    let holder = ThreadNow {
        tid: 7,
        name: "holder".to_string(),
        state: ThreadState::Blocked {
            syscall: "pause".to_string(),
            call_site: Some("hold".to_string()),
            stack: vec!["start_thread".to_string(), "hold".to_string(), "pause".to_string()],
        },
    };
    let mut facts = ChainFacts::default();
    facts.holders.insert("stats_lock".to_string(), holder);
    assert_eq!(
        lines(&profile, &facts),
        ["3 threads at record_stat [futex stats_lock] → held by holder (tid 7): blocked in pause \
          at hold"]
    );
    // Without a holder (or wakers, which a snapshot has none of) nothing leads anywhere.
    assert_eq!(build(&profile, &ChainFacts::default()), []);
}

#[test]
fn a_lock_holder_blocked_in_a_watched_wait_is_a_hop_to_it() {
    let mut profile = Profile::new(ProfileKind::Snapshot, 1, "app".to_string());
    let pipe = "pipe:[4711]";
    profile.stacks = vec![
        stack("log_line", WaitKind::Futex, Some("log_lock"), &[1, 2, 3], SECOND),
        stack("log_line", WaitKind::Write, Some(pipe), &[7], 2 * SECOND),
    ];
    profile.endpoint_states.insert(pipe.to_string(), "pipe full (65536/65536 bytes)".into());
    let blocked = |syscall: &str, site: &str| ThreadState::Blocked {
        syscall: syscall.to_string(),
        call_site: Some(site.to_string()),
        stack: Vec::new(),
    };
    let holder = ThreadNow { tid: 7, name: "handler".into(), state: blocked("write", "log_line") };
    let collector =
        ThreadNow { tid: 90, name: "collector".into(), state: blocked("pause", "main") };
    let mut facts = ChainFacts::default();
    facts.holders.insert("log_lock".to_string(), holder.clone());
    facts.peers.insert(
        pipe.to_string(),
        PeerProcess {
            pid: 90,
            comm: "collector".into(),
            threads: vec![collector],
            thread_count: 1,
            waiting_on_socket: Some(Vec::new()),
            reached_at: None,
            other_pids: Vec::new(),
        },
    );
    // The holder's own chain is inside the lock's, and not shown again.
    assert_eq!(
        lines(&profile, &facts),
        ["3 threads at log_line [futex log_lock] ← woken by handler (tid 7, holds the lock), \
          blocked 2s in log_line [write pipe:[4711]: pipe full (65536/65536 bytes)] → peer pid \
          90 (collector): blocked in pause at main; none of its threads waits on this pipe"]
    );
    // A holder running, or blocked outside the watched waits, ends the chain itself.
    let running = ThreadNow { state: ThreadState::Running, ..holder.clone() };
    facts.holders.insert("log_lock".to_string(), running);
    let first = lines(&profile, &facts).remove(0);
    assert!(first.ends_with("[futex log_lock] → held by handler (tid 7): running"), "{first}");
    // A holder blocked now elsewhere than at its waits of the profile (asleep holding the
    // lock) ends the chain where it is now, not at the site it spent most time in.
    let asleep = ThreadNow { state: blocked("clock_nanosleep", "flush_later"), ..holder };
    facts.holders.insert("log_lock".to_string(), asleep);
    let first = lines(&profile, &facts).remove(0);
    assert!(
        first.contains("[futex log_lock] → held by handler (tid 7): blocked in clock_nanosleep"),
        "{first}"
    );
    assert!(!first.contains("[write pipe"), "{first}");
}

#[test]
fn chains_stop_after_the_longest_they_may_run() {
    // site0 ← t1 at site1 ← t2 at site2 … each woken by the next thread.
    let sites = MAX_HOPS + 2;
    let stacks = (0..sites)
        .map(|i| stack(&format!("site{i}"), WaitKind::Futex, Some("x"), &[i as u32], 4 * SECOND))
        .collect();
    let wakers = (0..sites - 1).map(|i| woken(&format!("site{i}"), &[i as u32 + 1])).collect();
    let profile = recording(stacks, wakers, &[]);
    let chains = build(&profile, &ChainFacts::default());
    let longest = chains.iter().map(|chain| chain.hops.len()).max().unwrap();
    assert_eq!(longest, MAX_HOPS);
    assert!(chains.iter().any(|chain| matches!(&chain.terminal,
        Terminal::Unknown(why) if why == &format!("more than {MAX_HOPS} hops"))));
}

#[test]
fn a_waker_blocked_at_several_sites_leads_to_its_heaviest() {
    // 0.7 s and 0.6 s of 4 s: neither alone is a fifth of its time, both together are.
    let profile = recording(
        vec![
            stack("handle", WaitKind::Futex, Some("queue"), &[1, 2], 4 * SECOND),
            stack("flush", WaitKind::Send, Some("10.0.0.5:80"), &[10], 7 * SECOND / 10),
            stack("fetch", WaitKind::Recv, Some("10.0.0.6:80"), &[10], 6 * SECOND / 10),
        ],
        vec![woken("handle", &[10])],
        &[(10, "sender")],
    );
    let chains = build(&profile, &ChainFacts::default());
    let handle = chains.iter().find(|chain| chain.start.site == "handle").expect("a chain");
    assert_eq!(handle.hops.len(), 1, "{handle:?}");
    assert_eq!(handle.hops[0].at.site, "flush");
}

#[test]
fn a_goroutine_snapshot_leads_from_a_channel_to_its_holders_and_their_endpoint() {
    // Senders on a full channel; goroutine 9 holds it (and one of the senders, found in
    // a frame too, is no hop of its own), blocked writing to an endpoint. Ages unknown.
    let mut profile = recording(
        vec![
            stack(
                "sendStat",
                WaitKind::Goroutine,
                Some("chan send on chan int 16/16"),
                &[1, 2, 3],
                0,
            ),
            stack("writeToBackend", WaitKind::Goroutine, Some("IO wait 10.0.0.5:80"), &[9], 0),
        ],
        Vec::new(),
        &[],
    );
    profile.kind = ProfileKind::Snapshot;
    profile.endpoint_states.insert("10.0.0.5:80".to_string(), "send buffer full".to_string());
    let mut facts = ChainFacts::default();
    let holding =
        |goroutines: &[u64]| GoHolders { held: "channel", goroutines: goroutines.to_vec() };
    for sender in [1, 2, 3] {
        facts.goroutine_holders.insert(sender, holding(&[9, 2]));
    }
    assert_eq!(
        lines(&profile, &facts),
        ["3 goroutines at sendStat [goroutine chan send on chan int 16/16] ← woken by \
          goroutine 9 (holds the channel), blocked in writeToBackend [goroutine IO wait \
          10.0.0.5:80: send buffer full]"]
    );
    // Two holders are counted, not named.
    facts.goroutine_holders.insert(1, holding(&[9, 10]));
    profile.stacks[1].stats.add(10, 0);
    let chains = build(&profile, &facts);
    assert_eq!(chains[0].hops[0].waker, "2 goroutines holding the channel");
    assert_eq!(chains[0].hops[0].waker_threads, [9, 10]);
    // A holder made after 2^32 others is named by its whole id.
    let late = 9 + (1u64 << 32);
    profile.stacks[1].stats.threads = [late].into();
    for sender in [1, 2, 3] {
        facts.goroutine_holders.insert(sender, holding(&[late]));
    }
    let chains = build(&profile, &facts);
    assert_eq!(chains[0].hops[0].waker, "goroutine 4294967305 (holds the channel)");
    assert_eq!(chains[0].hops[0].at.site, "writeToBackend");
}

#[test]
fn a_goroutine_snapshot_leads_from_a_lock_to_its_holder() {
    // Lockers of one mutex; goroutine 9, whose frame keeps the mutex for its deferred
    // unlock, is blocked writing with it held.
    let mut profile = recording(
        vec![
            stack(
                "send",
                WaitKind::Goroutine,
                Some("sync.Mutex.Lock on anon 0xc000010"),
                &[1, 2],
                0,
            ),
            stack("send", WaitKind::Goroutine, Some("IO wait 10.0.0.5:80"), &[9], 0),
        ],
        Vec::new(),
        &[],
    );
    profile.kind = ProfileKind::Snapshot;
    let mut facts = ChainFacts::default();
    for locker in [1, 2] {
        facts.goroutine_holders.insert(locker, GoHolders { held: "lock", goroutines: vec![9] });
    }
    assert_eq!(
        lines(&profile, &facts),
        ["2 goroutines at send [goroutine sync.Mutex.Lock on anon 0xc000010] ← woken by \
          goroutine 9 (holds the lock), blocked in send [goroutine IO wait 10.0.0.5:80]"]
    );
}

#[test]
fn with_no_ages_known_a_hop_goes_where_most_of_its_goroutines_are() {
    let mut profile = recording(
        vec![
            stack("send", WaitKind::Goroutine, Some("chan send on chan int 0/0"), &[1, 2], 0),
            stack("flush", WaitKind::Goroutine, Some("IO wait 10.0.0.6:80"), &[10, 11], 0),
            stack("write", WaitKind::Goroutine, Some("IO wait 10.0.0.5:80"), &[9], 0),
        ],
        Vec::new(),
        &[],
    );
    profile.kind = ProfileKind::Snapshot;
    let mut facts = ChainFacts::default();
    for sender in [1, 2] {
        let holders = GoHolders { held: "channel", goroutines: vec![9, 10, 11] };
        facts.goroutine_holders.insert(sender, holders);
    }
    let chains = build(&profile, &facts);
    let from_senders = chains.iter().find(|chain| chain.start.site == "send").expect("a chain");
    assert_eq!(from_senders.hops[0].at.site, "flush", "{from_senders:?}");
}

#[test]
fn a_goroutine_site_is_its_call_site_and_wait_reason() {
    let site = |kind, object: &str| ChainSite {
        site: "send".to_string(),
        kind,
        object: Some(object.to_string()),
    };
    let lockers = site(WaitKind::Goroutine, "sync.Mutex.Lock on anon 0xc000010");
    let locker = stack("send", WaitKind::Goroutine, Some("sync.Mutex.Lock on main.mu"), &[1], 0);
    let holder = stack("send", WaitKind::Goroutine, Some("IO wait 10.0.0.5:80"), &[9], 0);
    assert!(lockers.matches(&locker));
    assert!(!lockers.matches(&holder));
    // A thread's site is its call site and kind, whatever its object.
    let futex = site(WaitKind::Futex, "queue.not_full");
    assert!(futex.matches(&stack("send", WaitKind::Futex, Some("queue.not_empty"), &[2], 0)));
    assert!(!futex.matches(&holder));
}

/// Handlers serialized by one lock wake one another: the chain ends there, not at where
/// they wait between requests (their reads from the client, which it blamed).
#[test]
fn waits_woken_by_their_own_peers_end_in_turns_not_at_the_peers_other_waits() {
    let profile = recording(
        vec![
            stack("take_lock", WaitKind::Futex, Some("cache_lock"), &[1, 2, 3, 4], 3 * SECOND),
            stack("read_request", WaitKind::Recv, None, &[1, 2, 3, 4], 4 * SECOND),
        ],
        vec![woken("take_lock", &[1, 2, 3, 9])],
        &[(1, "handler"), (9, "reaper")],
    );
    let chains = build(&profile, &ChainFacts::default());
    assert_eq!(chains.len(), 1, "{chains:?}");
    assert!(chains[0].hops.is_empty(), "{chains:?}");
    assert_eq!(chains[0].terminal, Terminal::Peers(3));
    assert_eq!(
        chain_line(&chains[0], |ns| format!("{}s", ns / SECOND)),
        "4 threads at take_lock [futex cache_lock] → taken in turns: woken by one another (3 \
         of these threads); the cause is what they do between their waits"
    );
}
