//! NETLINK_SOCK_DIAG requests and their decoding into [`SocketInfo`].
//!
//! Kernel side: inet_diag (include/uapi/linux/inet_diag.h, net/ipv4/inet_diag.c) answers for
//! AF_INET/AF_INET6 × TCP/UDP; unix_diag (include/uapi/linux/unix_diag.h, net/unix/diag.c) for
//! AF_UNIX, which can also be asked about one socket by inode. The wire types come from
//! `netlink-packet-sock-diag`.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::ffi::OsStrExt as _,
};

use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET6, IPPROTO_TCP, IPPROTO_UDP, TCP_LISTEN},
    inet::{self, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, Timer},
    unix::{self, ShowFlags, UnixRequest, UnixResponse, nlas::UnixDiagName},
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

use super::{
    Protocol, SocketInfo, TcpState,
    netlink::{NetlinkChannel, NetlinkError},
};

/// `INET_DIAG_NOCOOKIE`: "any socket with this tuple / inode".
const NO_COOKIE: [u8; 8] = [0xff; 8];

/// Where a cached socket can be asked about again without a dump.
#[derive(Clone, Debug)]
pub enum DiagKey {
    Inet { family: u8, protocol: u8, id: SocketId },
    Unix { inode: u32 },
}

/// One decoded socket and the key to ask about it again.
#[derive(Debug)]
pub struct Record {
    pub info: SocketInfo,
    pub key: DiagKey,
}

/// A NETLINK_SOCK_DIAG socket in the target's network namespace.
pub struct SockDiag {
    channel: NetlinkChannel,
}

impl SockDiag {
    /// Opens the socket in the network namespace of `pid` (sock_diag only sees its own).
    pub fn open(pid: u32) -> Result<Self, NetlinkError> {
        Ok(Self { channel: NetlinkChannel::open(pid, NETLINK_SOCK_DIAG)? })
    }

    /// Every `protocol` socket of `family` in the namespace.
    pub fn dump_inet(&mut self, family: u8, protocol: u8) -> Result<Vec<Record>, NetlinkError> {
        let mut records = Vec::new();
        self.dump_inet_each(family, protocol, StateFlags::all(), |response| {
            records.push(inet_record(protocol, response));
        })?;
        Ok(records)
    }

    /// Every `protocol` socket of `family` in one of `states`, each answer undecoded, for a
    /// reader of more of its `tcp_info` that keeps only a few of a host's sockets.
    pub fn dump_inet_each(
        &mut self,
        family: u8,
        protocol: u8,
        states: StateFlags,
        mut each: impl FnMut(InetResponse),
    ) -> Result<(), NetlinkError> {
        let mut request = inet_request(
            family,
            protocol,
            if family == AF_INET6 { SocketId::new_v6() } else { SocketId::new_v4() },
        );
        if let SockDiagMessage::InetRequest(inet) = &mut request {
            inet.states = states;
        }
        self.channel.exchange(request, true, |message| {
            if let SockDiagMessage::InetResponse(response) = message {
                each(*response);
            }
        })?;
        Ok(())
    }

    /// One inet socket again, by the tuple and cookie a dump gave; `None` when it is gone.
    pub fn get_inet(
        &mut self,
        family: u8,
        protocol: u8,
        id: &SocketId,
    ) -> Result<Option<Record>, NetlinkError> {
        let response = self.get_inet_response(family, protocol, id)?;
        Ok(response.map(|response| inet_record(protocol, response)))
    }

    /// `get_inet`'s answer undecoded, for a reader of more of its `tcp_info`.
    pub fn get_inet_response(
        &mut self,
        family: u8,
        protocol: u8,
        id: &SocketId,
    ) -> Result<Option<InetResponse>, NetlinkError> {
        let mut found = None;
        let ok = self.channel.exchange(
            inet_request(family, protocol, id.clone()),
            false,
            |message| {
                if let SockDiagMessage::InetResponse(response) = message {
                    found = Some(*response);
                }
            },
        )?;
        Ok(found.filter(|_| ok))
    }

    /// One Unix socket by inode, with its peer's name; `None` when it is gone.
    pub fn get_unix(&mut self, inode: u32) -> Result<Option<Record>, NetlinkError> {
        Ok(self.get_unix_and_peer(inode)?.map(|(record, _)| record))
    }

