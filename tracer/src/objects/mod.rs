//! What each wait waits on, as it is seen: a socket or pipe is resolved at once (it may be
//! gone later), a futex address is kept and named when the profile is built (`locks`: by
//! its FILE, `stdio`; its symbol; the global pointing to its object, `global_pointers`).

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use tracer_common::WaitKind;

pub mod global_pointers;
pub mod locks;
pub mod sockets;
pub mod stdio;

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use crate::model::WaitObject;
use sockets::{SocketLookup, SocketResolver};

/// How long a pipe's fill stands before it is read again: a busy pipe is waited on by
/// every write, and its fill takes four syscalls.
const PIPE_FILL_FRESH_FOR: Duration = Duration::from_millis(50);

/// Pipes whose fill read is remembered before the stale reads are let go.
const PIPE_FILLS_KEPT: usize = 1024;

/// Connections kept per endpoint, the latest seen: each may reach a process of its own (a
/// pool's connections to one database port, each served by a backend process).
pub const SOCKETS_PER_ENDPOINT: usize = 32;

/// The sockets seen behind each endpoint, by endpoint, oldest first, each socket once.
pub type EndpointSockets = BTreeMap<String, Vec<sockets::SocketInfo>>;

pub struct WaitObjects {
    pid: u32,
    sockets: SocketResolver,
    /// The last state seen for each endpoint (`send buffer full (...)`, `pipe full (...)`).
    pub endpoint_states: BTreeMap<String, String>,
    /// The sockets last seen behind each endpoint (their addresses find its peers).
    pub endpoint_sockets: EndpointSockets,
    /// When each pipe's fill was read, by its inode.
    pipe_fills_read: HashMap<u64, Instant>,
    /// read/write waits on descriptors neither sockets nor pipes: files, ttys, eventfds
    /// (left out).
    pub non_socket_io: u64,
    /// Socket waits whose socket was gone (or unreadable) before it was resolved.
    pub unresolved_sockets: u64,
}

impl WaitObjects {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            sockets: SocketResolver::new(pid),
            endpoint_states: BTreeMap::new(),
            endpoint_sockets: BTreeMap::new(),
            pipe_fills_read: HashMap::new(),
            non_socket_io: 0,
            unresolved_sockets: 0,
        }
    }

    /// Forgets the endpoints' states and sockets once there are more than `max` of either:
    /// a daemon whose service talks to ever new peers must not keep them all.
    pub fn forget_endpoints_beyond(&mut self, max: usize) {
        if self.endpoint_states.len() > max || self.endpoint_sockets.len() > max {
            self.endpoint_states.clear();
            self.endpoint_sockets.clear();
            self.pipe_fills_read.clear();
        }
    }

    /// Says, at info level, how the socket lookups went and why the last one failed.
    pub fn log_socket_lookups(&self) {
        log::info!("socket lookups: {:?}", self.sockets.counts());
        if let Some(error) = self.sockets.last_error() {
            log::warn!("some socket waits are unresolved: {error}");
        }
    }

    /// The endpoint of pipe `inode`, open as descriptor `fd` of the target (`pipe:[4711]`),
    /// its fill noted as the endpoint's state unless read in the last `PIPE_FILL_FRESH_FOR`.
    pub fn note_pipe(&mut self, inode: u64, fd: u64) -> String {
        let endpoint = format!("pipe:[{inode}]");
        let fresh = self
            .pipe_fills_read
            .get(&inode)
            .is_some_and(|read| read.elapsed() < PIPE_FILL_FRESH_FOR);
        if !fresh {
            // Only fresh reads matter: the stale ones go before the map grows past a
            // daemon's many pipes (a snapshot's worker keeps its objects for good).
            if self.pipe_fills_read.len() >= PIPE_FILLS_KEPT {
                self.pipe_fills_read.retain(|_, read| read.elapsed() < PIPE_FILL_FRESH_FOR);
            }
            self.pipe_fills_read.insert(inode, Instant::now());
            if let Some(fill) = pipe_fill(self.pid, fd) {
                self.endpoint_states.insert(endpoint.clone(), pipe_state(fill));
            }
        }
        endpoint
    }

    /// The reported kind and object of a wait on `object` (futex address or
    /// descriptor); None when it is not a wait we report (read/write off sockets and
    /// pipes). A pipe's read or write keeps its kind and names the pipe as its endpoint
    /// (`pipe:[4711]`), its fill as the endpoint's state.
    pub fn resolve(&mut self, kind: WaitKind, object: u64) -> Option<(WaitKind, WaitObject)> {
        self.resolve_opened(kind, object, 0)
    }

    /// `resolve` for a wait whose descriptor `object` was open on inode `opened_on` as it
    /// ended (the probe's reading; 0 when not known): a descriptor closed and reused
    /// before this lookup is not named by its new socket (see
    /// `SocketResolver::resolve_opened`).
    pub fn resolve_opened(
        &mut self,
        kind: WaitKind,
        object: u64,
        opened_on: u64,
    ) -> Option<(WaitKind, WaitObject)> {
        let socket_kind = match kind {
            WaitKind::Futex => return Some((kind, WaitObject::Futex(object))),
            WaitKind::Poll => return Some((kind, WaitObject::None)),
            // Not a syscall: the probes never report it.
            WaitKind::Goroutine | WaitKind::Task => return None,
            WaitKind::Read => WaitKind::Recv,
            WaitKind::Write => WaitKind::Send,
            WaitKind::Send | WaitKind::Recv | WaitKind::Connect | WaitKind::Accept => kind,
        };
        let is_read_or_write = matches!(kind, WaitKind::Read | WaitKind::Write);
        match self.sockets.resolve_opened(object, opened_on) {
            SocketLookup::Socket(info) => {
                // Go's netpoller parks an accept as a read on the listening socket.
                let socket_kind = if socket_kind == WaitKind::Recv && info.accept_backlog.is_some()
                {
                    WaitKind::Accept
                } else {
                    socket_kind
                };
                let endpoint = info.endpoint(socket_kind);
                self.endpoint_states.insert(endpoint.clone(), info.wait_state(socket_kind));
                note_socket(&mut self.endpoint_sockets, &endpoint, info);
                Some((socket_kind, WaitObject::Endpoint(endpoint)))
            }
            SocketLookup::Pipe(inode) if is_read_or_write => {
                Some((kind, WaitObject::Endpoint(self.note_pipe(inode, object))))
            }
            SocketLookup::NotSocket if is_read_or_write => {
                self.non_socket_io += 1;
                None
            }
            // A read/write on a descriptor gone before we looked: maybe not a socket at
            // all, so it is counted, not shown.
            SocketLookup::Unresolved if is_read_or_write => {
                self.unresolved_sockets += 1;
                None
            }
            // send, recv, connect, accept on a descriptor that is no socket fail at once.
            SocketLookup::Pipe(_) | SocketLookup::NotSocket | SocketLookup::Unresolved => {
                self.unresolved_sockets += 1;
                Some((socket_kind, WaitObject::UnresolvedSocket))
            }
        }
    }
}

