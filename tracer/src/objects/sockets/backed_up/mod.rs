//! The target's backed-up sockets, read when a report is made: every socket it holds is
//! looked up (TCP by one dump per family, Unix one by one), and those whose data stopped
//! moving, or whose request waits for its reply, are kept. A thread blocked in `send` or
//! `recv` on such a socket shows as a wait too; an event-driven process has none, and
//! this is where its client that stopped reading, or its slow upstream, shows.
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
//!   until this end reads it), still so `READ_AGAIN_AFTER` later;
//! - awaiting: a TCP connection this process made (its local port no listener's) whose
//!   last data went out `STALLED_FOR` ago or more, all of it acknowledged, and nothing came
//!   back since: a request waiting for its reply, where an event-driven client's wait on
//!   a slow server shows (a thread would be blocked in `recv`).
//!
//! A busy connection is full, or at a closed window, for moments at a time: those
//! moments keep it out of the stopped rules.

mod rules;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    fs,
    time::{Duration, Instant},
};

use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{InetResponse, SocketId, StateFlags},
};
use rules::{Movement, TcpFacts, judge, judge_awaiting, judge_slow};

use super::{
    NetlinkError, SocketInfo, SocketKind,
    diag::{self, Record, SockDiag},
    socket_descriptors, socket_kind,
};
use crate::model::{BackedUpSocket, Backlog};

/// When a full Unix socket, and a TCP connection moving data, are looked at again: a Unix
/// socket still full is not full for a moment's; a connection's peer that held sending
/// back most of the time between reads slower than this process writes.
const READ_AGAIN_AFTER: Duration = Duration::from_millis(100);
/// Connections asked for again one by one, at most, in a namespace; more are read again
/// in one dump of its table.
const ASKED_ONE_BY_ONE: usize = 256;

/// A process's backed-up sockets, and why some could not be read.
pub type ProcessScan = (Vec<BackedUpSocket>, Option<ScanFailed>);

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
pub fn scan_processes(pids: &[u32]) -> Vec<ProcessScan> {
    read_tables(list_sockets(pids), SockDiag::open, &mut ClockTime)
}

/// One network namespace's socket tables as the scan asks them: sock_diag's (a test
/// gives its own).
trait SocketTables {
    /// Every TCP connection of `family` that can move data (`transferring`), each
    /// answer undecoded.
    fn dump_tcp(
        &mut self,
        family: u8,
        each: &mut dyn FnMut(InetResponse),
    ) -> Result<(), NetlinkError>;
    /// One TCP connection again, by the tuple and cookie a dump gave; `None` when gone.
    fn get_tcp(&mut self, family: u8, id: &SocketId) -> Result<Option<InetResponse>, NetlinkError>;
    /// One Unix socket by inode, with its peer where what the peer writes comes here;
    /// `None` when gone.
    fn unix_and_peer(
        &mut self,
        inode: u32,
    ) -> Result<Option<(Record, Option<SocketInfo>)>, NetlinkError>;
    /// The ports TCP listeners of `family` listen on: a connection from one of them was
    /// accepted, not made.
    fn listening_ports(&mut self, family: u8) -> Result<HashSet<u16>, NetlinkError>;
}

impl SocketTables for SockDiag {
    fn dump_tcp(
        &mut self,
        family: u8,
        each: &mut dyn FnMut(InetResponse),
    ) -> Result<(), NetlinkError> {
        self.dump_inet_each(family, IPPROTO_TCP, transferring(), each)
    }

    fn get_tcp(&mut self, family: u8, id: &SocketId) -> Result<Option<InetResponse>, NetlinkError> {
        self.get_inet_response(family, IPPROTO_TCP, id)
    }

    fn unix_and_peer(
        &mut self,
        inode: u32,
    ) -> Result<Option<(Record, Option<SocketInfo>)>, NetlinkError> {
        self.get_unix_and_peer(inode)
    }

