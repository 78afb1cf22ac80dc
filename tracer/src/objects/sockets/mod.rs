//! Resolves a descriptor the target blocked on to its socket: whether it is one at all (so
//! that `read`/`write` waits on sockets count as `recv`/`send`; a pipe is told apart by its
//! inode), and for socket waits the protocol, the addresses and the queue state that
//! explains the wait.
//!
//! Path: `/proc/PID/fd/N` (a `socket:[INODE]` link) → the protocol from the socket's
//! `system.sockprotoname` attribute → NETLINK_SOCK_DIAG ([`diag`]). Nothing here stops the
//! target. [`conntrack`] answers where an address-translated connection really goes (for
//! wait chains); both talk netlink in the target's namespace through [`netlink`].

pub mod backed_up;
pub(crate) mod conntrack;
pub(crate) mod diag;
mod netlink;

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fmt, fs,
    os::unix::ffi::OsStrExt as _,
    path::Path,
    time::{Duration, Instant},
};

use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use tracer_common::WaitKind;

use self::diag::{DiagKey, Record, SockDiag};
pub use self::netlink::NetlinkError;

/// The inode of a `socket:[INODE]` link target.
pub fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The transport of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Unix,
    /// Netlink, packet, raw, SCTP, MPTCP, ...: named but not looked into.
    Other,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Unix => "Unix",
            Self::Other => "other",
        })
    }
}

/// A TCP socket's state (include/net/tcp_states.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

impl TcpState {
    /// From the kernel's `TCP_*` number (`idiag_state`).
    pub fn from_kernel(state: u8) -> Option<Self> {
        Some(match state {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            _ => return None,
        })
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        })
    }
}

/// The endpoint of a Unix socket with no name on either end (a socketpair's).
pub const UNNAMED_UNIX: &str = "unix";

/// What marks a listener's endpoint, after its address.
pub const LISTENING: &str = "(listening)";

/// What a socket descriptor resolved to, as sock_diag reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// The socket's inode (`socket:[INODE]`).
    pub inode: u64,
    pub protocol: Protocol,
    /// The bound address: `10.0.0.5:80`, `[::1]:443`, a Unix path or `@abstract`.
    pub local: Option<String>,
    /// The connected peer, formatted like `local`; for Unix, the name of the peer socket.
    pub remote: Option<String>,
    /// TCP only.
    pub tcp_state: Option<TcpState>,
    /// Bytes charged against the send buffer, comparable with `send_buffer`: sk_wmem_queued
    /// for TCP, sk_wmem_alloc for UDP and Unix (overhead included). `None` for listeners.
    pub send_queue: Option<u32>,
    /// The send buffer size (SO_SNDBUF as the kernel keeps it).
    pub send_buffer: Option<u32>,
    /// Bytes waiting to be read. `None` for listeners.
    pub recv_queue: Option<u32>,
    /// The receive buffer size.
    pub recv_buffer: Option<u32>,
    /// Listeners: connections waiting to be accepted, and the limit (the clamped `listen` backlog).
    pub accept_backlog: Option<(u32, u32)>,
    /// TCP in a data-transfer state: whether the peer advertises a zero receive window,
    /// where the kernel tells.
    pub peer_window_zero: Option<bool>,
}

impl SocketInfo {
    /// A socket known only by its addresses (no sock_diag state): an MPTCP socket read from
    /// a duplicate of its descriptor, or one of a family sock_diag does not cover.
    pub fn addresses_only(
        inode: u64,
        protocol: Protocol,
        local: Option<String>,
        remote: Option<String>,
    ) -> Self {
        SocketInfo {
            inode,
            protocol,
            local,
            remote,
            tcp_state: None,
            send_queue: None,
            send_buffer: None,
            recv_queue: None,
            recv_buffer: None,
            accept_backlog: None,
            peer_window_zero: None,
        }
    }

