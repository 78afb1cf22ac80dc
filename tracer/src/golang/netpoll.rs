//! Which descriptor each goroutine in IO wait waits on, read from outside. Go's netpoller
//! registers every descriptor it polls with its epoll instance, the event's data being the
//! descriptor's `*runtime.pollDesc` (`runtime/netpoll_epoll.go`; a tagged pointer since
//! go1.21, packed another way since go1.25: [`EpollData`]), and a goroutine parked on a
//! descriptor is in its pollDesc's `rg` (reading) or `wg` (writing). So: the process's
//! epoll descriptors → `/proc/PID/fdinfo` (one `tfd: FD events: … data: HEX` line per
//! registration) → each pollDesc, whose `fd` must be the registered descriptor (which rules
//! out a wrong decoding, or an epoll set of the program's own) → the parked `g` → its
//! socket, named by [`WaitObjects`] as a thread's socket wait is.

use std::collections::HashMap;
use std::{fs, io};

use tracer_common::WaitKind;

use super::binary::{EpollData, PollDescLayout};
use super::goroutines::{Goroutine, GoroutineCounts, Memory, word};
use crate::{model::WaitObject, objects::WaitObjects};

/// What `/proc/PID/fd/N` links to for an epoll instance.
const EPOLL_LINK: &str = "anon_inode:[eventpoll]";
/// `pdWait` (`runtime/netpoll.go`): `rg`/`wg` values up to it are states (nil, pdReady,
/// pdWait), not goroutines.
const PD_WAIT: u64 = 2;

/// A goroutine parked on a polled descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolledDescriptor {
    pub fd: u64,
    /// Parked in `rg` (waiting to read) rather than `wg` (waiting to write).
    pub reading: bool,
    /// The epoll registration's data: with `fd`, what tells this registration from a later
    /// one of the same descriptor number (the runtime tags it with a sequence number).
    pub registration: u64,
}

/// The endpoints of registrations named at earlier reads, by (descriptor, registration,
/// reading): a sampled recording of a busy server sees its connections park again and
/// again, and looking each one up again (a readlink and a socket query) at every read cost
/// more than the read itself. Kept while the registration is.
pub type NamedRegistrations = HashMap<(u64, u64, bool), String>;

/// The goroutines parked on the netpoller's descriptors, by `g` address; `encodings` are
/// the ways the runtime may have packed its pollDescs into the epoll data.
pub fn parked_on_descriptors(
    pid: u32,
    layout: &PollDescLayout,
    encodings: &[EpollData],
    epolls: &mut EpollDescriptors,
) -> io::Result<HashMap<u64, PolledDescriptor>> {
    let registrations = epolls.registrations(pid)?;
    let pieces: Vec<(u64, u64)> = registrations
        .iter()
        .flat_map(|&(fd, data)| {
            poll_desc_candidates(data, encodings).into_iter().map(move |address| (fd, address))
        })
        .collect();
    let addresses: Vec<u64> = pieces.iter().map(|&(_, address)| address).collect();
    let memory = Memory { pid };
    let read = memory.read_many(&addresses, layout.read_len());
    let mut parked = HashMap::new();
    let data_of: HashMap<u64, u64> = registrations.iter().copied().collect();
    for (&(fd, _), bytes) in pieces.iter().zip(&read) {
        let Some(bytes) = bytes else { continue };
        let registration = data_of.get(&fd).copied().unwrap_or_default();
        if word(bytes, layout.fd as usize) != fd {
            continue;
        }
        for (offset, reading) in [(layout.rg, true), (layout.wg, false)] {
            let g = word(bytes, offset as usize);
            if g > PD_WAIT {
                parked.insert(g, PolledDescriptor { fd, reading, registration });
            }
        }
    }
    Ok(parked)
}

