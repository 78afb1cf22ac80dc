//! A fixed recording for the exporters' tests and golden files: a futex pile-up behind
//! an inlined channel send, a reporter stuck in `send`, a truncated stack.

use std::time::Duration;

use tracer_common::{ShortWaitTotals, WaitKind};

use crate::{
    chains::{self, ChainFacts, PeerProcess, ThreadNow, ThreadState},
    model::{
        BackedUp, BackedUpSocket, Backlog, ModuleInfo, Profile, ProfileKind, ProfileStack,
        ThreadCounts, TraceCounts, WaitStats, WakerRow,
    },
    report::Provenance,
    stacks::Frame,
};

fn frame(name: &str, module: &str, line: Option<u32>, address: u64) -> Frame {
    Frame {
        name: name.to_string(),
        module: module.to_string(),
        module_is_main: module == "app",
        file: line.map(|_| format!("/src/app/{}.rs", name.rsplit("::").next().unwrap_or(name))),
        line,
        inlined: false,
        address,
    }
}

fn inlined(mut frame: Frame) -> Frame {
    frame.inlined = true;
    frame
}

fn stats(waits: &[(u32, u64)]) -> WaitStats {
    let mut stats = WaitStats::default();
    for &(tid, ns) in waits {
        stats.add(u64::from(tid), ns);
    }
    stats
}

