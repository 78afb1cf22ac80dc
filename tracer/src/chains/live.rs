//! The facts wait chains end in, read from the live system when a profile is made: the
//! process behind a local endpoint (sock_diag gives the peer socket's inode, in the
//! target's network namespace, another of the host's, or through conntrack where the
//! address was rewritten: `tcp_peers`; /proc/*/fd its owner) and which of
//! its threads wait on that socket (`socket_waiters`), the same for a pipe's other end,
//! the thread holding a glibc mutex (its `__owner`, or a PI futex's word) or FILE lock
//! (`objects::stdio`), and what a thread is doing now (its syscall, and its call site
//! when its stack unwinds).

use std::{
    cell::{OnceCell, RefCell},
    collections::{BTreeMap, BTreeSet, HashSet},
    rc::Rc,
    time::Duration,
};

use tracer_common::WaitKind;

use super::{
    ChainFacts, GoHolders, PeerProcess, ThreadNow, ThreadState,
    socket_waiters::{EpollSets, descriptors_watched},
    tcp_peers::TcpTables,
};
use crate::{
    model::{
        Profile, ProfileStack,
        call_site::{Language, call_site},
        endpoint_in_object, go_syscall_in_object,
    },
    objects::{
        EndpointSockets, pipe_inode,
        sockets::{Descriptor, Protocol, SocketInfo, diag::SockDiag, held_sockets},
        stdio::StdioLocks,
    },
    stacks::{ProcessImage, ProcessUnwinder, StackSymbolizer, UserRegs},
    threads::{
        SampleError, SyscallState, ThreadReader, ThreadSyscall, blocked_calls,
        blocked_now::SavedFramePointers, read_memory, read_syscall, syscall_name,
    },
};

/// An endpoint's connections whose TCP peer is not found before the rest are not looked
/// for.
const TCP_PEER_MISSES: usize = 2;
/// Threads of a peer process described at most: a pool of hundreds says nothing more.
const MAX_PEER_THREADS: usize = 16;
/// Looks again at a thread seen running, and how long after each look.
const RUNNING_RELOOKS: usize = 3;
const RUNNING_RELOOK_AFTER: Duration = Duration::from_millis(2);
/// Mutex lock functions of glibc: a futex wait under one of them is a wait for a
/// `pthread_mutex_t`, whose `__owner` names the holder. (`__lll_lock_wait` alone is not
/// enough: glibc's internal locks, malloc's and stdio's, wait in it too, with no owner.)
const MUTEX_LOCK_FUNCTIONS: [&str; 8] = [
    "pthread_mutex_lock",
    "__pthread_mutex_lock",
    "___pthread_mutex_lock",
    "pthread_mutex_timedlock",
    "___pthread_mutex_timedlock",
    "pthread_mutex_clocklock",
    "__pthread_mutex_clocklock_common",
    "__pthread_mutex_cond_lock",
];
/// `struct __pthread_mutex_s` on x86_64 (glibc sysdeps/x86/nptl/bits/struct_mutex.h):
/// `int __lock; unsigned int __count; int __owner; ...`.
const MUTEX_OWNER_OFFSET: u64 = 8;
/// The owner's tid in a PI futex word (FUTEX_TID_MASK).
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