/// The process's epoll descriptors, found once: a sampled recording names IO waits at
/// every read, and listing every descriptor of a busy server (a readlink each) each time
/// cost more than the rest of the read.
#[derive(Debug, Default)]
pub struct EpollDescriptors {
    /// The descriptors last found to be epoll instances.
    known: Vec<String>,
}

impl EpollDescriptors {
    /// The (descriptor, data) of every registration of the process's epoll instances:
    /// those found before while they all still read, else those of a new listing.
    fn registrations(&mut self, pid: u32) -> io::Result<Vec<(u64, u64)>> {
        if !self.known.is_empty()
            && let Some(registrations) = Self::read(pid, &self.known)
        {
            return Ok(registrations);
        }
        self.known.clear();
        for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
            let entry = entry?;
            if fs::read_link(entry.path()).is_ok_and(|link| link.as_os_str() == EPOLL_LINK) {
                self.known.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        // An epoll descriptor closed meanwhile has nothing parked on it.
        Ok(Self::read(pid, &self.known).unwrap_or_default())
    }

    /// The registrations of the epoll descriptors `fds`; `None` if one no longer reads as
    /// one (closed, or its number reused for something else).
    fn read(pid: u32, fds: &[String]) -> Option<Vec<(u64, u64)>> {
        let mut registrations = Vec::new();
        for fd in fds {
            let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
            // An epoll's fdinfo lists its registrations (`tfd:` lines) after `pos`,
            // `flags` and `mnt_id`; any other file's has no `tfd:` but may have none yet
            // either, so the link is checked again only when nothing is registered.
            let found = epoll_registrations(&text);
            if found.is_empty()
                && !fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .is_ok_and(|link| link.as_os_str() == EPOLL_LINK)
            {
                return None;
            }
            registrations.extend(found);
        }
        Some(registrations)
    }
}

/// The (descriptor, data) of each registration in an epoll descriptor's fdinfo
/// (fs/eventpoll.c, ep_show_fdinfo: `tfd: %8d events: %8x data: %16llx …`).
fn epoll_registrations(fdinfo: &str) -> Vec<(u64, u64)> {
    fdinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let mut value_of = |name: &str| {
                while let Some(field) = fields.next() {
                    if field == name {
                        return fields.next();
                    }
                }
                None
            };
            let fd = value_of("tfd:")?.parse().ok()?;
            let data = u64::from_str_radix(value_of("data:")?, 16).ok()?;
            Some((fd, data))
        })
        .collect()
}

/// Where the pollDesc of an epoll registration's data may be: the data decoded in each of
/// `encodings` (one for a known Go version). The pollDesc's own `fd` tells which one it is.
fn poll_desc_candidates(data: u64, encodings: &[EpollData]) -> Vec<u64> {
    let mut candidates = Vec::with_capacity(encodings.len());
    for encoding in encodings {
        let address = encoding.poll_desc(data);
        if address != 0 && !candidates.contains(&address) {
            candidates.push(address);
        }
    }
    candidates
}