    fn listening_ports(&mut self, family: u8) -> Result<HashSet<u16>, NetlinkError> {
        let mut ports = HashSet::new();
        self.dump_inet_each(family, IPPROTO_TCP, StateFlags::LISTEN, |listener| {
            ports.insert(listener.header.socket_id.source_port);
        })?;
        Ok(ports)
    }
}

/// The time the scan's looks are taken at and the wait between them (a test's passes at
/// once).
trait ScanTime {
    fn now(&self) -> Instant;
    fn wait(&mut self, how_long: Duration);
}

/// The machine's clock, and a sleep.
struct ClockTime;

impl ScanTime for ClockTime {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wait(&mut self, how_long: Duration) {
        std::thread::sleep(how_long);
    }
}

/// The processes' sockets as `/proc` lists them, to be read in their namespaces' tables.
#[derive(Default)]
struct Listing {
    scanned: Vec<Scanned>,
    /// Each TCP socket's process (by index) and descriptor, by inode: of processes
    /// placed in a namespace only.
    tcp_owner: HashMap<u64, (usize, u64)>,
    /// The processes (by index) of each network namespace.
    namespaces: Vec<Vec<usize>>,
}

/// Lists the sockets of each of `pids` (a Unix socket several hold is kept for the
/// first), and places each process that has any in its network namespace.
fn list_sockets(pids: &[u32]) -> Listing {
    let mut scanned: Vec<Scanned> =
        pids.iter().map(|&pid| Scanned { pid, ..Default::default() }).collect();
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
    Listing { scanned, tcp_owner, namespaces: namespaces.into_values().collect() }
}

/// Reads the listed sockets in their namespaces' tables (opened by `open`, with the pid
/// of a process in the namespace), looks again at those that need a second look after
/// `READ_AGAIN_AFTER`, and says what each process has backed up.
fn read_tables<T: SocketTables>(
    listing: Listing,
    mut open: impl FnMut(u32) -> Result<T, NetlinkError>,
    time: &mut impl ScanTime,
) -> Vec<ProcessScan> {
    let Listing { mut scanned, tcp_owner, namespaces: listed } = listing;
    let mut namespaces = Vec::new();
    for members in listed {
        // sock_diag answers for the namespace of the process that opens it: any member
        // that is still there.
        let mut last_error = None;
        let opened = members.iter().find_map(|&index| match open(scanned[index].pid) {
            Ok(tables) => Some(tables),
            Err(error) => {
                last_error = Some(error);
                None
            }
        });
        let Some(mut tables) = opened else {
            let said = last_error.map_or_else(String::new, |error| error.to_string());
            for &index in &members {
                scanned[index].fail(ScanFailed::Namespace(said.clone()));
            }
            continue;
        };
        let moving = read_tcp(&mut tables, &members, &tcp_owner, &mut scanned, &*time);
        namespaces.push(Namespace {
            tables,
            members,
            moving,
            full_unix: Vec::new(),
            broken: false,
        });
    }
    look_at_unix(&mut namespaces, &mut scanned);
    let look_again = namespaces.iter().any(|namespace| {
        let nothing_left = namespace.full_unix.is_empty() && namespace.moving.is_empty();
        !namespace.broken && !nothing_left
    });
    if look_again {
        time.wait(READ_AGAIN_AFTER);
        look_again_at_unix(&mut namespaces, &mut scanned);
        look_again_at_tcp(&mut namespaces, &mut scanned, &*time);
    }
    scanned.into_iter().map(|process| (process.found, process.failed)).collect()
}