    /// The endpoint a wait of this kind names: the remote address for send/recv/connect, the
    /// local (listening) address for accept; "unix" when a Unix socket has no name. A
    /// listener's is marked (`127.0.0.1:8080 (listening)`): a connection to it has the same
    /// address for its remote, and the two are different endpoints (their states and their
    /// peers would mix when a profile holds both, a server and its local client).
    pub fn endpoint(&self, kind: WaitKind) -> String {
        let (first, second) = match kind {
            WaitKind::Accept => (&self.local, &self.remote),
            _ => (&self.remote, &self.local),
        };
        // An unconnected socket (a UDP receiver, the server end of a Unix connection whose
        // client is unnamed) is known by its own address.
        let name = match first.as_ref().or(second.as_ref()) {
            Some(name) => name.clone(),
            None => match self.protocol {
                Protocol::Unix => UNNAMED_UNIX.to_owned(),
                other => other.to_string(),
            },
        };
        if self.is_listening() { format!("{name} {LISTENING}") } else { name }
    }

    /// A listening socket: as sock_diag says, or a TCP socket known by its own address alone
    /// (an MPTCP listener, read from its addresses: a connection has a peer).
    fn is_listening(&self) -> bool {
        self.tcp_state == Some(TcpState::Listen)
            || self.accept_backlog.is_some()
            || (self.protocol == Protocol::Tcp
                && self.tcp_state.is_none()
                && self.local.is_some()
                && self.remote.is_none())
    }

    /// One short phrase explaining the wait: "send buffer full (4096/4608 bytes)",
    /// "peer window zero", "waiting for data", "connecting (SYN sent)", "accept queue 0/128".
    pub fn wait_state(&self, kind: WaitKind) -> String {
        if self.tcp_state == Some(TcpState::SynSent) {
            return "connecting (SYN sent)".to_owned();
        }
        match kind {
            WaitKind::Send | WaitKind::Write => {
                let full = match (self.send_queue, self.send_buffer) {
                    (Some(queued), Some(size)) => {
                        format!("send buffer full ({queued}/{size} bytes)")
                    }
                    (Some(queued), None) => format!("send buffer full ({queued} bytes queued)"),
                    _ => "send buffer full".to_owned(),
                };
                if self.peer_window_zero == Some(true) {
                    format!("{full}, peer window zero")
                } else {
                    full
                }
            }
            WaitKind::Recv | WaitKind::Read => match self.recv_queue {
                Some(0) | None => "waiting for data".to_owned(),
                Some(queued) => format!("waiting for data ({queued} bytes queued)"),
            },
            WaitKind::Connect => match self.tcp_state {
                Some(state) => format!("connecting ({state})"),
                None => "connecting".to_owned(),
            },
            WaitKind::Accept => self.backlog_phrase(),
            WaitKind::Poll | WaitKind::Futex | WaitKind::Goroutine | WaitKind::Task => {
                match (self.accept_backlog, self.tcp_state) {
                    (Some(_), _) => self.backlog_phrase(),
                    (None, Some(state)) => state.to_string(),
                    (None, None) => self.protocol.to_string(),
                }
            }
        }
    }

    fn backlog_phrase(&self) -> String {
        match self.accept_backlog {
            Some((current, max)) => format!("accept queue {current}/{max}"),
            None => "waiting for connections".to_owned(),
        }
    }
}

/// The answer for one descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketLookup {
    Socket(SocketInfo),
    /// A pipe or FIFO, by its inode (`pipe:[INODE]`).
    Pipe(u64),
    /// A file, eventfd, tty, ...
    NotSocket,
    /// The descriptor closed, or the socket gone before it was resolved, or a netlink
    /// request failed or was held back: never a guess. [`SocketResolver::counts`] says which.
    Unresolved,
}

/// How the lookups of one resolver went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolveCounts {
    pub resolved: u64,
    /// The descriptor was closed (or the process gone) when looked at.
    pub closed: u64,
    /// The descriptor still named a socket, but sock_diag did not know it: closed meanwhile,
    /// or never in the kernel's tables (a TCP or UDP socket neither bound nor connected).
    pub gone: u64,
    /// A new socket seen within [`DUMP_INTERVAL`] of the last dump of its kind.
    pub held_back: u64,
    /// A netlink request failed ([`SocketResolver::last_error`]).
    pub failed: u64,
    /// The descriptor was open on another file than the wait's when looked at: closed
    /// and reused meanwhile (named by the socket the table knew, if it did).
    pub reused: u64,
}

