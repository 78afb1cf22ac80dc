//! The socket at the other end of a TCP connection of the target, wherever on this host it
//! is: in the target's network namespace; in another namespace of the host (containers on
//! one bridge reach each other untranslated, so their sockets cross too); or, when the
//! connection's address was rewritten on its way (a published container port, a
//! Kubernetes service address, a REDIRECT to a local proxy), at the address conntrack says
//! its replies come from.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};

use crate::objects::sockets::{
    NetlinkError,
    conntrack::{Conntrack, Tuple},
    diag::{Record, SockDiag, format_address},
};

/// The peer socket of a connection, and where the connection reaches it when that is not
/// the address the target sees (`10.244.1.7:8080` behind `10.96.0.10:80`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSocket {
    pub inode: u64,
    pub reached_at: Option<String>,
}

/// TCP sockets and conntrack tables to find peers in, each read when first needed: those
/// of the target's network namespace, then those of every other namespace on the host.
#[derive(Default)]
pub struct TcpTables {
    own: Option<Vec<Record>>,
    /// One process in each other network namespace, with that namespace's TCP sockets.
    others: Option<Vec<(u32, Vec<Record>)>>,
    /// Conntrack sockets by a member process of their namespace (`None`: cannot open;
    /// a host without conntrack rewrites nothing, so that is no loss).
    conntrack: BTreeMap<u32, Option<Conntrack>>,
    /// Whether a table of sockets could not be read (a namespace's sock_diag socket not
    /// opened, a dump that failed): of the target's namespace, of another one. A peer
    /// not found may be in it.
    own_unread: bool,
    others_unread: bool,
    /// Whether the last search looked in the other namespaces (not for a loopback peer,
    /// which only the target's namespace holds, unless conntrack rewrote it).
    searched_others: bool,
}

impl TcpTables {
    /// The other end of `pid`'s TCP connection from `local` to `remote` (as the reports
    /// print addresses); `diag` is the sock_diag socket of `pid`'s namespace.
    pub fn peer(
        &mut self,
        diag: Option<&mut SockDiag>,
        pid: u32,
        local: &str,
        remote: &str,
    ) -> Option<PeerSocket> {
        self.searched_others = false;
        let own = match &mut self.own {
            Some(own) => own,
            None => {
                let (records, whole) = dump_tcp(diag);
                self.own_unread = !whole;
                self.own.insert(records)
            }
        };
        if let Some(inode) = crossing_in(own, local, remote) {
            return Some(PeerSocket { inode, reached_at: None });
        }
        let original = Tuple { source: local.parse().ok()?, destination: remote.parse().ok()? };
        // Every namespace has a loopback of its own: a crossing there is not our peer.
        // (A loopback address rewritten to a container's is found through conntrack.)
        if !original.destination.ip().is_loopback() {
            let inode = self
                .others(pid)
                .iter()
                .find_map(|(_, records)| crossing_in(records, local, remote));
            if let Some(inode) = inode {
                return Some(PeerSocket { inode, reached_at: None });
            }
        }
        self.translated_peer(pid, original)
    }

    /// The peer of a connection whose address was rewritten: conntrack of the target's
    /// namespace first (a rewrite on the way out of it), then of the others (a rewrite on
    /// the host, between containers' namespaces).
    fn translated_peer(&mut self, pid: u32, original: Tuple) -> Option<PeerSocket> {
        // The other namespaces' sockets are dumped only when the target's own conntrack
        // has no rewrite of this connection (a loopback peer that is simply gone, say).
        let reply = match self.translated_reply(pid, original) {
            Some(reply) => reply,
            None => {
                let members: Vec<u32> =
                    self.others(pid).iter().map(|(member, _)| *member).collect();
                members.into_iter().find_map(|member| self.translated_reply(member, original))?
            }
        };
        // The peer socket's own addresses are the reply's: from its source, to its
        // destination (the client, after any source rewrite).
        let (peer_local, peer_remote) =
            (address_text(reply.source), address_text(reply.destination));
        let own = self.own.as_deref().unwrap_or_default();
        let inode = match crossing_in(own, &peer_remote, &peer_local) {
            Some(inode) => inode,
            None => self
                .others(pid)
                .iter()
                .find_map(|(_, records)| crossing_in(records, &peer_remote, &peer_local))?,
        };
        Some(PeerSocket { inode, reached_at: Some(peer_local) })
    }