pub(crate) fn fixture_profile() -> Profile {
    let handler_frames = vec![
        frame("start_thread", "libc.so.6", None, 0x7f00_0000_1000),
        frame("app::handler", "app", Some(40), 0x5500_0000_2000),
        frame("app::send_stat", "app", Some(52), 0x5500_0000_3000),
        inlined(frame(
            "std::sync::mpmc::array::Channel<T>::send",
            "app",
            Some(310),
            0x5500_0000_3000,
        )),
        frame("syscall", "libc.so.6", None, 0x7f00_0000_4000),
    ];
    let handlers = ProfileStack {
        frames: handler_frames,
        kind: WaitKind::Futex,
        object: Some("app::STATS".to_string()),
        truncated: false,
        in_progress: false,
        stats: stats(&[(11, 40_000_000), (12, 35_000_000), (13, 45_500_000), (11, 20_000_000)]),
        process: None,
    };
    let reporter_frames = vec![
        frame("app::reporter", "app", Some(70), 0x5500_0000_5000),
        frame("app::write_to_backend", "app", Some(81), 0x5500_0000_6000),
        frame("send", "libc.so.6", None, 0x7f00_0000_7000),
    ];
    let sends = ProfileStack {
        frames: reporter_frames.clone(),
        kind: WaitKind::Send,
        object: Some("10.0.0.5:80".to_string()),
        truncated: false,
        in_progress: false,
        stats: stats(&[(20, 30_000_000), (20, 12_000_000)]),
        process: None,
    };
    let mut stuck_stats = stats(&[(20, 1_250_000_000)]);
    stuck_stats.lower_bound = true;
    let stuck = ProfileStack {
        frames: reporter_frames,
        kind: WaitKind::Send,
        object: Some("10.0.0.5:80".to_string()),
        truncated: false,
        in_progress: true,
        stats: stuck_stats,
        process: None,
    };
    let truncated = ProfileStack {
        frames: vec![
            frame("[unknown]", "[unknown]", None, 0x1234),
            frame("poll", "libc.so.6", None, 0x7f00_0000_8000),
        ],
        kind: WaitKind::Poll,
        object: None,
        truncated: true,
        in_progress: false,
        stats: stats(&[(30, 5_000_000)]),
        process: None,
    };
    let mut profile = Profile {
        kind: ProfileKind::Recording,
        pid: 4242,
        start_unix_ns: None,
        command_line: None,
        comm: "app".to_string(),
        cgroup: None,
        duration: Duration::from_millis(3_000),
        min_wait: Duration::from_millis(1),
        sampling: None,
        no_wakers: false,
        target_exited: false,
        stacks: vec![stuck, handlers, sends, truncated],
        below_threshold: WaitKind::ALL
            .iter()
            .filter(|&&kind| !matches!(kind, WaitKind::Goroutine | WaitKind::Task))
            .map(|&kind| {
                let totals = match kind {
                    WaitKind::Futex => ShortWaitTotals { count: 7, total_ns: 700_000 },
                    _ => ShortWaitTotals::default(),
                };
                (kind, totals)
            })
            .collect(),
        counts: TraceCounts {
            waits_started: 16,
            waits_discarded: 2,
            short_waits: 7,
            long_waits: 7,
            unknown_symbols: 1,
            unwind_truncated: 1,
            ..TraceCounts::default()
        },
        thread_counts: ThreadCounts {
            threads: 6,
            blocked_in_waits: 1,
            elsewhere: 5,
            ..ThreadCounts::default()
        },
        endpoint_states: [(
            "10.0.0.5:80".to_string(),
            "send buffer full (4608/4608 bytes), peer window zero".to_string(),
        )]
        .into(),
        thread_names: [
            (11, "handler-0".to_string()),
            (12, "handler-1".to_string()),
            (13, "handler-2".to_string()),
            (20, "reporter".to_string()),
            (30, "poller".to_string()),
        ]
        .into(),
        wakers: vec![WakerRow {
            waiting_site: "app::send_stat".to_string(),
            kind: WaitKind::Futex,
            waker_site: "app::reporter".to_string(),
            waker_frames: vec![
                frame("app::reporter", "app", Some(66), 0x5500_0000_5100),
                frame("syscall", "libc.so.6", None, 0x7f00_0000_4100),
            ],
            wakes: 3,
            waker_threads: [20].into(),
        }],
        modules: [(
            "app".to_string(),
            ModuleInfo {
                path: "/srv/app".to_string(),
                build_id: Some("0123456789abcdef".to_string()),
                start: 0x5500_0000_0000,
                end: 0x5500_0010_0000,
                file_offset: 0x1000,
            },
        )]
        .into(),
        process_modules: Default::default(),
        lock_addresses: [("app::STATS".to_string(), 0x5500_0008_0000)].into(),
        chains: Vec::new(),
        processes: Vec::new(),
        timeline: None,
        python: None,
        // A client of the app that stopped reading (the app writes to it without
        // blocking), a socket the app itself stopped reading, and a client that reads
        // slower than the app writes.
        backed_up: BackedUp {
            sockets: vec![
                BackedUpSocket {
                    process: None,
                    fd: 9,
                    inode: 70001,
                    peer: "10.0.0.7:51234".to_string(),
                    local: Some("10.0.0.2:6379".to_string()),
                    backlog: Backlog::Unsent,
                    queued_bytes: 2_621_440,
                    buffer_bytes: Some(2_621_440),
                    window_closed: true,
                    retransmitting: false,
                    window_limited_percent: None,
                    idle: Some(Duration::from_millis(8_100)),
                    tcp: true,
                    peer_process: Some(
                        "peer pid 5252 (stats-client): blocked in clock_nanosleep at \
                         client::pause; none of its threads waits on this connection"
                            .to_string(),
                    ),
                },
                BackedUpSocket {
                    process: None,
                    fd: 12,
                    inode: 70002,
                    peer: "10.0.0.9:40110".to_string(),
                    local: Some("10.0.0.2:6379".to_string()),
                    backlog: Backlog::Unread,
                    queued_bytes: 4_096,
                    buffer_bytes: Some(8_192),
                    window_closed: true,
                    retransmitting: false,
                    window_limited_percent: None,
                    idle: Some(Duration::from_millis(2_500)),
                    tcp: true,
                    peer_process: None,
                },
                BackedUpSocket {
                    process: None,
                    fd: 14,
                    inode: 70003,
                    peer: "10.0.0.8:39002".to_string(),
                    local: Some("10.0.0.2:6379".to_string()),
                    backlog: Backlog::Unsent,
                    queued_bytes: 1_048_576,
                    buffer_bytes: Some(2_621_440),
                    window_closed: false,
                    retransmitting: false,
                    window_limited_percent: Some(94),
                    idle: Some(Duration::from_millis(12)),
                    tcp: true,
                    peer_process: None,
                },
            ],
            left_out: 0,
        },
    };
    // The backend behind the reporter's endpoint, as if it ran on this host.
    let backend = ThreadNow {
        tid: 5151,
        name: "stats-backend".to_string(),
        state: ThreadState::Blocked {
            syscall: "clock_nanosleep".to_string(),
            call_site: Some("backend::drain".to_string()),
            stack: vec!["backend::main".to_string(), "backend::drain".to_string()],
        },
    };
    let facts = ChainFacts {
        peers: [(
            "10.0.0.5:80".to_string(),
            PeerProcess {
                pid: 5151,
                comm: "stats-backend".to_string(),
                threads: vec![backend],
                thread_count: 1,
                waiting_on_socket: Some(Vec::new()),
                reached_at: None,
                other_pids: Vec::new(),
            },
        )]
        .into(),
        ..ChainFacts::default()
    };
    profile.chains = chains::build(&profile, &facts);
    profile
}

pub(crate) fn fixture_provenance() -> Provenance {
    Provenance {
        tracer_version: "0.1.0".to_string(),
        kernel: Some("6.1.0-test".to_string()),
        command_line: Some(vec!["./app".to_string(), "--handlers".to_string(), "3".to_string()]),
    }
}