/// One network namespace's reading: its processes (`members`), and what its first look
/// left to look at again.
struct Namespace<T> {
    tables: T,
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

impl<T> Namespace<T> {
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
/// judged for the process that holds it; the ones to look at again (`Moving`). A
/// connection that may await a reply is one only if this process made it (its local port
/// none of the namespace's listeners'), which a dump of the listeners tells, made only
/// when there is one.
fn read_tcp(
    tables: &mut impl SocketTables,
    members: &[usize],
    tcp_owner: &HashMap<u64, (usize, u64)>,
    scanned: &mut [Scanned],
    time: &impl ScanTime,
) -> Vec<Moving> {
    let mut moving = Vec::new();
    // Those that may await a reply: (family, process, local port, the socket).
    let mut awaiting: Vec<(u8, usize, u16, BackedUpSocket)> = Vec::new();
    for family in [AF_INET, AF_INET6] {
        if !members.iter().any(|&index| scanned[index].families.contains(&family)) {
            continue;
        }
        let dumped = tables.dump_tcp(family, &mut |response| {
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
            if ways.is_empty()
                && let Some(socket) = judge_awaiting(fd, &info, tcp)
            {
                awaiting.push((family, index, id.source_port, socket));
            }
            let stopped = ways.iter().any(|way| way.backlog == Backlog::Unsent);
            if let Some(window_limited) = tcp.flow.window_limited
                && tcp.holds_back()
                && !stopped
            {
                let read_at = time.now();
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
    for family in [AF_INET, AF_INET6] {
        if !awaiting.iter().any(|&(of, ..)| of == family) {
            continue;
        }
        match tables.listening_ports(family) {
            Ok(listening) => {
                let made = awaiting
                    .iter()
                    .filter(|&&(of, _, port, _)| of == family && !listening.contains(&port));
                for (_, index, _, socket) in made {
                    scanned[*index].found.push(socket.clone());
                }
            }
            Err(error) => {
                for &(_, index, ..) in awaiting.iter().filter(|&&(of, ..)| of == family) {
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
fn look_again_at_tcp<T: SocketTables>(
    namespaces: &mut [Namespace<T>],
    scanned: &mut [Scanned],
    time: &impl ScanTime,
) {
    for namespace in namespaces.iter_mut().filter(|namespace| !namespace.broken) {
        let moving = std::mem::take(&mut namespace.moving);
        let mut judge_again = |first: &Moving, response: InetResponse| {
            let between = time.now().saturating_duration_since(first.read_at);
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
            let before = first.window_limited;
            found.extend(judge_slow(first.fd, before, &info, tcp, window_limited, between));
        };
        let answered = if moving.len() <= ASKED_ONE_BY_ONE {
            moving.iter().try_for_each(|first| {
                let response = namespace.tables.get_tcp(first.family, &first.id)?;
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
                namespace.tables.dump_tcp(family, &mut |response| {
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

/// Reads Unix socket `inode` (descriptor `fd`) and judges it; nothing when it is closed.
fn read_unix(
    tables: &mut impl SocketTables,
    fd: u64,
    inode: u64,
) -> Result<Vec<BackedUpSocket>, NetlinkError> {
    let Ok(inode) = u32::try_from(inode) else { return Ok(Vec::new()) };
    let Some((Record { info, .. }, peer)) = tables.unix_and_peer(inode)? else {
        return Ok(Vec::new());
    };
    Ok(judge(fd, &info, Movement::Unix { peer: peer.as_ref() }))
}

/// The first look at the namespaces' Unix sockets, one by one: those backed up are kept
/// in `full_unix` to be looked at again (a Unix socket tells no times: full for a
/// moment, or still full, is told by a second look).
fn look_at_unix<T: SocketTables>(namespaces: &mut [Namespace<T>], scanned: &mut [Scanned]) {
    for namespace in namespaces.iter_mut() {
        for index in namespace.members.clone() {
            for (fd, inode) in std::mem::take(&mut scanned[index].unix) {
                match read_unix(&mut namespace.tables, fd, inode) {
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
fn look_again_at_unix<T: SocketTables>(namespaces: &mut [Namespace<T>], scanned: &mut [Scanned]) {
    for namespace in namespaces.iter_mut().filter(|namespace| !namespace.broken) {
        for (index, fd, inode, ways) in std::mem::take(&mut namespace.full_unix) {
            match read_unix(&mut namespace.tables, fd, inode) {
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