/// Reads the facts `profile`'s chains may end in: the peers of its endpoints (whose
/// sockets `sockets` saw), the holders of its mutexes, what its waker threads do now.
/// `unwinder` is the target's; nothing is read of a target that has exited.
pub fn gather(
    profile: &Profile,
    sockets: &EndpointSockets,
    unwinder: &mut ProcessUnwinder,
    frame_pointers: &SavedFramePointers,
) -> ChainFacts {
    let pid = profile.pid;
    let mut facts = ChainFacts::default();
    if profile.target_exited {
        return facts;
    }
    let mut symbolizer = StackSymbolizer::new();
    let mut target =
        ThreadLooker { pid, unwinder, symbolizer: &mut symbolizer, frame_pointers, reader: None };
    let waker_threads: BTreeSet<u32> =
        profile.wakers.iter().flat_map(|row| row.waker_threads.iter().copied()).collect();
    for tid in waker_threads {
        facts.threads_now.insert(tid, target.now(tid));
    }
    // Read at the first futex wait that is not a pthread mutex's.
    let mut stdio: Option<Option<StdioLocks>> = None;
    for stack in &profile.stacks {
        let Some(object) = &stack.object else { continue };
        if stack.kind != WaitKind::Futex || facts.holders.contains_key(object) {
            continue;
        }
        let under_mutex_lock =
            stack.frames.iter().any(|frame| MUTEX_LOCK_FUNCTIONS.contains(&frame.name.as_str()));
        let Some(&address) = profile.lock_addresses.get(object) else { continue };
        let owner = if under_mutex_lock {
            mutex_owner(pid, address)
        } else {
            let locks = stdio.get_or_insert_with(|| StdioLocks::read(target.unwinder.image()));
            locks.as_ref().and_then(|locks| locks.holder(address))
        };
        if let Some(owner) = owner {
            facts.holders.insert(object.clone(), target.now(owner));
        }
    }
    let pipes = pipes_of(profile);
    let pipes = pipes.iter().map(|(pipe, end)| (pipe, *end));
    (facts.peers, facts.peer_lookups_failed) =
        local_peers(pid, endpoints_of(profile, sockets), pipes, frame_pointers);
    facts
}

/// The facts a goroutine snapshot's chains end in: the processes behind the endpoints its
/// goroutines wait on, and `goroutine_holders` (see [`ChainFacts::goroutine_holders`]), read
/// with the goroutines.
pub fn gather_goroutines(
    profile: &Profile,
    sockets: &EndpointSockets,
    goroutine_holders: BTreeMap<u64, GoHolders>,
) -> ChainFacts {
    let mut facts = ChainFacts { goroutine_holders, ..ChainFacts::default() };
    if !profile.target_exited {
        // A Go peer's threads are the runtime's; a C or Rust peer's unwind by CFI, and
        // the few frames that need a saved rbp stop early.
        let frame_pointers = SavedFramePointers::default();
        let pipes = pipes_of(profile);
        let pipes = pipes.iter().map(|(pipe, end)| (pipe, *end));
        (facts.peers, facts.peer_lookups_failed) =
            local_peers(profile.pid, endpoints_of(profile, sockets), pipes, &frame_pointers);
    }
    facts
}

/// Backed-up sockets whose peer is looked for, per process: the heaviest (a server with
/// thousands of stalled clients would read as many processes).
pub const BACKED_UP_PEERS_LOOKED_FOR: usize = 8;

/// The processes of this host at the other end of `sockets` (process `pid`'s backed-up
/// ones), by socket inode, with what their threads do now: where a client that stopped
/// reading is stuck. Also how many could not be looked for (a table of sockets
/// unreadable).
pub fn socket_peers(
    pid: u32,
    sockets: &[SocketInfo],
    frame_pointers: &SavedFramePointers,
) -> (BTreeMap<u64, PeerProcess>, u64) {
    let keys: Vec<String> = sockets.iter().map(|socket| socket.inode.to_string()).collect();
    let endpoints =
        keys.iter().zip(sockets).map(|(key, socket)| (key, std::slice::from_ref(socket)));
    let (peers, failed) = local_peers(pid, endpoints, std::iter::empty(), frame_pointers);
    let by_inode = peers.into_iter().filter_map(|(key, peer)| Some((key.parse().ok()?, peer)));
    (by_inode.collect(), failed)
}

