//! Which threads of a peer process wait on its end of a connection now: a thread blocked
//! reading or writing one of the socket's descriptors, or in a poll, select or epoll wait
//! whose set holds one. "None of them" is the root cause a chain ends in when the peer has
//! stopped reading; a peer thread waiting to receive from a connection whose other end
//! waits to receive too is a protocol deadlock. An epoll set that holds the socket
//! edge-triggered tells neither: event loops (Go's netpoller, tokio, nginx) register
//! every socket so, whether or not the program reads it.

use std::collections::{BTreeMap, BTreeSet};

use tracer_common::{WaitKind, classify_syscall, syscall_nr};

use crate::threads::{SyscallState, read_memory};

/// Descriptors of a poll or select set read at most (a `pollfd` is 8 bytes).
const MAX_POLL_FDS: u64 = 4096;
/// select(2)'s descriptors are below FD_SETSIZE.
const FD_SETSIZE: u64 = 1024;

/// The descriptors a blocked thread's call watches.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Watched {
    /// Those it waits on: the one it reads or writes, a poll or select set's, an epoll
    /// set's level-triggered ones. Empty for a call that waits on none.
    pub waited_on: BTreeSet<i32>,
    /// An epoll set's edge-triggered ones: whether it waits on them cannot be told.
    pub edge_triggered: BTreeSet<i32>,
}

/// The descriptors a thread blocked in `call` watches, read from its arguments (and, for
/// a poll or select set, from `pid`'s memory; for an epoll set, from `epoll_sets`).
pub fn descriptors_watched(pid: u32, call: &SyscallState, epoll_sets: &mut EpollSets) -> Watched {
    let args = call.args;
    if let syscall_nr::EPOLL_WAIT | syscall_nr::EPOLL_PWAIT | syscall_nr::EPOLL_PWAIT2 = call.nr {
        let set = epoll_sets.watched(pid, args[0] as i32);
        let (edge, level): (Vec<&EpollEntry>, Vec<&EpollEntry>) =
            set.iter().partition(|entry| entry.edge_triggered);
        return Watched {
            waited_on: level.into_iter().map(|entry| entry.fd).collect(),
            edge_triggered: edge.into_iter().map(|entry| entry.fd).collect(),
        };
    }
    Watched { waited_on: descriptors_waited_on(pid, call), edge_triggered: BTreeSet::new() }
}

/// The descriptors a thread blocked in `call`, not an epoll wait, waits on.
fn descriptors_waited_on(pid: u32, call: &SyscallState) -> BTreeSet<i32> {
    let args = call.args;
    let socket_call = classify_syscall(call.nr, |n| Ok::<_, ()>(args[n])).ok().flatten();
    match (call.nr, socket_call) {
        (_, Some((kind, fd))) if kind != WaitKind::Futex && kind != WaitKind::Poll => {
            BTreeSet::from([fd as i32])
        }
        (syscall_nr::POLL | syscall_nr::PPOLL, _) => poll_set(pid, args[0], args[1]),
        (syscall_nr::SELECT | syscall_nr::PSELECT6, _) => {
            // Read and write sets; the exception set is for out-of-band data.
            let mut fds = select_set(pid, args[0], args[1]);
            fds.extend(select_set(pid, args[0], args[2]));
            fds
        }
        _ => BTreeSet::new(),
    }
}

/// The descriptors of a `struct pollfd` array at `address` of `count` entries.
fn poll_set(pid: u32, address: u64, count: u64) -> BTreeSet<i32> {
    let mut bytes = vec![0u8; (count.min(MAX_POLL_FDS) * 8) as usize];
    let read = read_memory(pid, address, &mut bytes).unwrap_or(0);
    parse_poll_set(&bytes[..read - read % 8])
}

/// `struct pollfd { int fd; short events; short revents; }`; a negative fd is skipped by
/// the kernel, and here too.
fn parse_poll_set(bytes: &[u8]) -> BTreeSet<i32> {
    bytes
        .chunks_exact(8)
        .map(|entry| i32::from_ne_bytes(entry[..4].try_into().expect("4 bytes")))
        .filter(|fd| *fd >= 0)
        .collect()
}

/// The descriptors below `nfds` set in the `fd_set` at `address` (none for a null set).
fn select_set(pid: u32, nfds: u64, address: u64) -> BTreeSet<i32> {
    if address == 0 {
        return BTreeSet::new();
    }
    let nfds = nfds.min(FD_SETSIZE);
    let mut bytes = vec![0u8; nfds.div_ceil(64) as usize * 8];
    let read = read_memory(pid, address, &mut bytes).unwrap_or(0);
    parse_select_set(&bytes[..read], nfds)
}

