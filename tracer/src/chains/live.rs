//! The facts wait chains end in, read from the live system when a profile is made: the
//! process behind a local endpoint (sock_diag gives the peer socket's inode, in the
//! target's network namespace, another of the host's, or through conntrack where the
//! address was rewritten: `tcp_peers`; /proc/*/fd its owner) and which of
//! its threads wait on that socket (`socket_waiters`), the thread holding a glibc mutex
//! (its `__owner`, or a PI futex's word), and what a thread is doing now (its syscall, and
//! its call site when its stack unwinds).

use std::{
    collections::{BTreeMap, BTreeSet},
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
        Profile,
        call_site::{Language, call_site},
        endpoint_in_object,
    },
    objects::sockets::{Protocol, SocketInfo, diag::SockDiag, socket_inode},
    stacks::{ProcessImage, ProcessUnwinder, StackSymbolizer, UserRegs},
    threads::{
        SampleError, SyscallState, ThreadReader, ThreadSyscall, blocked_now::SavedFramePointers,
        parse_syscall, read_memory,
    },
};

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
    sockets: &BTreeMap<String, SocketInfo>,
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
    for stack in &profile.stacks {
        let Some(object) = &stack.object else { continue };
        if stack.kind != WaitKind::Futex || facts.holders.contains_key(object) {
            continue;
        }
        let under_mutex_lock =
            stack.frames.iter().any(|frame| MUTEX_LOCK_FUNCTIONS.contains(&frame.name.as_str()));
        let Some(&address) = profile.lock_addresses.get(object) else { continue };
        if let Some(owner) = under_mutex_lock.then(|| mutex_owner(pid, address)).flatten() {
            facts.holders.insert(object.clone(), target.now(owner));
        }
    }
    facts.peers = local_peers(pid, endpoints_of(profile, sockets), frame_pointers);
    facts
}

/// The facts a goroutine snapshot's chains end in: the processes behind the endpoints its
/// goroutines wait on, and `goroutine_holders` (see [`ChainFacts::goroutine_holders`]), read
/// with the goroutines.
pub fn gather_goroutines(
    profile: &Profile,
    sockets: &BTreeMap<String, SocketInfo>,
    goroutine_holders: BTreeMap<u32, GoHolders>,
) -> ChainFacts {
    let mut facts = ChainFacts { goroutine_holders, ..ChainFacts::default() };
    if !profile.target_exited {
        // A Go peer's threads are the runtime's; a C or Rust peer's unwind by CFI, and
        // the few frames that need a saved rbp stop early.
        let frame_pointers = SavedFramePointers::default();
        facts.peers = local_peers(profile.pid, endpoints_of(profile, sockets), &frame_pointers);
    }
    facts
}

/// The endpoints `profile`'s waits name, with their sockets.
fn endpoints_of<'a>(
    profile: &'a Profile,
    sockets: &'a BTreeMap<String, SocketInfo>,
) -> impl Iterator<Item = (&'a String, &'a SocketInfo)> {
    profile.stacks.iter().filter_map(|stack| {
        let endpoint = endpoint_in_object(stack.kind, stack.object.as_deref()?)?;
        sockets.get_key_value(endpoint)
    })
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
            std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", self.pid))
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
                let bp = self.frame_pointers.get(sp, ip).unwrap_or(0);
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

fn read_syscall(pid: u32, tid: u32) -> Option<ThreadSyscall> {
    parse_syscall(&std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?)
}

/// The processes on this host at the other end of the TCP and Unix sockets behind
/// `endpoints`, seen from the network namespace of `pid` (and, for a TCP peer not found
/// there, from the host's other network namespaces), with what their threads do now: one
/// sock_diag dump per address family and namespace (a Unix socket names its peer's inode
/// itself), one pass over /proc/*/fd for every peer socket.
fn local_peers<'a>(
    pid: u32,
    endpoints: impl Iterator<Item = (&'a String, &'a SocketInfo)>,
    frame_pointers: &SavedFramePointers,
) -> BTreeMap<String, PeerProcess> {
    let mut diag = None;
    let mut tcp = TcpTables::default();
    let mut peer_sockets: BTreeMap<&String, u64> = BTreeMap::new();
    // Where a connection whose address was rewritten reaches its peer.
    let mut reached_at: BTreeMap<&String, String> = BTreeMap::new();
    for (endpoint, socket) in endpoints {
        if socket.protocol == Protocol::Unix {
            let peer = u32::try_from(socket.inode)
                .ok()
                .and_then(|inode| sock_diag(&mut diag, pid)?.unix_peer(inode).ok().flatten());
            if let Some(peer) = peer {
                peer_sockets.insert(endpoint, u64::from(peer));
            }
            continue;
        }
        let (Protocol::Tcp, Some(local), Some(remote)) =
            (socket.protocol, socket.local.as_ref(), socket.remote.as_ref())
        else {
            continue;
        };
        if let Some(peer) = tcp.peer(sock_diag(&mut diag, pid), pid, local, remote) {
            peer_sockets.insert(endpoint, peer.inode);
            if let Some(address) = peer.reached_at {
                reached_at.insert(endpoint, address);
            }
        }
    }
    if peer_sockets.is_empty() {
        return BTreeMap::new();
    }
    let owners = socket_owners(&peer_sockets.values().copied().collect(), pid);
    // Which of each owner's threads wait on each peer socket; those are read first.
    let waiting = socket_waiters(&peer_sockets, &owners);
    let mut processes: BTreeMap<u32, Option<PeerProcess>> = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for (endpoint, inode) in &peer_sockets {
        let Some(owner) = owners.get(inode) else { continue };
        let peer = processes.entry(owner.pid).or_insert_with(|| {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", owner.pid)).ok()?;
            let first: BTreeSet<u32> = peer_sockets
                .iter()
                .filter(|(_, inode)| owners.get(inode).is_some_and(|other| other.pid == owner.pid))
                .filter_map(|(endpoint, _)| waiting.get(endpoint)?.clone())
                .flatten()
                .collect();
            let (threads, thread_count) = peer_threads(owner.pid, &first, frame_pointers);
            let comm = comm.trim_end().to_owned();
            Some(PeerProcess {
                pid: owner.pid,
                comm,
                threads,
                thread_count,
                waiting_on_socket: None,
                reached_at: None,
            })
        });
        if let Some(peer) = peer {
            let waiting_on_socket = waiting.get(endpoint).cloned().flatten();
            let reached_at = reached_at.get(endpoint).cloned();
            peers.insert(
                (*endpoint).clone(),
                PeerProcess { waiting_on_socket, reached_at, ..peer.clone() },
            );
        }
    }
    peers
}