/// The pipes `profile`'s waits are on, with the end their peer holds: a write waits for
/// the pipe's reader, a read for its writer (a thread's by its kind, a goroutine's in a
/// system call by its call); a goroutine parked on a pipe in the netpoller (`IO wait
/// pipe:[4711]`) names no direction, and its peer holds either end.
fn pipes_of(profile: &Profile) -> BTreeMap<String, PeerEnd> {
    const WRITES: [&str; 5] = ["write", "writev", "pwrite64", "pwritev", "sendfile"];
    let pipe = |stack: &ProfileStack| {
        let object = stack.object.as_deref()?;
        let end = match stack.kind {
            WaitKind::Write => PeerEnd::PipeReader(pipe_inode(object)?),
            WaitKind::Read => PeerEnd::PipeWriter(pipe_inode(object)?),
            WaitKind::Goroutine => match go_syscall_in_object(object) {
                Some((call, on)) if WRITES.contains(&call) => PeerEnd::PipeReader(pipe_inode(on?)?),
                Some((_, on)) => PeerEnd::PipeWriter(pipe_inode(on?)?),
                None => PeerEnd::Pipe(pipe_inode(endpoint_in_object(stack.kind, object)?)?),
            },
            _ => return None,
        };
        Some((endpoint_in_object(stack.kind, object)?.to_owned(), end))
    };
    profile.stacks.iter().filter_map(pipe).collect()
}

/// The endpoints `profile`'s waits name, with their sockets, each once (its peer is
/// looked for once, however many stacks wait on it).
fn endpoints_of<'a>(
    profile: &'a Profile,
    sockets: &'a EndpointSockets,
) -> impl Iterator<Item = (&'a String, &'a [SocketInfo])> {
    let endpoints: BTreeMap<&String, &[SocketInfo]> = profile
        .stacks
        .iter()
        .filter_map(|stack| {
            let endpoint = endpoint_in_object(stack.kind, stack.object.as_deref()?)?;
            sockets.get_key_value(endpoint).map(|(endpoint, seen)| (endpoint, seen.as_slice()))
        })
        .collect();
    endpoints.into_iter()
}

/// The holder of the mutex whose `__lock` is at `address` in `pid`: its `__owner`, or the
/// tid in a PI mutex's lock word; only a live thread of `pid`.
fn mutex_owner(pid: u32, address: u64) -> Option<u32> {
    let mut words = [0u8; 12];
    if read_memory(pid, address, &mut words).ok()? < words.len() {
        return None;
    }
    let word =
        |index: usize| u32::from_ne_bytes(words[index * 4..index * 4 + 4].try_into().unwrap());
    let (lock, owner) = (word(0), word((MUTEX_OWNER_OFFSET / 4) as usize));
    // A normal mutex's word is 1 (locked) or 2 (locked, waiters); a PI mutex's holds the
    // owner's tid itself.
    let owner = if lock == 1 || lock == 2 { owner } else { lock & FUTEX_TID_MASK };
    let is_thread =
        owner != 0 && std::path::Path::new(&format!("/proc/{pid}/task/{owner}")).exists();
    is_thread.then_some(owner)
}

/// Reads threads of one process and names where they are blocked.
struct ThreadLooker<'a> {
    pid: u32,
    unwinder: &'a mut ProcessUnwinder,
    symbolizer: &'a mut StackSymbolizer,
    /// The saved rbp of blocked threads, by (sp, ip), which CFI needs for rbp-based frames.
    frame_pointers: &'a SavedFramePointers,
    /// Opened at the first look (it reads the process's memory map).
    reader: Option<ThreadReader>,
}