/// An `fd_set`: a bitmap of 64-bit words, descriptor n at bit n % 64 of word n / 64.
fn parse_select_set(bytes: &[u8], nfds: u64) -> BTreeSet<i32> {
    (0..nfds.min(bytes.len() as u64 * 8))
        .filter(|fd| bytes[(fd / 8) as usize] & (1 << (fd % 8)) != 0)
        .map(|fd| fd as i32)
        .collect()
}

/// The interest lists of a process's epoll instances, each read once from
/// /proc/PID/fdinfo/EPFD.
#[derive(Default)]
pub struct EpollSets {
    sets: BTreeMap<(u32, i32), Vec<EpollEntry>>,
}

/// A descriptor an epoll set watches, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EpollEntry {
    fd: i32,
    edge_triggered: bool,
}

impl EpollSets {
    fn watched(&mut self, pid: u32, epoll_fd: i32) -> &[EpollEntry] {
        self.sets.entry((pid, epoll_fd)).or_insert_with(|| {
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epoll_fd}"))
                .map(|text| parse_epoll_fdinfo(&text))
                .unwrap_or_default()
        })
    }
}

/// An epoll descriptor's fdinfo has a line per watched descriptor:
/// `tfd:        5 events:       19 data:                5  pos:0 ino:1a3 sdev:8`, its
/// events mask in hex (EPOLLET is its top bit).
fn parse_epoll_fdinfo(text: &str) -> Vec<EpollEntry> {
    const EPOLLET: u32 = 1 << 31;
    text.lines()
        .filter_map(|line| line.strip_prefix("tfd:"))
        .filter_map(|rest| {
            let mut words = rest.split_ascii_whitespace();
            let fd = words.next()?.parse().ok()?;
            let events = match (words.next(), words.next()) {
                (Some("events:"), Some(mask)) => u32::from_str_radix(mask, 16).ok()?,
                _ => return None,
            };
            Some(EpollEntry { fd, edge_triggered: events & EPOLLET != 0 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_set_names_its_descriptors_and_skips_negative_ones() {
        let mut bytes = Vec::new();
        for (fd, events) in [(7i32, 1i16), (-1, 1), (12, 4)] {
            bytes.extend_from_slice(&fd.to_ne_bytes());
            bytes.extend_from_slice(&events.to_ne_bytes());
            bytes.extend_from_slice(&0i16.to_ne_bytes());
        }
        assert_eq!(parse_poll_set(&bytes), BTreeSet::from([7, 12]));
    }

    #[test]
    fn a_select_set_names_the_bits_below_nfds() {
        let mut words = [0u64; 2];
        for fd in [3, 64, 70] {
            words[fd / 64] |= 1 << (fd % 64);
        }
        let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_ne_bytes()).collect();
        assert_eq!(parse_select_set(&bytes, 71), BTreeSet::from([3, 64, 70]));
        assert_eq!(parse_select_set(&bytes, 70), BTreeSet::from([3, 64]), "70 is not below");
        assert_eq!(parse_select_set(&bytes[..8], 71), BTreeSet::from([3]), "a short read");
    }

    #[test]
    fn an_epoll_fdinfo_names_its_watched_descriptors_and_how() {
        // Go's netpoller registers EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET: 80002005.
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n\
                    tfd:        5 events:       19 data:                5  pos:0 ino:1a3 sdev:8\n\
                    tfd:       11 events: 80002005 data:       7f00000000b  pos:0 ino:1b0 sdev:8\n";
        assert_eq!(
            parse_epoll_fdinfo(text),
            [
                EpollEntry { fd: 5, edge_triggered: false },
                EpollEntry { fd: 11, edge_triggered: true }
            ]
        );
    }

    #[test]
    fn a_socket_call_waits_on_its_descriptor_and_a_futex_on_none() {
        let mut sets = EpollSets::default();
        let recv =
            SyscallState { nr: syscall_nr::RECVFROM, args: [9, 0, 0, 0, 0, 0], sp: 0, pc: 0 };
        let mut waited_on = |call| descriptors_watched(0, &call, &mut sets).waited_on;
        assert_eq!(waited_on(recv), BTreeSet::from([9]));
        let read = SyscallState { nr: syscall_nr::READ, args: [4, 0, 0, 0, 0, 0], sp: 0, pc: 0 };
        assert_eq!(waited_on(read), BTreeSet::from([4]));
        let futex =
            SyscallState { nr: syscall_nr::FUTEX, args: [0x1000, 0, 1, 0, 0, 0], sp: 0, pc: 0 };
        assert!(waited_on(futex).is_empty());
    }
}
