//! The target's backed-up sockets, read when a report is made: every socket it holds is
//! looked up (TCP by one dump per family, Unix one by one), and those whose data stopped
//! moving are kept. A thread blocked in `send` on such a socket shows as a wait too; an
//! event-driven server has none, and this is where its client that stopped reading shows.
//!
//! Backed up means, as the kernel tells it (sock_diag's meminfo and `tcp_info`):
//! - unsent: TCP data written and not acknowledged, and nothing sent for `STALLED_FOR`
//!   (the kernel sends what it can at once: the peer's window is closed) or, while it
//!   retries after timeouts, nothing acknowledged for as long (what is sent is lost or
//!   dropped); TCP data still moving, but written faster than the peer reads: its window
//!   held sending back `SLOW_READER_SHARE` of the time between two looks
//!   `READ_AGAIN_AFTER` apart, data waiting to be sent at both; a Unix socket's send
//!   buffer full (a write would block, or fail with EAGAIN), still full when read again
//!   `READ_AGAIN_AFTER` later (it tells no times);
//! - unread: this end of a TCP connection advertising a zero window with data unread,
//!   nothing received for `STALLED_FOR`; a Unix stream socket holding data unread while
//!   its peer's send buffer is full (what the peer writes is charged to its own buffer
//!   until this end reads it), still so `READ_AGAIN_AFTER` later.
//!
//! A busy connection is full, or at a closed window, for moments at a time: those
//! moments keep it out of the stopped rules.

use std::{
    collections::{HashMap, HashSet},
    fs,
    time::{Duration, Instant},
};

use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{InetResponse, SocketId, StateFlags},
};

use super::{
    NetlinkError, SocketInfo, SocketKind,
    diag::{self, Record, SockDiag, TcpFlow},
    socket_descriptors, socket_kind,
};
use crate::model::{BackedUpSocket, Backlog};

/// How long nothing must have moved on a TCP connection for it to count as backed up.
pub const STALLED_FOR: Duration = Duration::from_secs(1);
/// When a full Unix socket, and a TCP connection moving data, are looked at again: a Unix
/// socket still full is not full for a moment's; a connection's peer that held sending
/// back most of the time between reads slower than this process writes.
const READ_AGAIN_AFTER: Duration = Duration::from_millis(100);
/// The share of the time between two looks at a connection that its peer's window must
/// have held sending back for it to count as backed up behind a slow reader.
const SLOW_READER_SHARE: f64 = 0.5;
/// Connections asked for again one by one, at most, in a namespace; more are read again
/// in one dump of its table.
const ASKED_ONE_BY_ONE: usize = 256;