/// For each endpoint, the threads of its peer socket's owner blocked in a call on that
/// socket; None where that cannot be told: the owner's threads could not be listed, or
/// only an edge-triggered epoll set holds the socket (see `socket_waiters`).
fn socket_waiters<'e>(
    peer_sockets: &BTreeMap<&'e String, u64>,
    owners: &BTreeMap<u64, SocketOwner>,
) -> BTreeMap<&'e String, Option<Vec<u32>>> {
    let mut calls: BTreeMap<u32, Option<Vec<(u32, SyscallState)>>> = BTreeMap::new();
    let mut epoll_sets = EpollSets::default();
    let mut waiting = BTreeMap::new();
    for (&endpoint, inode) in peer_sockets {
        let Some(owner) = owners.get(inode) else { continue };
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
        waiting.insert(endpoint, on_socket);
    }
    waiting
}

/// The syscall each blocked thread of `pid` is in now, or None when its threads cannot be
/// listed.
fn blocked_calls(pid: u32) -> Option<Vec<(u32, SyscallState)>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let blocked = tasks
        .flatten()
        .filter_map(|task| task.file_name().to_str()?.parse().ok())
        .filter_map(|tid| match read_syscall(pid, tid)? {
            ThreadSyscall::Blocked(call) => Some((tid, call)),
            _ => None,
        })
        .collect();
    Some(blocked)
}

/// The sock_diag socket in `pid`'s network namespace, opened at the first use (`None` in
/// `opened` once opening failed, so it is not tried again).
fn sock_diag(opened: &mut Option<Option<SockDiag>>, pid: u32) -> Option<&mut SockDiag> {
    opened.get_or_insert_with(|| SockDiag::open(pid).ok()).as_mut()
}

/// A process holding a socket open, and its descriptors for it.
struct SocketOwner {
    pid: u32,
    fds: Vec<i32>,
}

/// The process holding each socket of `inodes` open, preferring any but `not_pid` (a
/// process talking to itself over loopback holds both ends).
fn socket_owners(inodes: &BTreeSet<u64>, not_pid: u32) -> BTreeMap<u64, SocketOwner> {
    let mut owners: BTreeMap<u64, SocketOwner> = BTreeMap::new();
    let Ok(processes) = std::fs::read_dir("/proc") else { return owners };
    for entry in processes.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Some(fd_number) = fd.file_name().to_str().and_then(|name| name.parse().ok()) else {
                continue;
            };
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            let inode = target.to_str().and_then(socket_inode);
            let Some(inode) = inode.filter(|inode| inodes.contains(inode)) else { continue };
            let owner = owners.entry(inode).or_insert(SocketOwner { pid, fds: Vec::new() });
            if owner.pid == not_pid && pid != not_pid {
                *owner = SocketOwner { pid, fds: Vec::new() };
            }
            if owner.pid == pid {
                owner.fds.push(fd_number);
            }
        }
    }
    owners
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

/// The name of x86_64 syscall `nr` for the blocking calls a thread is usually found in.
pub fn syscall_name(nr: i64) -> String {
    let name = match nr {
        0 => "read",
        1 => "write",
        7 => "poll",
        23 => "select",
        34 => "pause",
        35 => "nanosleep",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        42 => "connect",
        61 => "wait4",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        288 => "accept4",
        441 => "epoll_pwait2",
        _ => return format!("syscall {nr}"),
    };
    name.to_owned()
}
