//! The rules that tell a backed-up socket from one whose data moves, from what the
//! kernel says of it (see the module above for the ways).

use std::time::Duration;

use super::super::{Protocol, SocketInfo, TcpState, diag::TcpFlow};
use crate::model::{BackedUpSocket, Backlog};

/// How long nothing must have moved on a TCP connection for it to count as backed up.
pub const STALLED_FOR: Duration = Duration::from_secs(1);
/// The share of the time between two looks at a connection that its peer's window must
/// have held sending back for it to count as backed up behind a slow reader.
pub const SLOW_READER_SHARE: f64 = 0.5;

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
    pub fn holds_back(&self) -> bool {
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
        tcp: info.protocol == Protocol::Tcp,
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
        Movement::Unix { .. } if info.protocol != Protocol::Unix => {}
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

/// A connection (descriptor `fd`) whose sending had waited `window_limited_before` for
/// its peer's window in all, read again `between` later as `info` and `tcp`: backed up
/// when the peer's window held sending back `SLOW_READER_SHARE` of that time (now
/// `window_limited` in all) and data still waits to be sent.
pub fn judge_slow(
    fd: u64,
    window_limited_before: Duration,
    info: &SocketInfo,
    tcp: TcpFacts,
    window_limited: Duration,
    between: Duration,
) -> Option<BackedUpSocket> {
    if !tcp.holds_back() || between.is_zero() {
        return None;
    }
    let waited = window_limited.saturating_sub(window_limited_before);
    let share = (waited.as_secs_f64() / between.as_secs_f64()).min(1.0);
    if share < SLOW_READER_SHARE {
        return None;
    }
    Some(BackedUpSocket {
        window_limited_percent: Some((share * 100.0).round() as u8),
        idle: Some(tcp.flow.since_sent),
        ..backed_up_socket(fd, info, Backlog::Unsent, tcp.unacknowledged, info.send_buffer)
    })
}

/// A connection (descriptor `fd`) that awaits a reply, as `info` and `tcp` tell: its last
/// data went out `STALLED_FOR` ago or more, all of it acknowledged (the peer's kernel has
/// the request; the network is not the trouble), and nothing came back since, nor waits
/// unread. Asked only of connections this process made (the caller tells them from those
/// a listener accepted, whose last data out is a reply): an idle client connection's last
/// data came in.
pub fn judge_awaiting(fd: u64, info: &SocketInfo, tcp: TcpFacts) -> Option<BackedUpSocket> {
    let established = info.tcp_state == Some(TcpState::Established);
    let flow = tcp.flow;
    // The times are in milliseconds: a request sent as the connection was made reads as
    // sent when data last came in (the connection's start), told apart by nothing having
    // come in at all.
    let nothing_back = flow.since_received > flow.since_sent
        || flow.since_received == flow.since_sent && flow.received_any == Some(false);
    let awaiting = established
        && tcp.unacknowledged == 0
        && info.recv_queue == Some(0)
        && flow.since_sent >= STALLED_FOR
        && nothing_back;
    awaiting.then(|| BackedUpSocket {
        idle: Some(flow.since_sent),
        ..backed_up_socket(fd, info, Backlog::Awaiting, 0, None)
    })
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
                received_any: Some(true),
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
        let before = Duration::from_secs(10);
        let between = Duration::from_millis(100);
        let info = SocketInfo { send_queue: Some(4608), ..connection() };
        let later = |waited_ms: u64, unacknowledged: u32| {
            let mut tcp = facts(tcp(MOVING, Some(false)));
            tcp.unacknowledged = unacknowledged;
            let window_limited = before + Duration::from_millis(waited_ms);
            judge_slow(5, before, &info, tcp, window_limited, between)
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
        let window_limited = before + Duration::from_millis(80);
        assert!(judge_slow(5, before, &info, in_flight, window_limited, between).is_none());
        // The share is of the time between the looks, however long it was.
        let slow_over = |waited_ms, between_ms| {
            let tcp = facts(tcp(MOVING, Some(false)));
            let window_limited = before + Duration::from_millis(waited_ms);
            let between = Duration::from_millis(between_ms);
            judge_slow(5, before, &info, tcp, window_limited, between)
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
    fn a_request_without_its_reply_awaits_it() {
        let info = SocketInfo { send_queue: Some(0), ..connection() };
        let request = |since_sent_ms: u64, since_received_ms: u64, unacknowledged: u32| {
            let mut tcp = facts(tcp(MOVING, Some(false)));
            tcp.flow.since_sent = Duration::from_millis(since_sent_ms);
            tcp.flow.since_received = Duration::from_millis(since_received_ms);
            tcp.unacknowledged = unacknowledged;
            judge_awaiting(5, &info, tcp)
        };
        // Sent 2 s ago, the last data in 9 s ago: awaiting for 2 s.
        let awaiting = request(2000, 9000, 0).expect("awaiting its reply");
        assert_eq!(
            (awaiting.backlog, awaiting.fd, awaiting.queued_bytes),
            (Backlog::Awaiting, 5, 0)
        );
        assert_eq!(awaiting.idle, Some(Duration::from_millis(2000)));
        assert!(!awaiting.window_closed && awaiting.tcp);
        // Sent a moment ago; the reply came after it (an idle pooled connection); the
        // request not yet acknowledged (the network's trouble, told by the unsent rules).
        assert!(request(200, 9000, 0).is_none());
        assert!(request(2000, 1500, 0).is_none());
        // Sent in the millisecond the connection was made, nothing in since; a reply in
        // the millisecond the request went out.
        let mut fresh = facts(tcp(MOVING, Some(false)));
        (fresh.flow.since_sent, fresh.flow.since_received) = (STALLED, STALLED);
        (fresh.unacknowledged, fresh.flow.received_any) = (0, Some(false));
        assert!(judge_awaiting(5, &info, fresh).is_some());
        fresh.flow.received_any = Some(true);
        assert!(judge_awaiting(5, &info, fresh).is_none());
        assert!(request(2000, 9000, 100).is_none());
        // The reply arrived and waits unread: this process's to read.
        let unread = SocketInfo { recv_queue: Some(10), ..info.clone() };
        let mut tcp = facts(tcp(MOVING, Some(false)));
        (tcp.flow.since_sent, tcp.flow.since_received) = (STALLED, STALLED * 3);
        tcp.unacknowledged = 0;
        assert!(judge_awaiting(5, &unread, tcp).is_none());
        // Closing: no reply is awaited.
        let closing = SocketInfo { tcp_state: Some(TcpState::CloseWait), ..info };
        assert!(judge_awaiting(5, &closing, tcp).is_none());
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
}
