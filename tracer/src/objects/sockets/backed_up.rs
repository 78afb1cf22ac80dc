//! The target's backed-up sockets, read when a report is made: every socket it holds is
//! looked up (TCP by one dump per family, Unix one by one), and those whose data stopped
//! moving are kept. A thread blocked in `send` shows the same as a wait; an event-driven
//! server's does not, and this is where its client that stopped reading shows.
//!
//! Backed up means, as the kernel tells it (sock_diag's meminfo and `tcp_info`):
//! - unsent: the send buffer full (a write would block, or fail with EAGAIN), or a TCP
//!   peer advertising a zero window with data queued to it;
//! - unread: this end of a TCP connection advertising a zero window (its reader stopped).

use std::{
    collections::{HashMap, HashSet},
    fs,
};

use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};

use super::{
    SocketInfo, SocketKind,
    diag::{self, Record, SockDiag, TcpFlow},
    socket_inode, socket_kind,
};
use crate::model::{BackedUp, BackedUpSocket, Backlog};

/// Why a process's sockets could not be read.
#[derive(Debug)]
pub struct ScanFailed(pub String);

/// The backed-up sockets of process `pid` now.
pub fn scan(pid: u32) -> Result<BackedUp, ScanFailed> {
    let descriptors = socket_descriptors(pid)
        .ok_or_else(|| ScanFailed(format!("cannot list the descriptors of pid {pid}")))?;
    if descriptors.is_empty() {
        return Ok(BackedUp::default());
    }
    let mut diag = SockDiag::open(pid).map_err(|error| ScanFailed(error.to_string()))?;
    let mut found = Vec::new();
    let mut unix = Vec::new();
    let mut families = HashSet::new();
    for &(fd, inode) in &descriptors {
        match socket_kind(&format!("/proc/{pid}/fd/{fd}")) {
            Some(SocketKind::Inet { family, protocol }) if protocol == IPPROTO_TCP => {
                families.insert(family);
            }
            Some(SocketKind::Unix) => unix.push((fd, inode)),
            // UDP drops what does not fit; MPTCP and the rest have no queue to read here.
            _ => {}
        }
    }
    let fd_of: HashMap<u64, u64> = descriptors.iter().map(|&(fd, inode)| (inode, fd)).collect();
    for family in [AF_INET, AF_INET6] {
        if !families.contains(&family) {
            continue;
        }
        let responses = diag
            .dump_inet_responses(family, IPPROTO_TCP)
            .map_err(|error| ScanFailed(error.to_string()))?;
        for response in responses {
            let Some(&fd) = fd_of.get(&u64::from(response.header.inode)) else { continue };
            let flow = diag::tcp_info(&response).and_then(diag::tcp_flow);
            let Record { info, .. } = diag::inet_record(IPPROTO_TCP, response);
            found.extend(judge(fd, &info, flow));
        }
    }
    for (fd, inode) in unix {
        let Ok(inode) = u32::try_from(inode) else { continue };
        match diag.get_unix(inode) {
            Ok(Some(Record { info, .. })) => found.extend(judge(fd, &info, None)),
            // Closed meanwhile.
            Ok(None) => {}
            Err(error) => return Err(ScanFailed(error.to_string())),
        }
    }
    Ok(BackedUp::of(found))
}

/// The process's socket descriptors and their inodes; None when they cannot be listed.
fn socket_descriptors(pid: u32) -> Option<Vec<(u64, u64)>> {
    let entries = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut sockets: Vec<(u64, u64)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let inode = socket_inode(&fs::read_link(entry.path()).ok()?.to_string_lossy())?;
            Some((fd, inode))
        })
        .collect();
    // One socket held twice (dup, fork's inheritance) is one queue: its lowest descriptor.
    sockets.sort_unstable();
    let mut seen = HashSet::new();
    sockets.retain(|&(_, inode)| seen.insert(inode));
    Some(sockets)
}