/// The least time between two dumps of one kind of socket (and between reopening a netlink
/// socket that failed): a dump walks every socket of the host.
pub const DUMP_INTERVAL: Duration = Duration::from_millis(50);

/// How long a cached answer stands before the socket is asked about again (queues move).
const FRESH_FOR: Duration = Duration::from_millis(50);
/// New sockets the table takes before it forgets the closed ones: a service that talks
/// over Unix sockets alone dumps no inet table (which prunes it too), and each of its
/// connections is a new inode for as long as a daemon runs.
const PRUNE_AFTER: usize = 1024;

/// What a descriptor is open on, from its /proc link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descriptor {
    Socket(u64),
    Pipe(u64),
    Other,
}

/// Descriptor `fd` of `pid` as a pipe, by its inode, if it is a named pipe (FIFO).
fn named_pipe(pid: u32, fd: u64) -> Option<Descriptor> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let metadata = fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
    metadata.file_type().is_fifo().then(|| Descriptor::Pipe(metadata.ino()))
}

impl Descriptor {
    pub fn of_link(target: &str) -> Self {
        match (socket_inode(target), super::pipe_inode(target)) {
            (Some(inode), _) => Self::Socket(inode),
            (None, Some(inode)) => Self::Pipe(inode),
            (None, None) => Self::Other,
        }
    }
}

/// Which sock_diag query finds a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SocketKind {
    Inet {
        family: u8,
        protocol: u8,
    },
    Unix,
    /// Multipath TCP, named from a duplicate of the descriptor.
    Mptcp,
    Other,
}

struct Entry {
    info: SocketInfo,
    key: DiagKey,
    fetched: Instant,
}

enum Outcome {
    Found(SocketInfo),
    Gone,
    HeldBack,
    Failed(NetlinkError),
}

/// Resolves descriptors of one traced process to their sockets, keeping a table of the
/// sockets it has seen: a new inet socket costs a dump of its family and protocol (at most
/// one per [`DUMP_INTERVAL`]), a known one or a Unix one a single exact query.
pub struct SocketResolver {
    pid: u32,
    diag: Option<SockDiag>,
    last_open: Option<Instant>,
    table: HashMap<u64, Entry>,
    /// The table's size when the closed sockets were last forgotten.
    size_after_prune: usize,
    /// What each descriptor was when last looked at, and when. Within `FRESH_FOR` the
    /// answer stands without a readlink: one per wait was a quarter of the tracer's CPU on
    /// a busy service. A descriptor closed and reused within that time is named as its old
    /// socket, a race the lookup already runs (it looks after the wait, when the ring
    /// buffer is drained).
    descriptors: HashMap<u64, (Descriptor, Instant)>,
    last_dump: HashMap<(u8, u8), Instant>,
    counts: ResolveCounts,
    last_error: Option<NetlinkError>,
}

impl SocketResolver {
    /// Never fails: the netlink socket opens at the first lookup that needs it, and its
    /// errors surface per lookup.
    pub fn new(pid: u32) -> Self {
        Self {
            // A process whose main thread has exited is read through a thread that lives.
            pid: crate::pipeline::target::live_thread(pid),
            diag: None,
            last_open: None,
            table: HashMap::new(),
            size_after_prune: 0,
            descriptors: HashMap::new(),
            last_dump: HashMap::new(),
            counts: ResolveCounts::default(),
            last_error: None,
        }
    }

    /// Resolves descriptor `fd` of the process now.
    pub fn resolve(&mut self, fd: u64) -> SocketLookup {
        let Some(descriptor) = self.descriptor(fd) else {
            return SocketLookup::Unresolved;
        };
        self.resolve_descriptor(fd, descriptor)
    }