    /// The reply tuple of `original` in the conntrack of `member`'s namespace, when the
    /// connection was rewritten there.
    fn translated_reply(&mut self, member: u32, original: Tuple) -> Option<Tuple> {
        let conntrack =
            self.conntrack.entry(member).or_insert_with(|| Conntrack::open(member).ok());
        let reply = conntrack.as_mut()?.reply_of(original).ok()??;
        // An untranslated connection is tracked too: its reply is the plain reverse.
        (reply != original.reversed()).then_some(reply)
    }

    /// Whether the last search met a table of sockets it could not read: a peer it did
    /// not find may be there.
    pub fn incomplete(&self) -> bool {
        self.own_unread || self.searched_others && self.others_unread
    }

    fn others(&mut self, pid: u32) -> &[(u32, Vec<Record>)] {
        self.searched_others = true;
        let Self { others, others_unread, .. } = self;
        others.get_or_insert_with(|| {
            other_network_namespaces(pid)
                .into_iter()
                .map(|member| {
                    let (records, whole) = dump_tcp(SockDiag::open(member).ok().as_mut());
                    // A member that exited since the namespaces were listed (a zombie
                    // keeps its /proc entry, not its namespace) had nothing to read.
                    let gone = std::fs::read_link(format!("/proc/{member}/ns/net")).is_err();
                    *others_unread |= !whole && !gone;
                    (member, records)
                })
                .collect()
        })
    }
}

/// The inode of the socket among `records` whose addresses are `local` and `remote`
/// crossed; not one of inode 0 (a connection in TIME_WAIT or orphaned, which no process
/// holds), which would end the search with no owner to find.
fn crossing_in(records: &[Record], local: &str, remote: &str) -> Option<u64> {
    records
        .iter()
        .find(|record| {
            record.info.inode != 0
                && record.info.local.as_deref() == Some(remote)
                && record.info.remote.as_deref() == Some(local)
        })
        .map(|record| record.info.inode)
}

/// An address as sock_diag records print it.
fn address_text(address: SocketAddr) -> String {
    format_address(address.ip(), address.port())
}

/// The TCP sockets of both families that `diag` sees (a dual-stack listener's sockets are
/// IPv6 while their addresses print as IPv4, mapped, so a peer may be in either dump), and
/// whether both were read (not when `diag` could not be opened).
fn dump_tcp(diag: Option<&mut SockDiag>) -> (Vec<Record>, bool) {
    let Some(diag) = diag else { return (Vec::new(), false) };
    let mut records = Vec::new();
    let mut whole = true;
    for family in [AF_INET, AF_INET6] {
        match diag.dump_inet(family, IPPROTO_TCP) {
            Ok(dumped) => records.extend(dumped),
            // A kernel without IPv6 has no such sockets to miss.
            Err(NetlinkError::Kernel(err))
                if family == AF_INET6
                    && matches!(err.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::ENOENT)) => {}
            Err(err) => {
                log::debug!("cannot dump the TCP sockets of family {family}: {err}");
                whole = false;
            }
        }
    }
    (records, whole)
}

/// One process in each network namespace of the host other than `pid`'s.
fn other_network_namespaces(pid: u32) -> Vec<u32> {
    let own = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    let mut seen = BTreeSet::new();
    let Ok(processes) = std::fs::read_dir("/proc") else { return Vec::new() };
    processes
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&member| {
            let namespace = std::fs::read_link(format!("/proc/{member}/ns/net")).ok();
            namespace
                .is_some_and(|namespace| Some(&namespace) != own.as_ref() && seen.insert(namespace))
        })
        .collect()
}