impl ThreadLooker<'_> {
    /// What thread `tid` is doing now.
    fn now(&mut self, tid: u32) -> ThreadNow {
        let name = self.unwinder.thread_name(tid).unwrap_or_else(|| {
            crate::pipeline::target::read_proc_text(format!("/proc/{}/task/{tid}/comm", self.pid))
                .map(|comm| comm.trim_end().to_owned())
                .unwrap_or_else(|_| format!("tid {tid}"))
        });
        // A thread seen running is looked at again a moment later: one that sleeps between
        // short bursts (a slow reader) is better described by its sleep, and one that
        // waits for a CPU right after its wake shows as running too.
        let mut state = self.state(tid);
        for _ in 0..RUNNING_RELOOKS {
            if state != ThreadState::Running {
                break;
            }
            std::thread::sleep(RUNNING_RELOOK_AFTER);
            state = self.state(tid);
        }
        ThreadNow { tid, name, state }
    }

    fn state(&mut self, tid: u32) -> ThreadState {
        if self.reader.is_none() {
            self.reader = ThreadReader::new(self.pid).ok();
        }
        let Some(reader) = self.reader.as_mut() else { return ThreadState::Unknown };
        // A thread that woke while read is read once more.
        let sample = match reader.sample(tid) {
            Err(SampleError::Woke) => reader.sample(tid),
            first => first,
        };
        match sample {
            Ok(Some(sample)) => {
                let (ip, sp) = (sample.syscall.pc, sample.syscall.sp);
                let bp = self.frame_pointers.get(tid, sp, ip).unwrap_or(UserRegs::UNKNOWN_BP);
                let regs = UserRegs { ip, sp, bp };
                let (walked, _) = self.unwinder.unwind_thread(tid, regs, &sample.stack);
                log::debug!(
                    "thread {tid} of pid {}: {} frames{}",
                    self.pid,
                    walked.addresses.len(),
                    if walked.truncated { ", truncated" } else { "" }
                );
                let mut frames =
                    self.symbolizer.symbolize(self.unwinder.image(), &walked.addresses);
                frames.reverse();
                let site = call_site(&frames, Language::Native);
                ThreadState::Blocked {
                    syscall: syscall_name(sample.syscall.nr),
                    call_site: (!site.is_empty()).then(|| site.to_owned()),
                    stack: frames.iter().map(|frame| frame.name.clone()).collect(),
                }
            }
            // Running, or off the CPU outside a syscall (preempted): not waiting.
            Ok(None) => match read_syscall(self.pid, tid) {
                Some(ThreadSyscall::Blocked(state)) => ThreadState::Blocked {
                    syscall: syscall_name(state.nr),
                    call_site: None,
                    stack: Vec::new(),
                },
                Some(_) => ThreadState::Running,
                None => ThreadState::Unknown,
            },
            Err(_) => ThreadState::Unknown,
        }
    }
}

/// What the process at the other end of a wait holds open: the peer socket (by inode), or
/// the other end of a pipe: its read end for a write, its write end for a read, either
/// where the wait's direction is not known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PeerEnd {
    Socket(u64),
    PipeReader(u64),
    PipeWriter(u64),
    Pipe(u64),
}