    /// Resolves descriptor `fd` of the process as it was open on inode `opened_on` (read
    /// by the probe as a wait on it ended; 0 when not known). A descriptor closed and
    /// reused since is not named by what it is open on now: by the socket the table knew
    /// under that inode, or not at all (counted: `reused`).
    pub fn resolve_opened(&mut self, fd: u64, opened_on: u64) -> SocketLookup {
        if opened_on == 0 {
            return self.resolve(fd);
        }
        // A file that is neither socket nor pipe is left out alike, whichever it is.
        let opened_on_it = |descriptor: Descriptor| match descriptor {
            Descriptor::Socket(inode) | Descriptor::Pipe(inode) => inode == opened_on,
            Descriptor::Other => true,
        };
        // What was seen a moment ago may be the old file or the new one: read it again.
        if self.descriptors.get(&fd).is_some_and(|&(seen, _)| !opened_on_it(seen)) {
            self.descriptors.remove(&fd);
        }
        let Some(descriptor) = self.descriptor(fd) else {
            return SocketLookup::Unresolved;
        };
        if opened_on_it(descriptor) {
            return self.resolve_descriptor(fd, descriptor);
        }
        self.counts.reused += 1;
        match self.table.get(&opened_on) {
            Some(entry) => {
                self.counts.resolved += 1;
                SocketLookup::Socket(entry.info.clone())
            }
            None => SocketLookup::Unresolved,
        }
    }

    /// What descriptor `fd` is open on, as read within `FRESH_FOR`; None when it is
    /// closed (counted).
    fn descriptor(&mut self, fd: u64) -> Option<Descriptor> {
        if let Some(&(descriptor, seen)) = self.descriptors.get(&fd)
            && seen.elapsed() < FRESH_FOR
        {
            return Some(descriptor);
        }
        match fs::read_link(format!("/proc/{}/fd/{fd}", self.pid)) {
            Ok(link) => {
                let mut descriptor = Descriptor::of_link(&link.to_string_lossy());
                // A named pipe (FIFO) is a pipe too, though its link is its path.
                if matches!(descriptor, Descriptor::Other) {
                    descriptor = named_pipe(self.pid, fd).unwrap_or(descriptor);
                }
                self.descriptors.insert(fd, (descriptor, Instant::now()));
                Some(descriptor)
            }
            Err(_) => {
                self.descriptors.remove(&fd);
                self.counts.closed += 1;
                None
            }
        }
    }

    /// Resolves descriptor `fd`, open on `descriptor`.
    fn resolve_descriptor(&mut self, fd: u64, descriptor: Descriptor) -> SocketLookup {
        let inode = match descriptor {
            Descriptor::Socket(inode) => inode,
            Descriptor::Pipe(inode) => return SocketLookup::Pipe(inode),
            Descriptor::Other => return SocketLookup::NotSocket,
        };
        let outcome = match self.table.get(&inode) {
            Some(entry) if entry.fetched.elapsed() < FRESH_FOR => {
                Outcome::Found(entry.info.clone())
            }
            Some(entry) => {
                let key = entry.key.clone();
                self.refresh(inode, key)
            }
            None => self.look_up(fd, inode),
        };
        match outcome {
            Outcome::Found(info) => {
                self.counts.resolved += 1;
                return SocketLookup::Socket(info);
            }
            Outcome::Gone => {
                self.descriptors.remove(&fd);
                self.counts.gone += 1;
            }
            Outcome::HeldBack => self.counts.held_back += 1,
            Outcome::Failed(error) => {
                log::debug!("pid {} fd {fd}: {error}", self.pid);
                self.counts.failed += 1;
                self.last_error = Some(error);
            }
        }
        SocketLookup::Unresolved
    }

    /// How the lookups went so far.
    pub fn counts(&self) -> ResolveCounts {
        self.counts
    }

    /// The latest netlink failure, for a report that wants to say why sockets went unresolved.
    pub fn last_error(&self) -> Option<&NetlinkError> {
        self.last_error.as_ref()
    }