    /// One Unix socket by inode, with its peer's name, and the peer itself where what it
    /// writes comes here: a stream or seqpacket socket's peer (a datagram socket's peer
    /// may send elsewhere, or be sent to by many), the peer's own peer left unnamed;
    /// `None` when it is gone.
    pub fn get_unix_and_peer(
        &mut self,
        inode: u32,
    ) -> Result<Option<(Record, Option<SocketInfo>)>, NetlinkError> {
        let Some(response) = self.get_unix_response(inode)? else {
            return Ok(None);
        };
        // The peer's name is what the socket is connected to (a client's peer shares the
        // listener's path); a peer gone meanwhile just leaves the remote unnamed.
        let peer = match response.peer() {
            Some(peer) if peer != 0 => self.get_unix_response(peer)?,
            _ => None,
        };
        let peer_name = peer.as_ref().and_then(|peer| peer.name().map(unix_name));
        let writes_here = |peer: &UnixResponse| {
            response.header.kind != libc::SOCK_DGRAM as u8 && peer.peer() == Some(inode)
        };
        let peer = peer.filter(writes_here).map(|peer| unix_record(&peer, None).info);
        Ok(Some((unix_record(&response, peer_name), peer)))
    }

    /// The inode of the socket that Unix socket `inode` is connected to; `None` when either
    /// is gone or it is not connected.
    pub fn unix_peer(&mut self, inode: u32) -> Result<Option<u32>, NetlinkError> {
        let response = self.get_unix_response(inode)?;
        Ok(response.and_then(|response| response.peer()).filter(|&peer| peer != 0))
    }

    fn get_unix_response(&mut self, inode: u32) -> Result<Option<UnixResponse>, NetlinkError> {
        let request = SockDiagMessage::UnixRequest(UnixRequest {
            state_flags: unix::StateFlags::all(),
            inode,
            show_flags: ShowFlags::NAME | ShowFlags::PEER | ShowFlags::RQLEN | ShowFlags::MEMINFO,
            cookie: NO_COOKIE,
        });
        let mut found = None;
        let ok = self.channel.exchange(request, false, |message| {
            if let SockDiagMessage::UnixResponse(response) = message {
                found = Some(*response);
            }
        })?;
        Ok(found.filter(|_| ok))
    }
}

fn inet_request(family: u8, protocol: u8, socket_id: SocketId) -> SockDiagMessage {
    SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol,
        extensions: ExtensionFlags::SKMEMINFO | ExtensionFlags::INFO,
        states: StateFlags::all(),
        socket_id,
    })
}

/// Formats an address as the reports show it: `10.0.0.5:80`, `[::1]:443`; an IPv4-mapped
/// IPv6 address (a dual-stack socket talking IPv4) shows as the IPv4 address it carries.
pub fn format_address(address: IpAddr, port: u16) -> String {
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    };
    SocketAddr::new(address, port).to_string()
}

/// Offset of `tcpi_snd_wnd` in `struct tcp_info` (include/uapi/linux/tcp.h; since Linux 5.4):
/// 8 one-byte fields, 24 u32, 4 u64, 6 u32, 1 u64, 3 u64, 2 u32, 2 u64, 3 u32.
const TCPI_SND_WND_OFFSET: usize = 228;
/// Offsets of one-byte fields: `tcpi_retransmits` (the current retransmission's count),
/// `tcpi_probes` (zero-window probes sent without an answer), `tcpi_backoff`.
const TCPI_RETRANSMITS_OFFSET: usize = 2;
const TCPI_PROBES_OFFSET: usize = 3;
const TCPI_BACKOFF_OFFSET: usize = 4;

/// Whether the peer advertises a zero receive window: `tcpi_snd_wnd` where the kernel reports
/// it, else a running zero-window probe timer or unanswered probes; `None` when unknowable.
pub fn peer_window_zero(tcp_info: Option<&[u8]>, timer: Option<&Timer>) -> Option<bool> {
    if let Some(window) =
        tcp_info.and_then(|info| info.get(TCPI_SND_WND_OFFSET..TCPI_SND_WND_OFFSET + 4))
    {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(window);
        return Some(u32::from_ne_bytes(bytes) == 0);
    }
    let probing = tcp_info.and_then(|info| info.get(TCPI_PROBES_OFFSET)).is_some_and(|&p| p > 0);
    // idiag_timer 4 is ICSK_TIME_PROBE0, the zero-window probe timer.
    (probing || matches!(timer, Some(Timer::Probe(_)))).then_some(true)
}