/// The processes on this host at the other end of the TCP and Unix sockets behind
/// `endpoints`, seen from the network namespace of `pid` (and, for a TCP peer not found
/// there, from the host's other network namespaces), and of the pipes `pipes`, with what
/// their threads do now: one sock_diag dump per address family and namespace (a Unix
/// socket names its peer's inode itself), one pass over /proc/*/fd for them all.
///
/// An endpoint's connections may reach several processes (a pool's connections to one
/// database port, each served by a process of its own): the one behind the latest
/// connection seen is described, as are its threads waiting on that connection, and the
/// others named (`PeerProcess::other_pids`).
///
/// Also how many endpoints' peers could not be looked for (a table of sockets that could
/// not be read): their chains may end short of a process on this host.
fn local_peers<'a>(
    pid: u32,
    endpoints: impl Iterator<Item = (&'a String, &'a [SocketInfo])>,
    pipes: impl Iterator<Item = (&'a String, PeerEnd)>,
    frame_pointers: &SavedFramePointers,
) -> (BTreeMap<String, PeerProcess>, u64) {
    let mut diag = None;
    let mut tcp = TcpTables::default();
    // Each endpoint's peer ends, the latest connection's first.
    let mut peer_ends: BTreeMap<&String, Vec<PeerEnd>> =
        pipes.map(|(endpoint, end)| (endpoint, vec![end])).collect();
    // Where a connection whose address was rewritten reaches its peer.
    let mut reached_at: BTreeMap<PeerEnd, String> = BTreeMap::new();
    // Endpoints whose peer could not be looked for: a table of sockets unreadable.
    let mut lookups_failed = 0;
    // The sockets the target holds now (None: not known), read at the first earlier
    // connection. An endpoint's earlier connections are followed only while it holds
    // them: another process's connection may have taken a closed one's addresses since,
    // and its peer is not the target's. The latest is followed regardless: the waits
    // described were on it.
    let mut held: Option<Option<HashSet<u64>>> = None;
    for (endpoint, sockets) in endpoints {
        let mut tcp_misses = 0;
        let mut failed = false;
        for (age, socket) in sockets.iter().rev().enumerate() {
            if age > 0 {
                let held = held
                    .get_or_insert_with(|| held_sockets(crate::pipeline::target::live_thread(pid)));
                if held.as_ref().is_some_and(|held| !held.contains(&socket.inode)) {
                    continue;
                }
            }
            let end = match (socket.protocol, socket.local.as_ref(), socket.remote.as_ref()) {
                (Protocol::Unix, ..) => {
                    let Ok(inode) = u32::try_from(socket.inode) else { continue };
                    match sock_diag(&mut diag, pid).map(|diag| diag.unix_peer(inode)) {
                        // None: the socket is gone, or has no peer.
                        Some(Ok(peer)) => peer.map(|peer| PeerEnd::Socket(u64::from(peer))),
                        // Its other sockets would fail alike.
                        _ => {
                            failed = true;
                            break;
                        }
                    }
                }
                (Protocol::Tcp, Some(local), Some(remote)) => {
                    let found = tcp.peer(sock_diag(&mut diag, pid), pid, local, remote);
                    let Some(peer) = found else {
                        failed |= tcp.incomplete();
                        // A connection closed since, or an endpoint off this host: after
                        // two, its other connections' peers are not looked for (each
                        // search asks every namespace's sock_diag and conntrack).
                        tcp_misses += 1;
                        if tcp_misses == TCP_PEER_MISSES {
                            break;
                        }
                        continue;
                    };
                    let end = PeerEnd::Socket(peer.inode);
                    if let Some(address) = peer.reached_at {
                        reached_at.insert(end, address);
                    }
                    Some(end)
                }
                _ => None,
            };
            if let Some(end) = end {
                peer_ends.entry(endpoint).or_default().push(end);
            }
        }
        lookups_failed += u64::from(failed);
    }
    if peer_ends.is_empty() {
        return (BTreeMap::new(), lookups_failed);
    }
    let owners = descriptor_owners(&peer_ends.values().flatten().copied().collect(), pid);
    // Each endpoint's processes: the one behind its latest connection with an owner (and
    // that end), then the others, those behind more of its connections first.
    let behind: BTreeMap<&String, (PeerEnd, Vec<u32>)> = peer_ends
        .iter()
        .filter_map(|(&endpoint, ends)| {
            let latest = ends.iter().find(|end| owners.contains_key(end))?;
            let described = owners[latest].pid;
            let mut connections: BTreeMap<u32, usize> = BTreeMap::new();
            for end in ends {
                if let Some(owner) = owners.get(end).filter(|owner| owner.pid != described) {
                    *connections.entry(owner.pid).or_default() += 1;
                }
            }
            let mut others: Vec<(u32, usize)> = connections.into_iter().collect();
            others.sort_by_key(|&(pid, count)| (std::cmp::Reverse(count), pid));
            let pids = std::iter::once(described).chain(others.into_iter().map(|(pid, _)| pid));
            Some((endpoint, (*latest, pids.collect())))
        })
        .collect();
    // Which of its owner's threads wait on each endpoint's described end; those are read
    // first.
    let waiting = peer_end_waiters(behind.values().map(|(latest, _)| latest), &owners);
    let mut processes: BTreeMap<u32, Option<PeerProcess>> = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for (&endpoint, (latest, pids)) in &behind {
        let Some((&described, others)) = pids.split_first() else { continue };
        let peer = processes.entry(described).or_insert_with(|| {
            let comm =
                crate::pipeline::target::read_proc_text(format!("/proc/{described}/comm")).ok()?;
            let first: BTreeSet<u32> = behind
                .values()
                .filter(|(_, pids)| pids.first() == Some(&described))
                .filter_map(|(end, _)| waiting.get(end)?.clone())
                .flatten()
                .collect();
            let (threads, thread_count) = peer_threads(described, &first, frame_pointers);
            let comm = comm.trim_end().to_owned();
            Some(PeerProcess {
                pid: described,
                comm,
                threads,
                thread_count,
                waiting_on_socket: None,
                reached_at: None,
                other_pids: Vec::new(),
            })
        });
        if let Some(peer) = peer {
            peers.insert(
                endpoint.clone(),
                PeerProcess {
                    waiting_on_socket: waiting.get(latest).cloned().flatten(),
                    reached_at: reached_at.get(latest).cloned(),
                    other_pids: others.to_vec(),
                    ..peer.clone()
                },
            );
        }
    }
    (peers, lookups_failed)
}