/// Why a process's sockets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanFailed {
    #[error("cannot list the descriptors of pid {0}: {1}")]
    Descriptors(u32, #[source] std::io::Error),
    #[error("cannot read its sockets: {0}")]
    Netlink(#[from] NetlinkError),
    /// Its network namespace's socket tables could not be read (said once for each of the
    /// namespace's processes).
    #[error("cannot read the socket tables of its network namespace: {0}")]
    Namespace(String),
}

/// One process being scanned.
#[derive(Default)]
struct Scanned {
    pid: u32,
    found: Vec<BackedUpSocket>,
    failed: Option<ScanFailed>,
    /// Its TCP families, and its Unix sockets (descriptor, inode).
    families: HashSet<u8>,
    unix: Vec<(u64, u64)>,
}

impl Scanned {
    /// The first failure is the one said.
    fn fail(&mut self, failed: ScanFailed) {
        self.failed.get_or_insert(failed);
    }
}

/// Every backed-up socket of each of `pids` now, in their order, and why some of a
/// process's could not be read (a process gone has none). The processes of one network
/// namespace share its dumps of the TCP table (a host's daemon reads hundreds), the full
/// Unix sockets of all are read again after one wait, and a socket several of them hold
/// (inherited, passed) is judged once, for the first.
pub fn scan_processes(pids: &[u32]) -> Vec<(Vec<BackedUpSocket>, Option<ScanFailed>)> {
    let mut scanned: Vec<Scanned> =
        pids.iter().map(|&pid| Scanned { pid, ..Default::default() }).collect();
    // Each TCP socket's process (by index) and descriptor, by inode, and the Unix sockets
    // taken: of processes placed in a namespace only. The processes by namespace.
    let mut tcp_owner: HashMap<u64, (usize, u64)> = HashMap::new();
    let mut unix_taken: HashSet<u64> = HashSet::new();
    let mut namespaces: HashMap<u64, Vec<usize>> = HashMap::new();
    for (index, process) in scanned.iter_mut().enumerate() {
        let pid = process.pid;
        let descriptors = match socket_descriptors(pid) {
            Ok(descriptors) => descriptors,
            // Gone since it was looked at: it has no sockets left.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                process.fail(ScanFailed::Descriptors(pid, error));
                continue;
            }
        };
        let mut tcp = Vec::new();
        for (fd, inode) in descriptors {
            match socket_kind(&format!("/proc/{pid}/fd/{fd}")) {
                Some(SocketKind::Inet { family, protocol }) if protocol == IPPROTO_TCP => {
                    tcp.push((family, fd, inode));
                }
                Some(SocketKind::Unix) => process.unix.push((fd, inode)),
                // UDP drops what does not fit; MPTCP and the rest have no queue to read.
                _ => {}
            }
        }
        if tcp.is_empty() && process.unix.is_empty() {
            continue;
        }
        let namespace = match network_namespace(pid) {
            Ok(namespace) => namespace,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                process.fail(ScanFailed::Namespace(error.to_string()));
                continue;
            }
        };
        namespaces.entry(namespace).or_default().push(index);
        for (family, fd, inode) in tcp {
            process.families.insert(family);
            tcp_owner.entry(inode).or_insert((index, fd));
        }
        process.unix.retain(|&(_, inode)| unix_taken.insert(inode));
    }
    let mut diags = Vec::new();
    for members in namespaces.into_values() {
        // sock_diag answers for the namespace of the process that opens it: any member
        // that is still there.
        let mut last_error = None;
        let opened = members.iter().find_map(|&index| match SockDiag::open(scanned[index].pid) {
            Ok(diag) => Some(diag),
            Err(error) => {
                last_error = Some(error);
                None
            }
        });
        let Some(mut diag) = opened else {
            let said = last_error.map_or_else(String::new, |error| error.to_string());
            for &index in &members {
                scanned[index].fail(ScanFailed::Namespace(said.clone()));
            }
            continue;
        };
        let moving = read_tcp(&mut diag, &members, &tcp_owner, &mut scanned);
        diags.push(Namespace { diag, members, moving, full_unix: Vec::new(), broken: false });
    }
    look_at_unix(&mut diags, &mut scanned);
    let look_again = diags.iter().any(|namespace| {
        let nothing_left = namespace.full_unix.is_empty() && namespace.moving.is_empty();
        !namespace.broken && !nothing_left
    });
    if look_again {
        std::thread::sleep(READ_AGAIN_AFTER);
        look_again_at_unix(&mut diags, &mut scanned);
        look_again_at_tcp(&mut diags, &mut scanned);
    }
    scanned.into_iter().map(|process| (process.found, process.failed)).collect()
}

/// One network namespace's reading: its processes (`members`), and what its first look
/// left to look at again.
struct Namespace {
    diag: SockDiag,
    members: Vec<usize>,
    /// Its connections still moving data, with data waiting to be sent, at the first look.
    moving: Vec<Moving>,
    /// (process, descriptor, inode, ways) of each Unix socket backed up at the first
    /// look: only the ways backed up at both looks count.
    full_unix: Vec<(usize, u64, u64, Vec<Backlog>)>,
    /// Its socket failed (each failure may be a second's timeout): given up, its
    /// processes counted.
    broken: bool,
}