/// Offsets in `struct tcp_info` (include/uapi/linux/tcp.h) of `tcpi_last_data_sent` and
/// `tcpi_last_data_recv`: milliseconds since data last moved that way (the 10th and 12th
/// u32 after the 8 one-byte fields).
const TCPI_LAST_DATA_SENT_OFFSET: usize = 44;
const TCPI_LAST_DATA_RECV_OFFSET: usize = 52;
/// Offset of `tcpi_last_ack_recv`: milliseconds since an acknowledgment last came.
const TCPI_LAST_ACK_RECV_OFFSET: usize = 56;
/// Offset of `tcpi_rcv_wnd`, the window this end advertises: the u32 after `tcpi_snd_wnd`
/// (since Linux 6.2).
const TCPI_RCV_WND_OFFSET: usize = 232;
/// Offset of `tcpi_bytes_received`, payload bytes received in all (since Linux 4.1): the
/// last of the 4 u64 after the 8 one-byte fields and 24 u32.
const TCPI_BYTES_RECEIVED_OFFSET: usize = 128;
/// Offset of `tcpi_notsent_bytes`, bytes written and not yet sent (since Linux 4.6): after
/// the 8 one-byte fields, 24 u32, 4 u64 and 2 u32.
const TCPI_NOTSENT_BYTES_OFFSET: usize = 144;
/// Offset of `tcpi_rwnd_limited`, microseconds in all that sending waited for the peer's
/// window (since Linux 4.10): the u64 after `tcpi_busy_time`, after `tcpi_delivery_rate`
/// (8 one-byte fields, 24 u32, 4 u64, 6 u32, then these three u64).
const TCPI_RWND_LIMITED_OFFSET: usize = 176;

/// Whether data moves on a TCP connection, from its `tcp_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFlow {
    /// Since data was last sent (retransmissions too), last received, and since an
    /// acknowledgment last came.
    pub since_sent: std::time::Duration,
    pub since_received: std::time::Duration,
    pub since_acknowledged: std::time::Duration,
    /// This end advertises a zero window (its reader stopped reading); `None` on a kernel
    /// that does not tell (before 6.2).
    pub own_window_zero: Option<bool>,
    /// Data is being retransmitted: `tcpi_retransmits` or `tcpi_backoff` (RTO backoffs)
    /// not zero.
    pub retransmitting: bool,
    /// How long in all sending waited for the peer's window (its reader is slower than
    /// this end's writer); `None` on a kernel that does not tell.
    pub window_limited: Option<std::time::Duration>,
    /// Bytes written and not yet sent (what a closed or small window holds back); `None`
    /// on a kernel that does not tell.
    pub not_sent: Option<u32>,
    /// Whether any data was ever received (the times above are in milliseconds: a
    /// request sent just after the connection was made reads as sent when data last came
    /// in); `None` on a kernel that does not tell.
    pub received_any: Option<bool>,
}

/// The `tcp_info` of an inet_diag answer, if it has one.
pub fn tcp_info(response: &InetResponse) -> Option<&[u8]> {
    response.nlas.iter().find_map(|nla| match nla {
        inet::nlas::Nla::TcpInfo(bytes) => Some(bytes.as_slice()),
        _ => None,
    })
}