/// For each peer end, the threads of its owner blocked in a call on that socket or pipe;
/// None where that cannot be told: the owner's threads could not be listed, or only an
/// edge-triggered epoll set holds it (see `socket_waiters`).
fn peer_end_waiters<'e>(
    peer_ends: impl Iterator<Item = &'e PeerEnd>,
    owners: &BTreeMap<PeerEnd, DescriptorOwner>,
) -> BTreeMap<PeerEnd, Option<Vec<u32>>> {
    let mut calls: BTreeMap<u32, Option<Vec<(u32, SyscallState)>>> = BTreeMap::new();
    let mut epoll_sets = EpollSets::default();
    let mut waiting = BTreeMap::new();
    for end in peer_ends {
        if waiting.contains_key(end) {
            continue;
        }
        let Some(owner) = owners.get(end) else { continue };
        let blocked = calls.entry(owner.pid).or_insert_with(|| blocked_calls(owner.pid));
        let on_socket = blocked.as_ref().and_then(|blocked| {
            let mut waiters = Vec::new();
            let mut untold = false;
            for (tid, call) in blocked {
                let watched = descriptors_watched(owner.pid, call, &mut epoll_sets);
                let holds = |fds: &BTreeSet<i32>| owner.fds.iter().any(|fd| fds.contains(fd));
                if holds(&watched.waited_on) {
                    waiters.push(*tid);
                } else if holds(&watched.edge_triggered) {
                    untold = true;
                }
            }
            (!waiters.is_empty() || !untold).then_some(waiters)
        });
        waiting.insert(*end, on_socket);
    }
    waiting
}

/// The sock_diag socket in `pid`'s network namespace, opened at the first use (`None` in
/// `opened` once opening failed, so it is not tried again).
fn sock_diag(opened: &mut Option<Option<SockDiag>>, pid: u32) -> Option<&mut SockDiag> {
    opened.get_or_insert_with(|| SockDiag::open(pid).ok()).as_mut()
}

/// A process holding a socket or pipe end open, and its descriptors for it.
struct DescriptorOwner {
    pid: u32,
    fds: Vec<i32>,
}

/// The process holding each of `ends` open, preferring any but `not_pid` (a process
/// talking to itself over loopback or a pipe holds both ends).
fn descriptor_owners(ends: &BTreeSet<PeerEnd>, not_pid: u32) -> BTreeMap<PeerEnd, DescriptorOwner> {
    let mut owners: BTreeMap<PeerEnd, DescriptorOwner> = BTreeMap::new();
    let mut hold = |pid: u32, fd: i32, target: &str| {
        for end in ends_held(target, ends, || access_mode(pid, fd)) {
            let owner = owners.entry(end).or_insert(DescriptorOwner { pid, fds: Vec::new() });
            if owner.pid == not_pid && pid != not_pid {
                *owner = DescriptorOwner { pid, fds: Vec::new() };
            }
            if owner.pid == pid {
                owner.fds.push(fd);
            }
        }
    };
    match HOST_DESCRIPTORS.with(|table| table.borrow().clone()) {
        Some(table) => {
            let table = table.get_or_init(HostDescriptors::read);
            for (pid, fd, target) in &table.0 {
                hold(*pid, *fd, target);
            }
        }
        None => HostDescriptors::each(|pid, fd, target| hold(pid, fd, target)),
    }
    owners
}

/// Every socket and pipe descriptor of the host's processes: pid, descriptor, link.
#[derive(Default)]
struct HostDescriptors(Vec<(u32, i32, String)>);

thread_local! {
    /// The host's descriptors as read once while a `SharedDescriptorTable` lives on this
    /// thread (read at its first use).
    static HOST_DESCRIPTORS: RefCell<Option<Rc<OnceCell<HostDescriptors>>>> =
        const { RefCell::new(None) };
}