impl Namespace {
    fn give_up(&mut self, scanned: &mut [Scanned], error: &NetlinkError) {
        for &index in &self.members {
            scanned[index].fail(ScanFailed::Namespace(error.to_string()));
        }
        self.broken = true;
    }
}

/// A connection whose data still moved at the first look, with data waiting to be sent:
/// looked at again to tell whether its peer reads slower than this process writes (the
/// peer's window held sending back most of the time between).
struct Moving {
    process: usize,
    fd: u64,
    family: u8,
    inode: u64,
    id: SocketId,
    /// `tcp_info`'s total time sending waited for the peer's window, and when it was read.
    window_limited: Duration,
    read_at: Instant,
}

/// One dump per TCP family the namespace's processes (`members`) hold, each connection
/// judged for the process that holds it; the ones to look at again (`Moving`).
fn read_tcp(
    diag: &mut SockDiag,
    members: &[usize],
    tcp_owner: &HashMap<u64, (usize, u64)>,
    scanned: &mut [Scanned],
) -> Vec<Moving> {
    let mut moving = Vec::new();
    for family in [AF_INET, AF_INET6] {
        if !members.iter().any(|&index| scanned[index].families.contains(&family)) {
            continue;
        }
        let dumped = diag.dump_inet_each(family, IPPROTO_TCP, transferring(), |response| {
            let inode = u64::from(response.header.inode);
            let Some(&(index, fd)) = tcp_owner.get(&inode) else { return };
            let id = response.header.socket_id.clone();
            let Some((tcp, info)) = tcp_answer(response) else {
                // Asked for with every answer: a kernel that left it out says nothing
                // of whether data moves.
                scanned[index].fail(ScanFailed::Namespace("a connection without tcp_info".into()));
                return;
            };
            let ways = judge(fd, &info, Movement::Tcp(tcp));
            let stopped = ways.iter().any(|way| way.backlog == Backlog::Unsent);
            if let Some(window_limited) = tcp.flow.window_limited
                && tcp.holds_back()
                && !stopped
            {
                let read_at = Instant::now();
                moving.push(Moving {
                    process: index,
                    fd,
                    family,
                    inode,
                    id,
                    window_limited,
                    read_at,
                });
            }
            scanned[index].found.extend(ways);
        });
        if let Err(error) = dumped {
            for &index in members {
                if scanned[index].families.contains(&family) {
                    scanned[index].fail(ScanFailed::Namespace(error.to_string()));
                }
            }
        }
    }
    moving
}

/// Connections that can move data: a host's listeners and TIME_WAITs are left in the
/// kernel, and only the processes' own answers are kept.
fn transferring() -> StateFlags {
    StateFlags::ESTABLISHED | StateFlags::CLOSE_WAIT
}

/// A TCP connection's answer decoded: what moves on it, and its `SocketInfo`; `None`
/// when it came without `tcp_info`.
fn tcp_answer(response: InetResponse) -> Option<(TcpFacts, SocketInfo)> {
    let flow = diag::tcp_info(&response).and_then(diag::tcp_flow)?;
    let tcp = TcpFacts { flow, unacknowledged: response.header.send_queue };
    let Record { info, .. } = diag::inet_record(IPPROTO_TCP, response);
    Some((tcp, info))
}