/// The ways socket `info` (descriptor `fd`) is backed up: none, one, or both.
pub fn judge(fd: u64, info: &SocketInfo, flow: Option<TcpFlow>) -> Vec<BackedUpSocket> {
    let mut backed_up = Vec::new();
    // A listener's queues are its accept queue (told in the endpoint tables).
    if info.accept_backlog.is_some() {
        return backed_up;
    }
    let socket = |backlog, queued: u32, buffer: Option<u32>, window_closed, idle| BackedUpSocket {
        process: None,
        fd,
        peer: info.endpoint(tracer_common::WaitKind::Send),
        local: info.local.clone(),
        backlog,
        queued_bytes: u64::from(queued),
        buffer_bytes: buffer.map(u64::from),
        window_closed,
        idle,
    };
    let queued = info.send_queue.unwrap_or(0);
    let full = info.send_buffer.is_some_and(|buffer| buffer > 0 && queued >= buffer);
    let peer_closed = info.peer_window_zero == Some(true) && queued > 0;
    if full || peer_closed {
        let idle = flow.map(|flow| flow.since_sent);
        backed_up.push(socket(Backlog::Unsent, queued, info.send_buffer, peer_closed, idle));
    }
    let unread = info.recv_queue.unwrap_or(0);
    if let Some(flow) = flow
        && flow.own_window_zero == Some(true)
        && unread > 0
    {
        let idle = Some(flow.since_received);
        backed_up.push(socket(Backlog::Unread, unread, info.recv_buffer, true, idle));
    }
    backed_up
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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

    fn flow(own_window_zero: Option<bool>) -> Option<TcpFlow> {
        Some(TcpFlow {
            since_sent: Duration::from_millis(800),
            since_received: Duration::from_millis(300),
            own_window_zero,
        })
    }

    fn ways(info: &SocketInfo, flow: Option<TcpFlow>) -> Vec<(Backlog, u64, bool)> {
        judge(5, info, flow)
            .into_iter()
            .map(|socket| (socket.backlog, socket.queued_bytes, socket.window_closed))
            .collect()
    }

    #[test]
    fn a_moving_connection_is_not_backed_up() {
        let busy = SocketInfo { send_queue: Some(1000), recv_queue: Some(200), ..connection() };
        assert_eq!(ways(&busy, flow(Some(false))), []);
        // A closed window with nothing queued to it holds nothing up.
        let idle_peer = SocketInfo { peer_window_zero: Some(true), ..connection() };
        assert_eq!(ways(&idle_peer, flow(Some(true))), []);
    }

    #[test]
    fn a_peer_that_stopped_reading_backs_up_what_is_sent() {
        let stalled =
            SocketInfo { send_queue: Some(1000), peer_window_zero: Some(true), ..connection() };
        let backed_up = judge(5, &stalled, flow(Some(false)));
        assert_eq!(backed_up.len(), 1);
        let socket = &backed_up[0];
        assert_eq!((socket.backlog, socket.fd, socket.queued_bytes), (Backlog::Unsent, 5, 1000));
        assert!(socket.window_closed);
        assert_eq!(socket.peer, "127.0.0.1:40000");
        assert_eq!(socket.local.as_deref(), Some("127.0.0.1:6379"));
        assert_eq!(socket.idle, Some(Duration::from_millis(800)));
        // A full send buffer is backed up whatever the window says (a Unix socket has none).
        let full = SocketInfo { send_queue: Some(4608), ..connection() };
        assert_eq!(ways(&full, None), [(Backlog::Unsent, 4608, false)]);
    }

    #[test]
    fn a_reader_that_stopped_backs_up_what_is_received() {
        let unread = SocketInfo { recv_queue: Some(4096), ..connection() };
        assert_eq!(ways(&unread, flow(Some(true))), [(Backlog::Unread, 4096, true)]);
        // Both ways at once: each its own row.
        let both = SocketInfo { send_queue: Some(4608), ..unread.clone() };
        assert_eq!(
            ways(&both, flow(Some(true))),
            [(Backlog::Unsent, 4608, false), (Backlog::Unread, 4096, true)]
        );
        // A kernel that does not tell this end's window (before 6.2) says nothing of it.
        assert_eq!(ways(&unread, flow(None)), []);
    }

    #[test]
    fn a_listener_is_never_backed_up() {
        let listener = SocketInfo {
            tcp_state: Some(TcpState::Listen),
            accept_backlog: Some((128, 128)),
            send_queue: Some(9999),
            ..connection()
        };
        assert_eq!(ways(&listener, flow(Some(true))), []);
    }
}