/// What `tcp_info` says of the flow; `None` when it is too short to say.
pub fn tcp_flow(tcp_info: &[u8]) -> Option<TcpFlow> {
    let word = |offset: usize| -> Option<u32> {
        let bytes = tcp_info.get(offset..offset + 4)?;
        Some(u32::from_ne_bytes(bytes.try_into().ok()?))
    };
    let millis = |offset| word(offset).map(|ms| std::time::Duration::from_millis(u64::from(ms)));
    Some(TcpFlow {
        since_sent: millis(TCPI_LAST_DATA_SENT_OFFSET)?,
        since_received: millis(TCPI_LAST_DATA_RECV_OFFSET)?,
        since_acknowledged: millis(TCPI_LAST_ACK_RECV_OFFSET)?,
        own_window_zero: word(TCPI_RCV_WND_OFFSET).map(|window| window == 0),
        retransmitting: [TCPI_RETRANSMITS_OFFSET, TCPI_BACKOFF_OFFSET]
            .iter()
            .any(|&offset| tcp_info.get(offset).is_some_and(|&count| count > 0)),
        window_limited: tcp_info
            .get(TCPI_RWND_LIMITED_OFFSET..TCPI_RWND_LIMITED_OFFSET + 8)
            .and_then(|bytes| Some(u64::from_ne_bytes(bytes.try_into().ok()?)))
            .map(std::time::Duration::from_micros),
        not_sent: word(TCPI_NOTSENT_BYTES_OFFSET),
        received_any: tcp_info
            .get(TCPI_BYTES_RECEIVED_OFFSET..TCPI_BYTES_RECEIVED_OFFSET + 8)
            .map(|bytes| bytes.iter().any(|&byte| byte != 0)),
    })
}

