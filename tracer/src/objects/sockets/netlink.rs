//! A netlink socket opened in a process's network namespace, and one request–answer
//! exchange over it: what sock_diag (`diag.rs`) and conntrack (`conntrack.rs`) lookups share.

use std::{fs, io, os::fd::AsRawFd as _, time::Duration};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// A netlink request that went wrong; the lookup that needed it reports its object
/// unresolved.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Open(#[source] io::Error),
    /// The target lives in another network namespace that could not be entered.
    #[error("cannot enter the network namespace of pid {pid}")]
    NetNs {
        pid: u32,
        #[source]
        source: io::Error,
    },
    /// Sending the request failed.
    #[error("netlink request failed")]
    Send(#[source] io::Error),
    /// Receiving the answer failed (or timed out).
    #[error("netlink answer failed")]
    Recv(#[source] io::Error),
    /// The kernel answered with an error other than "no such object".
    #[error("kernel refused the netlink request")]
    Kernel(#[source] io::Error),
    /// The answer could not be decoded.
    #[error("cannot decode a netlink answer")]
    Decode(#[source] netlink_packet_core::DecodeError),
}

/// How long one request may wait for its answer: the kernel answers at once, so this only
/// guards against a lost datagram hanging the tracer.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);

/// Dump datagrams are at most 32 KiB (`netlink_dump` caps `max_recvmsg_len` there).
const RECV_BUFFER: usize = 64 * 1024;

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HEADER_LEN: usize = 16;

/// A netlink socket of one protocol, in one network namespace (each of sock_diag and
/// conntrack sees only its own namespace).
pub struct NetlinkChannel {
    socket: Socket,
    buffer: Vec<u8>,
    sequence: u32,
}

impl NetlinkChannel {
    /// Opens a `protocol` socket (`NETLINK_SOCK_DIAG`, `NETLINK_NETFILTER`) in the network
    /// namespace of `pid`.
    pub fn open(pid: u32, protocol: isize) -> Result<Self, NetlinkError> {
        // A thread of it that lives: a process whose main thread exited keeps no
        // namespaces under its pid's own directory.
        let pid = crate::pipeline::target::live_thread(pid);
        let socket =
            if same_netns(pid) { new_socket(protocol)? } else { open_in_netns(pid, protocol)? };
        Ok(Self { socket, buffer: vec![0; RECV_BUFFER], sequence: 0 })
    }

    /// Sends `request` and feeds each answer to `each`, until NLMSG_DONE for a dump or the
    /// first answer otherwise. Returns false when the kernel says there is no such object
    /// (ENOENT).
    pub fn exchange<M>(
        &mut self,
        request: M,
        dump: bool,
        mut each: impl FnMut(M),
    ) -> Result<bool, NetlinkError>
    where
        M: NetlinkSerializable + NetlinkDeserializable,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0).map_err(NetlinkError::Send)?;

        loop {
            let received = self
                .socket
                .recv(&mut &mut self.buffer[..], 0)
                .map_err(NetlinkError::Recv)?
                .min(self.buffer.len());
            let mut datagram = &self.buffer[..received];
            while datagram.len() >= NLMSG_HEADER_LEN {
                let length = message_length(datagram);
                if length < NLMSG_HEADER_LEN || length > datagram.len() {
                    return Err(NetlinkError::Decode("truncated netlink message".into()));
                }
                let message = NetlinkMessage::<M>::deserialize(&datagram[..length]);
                datagram = &datagram[align4(length).min(datagram.len())..];
                let message = message.map_err(NetlinkError::Decode)?;
                // Answers to an earlier request that timed out.
                if message.header.sequence_number != self.sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(message) => {
                        each(message);
                        if !dump {
                            return Ok(true);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(true),
                    NetlinkPayload::Error(error) => {
                        let error = error.to_io();
                        return match error.raw_os_error() {
                            Some(libc::ENOENT) => Ok(false),
                            _ => Err(NetlinkError::Kernel(error)),
                        };
                    }
                    // NLMSG_NOOP, NLMSG_OVERRUN: nothing for us.
                    _ => {}
                }
            }
        }
    }
}

fn message_length(datagram: &[u8]) -> usize {
    let mut length = [0; 4];
    length.copy_from_slice(&datagram[..4]);
    u32::from_ne_bytes(length) as usize
}

/// `NLMSG_ALIGN`.
fn align4(length: usize) -> usize {
    (length + 3) & !3
}

fn new_socket(protocol: isize) -> Result<Socket, NetlinkError> {
    let mut socket = Socket::new(protocol).map_err(NetlinkError::Open)?;
    socket.bind_auto().map_err(NetlinkError::Open)?;
    socket.connect(&NetlinkAddr::new(0, 0)).map_err(NetlinkError::Open)?;
    set_recv_timeout(&socket, RECV_TIMEOUT).map_err(NetlinkError::Open)?;
    Ok(socket)
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let timeval = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: the descriptor is the open netlink socket we own; the option value is a valid
    // `timeval` whose size is passed alongside.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Whether `pid` is in the tracer's network namespace; false when its namespace cannot be
/// read, so that opening in it fails and says why (rather than the tracer's own
/// namespace's sockets being searched as if they were the target's).
fn same_netns(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (fs::metadata(format!("/proc/{pid}/ns/net")), fs::metadata("/proc/self/ns/net")) {
        (Ok(theirs), Ok(ours)) => (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()),
        _ => false,
    }
}

/// A socket keeps the namespace it was created in, so a short-lived thread enters the
/// target's, opens the socket, and ends (the tracer's own threads never switch).
fn open_in_netns(pid: u32, protocol: isize) -> Result<Socket, NetlinkError> {
    let netns_error = |source| NetlinkError::NetNs { pid, source };
    let netns = fs::File::open(format!("/proc/{pid}/ns/net")).map_err(netns_error)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: `netns` is an open namespace descriptor; setns only changes this
                // thread, which does nothing else and ends right after.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(netns_error(io::Error::last_os_error()));
                }
                new_socket(protocol)
            })
            .join()
            .unwrap_or_else(|_| Err(netns_error(io::Error::other("netns thread panicked"))))
    })
}