/// The `moving` connections read again: each backed up if it has stopped since (as the
/// first look judges), or if its peer's window held sending back `SLOW_READER_SHARE` of
/// the time between the looks with data still waiting to be sent. A few are asked for
/// one by one, more in a dump of the namespace.
fn look_again_at_tcp(namespaces: &mut [Namespace], scanned: &mut [Scanned]) {
    for namespace in namespaces.iter_mut().filter(|namespace| !namespace.broken) {
        let moving = std::mem::take(&mut namespace.moving);
        let mut judge_again = |first: &Moving, response: InetResponse| {
            let between = first.read_at.elapsed();
            // As the dump asks: one read one by one may have begun to close since.
            let state = StateFlags::from_bits_truncate(1 << response.header.state);
            if !transferring().contains(state) {
                return;
            }
            let Some((tcp, info)) = tcp_answer(response) else { return };
            // The first look judged it unread, if it is.
            let mut stopped = judge(first.fd, &info, Movement::Tcp(tcp));
            stopped.retain(|way| way.backlog == Backlog::Unsent);
            let found = &mut scanned[first.process].found;
            if !stopped.is_empty() {
                found.extend(stopped);
                return;
            }
            let window_limited = tcp.flow.window_limited.unwrap_or_default();
            found.extend(judge_slow(first, &info, tcp, window_limited, between));
        };
        let answered = if moving.len() <= ASKED_ONE_BY_ONE {
            moving.iter().try_for_each(|first| {
                let response =
                    namespace.diag.get_inet_response(first.family, IPPROTO_TCP, &first.id)?;
                // None: closed meanwhile.
                if let Some(response) = response {
                    judge_again(first, response);
                }
                Ok(())
            })
        } else {
            let by_inode: HashMap<u64, &Moving> =
                moving.iter().map(|first| (first.inode, first)).collect();
            let families: HashSet<u8> = moving.iter().map(|first| first.family).collect();
            families.into_iter().try_for_each(|family| {
                namespace.diag.dump_inet_each(family, IPPROTO_TCP, transferring(), |response| {
                    if let Some(first) = by_inode.get(&u64::from(response.header.inode)) {
                        judge_again(first, response);
                    }
                })
            })
        };
        if let Err(error) = answered {
            namespace.give_up(scanned, &error);
        }
    }
}

/// Connection `first` read again `between` after it was, as `info` and `tcp`: backed up
/// when its peer's window held sending back `SLOW_READER_SHARE` of that time (now
/// `window_limited` in all) and data still waits to be sent.
fn judge_slow(
    first: &Moving,
    info: &SocketInfo,
    tcp: TcpFacts,
    window_limited: Duration,
    between: Duration,
) -> Option<BackedUpSocket> {
    if !tcp.holds_back() || between.is_zero() {
        return None;
    }
    let waited = window_limited.saturating_sub(first.window_limited);
    let share = (waited.as_secs_f64() / between.as_secs_f64()).min(1.0);
    if share < SLOW_READER_SHARE {
        return None;
    }
    Some(BackedUpSocket {
        window_limited_percent: Some((share * 100.0).round() as u8),
        idle: Some(tcp.flow.since_sent),
        ..backed_up_socket(first.fd, info, Backlog::Unsent, tcp.unacknowledged, info.send_buffer)
    })
}

/// Reads Unix socket `inode` (descriptor `fd`) and judges it; nothing when it is closed.
fn read_unix(
    diag: &mut SockDiag,
    fd: u64,
    inode: u64,
) -> Result<Vec<BackedUpSocket>, NetlinkError> {
    let Ok(inode) = u32::try_from(inode) else { return Ok(Vec::new()) };
    let Some((Record { info, .. }, peer)) = diag.get_unix_and_peer(inode)? else {
        return Ok(Vec::new());
    };
    Ok(judge(fd, &info, Movement::Unix { peer: peer.as_ref() }))
}

/// The first look at the namespaces' Unix sockets, one by one: those backed up are kept
/// in `full_unix` to be looked at again (a Unix socket tells no times: full for a
/// moment, or still full, is told by a second look).
fn look_at_unix(namespaces: &mut [Namespace], scanned: &mut [Scanned]) {
    for namespace in namespaces.iter_mut() {
        for index in namespace.members.clone() {
            for (fd, inode) in std::mem::take(&mut scanned[index].unix) {
                match read_unix(&mut namespace.diag, fd, inode) {
                    Ok(ways) if !ways.is_empty() => {
                        let ways = ways.iter().map(|way| way.backlog).collect();
                        namespace.full_unix.push((index, fd, inode, ways));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        namespace.give_up(scanned, &error);
                        break;
                    }
                }
            }
            if namespace.broken {
                break;
            }
        }
    }
}