/// A duplicate of descriptor `fd` of process `pid` (`pidfd_getfd`, which needs what
/// ptrace needs: root here), to ask the kernel about what it is open on.
pub fn duplicate(pid: u32, fd: u64) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = i32::try_from(pidfd).ok().filter(|pidfd| *pidfd >= 0)?;
    // SAFETY: a descriptor just returned to us, owned from here on.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: pidfd_getfd takes a pidfd, the target's descriptor number and flags.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let copy = i32::try_from(copy).ok().filter(|copy| *copy >= 0)?;
    // SAFETY: as above.
    Some(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Notes `socket` behind `endpoint`: the latest state of a socket seen before replaces its
/// old one and moves to the end; past `SOCKETS_PER_ENDPOINT` the oldest goes. Unnamed Unix
/// sockets (`unix`: socketpairs, unrelated to each other) keep only the latest.
pub fn note_socket(sockets: &mut EndpointSockets, endpoint: &str, socket: sockets::SocketInfo) {
    let seen = match sockets.get_mut(endpoint) {
        Some(seen) => seen,
        None => sockets.entry(endpoint.to_owned()).or_default(),
    };
    if endpoint == sockets::UNNAMED_UNIX {
        seen.clear();
    }
    seen.retain(|known| known.inode != socket.inode);
    if seen.len() >= SOCKETS_PER_ENDPOINT {
        seen.remove(0);
    }
    seen.push(socket);
}

/// The inode of a pipe from its descriptor's /proc link, or from an object that names the
/// pipe by it (`pipe:[4711]`).
pub fn pipe_inode(target: &str) -> Option<u64> {
    target.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// How full the pipe open as descriptor `fd` of `pid` is: the bytes queued in it and its
/// capacity (`FIONREAD`, `F_GETPIPE_SZ` on a duplicate).
pub fn pipe_fill(pid: u32, fd: u64) -> Option<(u64, u64)> {
    let pipe = duplicate(pid, fd)?;
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; both calls only read the pipe's state.
    let (read, capacity) = unsafe {
        (
            libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut queued),
            libc::fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ),
        )
    };
    if read != 0 {
        return None;
    }
    Some((u64::try_from(queued).ok()?, u64::try_from(capacity).ok()?))
}