impl HostDescriptors {
    fn read() -> Self {
        let mut table = Self::default();
        Self::each(|pid, fd, target| table.0.push((pid, fd, target.to_owned())));
        table
    }

    /// Calls `found` with each socket or pipe descriptor of each process of the host.
    fn each(mut found: impl FnMut(u32, i32, &str)) {
        let Ok(processes) = std::fs::read_dir("/proc") else { return };
        for entry in processes.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
            for fd in fds.flatten() {
                let Some(fd_number) = fd.file_name().to_str().and_then(|name| name.parse().ok())
                else {
                    continue;
                };
                let Ok(target) = std::fs::read_link(fd.path()) else { continue };
                let Some(target) = target.to_str() else { continue };
                if !matches!(Descriptor::of_link(target), Descriptor::Other) {
                    found(pid, fd_number, target);
                }
            }
        }
    }
}

/// While it lives, the chains gathered on this thread find the owners of their peer ends
/// in one table of the host's descriptors, read at the first that needs it, instead of
/// reading every process's descriptors each time: a report of three hundred processes
/// each reading a pipe read the host's /proc 300 times (7.7 s of system time here).
pub struct SharedDescriptorTable {
    before: Option<Rc<OnceCell<HostDescriptors>>>,
}

impl SharedDescriptorTable {
    /// Shares a table from now on, or goes on sharing the one shared already.
    pub fn on_this_thread() -> Self {
        HOST_DESCRIPTORS.with(|table| {
            let before = table.borrow().clone();
            let shared = before.clone().unwrap_or_default();
            *table.borrow_mut() = Some(shared);
            Self { before }
        })
    }
}

impl Drop for SharedDescriptorTable {
    fn drop(&mut self) {
        let before = self.before.take();
        HOST_DESCRIPTORS.with(|table| *table.borrow_mut() = before);
    }
}

/// Which of `ends` a descriptor open on `target` (`socket:[…]`, `pipe:[…]`) is, its
/// access mode (`O_ACCMODE` of its flags) read only for a pipe of `ends`.
fn ends_held(
    target: &str,
    ends: &BTreeSet<PeerEnd>,
    access_mode: impl FnOnce() -> Option<u32>,
) -> Vec<PeerEnd> {
    const O_WRONLY: u32 = 1;
    const O_RDWR: u32 = 2;
    let inode = match Descriptor::of_link(target) {
        Descriptor::Socket(inode) => {
            return ends.get(&PeerEnd::Socket(inode)).copied().into_iter().collect();
        }
        Descriptor::Pipe(inode) => inode,
        Descriptor::Other => return Vec::new(),
    };
    let (reader, writer) = (PeerEnd::PipeReader(inode), PeerEnd::PipeWriter(inode));
    let mut held: Vec<PeerEnd> = ends.get(&PeerEnd::Pipe(inode)).copied().into_iter().collect();
    if !ends.contains(&reader) && !ends.contains(&writer) {
        return held;
    }
    let Some(mode) = access_mode() else { return held };
    let reads = mode != O_WRONLY;
    let writes = mode == O_WRONLY || mode == O_RDWR;
    held.extend(
        [(reader, reads), (writer, writes)]
            .into_iter()
            .filter(|(end, holds)| *holds && ends.contains(end))
            .map(|(end, _)| end),
    );
    held
}

/// The access mode (`O_RDONLY`, `O_WRONLY`, `O_RDWR`) of descriptor `fd` of `pid`, from
/// the octal `flags:` line of /proc/PID/fdinfo/FD.
fn access_mode(pid: u32, fd: i32) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|line| line.strip_prefix("flags:"))?;
    Some(u32::from_str_radix(flags.trim(), 8).ok()? & 3)
}