/// The second look at the Unix sockets backed up at the first: each way backed up at
/// both is.
fn look_again_at_unix(namespaces: &mut [Namespace], scanned: &mut [Scanned]) {
    for namespace in namespaces.iter_mut().filter(|namespace| !namespace.broken) {
        for (index, fd, inode, ways) in std::mem::take(&mut namespace.full_unix) {
            match read_unix(&mut namespace.diag, fd, inode) {
                Ok(still) => scanned[index]
                    .found
                    .extend(still.into_iter().filter(|way| ways.contains(&way.backlog))),
                Err(error) => {
                    namespace.give_up(scanned, &error);
                    break;
                }
            }
        }
    }
}

/// The inode of the network namespace of process `pid`.
fn network_namespace(pid: u32) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// What a TCP connection's own answer adds to its `SocketInfo`.
#[derive(Clone, Copy, Debug)]
pub struct TcpFacts {
    pub flow: TcpFlow,
    /// Bytes written and not yet acknowledged, sent or not (`idiag_wqueue`): the payload,
    /// where the send queue compared with the buffer (`sk_wmem_queued`) counts overhead.
    pub unacknowledged: u32,
}

impl TcpFacts {
    /// Data waits to be sent: what a peer's window can hold back (data sent and in flight
    /// cannot). Where the kernel does not tell what is unsent, whatever is unacknowledged.
    fn holds_back(&self) -> bool {
        self.unacknowledged > 0 && self.flow.not_sent.is_none_or(|not_sent| not_sent > 0)
    }
}

/// What tells whether a socket's data moves, beside its `SocketInfo`.
#[derive(Clone, Copy, Debug)]
pub enum Movement<'a> {
    /// A TCP connection's own answer.
    Tcp(TcpFacts),
    /// A Unix socket tells no times; its peer, where it is connected to one, tells whether
    /// what it sends is held up here.
    Unix { peer: Option<&'a SocketInfo> },
}

/// Socket `info` (descriptor `fd`) backed up `backlog`, `queued` bytes in `buffer`; its
/// window open, its idle time not told.
fn backed_up_socket(
    fd: u64,
    info: &SocketInfo,
    backlog: Backlog,
    queued: u32,
    buffer: Option<u32>,
) -> BackedUpSocket {
    BackedUpSocket {
        process: None,
        fd,
        inode: info.inode,
        peer: info.endpoint(tracer_common::WaitKind::Send),
        local: info.local.clone(),
        backlog,
        queued_bytes: u64::from(queued),
        buffer_bytes: buffer.map(u64::from),
        window_closed: false,
        retransmitting: false,
        window_limited_percent: None,
        idle: None,
        tcp: info.protocol == super::Protocol::Tcp,
        peer_process: None,
    }
}