    /// A socket not in the table.
    fn look_up(&mut self, fd: u64, inode: u64) -> Outcome {
        let kind = match socket_kind(&format!("/proc/{}/fd/{fd}", self.pid)) {
            Some(kind) => kind,
            // The descriptor closed between the two looks.
            None => return Outcome::Gone,
        };
        match kind {
            // sock_diag's TCP dump does not list MPTCP sockets (Go 1.24+ listens and
            // accepts with MPTCP by default): their addresses from a duplicate of the
            // descriptor, as the process sees them.
            SocketKind::Mptcp => {
                let (local, remote) = addresses_of_duplicate(self.pid, fd);
                Outcome::Found(SocketInfo::addresses_only(inode, Protocol::Tcp, local, remote))
            }
            SocketKind::Other => {
                Outcome::Found(SocketInfo::addresses_only(inode, Protocol::Other, None, None))
            }
            // Socket inodes come from get_next_ino(), an unsigned int, like udiag_ino.
            SocketKind::Unix => match u32::try_from(inode) {
                Ok(unix_inode) => self.refresh(inode, DiagKey::Unix { inode: unix_inode }),
                Err(_) => Outcome::Gone,
            },
            SocketKind::Inet { family, protocol } => {
                let now = Instant::now();
                if self
                    .last_dump
                    .get(&(family, protocol))
                    .is_some_and(|last| now - *last < DUMP_INTERVAL)
                {
                    return Outcome::HeldBack;
                }
                self.last_dump.insert((family, protocol), now);
                let records = match self.diag().and_then(|diag| diag.dump_inet(family, protocol)) {
                    Ok(records) => records,
                    Err(error) => return self.failed(error),
                };
                // Keep only the target's sockets (a dump lists the whole host's), and forget
                // the ones it closed.
                let open = self.forget_closed();
                for Record { info, key } in records {
                    if open.contains(&info.inode) {
                        self.table.insert(info.inode, Entry { info, key, fetched: now });
                    }
                }
                match self.table.get(&inode) {
                    Some(entry) => Outcome::Found(entry.info.clone()),
                    None => Outcome::Gone,
                }
            }
        }
    }

    /// Asks about one socket again (or for the first time, for Unix sockets).
    fn refresh(&mut self, inode: u64, key: DiagKey) -> Outcome {
        let answer = self.diag().and_then(|diag| match &key {
            DiagKey::Inet { family, protocol, id } => diag.get_inet(*family, *protocol, id),
            DiagKey::Unix { inode } => diag.get_unix(*inode),
        });
        match answer {
            // A tuple reused by a newer socket is not this one.
            Ok(Some(Record { info, key })) if info.inode == inode => {
                let entry = Entry { info: info.clone(), key, fetched: Instant::now() };
                if self.table.insert(inode, entry).is_none()
                    && self.table.len() >= self.size_after_prune + PRUNE_AFTER
                {
                    self.forget_closed();
                }
                Outcome::Found(info)
            }
            Ok(_) => {
                self.table.remove(&inode);
                Outcome::Gone
            }
            Err(error) => self.failed(error),
        }
    }

    /// Forgets the sockets the process no longer holds; returns those it holds.
    fn forget_closed(&mut self) -> HashSet<u64> {
        let open = held_sockets(self.pid).unwrap_or_default();
        self.table.retain(|inode, _| open.contains(inode));
        self.size_after_prune = self.table.len();
        open
    }

    fn failed(&mut self, error: NetlinkError) -> Outcome {
        // A broken socket is reopened on a later lookup.
        self.diag = None;
        Outcome::Failed(error)
    }

    fn diag(&mut self) -> Result<&mut SockDiag, NetlinkError> {
        if self.diag.is_none() {
            let now = Instant::now();
            if self.last_open.is_some_and(|last| now - last < DUMP_INTERVAL) {
                return Err(NetlinkError::Open(std::io::Error::other(
                    "reopening too soon after a failure",
                )));
            }
            self.last_open = Some(now);
            self.diag = Some(SockDiag::open(self.pid)?);
        }
        match self.diag.as_mut() {
            Some(diag) => Ok(diag),
            None => Err(NetlinkError::Open(std::io::Error::other("no sock_diag socket"))),
        }
    }
}