/// What the threads of peer `pid` do now (`first`, then others, `MAX_PEER_THREADS` in
/// all), unwound with its own image, and how many threads it has.
fn peer_threads(
    pid: u32,
    first: &BTreeSet<u32>,
    frame_pointers: &SavedFramePointers,
) -> (Vec<ThreadNow>, u64) {
    let Ok(image) = ProcessImage::snapshot(pid) else { return (Vec::new(), 0) };
    let mut unwinder = ProcessUnwinder::new(pid, image);
    let mut symbolizer = StackSymbolizer::new();
    let Ok(mut reader) = ThreadReader::new(pid) else { return (Vec::new(), 0) };
    let Ok(tids) = reader.thread_ids() else { return (Vec::new(), 0) };
    let thread_count = tids.len() as u64;
    let mut looker = ThreadLooker {
        pid,
        unwinder: &mut unwinder,
        symbolizer: &mut symbolizer,
        frame_pointers,
        reader: Some(reader),
    };
    let others = tids.into_iter().filter(|tid| !first.contains(tid));
    let read = first.iter().copied().chain(others).take(MAX_PEER_THREADS);
    let threads = read.map(|tid| looker.now(tid)).collect();
    (threads, thread_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_wait_s_peer_holds_the_other_end() {
        let stack = |kind, object: &str| ProfileStack {
            frames: Vec::new(),
            kind,
            object: Some(object.to_owned()),
            truncated: false,
            in_progress: true,
            stats: Default::default(),
            process: None,
        };
        let mut profile = Profile::new(crate::model::ProfileKind::Snapshot, 1, "app".into());
        profile.stacks = vec![
            stack(WaitKind::Write, "pipe:[1]"),
            stack(WaitKind::Read, "pipe:[2]"),
            stack(WaitKind::Goroutine, "syscall write on pipe:[3]"),
            stack(WaitKind::Goroutine, "syscall read on pipe:[4]"),
            stack(WaitKind::Goroutine, "IO wait pipe:[5]"),
            stack(WaitKind::Goroutine, "IO wait 10.0.0.5:80"),
            stack(WaitKind::Send, "10.0.0.5:80"),
            stack(WaitKind::Futex, "pipe:[6]"),
        ];
        let ends: Vec<(String, PeerEnd)> = pipes_of(&profile).into_iter().collect();
        let expected = [
            ("pipe:[1]", PeerEnd::PipeReader(1)),
            ("pipe:[2]", PeerEnd::PipeWriter(2)),
            ("pipe:[3]", PeerEnd::PipeReader(3)),
            ("pipe:[4]", PeerEnd::PipeWriter(4)),
            ("pipe:[5]", PeerEnd::Pipe(5)),
        ];
        assert_eq!(ends, expected.map(|(pipe, end)| (pipe.to_owned(), end)));
    }

    #[test]
    fn a_pipe_end_is_told_by_its_access_mode() {
        let ends = BTreeSet::from([PeerEnd::PipeReader(4711), PeerEnd::Socket(99)]);
        const O_RDONLY: u32 = 0;
        const O_WRONLY: u32 = 1;
        const O_RDWR: u32 = 2;
        let held = |target: &str, mode: u32| ends_held(target, &ends, || Some(mode));
        assert_eq!(held("pipe:[4711]", O_RDONLY), [PeerEnd::PipeReader(4711)]);
        assert_eq!(held("pipe:[4711]", O_WRONLY), []);
        // A FIFO opened for both is either end.
        assert_eq!(held("pipe:[4711]", O_RDWR), [PeerEnd::PipeReader(4711)]);
        assert_eq!(held("pipe:[4712]", O_RDONLY), []);
        assert_eq!(held("socket:[99]", O_WRONLY), [PeerEnd::Socket(99)]);
        assert_eq!(held("/var/log/app.log", O_RDONLY), []);
        // The mode is read only for a pipe that is wanted.
        assert_eq!(ends_held("pipe:[1]", &ends, || panic!("not read")), []);
        // Either end of a pipe whose wait names no direction, its mode not read.
        let either = BTreeSet::from([PeerEnd::Pipe(4711)]);
        assert_eq!(ends_held("pipe:[4711]", &either, || panic!("not read")), [PeerEnd::Pipe(4711)]);
        assert_eq!(pipe_inode("pipe:[4711]"), Some(4711));
        assert_eq!(pipe_inode("socket:[4711]"), None);
    }
}