/// The ways socket `info` (descriptor `fd`) is backed up: none, one, or both.
pub fn judge(fd: u64, info: &SocketInfo, movement: Movement) -> Vec<BackedUpSocket> {
    let mut backed_up = Vec::new();
    // A listener's queues are its accept queue (told in the endpoint tables).
    if info.accept_backlog.is_some() {
        return backed_up;
    }
    let socket = |backlog, queued, buffer, window_closed, idle| BackedUpSocket {
        window_closed,
        idle,
        ..backed_up_socket(fd, info, backlog, queued, buffer)
    };
    // A buffer charged to its size: a write to it would block.
    let full = |info: &SocketInfo| {
        let charged = info.send_queue.unwrap_or(0);
        info.send_buffer.is_some_and(|buffer| buffer > 0 && charged >= buffer)
    };
    match movement {
        // A TCP connection is judged by its flow alone.
        Movement::Unix { .. } if info.protocol != super::Protocol::Unix => {}
        Movement::Unix { peer } => {
            if full(info) {
                let charged = info.send_queue.unwrap_or(0);
                backed_up.push(socket(Backlog::Unsent, charged, info.send_buffer, false, None));
            }
            // The peer's writes wait in this end's queue, charged to the peer's buffer.
            let unread = info.recv_queue.unwrap_or(0);
            if let Some(peer) = peer.filter(|peer| unread > 0 && full(peer)) {
                backed_up.push(socket(Backlog::Unread, unread, peer.send_buffer, false, None));
            }
        }
        Movement::Tcp(TcpFacts { flow, unacknowledged }) => {
            // A retransmission is a send: a connection retried at ever longer intervals is
            // stalled as long as nothing is acknowledged.
            let stalled = flow.since_sent >= STALLED_FOR
                || flow.retransmitting && flow.since_acknowledged >= STALLED_FOR;
            if unacknowledged > 0 && stalled {
                let closed = info.peer_window_zero == Some(true);
                // Since data last got through: sent, or (being retried) acknowledged.
                let idle = Some(flow.since_sent.max(match flow.retransmitting {
                    true => flow.since_acknowledged,
                    false => Duration::ZERO,
                }));
                backed_up.push(BackedUpSocket {
                    retransmitting: flow.retransmitting && !closed,
                    ..socket(Backlog::Unsent, unacknowledged, info.send_buffer, closed, idle)
                });
            }
            let unread = info.recv_queue.unwrap_or(0);
            if flow.own_window_zero == Some(true)
                && unread > 0
                && flow.since_received >= STALLED_FOR
            {
                let idle = Some(flow.since_received);
                backed_up.push(socket(Backlog::Unread, unread, info.recv_buffer, true, idle));
            }
        }
    }
    backed_up
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::sockets::{Protocol, TcpState};

    fn connection() -> SocketInfo {
        SocketInfo {
            tcp_state: Some(TcpState::Established),
            send_queue: Some(0),
            send_buffer: Some(4608),
            recv_queue: Some(0),
            recv_buffer: Some(8192),
            peer_window_zero: Some(false),
            ..SocketInfo::addresses_only(
                7,
                Protocol::Tcp,
                Some("127.0.0.1:6379".to_string()),
                Some("127.0.0.1:40000".to_string()),
            )
        }
    }

    /// A connection whose data last moved `idle` ago each way.
    fn tcp(idle: Duration, own_window_zero: Option<bool>) -> Movement<'static> {
        Movement::Tcp(TcpFacts {
            flow: TcpFlow {
                since_sent: idle,
                since_received: idle,
                since_acknowledged: idle,
                own_window_zero,
                retransmitting: false,
                window_limited: Some(Duration::from_secs(30)),
                not_sent: Some(600),
            },
            unacknowledged: 900,
        })
    }

    const STALLED: Duration = Duration::from_millis(1500);
    const MOVING: Duration = Duration::from_millis(40);

    fn facts(movement: Movement) -> TcpFacts {
        match movement {
            Movement::Tcp(facts) => facts,
            Movement::Unix { .. } => unreachable!("a TCP connection's"),
        }
    }

    fn ways(info: &SocketInfo, movement: Movement) -> Vec<(Backlog, u64, bool)> {
        judge(5, info, movement)
            .into_iter()
            .map(|socket| (socket.backlog, socket.queued_bytes, socket.window_closed))
            .collect()
    }

    #[test]
    fn a_moving_connection_is_not_backed_up() {
        let busy = SocketInfo { send_queue: Some(1000), recv_queue: Some(200), ..connection() };
        assert_eq!(ways(&busy, tcp(MOVING, Some(false))), []);
        // A closed window with nothing queued to it holds nothing up.
        let idle_peer = SocketInfo { peer_window_zero: Some(true), ..connection() };
        let nothing_written = TcpFacts { unacknowledged: 0, ..facts(tcp(STALLED, Some(false))) };
        assert_eq!(ways(&idle_peer, Movement::Tcp(nothing_written)), []);
        // Full, or at a closed window, for a moment: a bulk transfer at full speed.
        let bulk = SocketInfo {
            send_queue: Some(4608),
            recv_queue: Some(100),
            peer_window_zero: Some(true),
            ..connection()
        };
        assert_eq!(ways(&bulk, tcp(MOVING, Some(true))), []);
    }

    #[test]
    fn a_peer_that_stopped_reading_backs_up_what_is_sent() {
        let stalled =
            SocketInfo { send_queue: Some(1000), peer_window_zero: Some(true), ..connection() };
        let backed_up = judge(5, &stalled, tcp(STALLED, Some(false)));
        assert_eq!(backed_up.len(), 1);
        let socket = &backed_up[0];
        assert_eq!((socket.backlog, socket.fd, socket.inode), (Backlog::Unsent, 5, 7));
        // The payload written and not acknowledged, not what the buffer is charged.
        assert_eq!(socket.queued_bytes, 900);
        assert!(socket.window_closed);
        assert_eq!(socket.peer, "127.0.0.1:40000");
        assert_eq!(socket.local.as_deref(), Some("127.0.0.1:6379"));
        assert_eq!(socket.idle, Some(STALLED));
        // Written and not sent for a second, window open: what was sent is lost and retried.
        let full = SocketInfo { send_queue: Some(4608), ..connection() };
        assert_eq!(ways(&full, tcp(STALLED, Some(false))), [(Backlog::Unsent, 900, false)]);
        // Retried after timeouts: the last retry was a moment ago, the last acknowledgment
        // long before.
        let mut retrying = facts(tcp(MOVING, Some(false)));
        retrying.flow.retransmitting = true;
        retrying.flow.since_acknowledged = STALLED;
        let backed_up = judge(5, &full, Movement::Tcp(retrying));
        assert!(backed_up.len() == 1 && backed_up[0].retransmitting, "{backed_up:#?}");
        assert_eq!(backed_up[0].idle, Some(STALLED));
        retrying.flow.since_acknowledged = MOVING;
        assert_eq!(ways(&full, Movement::Tcp(retrying)), []);
        // A Unix socket tells no times: full is all there is (the scan reads it twice).
        let unix = SocketInfo { protocol: Protocol::Unix, tcp_state: None, ..full.clone() };
        // A TCP connection without its flow is not judged by the Unix rule.
        assert_eq!(ways(&full, Movement::Unix { peer: None }), []);
        assert_eq!(ways(&unix, Movement::Unix { peer: None }), [(Backlog::Unsent, 4608, false)]);
    }

    #[test]
    fn a_peer_that_reads_slower_than_the_writer_backs_up_what_is_sent() {
        let first = Moving {
            process: 0,
            fd: 5,
            family: AF_INET,
            inode: 7,
            id: SocketId::new_v4(),
            window_limited: Duration::from_secs(10),
            read_at: Instant::now(),
        };
        let between = Duration::from_millis(100);
        let info = SocketInfo { send_queue: Some(4608), ..connection() };
        let later = |waited_ms: u64, unacknowledged: u32| {
            let mut tcp = facts(tcp(MOVING, Some(false)));
            tcp.unacknowledged = unacknowledged;
            let window_limited = first.window_limited + Duration::from_millis(waited_ms);
            judge_slow(&first, &info, tcp, window_limited, between)
        };
        // Held back by the peer's window 80 ms of the 100: still moving, slowly.
        let slow = later(80, 900).expect("a slow reader");
        assert_eq!((slow.backlog, slow.fd, slow.queued_bytes), (Backlog::Unsent, 5, 900));
        assert_eq!(slow.window_limited_percent, Some(80));
        assert!(!slow.window_closed && slow.idle == Some(MOVING), "{slow:#?}");
        // A counter read a little late cannot make it more than all of the time.
        assert_eq!(later(130, 900).and_then(|slow| slow.window_limited_percent), Some(100));
        // Held back 30 ms of 100 (the network, or the writer, sets the pace), or nothing
        // queued any more: not backed up.
        assert!(later(30, 900).is_none());
        assert!(later(80, 0).is_none());
        // All of it sent and in flight: no window holds anything back.
        let mut in_flight = facts(tcp(MOVING, Some(false)));
        in_flight.flow.not_sent = Some(0);
        let window_limited = first.window_limited + Duration::from_millis(80);
        assert!(judge_slow(&first, &info, in_flight, window_limited, between).is_none());
        // The share is of the time between the looks, however long it was.
        let slow_over = |waited_ms, between_ms| {
            let tcp = facts(tcp(MOVING, Some(false)));
            let window_limited = first.window_limited + Duration::from_millis(waited_ms);
            let between = Duration::from_millis(between_ms);
            judge_slow(&first, &info, tcp, window_limited, between)
                .and_then(|slow| slow.window_limited_percent)
        };
        assert_eq!(slow_over(150, 250), Some(60));
        assert_eq!(slow_over(100, 250), None);
    }

    #[test]
    fn a_unix_reader_slow_or_stopped_backs_up_its_peer() {
        let unix = |send_queue, recv_queue| SocketInfo {
            protocol: Protocol::Unix,
            tcp_state: None,
            send_queue: Some(send_queue),
            send_buffer: Some(212_992),
            recv_queue: Some(recv_queue),
            peer_window_zero: None,
            ..connection()
        };
        let (writer_full, writer_moving) = (unix(213_760, 0), unix(4_096, 0));
        // The peer's writes wait here unread, its buffer charged full.
        let reader = unix(0, 180_224);
        let backed_up = judge(5, &reader, Movement::Unix { peer: Some(&writer_full) });
        assert_eq!(backed_up.len(), 1, "{backed_up:#?}");
        let socket = &backed_up[0];
        assert_eq!((socket.backlog, socket.queued_bytes), (Backlog::Unread, 180_224));
        assert_eq!(socket.buffer_bytes, Some(212_992), "the buffer filled is the peer's");
        assert!(!socket.window_closed && !socket.tcp);
        assert_eq!(socket.reason(), "process slow or not reading (peer's buffer full)");
        // A peer with room left, or nothing unread here: data moves.
        assert_eq!(ways(&reader, Movement::Unix { peer: Some(&writer_moving) }), []);
        assert_eq!(ways(&unix(0, 0), Movement::Unix { peer: Some(&writer_full) }), []);
        // Unconnected, or its peer gone: nothing to tell by.
        assert_eq!(ways(&reader, Movement::Unix { peer: None }), []);
        // Both ways at once: each its own row.
        let both = unix(213_760, 180_224);
        assert_eq!(
            ways(&both, Movement::Unix { peer: Some(&writer_full) }),
            [(Backlog::Unsent, 213_760, false), (Backlog::Unread, 180_224, false)]
        );
    }

    #[test]
    fn a_reader_that_stopped_backs_up_what_is_received() {
        let unread = SocketInfo { recv_queue: Some(4096), ..connection() };
        let nothing_to_send = |own_window_zero| {
            Movement::Tcp(TcpFacts { unacknowledged: 0, ..facts(tcp(STALLED, own_window_zero)) })
        };
        assert_eq!(ways(&unread, nothing_to_send(Some(true))), [(Backlog::Unread, 4096, true)]);
        // Both ways at once: each its own row.
        assert_eq!(
            ways(&unread, tcp(STALLED, Some(true))),
            [(Backlog::Unsent, 900, false), (Backlog::Unread, 4096, true)]
        );
        // A kernel that does not tell this end's window (before 6.2) says nothing of it.
        assert_eq!(ways(&unread, nothing_to_send(None)), []);
    }

    #[test]
    fn a_listener_is_never_backed_up() {
        let listener = SocketInfo {
            tcp_state: Some(TcpState::Listen),
            accept_backlog: Some((128, 128)),
            send_queue: Some(9999),
            ..connection()
        };
        assert_eq!(ways(&listener, tcp(STALLED, Some(true))), []);
    }

    #[test]
    fn a_process_gone_has_no_sockets() {
        // No process has this pid (above the kernel's pid_max).
        let gone = scan_processes(&[u32::MAX - 1]);
        assert_eq!(gone.len(), 1);
        assert!(gone[0].0.is_empty());
        assert!(gone[0].1.is_none(), "a process gone is no failure: {:?}", gone[0].1);
    }
}