/// `tcp_info` bytes that say `flow` (as `tcp_flow` reads them), for tests of what reads
/// them; a `None` leaves its bytes out where the kernel's older, shorter struct would
/// (the longest field's left out leaves out those after it).
#[cfg(test)]
pub fn tcp_info_saying(flow: &TcpFlow) -> Vec<u8> {
    let mut info = vec![0; TCPI_RCV_WND_OFFSET + 4];
    let mut put = |offset: usize, bytes: &[u8]| {
        info[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    let millis = |duration: std::time::Duration| (duration.as_millis() as u32).to_ne_bytes();
    put(TCPI_LAST_DATA_SENT_OFFSET, &millis(flow.since_sent));
    put(TCPI_LAST_DATA_RECV_OFFSET, &millis(flow.since_received));
    put(TCPI_LAST_ACK_RECV_OFFSET, &millis(flow.since_acknowledged));
    put(TCPI_RETRANSMITS_OFFSET, &[u8::from(flow.retransmitting)]);
    put(TCPI_NOTSENT_BYTES_OFFSET, &flow.not_sent.unwrap_or(0).to_ne_bytes());
    put(TCPI_BYTES_RECEIVED_OFFSET, &u64::from(flow.received_any != Some(false)).to_ne_bytes());
    let limited = flow.window_limited.map_or(0, |limited| limited.as_micros() as u64);
    put(TCPI_RWND_LIMITED_OFFSET, &limited.to_ne_bytes());
    let own_window = if flow.own_window_zero == Some(true) { 0u32 } else { 65_535 };
    put(TCPI_RCV_WND_OFFSET, &own_window.to_ne_bytes());
    let told = match (flow.own_window_zero, flow.window_limited, flow.not_sent) {
        (Some(_), _, _) => info.len(),
        (None, Some(_), _) => TCPI_RCV_WND_OFFSET,
        (None, None, Some(_)) => TCPI_RWND_LIMITED_OFFSET,
        (None, None, None) if flow.received_any.is_some() => TCPI_NOTSENT_BYTES_OFFSET,
        (None, None, None) => TCPI_BYTES_RECEIVED_OFFSET,
    };
    info.truncate(told);
    info
}

/// Decodes one inet_diag answer.
pub fn inet_record(protocol: u8, response: InetResponse) -> Record {
    let InetResponse { header, nlas } = response;
    let id = &header.socket_id;
    let mut meminfo = None;
    let mut tcp_info = None;
    for nla in &nlas {
        match nla {
            inet::nlas::Nla::MemInfo(info) => meminfo = Some(info),
            inet::nlas::Nla::TcpInfo(bytes) => tcp_info = Some(bytes.as_slice()),
            _ => {}
        }
    }
    let is_tcp = protocol == IPPROTO_TCP;
    let tcp_state = is_tcp.then(|| TcpState::from_kernel(header.state)).flatten();
    let listening = is_tcp && header.state == TCP_LISTEN;
    let remote = (id.destination_port != 0 || !id.destination_address.is_unspecified())
        .then(|| format_address(id.destination_address, id.destination_port));
    // What the kernel compares with sk_sndbuf before it lets a sender sleep: sk_wmem_queued
    // for TCP (sk_stream_memory_free), sk_wmem_alloc for UDP (sock_alloc_send_pskb). Both
    // count buffer overhead, not only payload, so they can reach the buffer size.
    let send_queue = meminfo.map(|m| if is_tcp { m.send_queue } else { m.bottom_send_queues });
    let transferring = matches!(tcp_state, Some(TcpState::Established | TcpState::CloseWait));
    let info = SocketInfo {
        inode: u64::from(header.inode),
        protocol: if is_tcp {
            Protocol::Tcp
        } else if protocol == IPPROTO_UDP {
            Protocol::Udp
        } else {
            Protocol::Other
        },
        local: Some(format_address(id.source_address, id.source_port)),
        remote,
        tcp_state,
        send_queue: if listening { None } else { send_queue.or(Some(header.send_queue)) },
        send_buffer: meminfo.map(|m| m.send_queue_max),
        recv_queue: (!listening).then_some(header.recv_queue),
        recv_buffer: meminfo.map(|m| m.receive_queue_max),
        // For listeners idiag_rqueue is the accept queue and idiag_wqueue its limit.
        accept_backlog: listening.then_some((header.recv_queue, header.send_queue)),
        peer_window_zero: if transferring {
            peer_window_zero(tcp_info, header.timer.as_ref())
        } else {
            None
        },
    };
    let key = DiagKey::Inet { family: header.family, protocol, id: header.socket_id.clone() };
    Record { info, key }
}

/// A Unix socket's name: its path, or `@name` for the abstract namespace.
pub fn unix_name(name: &UnixDiagName) -> String {
    match name {
        UnixDiagName::Pathname(path) => String::from_utf8_lossy(path.as_bytes()).into_owned(),
        UnixDiagName::Abstract(bytes) => {
            format!("@{}", String::from_utf8_lossy(bytes).replace('\0', "@"))
        }
    }
}

/// Decodes one unix_diag answer; `peer_name` is the name of the socket it is connected to.
pub fn unix_record(response: &UnixResponse, peer_name: Option<String>) -> Record {
    let listening = response.header.state == TCP_LISTEN;
    let mut queues = None;
    let mut buffers = None;
    for nla in &response.nlas {
        match nla {
            // UNIX_DIAG_RQLEN: for listeners the accept queue and its limit, else the bytes
            // waiting to be read and the bytes sent but not yet read by the peer (sk_wmem_alloc).
            unix::nlas::Nla::ReceiveQueueLength(read, written) => queues = Some((*read, *written)),
            // UNIX_DIAG_MEMINFO is sk_meminfo: the crate calls SK_MEMINFO_RCVBUF `so_rcvbuf`
            // and SK_MEMINFO_SNDBUF `max_datagram_size`.
            unix::nlas::Nla::MemInfo(info) => {
                buffers = Some((info.so_rcvbuf, info.max_datagram_size))
            }
            _ => {}
        }
    }
    let info = SocketInfo {
        inode: u64::from(response.header.inode),
        protocol: Protocol::Unix,
        local: response.name().map(unix_name),
        remote: peer_name,
        tcp_state: None,
        send_queue: if listening { None } else { queues.map(|(_, written)| written) },
        send_buffer: buffers.map(|(_, send)| send),
        recv_queue: if listening { None } else { queues.map(|(read, _)| read) },
        recv_buffer: buffers.map(|(receive, _)| receive),
        accept_backlog: if listening { queues } else { None },
        peer_window_zero: None,
    };
    Record { info, key: DiagKey::Unix { inode: response.header.inode } }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        time::Duration,
    };

    use netlink_packet_sock_diag::{
        constants::{AF_INET, TCP_ESTABLISHED},
        inet::{InetResponseHeader, nlas::MemInfo},
        unix::{UnixResponseHeader, nlas::Nla as UnixNla},
    };

    use super::*;

    #[test]
    fn addresses_format() {
        assert_eq!(format_address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 80), "10.0.0.5:80");
        assert_eq!(format_address(IpAddr::V6(Ipv6Addr::LOCALHOST), 443), "[::1]:443");
        let mapped = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped();
        assert_eq!(format_address(IpAddr::V6(mapped), 5432), "127.0.0.1:5432");
        assert_eq!(unix_name(&UnixDiagName::Pathname("/run/x.sock".into())), "/run/x.sock");
        assert_eq!(unix_name(&UnixDiagName::Abstract(b"dbus-1".to_vec())), "@dbus-1");
    }

    fn tcp_info_with_window(window: u32) -> Vec<u8> {
        let mut info = vec![0; TCPI_SND_WND_OFFSET + 4];
        info[TCPI_SND_WND_OFFSET..].copy_from_slice(&window.to_ne_bytes());
        info
    }

    #[test]
    fn window_zero_from_tcp_info_or_probes() {
        assert_eq!(peer_window_zero(Some(&tcp_info_with_window(0)), None), Some(true));
        assert_eq!(peer_window_zero(Some(&tcp_info_with_window(65535)), None), Some(false));
        // An older kernel's shorter tcp_info: only probes tell.
        let mut short = vec![0; 104];
        assert_eq!(peer_window_zero(Some(&short), None), None);
        short[TCPI_PROBES_OFFSET] = 2;
        assert_eq!(peer_window_zero(Some(&short), None), Some(true));
        assert_eq!(
            peer_window_zero(None, Some(&Timer::Probe(Duration::from_millis(200)))),
            Some(true)
        );
    }

    #[test]
    fn the_flow_comes_from_tcp_info() {
        let mut info = vec![0; TCPI_RCV_WND_OFFSET + 4];
        info[TCPI_LAST_DATA_SENT_OFFSET..][..4].copy_from_slice(&1500u32.to_ne_bytes());
        info[TCPI_LAST_DATA_RECV_OFFSET..][..4].copy_from_slice(&20u32.to_ne_bytes());
        info[TCPI_LAST_ACK_RECV_OFFSET..][..4].copy_from_slice(&700u32.to_ne_bytes());
        let flow = tcp_flow(&info).unwrap();
        assert_eq!(flow.since_sent, Duration::from_millis(1500));
        assert_eq!(flow.since_received, Duration::from_millis(20));
        assert_eq!(flow.since_acknowledged, Duration::from_millis(700));
        assert_eq!(flow.own_window_zero, Some(true));
        assert!(!flow.retransmitting);
        info[TCPI_RWND_LIMITED_OFFSET..][..8].copy_from_slice(&2_500_000u64.to_ne_bytes());
        assert_eq!(tcp_flow(&info).unwrap().window_limited, Some(Duration::from_millis(2500)));
        info[TCPI_NOTSENT_BYTES_OFFSET..][..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert_eq!(tcp_flow(&info).unwrap().not_sent, Some(4096));
        assert_eq!(tcp_flow(&info).unwrap().received_any, Some(false));
        info[TCPI_BYTES_RECEIVED_OFFSET + 5] = 1;
        assert_eq!(tcp_flow(&info).unwrap().received_any, Some(true));
        info[TCPI_BACKOFF_OFFSET] = 3;
        assert!(tcp_flow(&info).unwrap().retransmitting);
        info[TCPI_RCV_WND_OFFSET..].copy_from_slice(&65535u32.to_ne_bytes());
        assert_eq!(tcp_flow(&info).unwrap().own_window_zero, Some(false));
        // A kernel before 6.2 does not tell this end's window.
        assert_eq!(tcp_flow(&info[..TCPI_RCV_WND_OFFSET]).unwrap().own_window_zero, None);
        // Nor one before 4.10 how long the peer's window held sending back.
        assert_eq!(tcp_flow(&info[..TCPI_RWND_LIMITED_OFFSET]).unwrap().window_limited, None);
        assert_eq!(tcp_flow(&info[..40]), None);
    }

    #[test]
    fn tcp_info_saying_a_flow_reads_back_as_it() {
        let flow = TcpFlow {
            since_sent: Duration::from_millis(1500),
            since_received: Duration::from_millis(20),
            since_acknowledged: Duration::from_millis(700),
            own_window_zero: Some(false),
            retransmitting: true,
            window_limited: Some(Duration::from_millis(2500)),
            not_sent: Some(4096),
            received_any: Some(true),
        };
        assert_eq!(tcp_flow(&tcp_info_saying(&flow)), Some(flow));
        let older = TcpFlow { own_window_zero: None, window_limited: None, ..flow };
        assert_eq!(tcp_flow(&tcp_info_saying(&older)), Some(older));
        let nothing_in = TcpFlow { received_any: Some(false), ..flow };
        assert_eq!(tcp_flow(&tcp_info_saying(&nothing_in)), Some(nothing_in));
    }

    fn inet_response(
        state: u8,
        recv_queue: u32,
        send_queue: u32,
        nlas: Vec<inet::nlas::Nla>,
    ) -> InetResponse {
        InetResponse {
            header: InetResponseHeader {
                family: AF_INET,
                state,
                timer: None,
                socket_id: SocketId {
                    source_port: 40000,
                    destination_port: 80,
                    source_address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                    destination_address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
                    interface_id: 0,
                    cookie: [1; 8],
                },
                recv_queue,
                send_queue,
                uid: 0,
                inode: 4242,
            },
            nlas: nlas.into(),
        }
    }

    fn meminfo(send_queue: u32, send_queue_max: u32) -> inet::nlas::Nla {
        inet::nlas::Nla::MemInfo(MemInfo {
            receive_queue: 0,
            receive_queue_max: 131072,
            send_queue,
            send_queue_max,
            bottom_send_queues: 0,
            cache: 0,
            options: 0,
            backlog_queue_length: 0,
            drops: 0,
        })
    }

    #[test]
    fn established_tcp_decodes() {
        let response = inet_response(
            TCP_ESTABLISHED,
            0,
            3000,
            vec![meminfo(4608, 4608), inet::nlas::Nla::TcpInfo(tcp_info_with_window(0))],
        );
        let Record { info, key } = inet_record(IPPROTO_TCP, response);
        assert_eq!(
            info,
            SocketInfo {
                inode: 4242,
                protocol: Protocol::Tcp,
                local: Some("10.0.0.1:40000".into()),
                remote: Some("10.0.0.5:80".into()),
                tcp_state: Some(TcpState::Established),
                send_queue: Some(4608),
                send_buffer: Some(4608),
                recv_queue: Some(0),
                recv_buffer: Some(131072),
                accept_backlog: None,
                peer_window_zero: Some(true),
            }
        );
        assert!(matches!(key, DiagKey::Inet { family: AF_INET, protocol: IPPROTO_TCP, .. }));
    }

    #[test]
    fn listener_reports_backlog() {
        let mut response = inet_response(TCP_LISTEN, 3, 128, vec![]);
        response.header.socket_id.destination_port = 0;
        response.header.socket_id.destination_address = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let info = inet_record(IPPROTO_TCP, response).info;
        assert_eq!(info.tcp_state, Some(TcpState::Listen));
        assert_eq!(info.accept_backlog, Some((3, 128)));
        assert_eq!((info.remote, info.recv_queue, info.send_queue), (None, None, None));
    }

    #[test]
    fn udp_has_no_tcp_state() {
        let info = inet_record(IPPROTO_UDP, inet_response(TCP_ESTABLISHED, 0, 0, vec![])).info;
        assert_eq!(info.protocol, Protocol::Udp);
        assert_eq!(info.tcp_state, None);
        assert_eq!(info.peer_window_zero, None);
    }

    #[test]
    fn unix_decodes() {
        let response = UnixResponse {
            header: UnixResponseHeader {
                kind: libc::SOCK_STREAM as u8,
                state: TCP_LISTEN,
                inode: 77,
                cookie: [0; 8],
            },
            nlas: vec![
                UnixNla::Name(UnixDiagName::Pathname("/run/app.sock".into())),
                UnixNla::ReceiveQueueLength(2, 16),
            ]
            .into(),
        };
        let info = unix_record(&response, None).info;
        assert_eq!(info.protocol, Protocol::Unix);
        assert_eq!(info.local.as_deref(), Some("/run/app.sock"));
        assert_eq!(info.accept_backlog, Some((2, 16)));
        assert_eq!(info.recv_queue, None);
    }
}