/// Names what each goroutine parked on a descriptor waits on (the socket's remote
/// endpoint, as `WaitObjects` names a thread's), and counts the goroutines in IO wait
/// (`io_wait`, the reason's index) that could not be named and why.
pub fn name_io_waits(
    goroutines: &mut [Goroutine],
    parked: &HashMap<u64, PolledDescriptor>,
    io_wait: Option<u8>,
    objects: &mut WaitObjects,
    counts: &mut GoroutineCounts,
    named: &mut NamedRegistrations,
) {
    // Forget the registrations no goroutine parks on now (closed ones among them).
    let live: std::collections::HashSet<(u64, u64, bool)> =
        parked.values().map(|parked| (parked.fd, parked.registration, parked.reading)).collect();
    named.retain(|key, _| live.contains(key));
    for goroutine in goroutines {
        // Only a goroutine seen in IO wait: one seen in another wait whose pollDesc names it
        // by the time that was read parked there since, and its object is its own wait's.
        if io_wait.is_some_and(|io_wait| goroutine.wait_reason != io_wait) {
            continue;
        }
        let Some(&PolledDescriptor { fd, reading, registration }) = parked.get(&goroutine.address)
        else {
            if Some(goroutine.wait_reason) == io_wait {
                // Woke between the two reads, or between its park and its `rg`/`wg` store.
                counts.io_wait_unresolved += 1;
            }
            continue;
        };
        if let Some(endpoint) = named.get(&(fd, registration, reading)) {
            goroutine.object = Some(endpoint.clone());
            counts.io_wait_named += 1;
            continue;
        }
        let kind = if reading { WaitKind::Read } else { WaitKind::Write };
        let non_socket_before = objects.non_socket_io;
        match objects.resolve(kind, fd) {
            Some((_, WaitObject::Endpoint(endpoint))) => {
                named.insert((fd, registration, reading), endpoint.clone());
                goroutine.object = Some(endpoint);
                counts.io_wait_named += 1;
            }
            _ if objects.non_socket_io > non_socket_before => counts.io_wait_not_socket += 1,
            _ => counts.io_wait_unresolved += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_fdinfo_lines() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
            tfd:        3 events:       19 data: 7f0c8b7ffe58  pos:0 ino:3f5 sdev:d\n\
            tfd:       12 events: 80002019 data:     c00001c000  pos:0 ino:5b2f sdev:8\n";
        assert_eq!(epoll_registrations(fdinfo), vec![(3, 0x7f0c8b7ffe58), (12, 0xc00001c000)]);
        assert!(epoll_registrations("tfd: x events: 1 data: 10\n").is_empty());
    }

    #[test]
    fn poll_desc_candidates_of_each_encoding() {
        let pd: u64 = 0x7f3a_1c2b_3e00;
        // A known version: its one decoding.
        let go1_21 = (pd << 16) | 0x5_4321;
        assert_eq!(poll_desc_candidates(go1_21, &[EpollData::TAGGED_GO1_21]), [pd]);
        assert_eq!(poll_desc_candidates(pd, &[EpollData::Pointer]), [pd]);
        // A version newer than the table: every decoding, the right one among them.
        let go1_25 = (pd << 15) | 0xab_cdef;
        let all = poll_desc_candidates(go1_25, &EpollData::ALL);
        assert_eq!(all.len(), 3);
        assert!(all.contains(&pd));
    }

    fn goroutine(address: u64, wait_reason: u8) -> Goroutine {
        Goroutine {
            goid: address,
            address,
            sp: 0,
            tracking_seq: None,
            wait_reason,
            wait_since: 0,
            pcs: vec![0x1000].into(),
            truncated: false,
            waiting: 0,
            gopc: 0,
            parent_goid: 0,
            object: None,
            blocked_on: None,
            selects_on: Vec::new(),
            channel_at_place: None,
            bp: 0,
            frameless: 0,
            stack_lo: 0,
            stack_hi: 0,
        }
    }

    #[test]
    fn io_waits_not_found_are_counted() {
        const IO_WAIT: u8 = 2;
        // Descriptors of a pid that does not exist: the lookups fail and are counted.
        let mut objects = WaitObjects::new(u32::MAX);
        let mut goroutines =
            [goroutine(0x100, IO_WAIT), goroutine(0x200, IO_WAIT), goroutine(0x300, 7)];
        let parked = HashMap::from([(
            0x100,
            PolledDescriptor { fd: 9, reading: false, registration: 0x9_0000 },
        )]);
        let mut counts = GoroutineCounts::default();
        let mut named = NamedRegistrations::new();
        name_io_waits(
            &mut goroutines,
            &parked,
            Some(IO_WAIT),
            &mut objects,
            &mut counts,
            &mut named,
        );
        assert_eq!((counts.io_wait_unresolved, counts.io_wait_not_socket), (2, 0));
        assert!(goroutines.iter().all(|goroutine| goroutine.object.is_none()));
    }
}