/// A pipe's state as a chain shows it beside the pipe, as a socket's buffers are shown:
/// `pipe full (65536/65536 bytes)`. A pipe's buffers are pages: one whose queued bytes
/// leave no page free has every buffer in use, and a writer that needs a new one waits
/// (lines of a log rarely fill the last byte).
pub fn pipe_state((queued, capacity): (u64, u64)) -> String {
    const PAGE: u64 = 4096;
    let no_page_free = capacity > PAGE && queued > capacity - PAGE;
    if queued >= capacity || no_page_free {
        format!("pipe full ({queued}/{capacity} bytes)")
    } else {
        format!("{queued}/{capacity} bytes in the pipe")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn an_endpoint_keeps_each_of_its_latest_sockets_once() {
        let socket = |inode: u64, queued: u32| sockets::SocketInfo {
            send_queue: Some(queued),
            ..sockets::SocketInfo::addresses_only(
                inode,
                sockets::Protocol::Tcp,
                Some(format!("127.0.0.1:{inode}")),
                Some("127.0.0.1:5432".to_owned()),
            )
        };
        let mut seen = EndpointSockets::new();
        note_socket(&mut seen, "127.0.0.1:5432", socket(1, 0));
        note_socket(&mut seen, "127.0.0.1:5432", socket(2, 0));
        // Seen again: its new state, moved to the end.
        note_socket(&mut seen, "127.0.0.1:5432", socket(1, 7));
        let kept = |seen: &EndpointSockets| -> Vec<(u64, Option<u32>)> {
            seen["127.0.0.1:5432"].iter().map(|s| (s.inode, s.send_queue)).collect()
        };
        assert_eq!(kept(&seen), [(2, Some(0)), (1, Some(7))]);
        for inode in 3..=40 {
            note_socket(&mut seen, "127.0.0.1:5432", socket(inode, 0));
        }
        let inodes: Vec<u64> = kept(&seen).into_iter().map(|(inode, _)| inode).collect();
        assert_eq!(inodes, (9..=40).collect::<Vec<u64>>(), "the latest {SOCKETS_PER_ENDPOINT}");
        note_socket(&mut seen, "[::1]:80", socket(41, 0));
        assert_eq!(seen.len(), 2);
        // Socketpairs share no peer: the latest only.
        note_socket(&mut seen, sockets::UNNAMED_UNIX, socket(42, 0));
        note_socket(&mut seen, sockets::UNNAMED_UNIX, socket(43, 0));
        assert_eq!(seen[sockets::UNNAMED_UNIX].iter().map(|s| s.inode).collect::<Vec<_>>(), [43]);
    }

    #[test]
    fn a_pipe_s_fill_is_read_through_a_duplicate() {
        let (reader, mut writer) = std::io::pipe().expect("a pipe");
        writer.write_all(b"twelve bytes").expect("write");
        let fd = writer.as_raw_fd() as u64;
        let (queued, capacity) = pipe_fill(std::process::id(), fd).expect("the pipe's fill");
        assert_eq!(queued, 12);
        assert!(capacity >= 4096, "{capacity}");
        assert_eq!(pipe_state((queued, capacity)), format!("12/{capacity} bytes in the pipe"));
        assert_eq!(pipe_state((65536, 65536)), "pipe full (65536/65536 bytes)");
        assert_eq!(pipe_state((65408, 65536)), "pipe full (65408/65536 bytes)");
        assert_eq!(pipe_state((61440, 65536)), "61440/65536 bytes in the pipe");
        assert_eq!(pipe_state((1, 4096)), "1/4096 bytes in the pipe");
        drop(reader);
    }

    #[test]
    fn a_pipe_s_read_or_write_is_shown_and_a_file_s_is_counted() {
        let (reader, mut writer) = std::io::pipe().expect("a pipe");
        writer.write_all(b"queued").expect("write");
        let mut objects = WaitObjects::new(std::process::id());
        let link = std::fs::read_link(format!("/proc/self/fd/{}", writer.as_raw_fd()));
        let pipe = link.expect("the pipe's link").to_str().expect("utf-8").to_owned();
        let write = objects.resolve(WaitKind::Write, writer.as_raw_fd() as u64);
        assert_eq!(write, Some((WaitKind::Write, WaitObject::Endpoint(pipe.clone()))));
        let read = objects.resolve(WaitKind::Read, reader.as_raw_fd() as u64);
        assert_eq!(read, Some((WaitKind::Read, WaitObject::Endpoint(pipe.clone()))));
        let state = objects.endpoint_states.get(&pipe).expect("the pipe's fill");
        assert!(state.starts_with("6/") && state.ends_with(" bytes in the pipe"), "{state}");
        // A pipe is never sent on: a send on one fails at once, and is not named as one.
        let send = objects.resolve(WaitKind::Send, writer.as_raw_fd() as u64);
        assert_eq!(send, Some((WaitKind::Send, WaitObject::UnresolvedSocket)));
        let file = std::fs::File::open("/proc/self/status").expect("a file");
        assert_eq!(objects.resolve(WaitKind::Read, file.as_raw_fd() as u64), None);
        assert_eq!(objects.non_socket_io, 1);
    }
}