/// The protocol of the socket behind `fd_path` from its `system.sockprotoname` attribute
/// (net/socket.c, sockfs_xattr_get); `None` when the descriptor is gone.
fn socket_kind(fd_path: &str) -> Option<SocketKind> {
    let path = CString::new(Path::new(fd_path).as_os_str().as_bytes()).ok()?;
    let mut name = [0u8; 32];
    // SAFETY: `path` is a NUL-terminated string and `name` a writable buffer whose length is
    // passed; getxattr writes at most that many bytes.
    let length = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.sockprotoname".as_ptr(),
            name.as_mut_ptr().cast(),
            name.len(),
        )
    };
    let length = usize::try_from(length).ok()?;
    let name = name.get(..length)?;
    let name = name.strip_suffix(&[0]).unwrap_or(name);
    Some(kind_of_protocol_name(name))
}

/// The local and peer addresses of descriptor `fd` of process `pid`, read from a duplicate
/// of it; `None` where a name cannot be had (a listener has no peer).
fn addresses_of_duplicate(pid: u32, fd: u64) -> (Option<String>, Option<String>) {
    let Some(socket) = crate::objects::duplicate(pid, fd) else { return (None, None) };
    let name = |peer: bool| -> Option<String> {
        // SAFETY: sockaddr_storage is plain old data; the calls write at most `len` bytes
        // into it and set `len`.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let pointer = (&raw mut storage).cast::<libc::sockaddr>();
        // SAFETY: as above.
        let result = unsafe {
            if peer {
                libc::getpeername(raw, pointer, &mut len)
            } else {
                libc::getsockname(raw, pointer, &mut len)
            }
        };
        if result != 0 {
            return None;
        }
        match i32::from(storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let address = unsafe { *(&raw const storage).cast::<libc::sockaddr_in>() };
                let ip = std::net::Ipv4Addr::from(u32::from_be(address.sin_addr.s_addr));
                Some(diag::format_address(ip.into(), u16::from_be(address.sin_port)))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let address = unsafe { *(&raw const storage).cast::<libc::sockaddr_in6>() };
                let ip = std::net::Ipv6Addr::from(address.sin6_addr.s6_addr);
                Some(diag::format_address(ip.into(), u16::from_be(address.sin6_port)))
            }
            _ => None,
        }
    };
    (name(false), name(true))
}

fn kind_of_protocol_name(name: &[u8]) -> SocketKind {
    let inet = |family, protocol| SocketKind::Inet { family, protocol };
    match name {
        b"TCP" => inet(AF_INET, IPPROTO_TCP),
        b"TCPv6" => inet(AF_INET6, IPPROTO_TCP),
        b"UDP" => inet(AF_INET, IPPROTO_UDP),
        b"UDPv6" => inet(AF_INET6, IPPROTO_UDP),
        b"UNIX" | b"UNIX-STREAM" => SocketKind::Unix,
        b"MPTCP" | b"MPTCPv6" => SocketKind::Mptcp,
        _ => SocketKind::Other,
    }
}

/// The inodes of the sockets process `pid` holds open; None when its descriptors cannot
/// be listed.
pub(crate) fn held_sockets(pid: u32) -> Option<HashSet<u64>> {
    let held = socket_descriptors(pid).ok()?;
    Some(held.into_iter().map(|(_, inode)| inode).collect())
}

/// Process `pid`'s socket descriptors and their inodes, each socket once (at its lowest
/// descriptor: one held twice, by dup or inheritance, is one queue).
fn socket_descriptors(pid: u32) -> std::io::Result<Vec<(u64, u64)>> {
    let mut sockets: Vec<(u64, u64)> = fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let inode = socket_inode(&fs::read_link(entry.path()).ok()?.to_string_lossy())?;
            Some((fd, inode))
        })
        .collect();
    sockets.sort_unstable();
    let mut seen = HashSet::new();
    sockets.retain(|&(_, inode)| seen.insert(inode));
    Ok(sockets)
}

#[cfg(test)]
mod tests;
