//! Wait chains: from the sites where threads pile up, through the threads that woke them
//! and what those threads were blocked on, to a terminal (an endpoint and the process
//! behind it, a lock holder, a thread doing something else). The seed's answer in one
//! line: "32 threads at stat_send ← woken by sender, blocked 3.9s in httpsend [send …]
//! → peer pid 30375 (python3)".
//!
//! The graph is built from a finished profile (`build`): its stacks, its wakers (who woke
//! which site's futex waits, from the wake probes) and the facts read from the live system
//! when the profile was made (`live`): the process behind a local endpoint, the holder of
//! a mutex, what a thread is doing now.

pub mod live;
mod socket_waiters;
mod tcp_peers;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
};

use tracer_common::WaitKind;

use crate::{
    model::{
        ProcessTag, Profile, ProfileKind, ProfileStack, endpoint_in_object, go_wait_reason,
        is_socket_kind,
    },
    objects::pipe_inode,
};

/// Hops followed at most: a longer chain is cut with an `unknown` terminal.
const MAX_HOPS: usize = 4;
/// A waker blocked in watched waits less than this share of the recording is taken to
/// have been doing something else (running, sleeping) rather than waiting on a next hop.
const MIN_BLOCKED_SHARE: f64 = 0.2;
/// Chains kept in a profile.
pub const MAX_CHAINS: usize = 10;

/// Where threads wait: a call site, its kind and its object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainSite {
    pub site: String,
    pub kind: WaitKind,
    pub object: Option<String>,
}

/// One step of a chain: the threads that woke the previous site's waits, and where they
/// were themselves blocked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHop {
    /// The wakers' name (`comm`).
    pub waker: String,
    /// Their ids (threads', or goroutines' for a goroutine snapshot).
    pub waker_threads: Vec<u64>,
    /// Their blocked time at `at`.
    pub blocked_ns: u64,
    pub at: ChainSite,
}

/// What a thread is doing now, read from /proc when the profile was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadNow {
    pub tid: u32,
    pub name: String,
    pub state: ThreadState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThreadState {
    Running,
    /// Blocked in a syscall (`clock_nanosleep`), at a call site when its stack could be
    /// unwound and named; `stack` is its functions, root first (empty when unknown).
    Blocked {
        syscall: String,
        call_site: Option<String>,
        stack: Vec<String>,
    },
    /// Gone, or unreadable.
    Unknown,
}

/// The process holding the other end of a local endpoint, and what its threads do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerProcess {
    pub pid: u32,
    pub comm: String,
    /// What its first threads do now (at most 16 are read).
    pub threads: Vec<ThreadNow>,
    /// How many threads it has.
    pub thread_count: u64,
    /// Its threads blocked in a call on its end of the connection now (the endpoint's
    /// latest connection seen with a process behind it: a read or write of the socket, a
    /// poll or epoll holding it); None when that cannot be told: its threads could not be
    /// read, or only an edge-triggered epoll set holds the socket (an event loop's, such
    /// as Go's netpoller, which holds every socket whether it is read or not).
    pub waiting_on_socket: Option<Vec<u32>>,
    /// The address the connection reaches it at, when address translation rewrote the
    /// one the target sees (the endpoint): `10.244.1.7:8080` behind a service's
    /// `10.96.0.10:80`.
    pub reached_at: Option<String>,
    /// The other processes behind the endpoint's other connections (a pool's connections
    /// to one database port, each served by a process of its own), by pid, those behind
    /// more connections first; this one is behind the latest connection seen that has
    /// one.
    pub other_pids: Vec<u32>,
}

/// Where a chain ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Terminal {
    /// A socket: its endpoint, why it waits, and the process behind it when it is on this
    /// host.
    Endpoint { endpoint: String, state: Option<String>, peer: Option<PeerProcess> },
    /// The thread that holds the lock the waits are for.
    LockHolder(ThreadNow),
    /// The last wakers were mostly not blocked in a watched wait: what they do now.
    Thread(ThreadNow),
    /// The waits were woken mostly by threads waiting at the same site (this many of
    /// them): a lock taken in turns, whose cause is what its holders do between their
    /// waits, not where else they wait (a pool of handlers serialized by one lock was
    /// sent after their idle reads of the next request, to the client).
    Peers(u64),
    /// Nothing more is known (why).
    Unknown(String),
}

/// One chain: the threads at its start and their blocked time, its hops, its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitChain {
    /// In a profile of several processes, whose chain it is.
    pub process: Option<ProcessTag>,
    pub start: ChainSite,
    pub threads: u64,
    pub blocked_ns: u64,
    pub hops: Vec<ChainHop>,
    pub terminal: Terminal,
}

/// Facts from the live system that the chains end in, gathered when the profile is made
/// (see `live`).
#[derive(Clone, Debug, Default)]
pub struct ChainFacts {
    /// The local process behind each endpoint, by endpoint.
    pub peers: BTreeMap<String, PeerProcess>,
    /// Endpoints whose peer could not be looked for (a table of sockets unreadable).
    pub peer_lookups_failed: u64,
    /// The holder of each lock, by the object name its waits show.
    pub holders: BTreeMap<String, ThreadNow>,
    /// What each waker thread does now, by tid.
    pub threads_now: BTreeMap<u32, ThreadNow>,
    /// In a goroutine snapshot, which has no wakers: the goroutines holding the channel
    /// or lock each blocked goroutine waits on (their stacks hold its address), by the
    /// blocked goroutine's id.
    pub goroutine_holders: BTreeMap<u64, GoHolders>,
}

/// The goroutines holding what one goroutine is blocked on (see
/// [`ChainFacts::goroutine_holders`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoHolders {
    /// What they hold, as the hop names it: `channel`, `lock`, `WaitGroup`.
    pub held: &'static str,
    pub goroutines: Vec<u64>,
}

/// One site's waits (a call site and kind): blocked time, threads, and blocked time by
/// object. A site waits on more than one object when, say, a glibc condition variable
/// alternates between its two futex words: still one place in the program.
#[derive(Default)]
struct SiteWaits {
    blocked_ns: u64,
    threads: BTreeSet<u64>,
    objects: BTreeMap<Option<String>, u64>,
}

impl SiteWaits {
    /// The objects, heaviest first.
    fn objects(&self) -> Vec<&Option<String>> {
        let mut objects: Vec<_> = self.objects.iter().collect();
        objects.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        objects.into_iter().map(|(object, _)| object).collect()
    }
}

/// What the graph's nodes are: a call site, the kind of wait there and, for goroutines
/// (all of one kind), the wait reason. A goroutine holding a lock and those waiting for it
/// are often at one call site (`mu.Lock(); defer mu.Unlock(); conn.Write(…)`), as a
/// thread's lock and socket waits at one site are two nodes by their kinds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SiteKey {
    site: String,
    kind: WaitKind,
    go_reason: Option<String>,
}

impl SiteKey {
    fn new(site: &str, kind: WaitKind, object: Option<&str>) -> Self {
        let go_reason = match kind {
            WaitKind::Goroutine => object.map(|object| go_wait_reason(object).to_string()),
            _ => None,
        };
        Self { site: site.to_string(), kind, go_reason }
    }
}

fn site_key(stack: &ProfileStack) -> SiteKey {
    SiteKey::new(stack.call_site(), stack.kind, stack.object.as_deref())
}

impl ChainSite {
    fn key(&self) -> SiteKey {
        SiteKey::new(&self.site, self.kind, self.object.as_deref())
    }

    /// Whether `stack` waits at this site (its call site and kind; a goroutine's, its
    /// wait reason too).
    pub fn matches(&self, stack: &ProfileStack) -> bool {
        self.key() == site_key(stack)
    }
}

/// Gives `profile` its chains, and counts the peers `facts` could not look for.
pub fn add_to(profile: &mut Profile, facts: &ChainFacts) {
    profile.chains = build(profile, facts);
    profile.counts.peer_lookups_failed += facts.peer_lookups_failed;
}

/// The chains of `profile`, longest blocked time (or, in a snapshot, most threads) first:
/// one per site that leads somewhere (a hop, a lock holder, a waker doing something
/// else, a peer process), but for the
/// sites another chain passes through (the sender behind a pile-up is in its chain).
pub fn build(profile: &Profile, facts: &ChainFacts) -> Vec<WaitChain> {
    let mut sites: HashMap<SiteKey, SiteWaits> = HashMap::new();
    // Blocked time per (thread, site), to follow a waker to where it was blocked (each
    // stack's total shared evenly among its threads: stacks keep no per-thread totals).
    let mut by_thread: HashMap<u64, HashMap<SiteKey, u64>> = HashMap::new();
    for stack in &profile.stacks {
        let site = site_key(stack);
        let waits = sites.entry(site.clone()).or_default();
        waits.blocked_ns += stack.stats.total_ns;
        waits.threads.extend(&stack.stats.threads);
        *waits.objects.entry(stack.object.clone()).or_default() += stack.stats.total_ns;
        let share = stack.stats.total_ns / stack.stats.threads.len().max(1) as u64;
        for &tid in &stack.stats.threads {
            *by_thread.entry(tid).or_default().entry(site.clone()).or_default() += share;
        }
    }
    let graph = Graph { profile, facts, sites: &sites, by_thread: &by_thread };
    let mut chains: Vec<WaitChain> =
        sites.keys().filter_map(|start| graph.chain_from(start)).collect();
    let weight = |chain: &WaitChain| match profile.kind {
        ProfileKind::Recording => (chain.blocked_ns, chain.threads),
        ProfileKind::Snapshot => (chain.threads, chain.blocked_ns),
    };
    chains.sort_by(|a, b| weight(b).cmp(&weight(a)).then_with(|| a.start.cmp(&b.start)));
    // Heaviest first, a chain that a chain kept before it passes through is left out,
    // unless it passes through that one too (a cycle): the text does not repeat it, and
    // no chain is left out for one that is not shown.
    let passes = |chain: &WaitChain, start: &ChainSite| {
        chain.hops.iter().any(|hop| hop.at.key() == start.key())
    };
    let mut kept: Vec<WaitChain> = Vec::new();
    for chain in chains {
        let inside =
            kept.iter().any(|other| passes(other, &chain.start) && !passes(&chain, &other.start));
        if !inside && kept.len() < MAX_CHAINS {
            kept.push(chain);
        }
    }
    kept
}

struct Graph<'a> {
    profile: &'a Profile,
    facts: &'a ChainFacts,
    sites: &'a HashMap<SiteKey, SiteWaits>,
    by_thread: &'a HashMap<u64, HashMap<SiteKey, u64>>,
}

impl Graph<'_> {
    /// The chain starting at `start`, when it leads anywhere beyond the site itself.
    fn chain_from(&self, start: &SiteKey) -> Option<WaitChain> {
        let waits = &self.sites[start];
        let mut hops: Vec<ChainHop> = Vec::new();
        let mut visited = BTreeSet::from([start.clone()]);
        let mut at = start.clone();
        let terminal = loop {
            if let Some(terminal) = self.terminal_at(&at) {
                // A holder blocked in a watched wait of its own (a write to a full pipe
                // under the lock) is a hop, as a goroutine holding the lock is.
                let held_by = match &terminal {
                    Terminal::LockHolder(holder) => self.holder_blocked(holder, &visited),
                    _ => None,
                };
                let Some((holder, next, blocked_ns)) = held_by else { break terminal };
                if hops.len() == MAX_HOPS {
                    break Terminal::Unknown(format!("more than {MAX_HOPS} hops"));
                }
                let waker = format!("{} (tid {}, holds the lock)", holder.name, holder.tid);
                let at_site = self.chain_site(&next);
                hops.push(ChainHop {
                    waker,
                    waker_threads: vec![u64::from(holder.tid)],
                    blocked_ns,
                    at: at_site,
                });
                visited.insert(next.clone());
                at = next;
                continue;
            }
            let Some((waker, waker_threads)) = self.wakers_of(&at) else {
                break Terminal::Unknown(unknown_reason(at.kind));
            };
            let waiting = &self.sites[&at].threads;
            let peers = waker_threads.iter().filter(|tid| waiting.contains(tid)).count();
            if 2 * peers >= waker_threads.len() {
                break Terminal::Peers(peers as u64);
            }
            match self.where_blocked(&waker_threads) {
                Some(_) if hops.len() == MAX_HOPS => {
                    break Terminal::Unknown(format!("more than {MAX_HOPS} hops"));
                }
                Some((next, blocked_ns)) if !visited.contains(&next) => {
                    let at_site = self.chain_site(&next);
                    hops.push(ChainHop { waker, waker_threads, blocked_ns, at: at_site });
                    visited.insert(next.clone());
                    at = next;
                }
                Some((next, _)) => {
                    break Terminal::Unknown(format!("a cycle back to {}", next.site));
                }
                None => break self.thread_now(&waker, &waker_threads),
            }
        };
        let leads_somewhere = !hops.is_empty()
            || matches!(
                terminal,
                Terminal::LockHolder(_) | Terminal::Thread(_) | Terminal::Peers(_)
            )
            || matches!(terminal, Terminal::Endpoint { peer: Some(_), .. });
        leads_somewhere.then(|| WaitChain {
            process: None,
            start: self.chain_site(start),
            threads: waits.threads.len() as u64,
            blocked_ns: waits.blocked_ns,
            hops,
            terminal,
        })
    }

    /// The site as a chain shows it, with its heaviest object.
    fn chain_site(&self, at: &SiteKey) -> ChainSite {
        let object = self.sites[at].objects().first().copied().cloned();
        ChainSite { site: at.site.clone(), kind: at.kind, object: object.flatten() }
    }

    /// A site that ends a chain by itself: a socket wait (on its heaviest endpoint; a
    /// goroutine's or asyncio task's wait that names one), or a lock whose holder is known.
    fn terminal_at(&self, at: &SiteKey) -> Option<Terminal> {
        let objects = self.sites[at].objects();
        let endpoint = objects
            .iter()
            .copied()
            .flatten()
            .find_map(|object| endpoint_in_object(at.kind, object));
        if let Some(endpoint) = endpoint {
            // A listener has no peer: the process found at the other end of a connection
            // to the same address did not keep this accept waiting.
            let peer = match at.kind {
                WaitKind::Accept => None,
                _ => self.facts.peers.get(endpoint).cloned(),
            };
            return Some(Terminal::Endpoint {
                state: self.profile.endpoint_states.get(endpoint).cloned(),
                peer,
                endpoint: endpoint.to_owned(),
            });
        }
        if is_socket_kind(at.kind) {
            // A socket wait whose socket is unknown ends nowhere.
            return None;
        }
        let holder =
            objects.into_iter().flatten().find_map(|object| self.facts.holders.get(object))?;
        Some(Terminal::LockHolder(holder.clone()))
    }

    /// The threads that woke the waits at `at` most often, with their name; where no
    /// wake was seen (a goroutine snapshot), the goroutines holding the channel or lock its
    /// goroutines wait on: the ones that would wake them.
    fn wakers_of(&self, at: &SiteKey) -> Option<(String, Vec<u64>)> {
        let Some(row) = self
            .profile
            .wakers
            .iter()
            .filter(|row| row.waiting_site == at.site && row.kind == at.kind)
            .max_by_key(|row| row.wakes)
        else {
            return self.goroutine_holders_of(at);
        };
        let name = row
            .waker_threads
            .iter()
            .find_map(|tid| self.profile.thread_names.get(tid))
            .cloned()
            .unwrap_or_else(|| row.waker_site.clone());
        Some((name, row.waker_threads.iter().copied().map(u64::from).collect()))
    }

    /// The goroutines holding the channel or lock the goroutines at `at` wait on (not those
    /// waiting there themselves), named as the hop shows them.
    fn goroutine_holders_of(&self, at: &SiteKey) -> Option<(String, Vec<u64>)> {
        let waiting = &self.sites[at].threads;
        let mut held = BTreeSet::new();
        let mut holders = BTreeSet::new();
        for found in waiting.iter().filter_map(|goid| self.facts.goroutine_holders.get(goid)) {
            held.insert(found.held);
            holders.extend(found.goroutines.iter().filter(|holder| !waiting.contains(holder)));
        }
        // The goroutines at one site wait on one kind of object, unless a generic
        // function's site is shared by, say, a channel's and a lock's waits.
        let held = match held.len() {
            1 => format!("the {}", held.first()?),
            _ => "what they wait on".to_string(),
        };
        let name = match holders.len() {
            0 => return None,
            1 => format!("goroutine {} (holds {held})", holders.first()?),
            many => format!("{many} goroutines holding {held}"),
        };
        Some((name, holders.into_iter().collect()))
    }

    /// Where `threads` were blocked the longest, when they spent a real share of their
    /// time blocked in watched waits at all.
    fn where_blocked(&self, threads: &[u64]) -> Option<(SiteKey, u64)> {
        // Blocked time and threads by site: where no age is known (a goroutine snapshot's
        // waits), the site most of them are at.
        let mut totals: HashMap<&SiteKey, (u64, usize)> = HashMap::new();
        for tid in threads {
            for (site, ns) in self.by_thread.get(tid).into_iter().flatten() {
                let total = totals.entry(site).or_default();
                total.0 += ns;
                total.1 += 1;
            }
        }
        let blocked_anywhere: u64 = totals.values().map(|(ns, _)| ns).sum();
        let (site, (blocked_ns, _)) =
            totals.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))?;
        // In a snapshot every wait shown is blocked now, whatever its age.
        let enough = match self.profile.kind {
            ProfileKind::Snapshot => true,
            ProfileKind::Recording => {
                let span = self.profile.duration.as_nanos() as f64 * threads.len() as f64;
                blocked_anywhere as f64 >= MIN_BLOCKED_SHARE * span
            }
        };
        enough.then(|| (site.clone(), blocked_ns))
    }

    /// Where a lock's holder is blocked now, when it is in a watched wait at a site of the
    /// profile not yet in the chain: the site it is at now, not where it spent most of a
    /// recording (a worker asleep holding the lock, idle in its queue's wait the rest of
    /// the time, would send the chain after its queue's wakers).
    fn holder_blocked<'h>(
        &self,
        holder: &'h ThreadNow,
        visited: &BTreeSet<SiteKey>,
    ) -> Option<(&'h ThreadNow, SiteKey, u64)> {
        let ThreadState::Blocked { call_site: Some(now), .. } = &holder.state else {
            return None;
        };
        let (next, blocked_ns) = self
            .by_thread
            .get(&u64::from(holder.tid))?
            .iter()
            .filter(|(site, _)| site.site == *now)
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(site, ns)| (site.clone(), *ns))?;
        (!visited.contains(&next)).then_some((holder, next, blocked_ns))
    }

    /// The wakers were not (mostly) blocked in a watched wait: what they do now.
    fn thread_now(&self, waker: &str, threads: &[u64]) -> Terminal {
        let now = threads
            .iter()
            .filter_map(|&tid| u32::try_from(tid).ok())
            .find_map(|tid| self.facts.threads_now.get(&tid));
        match now {
            Some(now) => Terminal::Thread(now.clone()),
            None => Terminal::Unknown(format!("{waker} was not blocked in a watched wait")),
        }
    }
}

fn unknown_reason(kind: WaitKind) -> String {
    match kind {
        WaitKind::Futex => "no waker seen".to_owned(),
        WaitKind::Poll => "a poll on many descriptors".to_owned(),
        _ => "nothing more known".to_owned(),
    }
}

/// A site as the chain line shows it: `enqueue_stat [futex queue.not_full]`.
fn site_text(site: &ChainSite) -> String {
    match &site.object {
        Some(object) => format!("{} [{} {object}]", site.site, site.kind.name()),
        None => format!("{} [{}]", site.site, site.kind.name()),
    }
}

fn thread_now_text(now: &ThreadNow) -> String {
    match &now.state {
        ThreadState::Running => "running".to_owned(),
        ThreadState::Blocked { syscall, call_site: Some(site), .. } => {
            format!("blocked in {syscall} at {site}")
        }
        ThreadState::Blocked { syscall, call_site: None, .. } => format!("blocked in {syscall}"),
        ThreadState::Unknown => "state unknown (gone or unreadable)".to_owned(),
    }
}

/// What a peer's threads do now, in a few words: its busiest state first; `endpoint` is
/// what joins it to the chain (a socket's, or a pipe's).
pub fn peer_text(peer: &PeerProcess, endpoint: &str) -> String {
    format!("peer pid {} ({}){}", peer.pid, peer.comm, peer_doing_text(peer, endpoint))
}

/// `peer_text` without the peer's name: `: blocked in …; none of its threads waits on
/// this connection`.
pub fn peer_doing_text(peer: &PeerProcess, endpoint: &str) -> String {
    let mut states: Vec<(String, usize)> = Vec::new();
    for thread in &peer.threads {
        let text = thread_now_text(thread);
        match states.iter_mut().find(|(known, _)| *known == text) {
            Some((_, count)) => *count += 1,
            None => states.push((text, 1)),
        }
    }
    states.sort_by_key(|state| std::cmp::Reverse(state.1));
    let doing: Vec<String> = states
        .into_iter()
        .map(|(text, count)| if count > 1 { format!("{count} threads {text}") } else { text })
        .collect();
    let doing = if doing.is_empty() { "no thread readable".to_owned() } else { doing.join(", ") };
    let read = peer.threads.len() as u64;
    let of_all = if peer.thread_count > read {
        format!(" ({read} of its {} threads read)", peer.thread_count)
    } else {
        String::new()
    };
    let joined_by = if pipe_inode(endpoint).is_some() { "pipe" } else { "connection" };
    let on_socket = match peer.waiting_on_socket.as_deref() {
        None => String::new(),
        Some([]) => format!("; none of its threads waits on this {joined_by}"),
        Some(tids) => {
            format!("; waiting on this {joined_by}: {}", socket_waiters_text(peer, tids))
        }
    };
    let reached_at = match &peer.reached_at {
        Some(address) => format!(" at {address} (address translated)"),
        None => String::new(),
    };
    let others = others_text(peer);
    format!("{reached_at}: {doing}{of_all}{on_socket}{others}")
}

/// The processes behind the endpoint's other connections: `; 2 more processes behind
/// other connections: pids 4712, 4713`; the first few, then how many more.
fn others_text(peer: &PeerProcess) -> String {
    const NAMED: usize = 5;
    let others = &peer.other_pids;
    if others.is_empty() {
        return String::new();
    }
    let mut named: Vec<String> = others.iter().take(NAMED).map(u32::to_string).collect();
    if others.len() > NAMED {
        named.push(format!("{} more", others.len() - NAMED));
    }
    let processes = if others.len() == 1 { "process" } else { "processes" };
    let pids = if others.len() == 1 { "pid" } else { "pids" };
    format!(
        "; {} more {processes} behind other connections: {pids} {}",
        others.len(),
        named.join(", ")
    )
}

/// The peer threads waiting on the connection, by name and call: `reader (tid 12) in
/// recvfrom`; a few of them, then how many more.
fn socket_waiters_text(peer: &PeerProcess, tids: &[u32]) -> String {
    const NAMED: usize = 3;
    let mut named: Vec<String> = tids
        .iter()
        .take(NAMED)
        .map(|&tid| match peer.threads.iter().find(|thread| thread.tid == tid) {
            Some(ThreadNow { name, state: ThreadState::Blocked { syscall, .. }, .. }) => {
                format!("{name} (tid {tid}) in {syscall}")
            }
            Some(ThreadNow { name, .. }) => format!("{name} (tid {tid})"),
            None => format!("tid {tid}"),
        })
        .collect();
    if tids.len() > NAMED {
        named.push(format!("{} more", tids.len() - NAMED));
    }
    named.join(", ")
}

/// The terminal in a few words, for a flamegraph frame: who, not what they do
/// (`→ peer pid 30375 (slow-backend)`, `→ held by holder (tid 12)`); empty as in
/// `terminal_text`.
pub fn terminal_name(terminal: &Terminal) -> String {
    match terminal {
        Terminal::Endpoint { peer: Some(peer), .. } => match peer.other_pids.len() {
            0 => format!("→ peer pid {} ({})", peer.pid, peer.comm),
            more => format!("→ peer pid {} ({}) and {more} more", peer.pid, peer.comm),
        },
        Terminal::Endpoint { peer: None, .. } => String::new(),
        Terminal::LockHolder(holder) => format!("→ held by {} (tid {})", holder.name, holder.tid),
        Terminal::Thread(now) => format!("→ {} (tid {})", now.name, now.tid),
        Terminal::Peers(_) => "→ taken in turns".to_string(),
        Terminal::Unknown(why) => format!("→ unknown: {why}"),
    }
}

/// The terminal as the end of a chain line (nothing for an endpoint with no local
/// process found behind it: the site before it already names it, with its state).
pub fn terminal_text(terminal: &Terminal) -> String {
    match terminal {
        Terminal::Endpoint { peer: Some(peer), endpoint, .. } => {
            format!("→ {}", peer_text(peer, endpoint))
        }
        Terminal::Endpoint { peer: None, .. } => String::new(),
        Terminal::LockHolder(holder) => {
            format!("→ held by {} (tid {}): {}", holder.name, holder.tid, thread_now_text(holder))
        }
        Terminal::Thread(now) => {
            format!("→ {} (tid {}) {}", now.name, now.tid, thread_now_text(now))
        }
        Terminal::Peers(threads) => format!(
            "→ taken in turns: woken by one another ({threads} of these threads); the cause \
             is what they do between their waits"
        ),
        Terminal::Unknown(why) => format!("→ unknown: {why}"),
    }
}

/// One line per chain: `32 threads at enqueue_stat [futex queue.not_full] ← woken by
/// reporter, blocked 3.9s in send_to_backend [send 127.0.0.1:18523: send buffer full]
/// → peer pid 30375 (slow-backend): blocked in clock_nanosleep`.
pub fn chain_line(chain: &WaitChain, format_ns: impl Fn(u64) -> String) -> String {
    let of_process =
        chain.process.as_ref().map_or(String::new(), |process| format!(" of {process}"));
    format!("{}{of_process} {}", chain_waiters(chain, chain.threads), chain_path(chain, format_ns))
}

/// `N threads` (or goroutines) of a chain's first site.
pub fn chain_waiters(chain: &WaitChain, threads: u64) -> String {
    crate::model::counted(threads, crate::model::waiters_of(chain.start.kind))
}

/// A chain's line from its first site on: `at SITE [object] ← woken by ... → terminal`.
pub fn chain_path(chain: &WaitChain, format_ns: impl Fn(u64) -> String) -> String {
    let mut line = format!("at {}", site_text(&chain.start));
    // A socket site carries its state right after it, where the reader looks for it.
    let endpoint_state = |site: &ChainSite| match &chain.terminal {
        Terminal::Endpoint { endpoint, state: Some(state), .. }
            if site.object.as_deref().and_then(|object| endpoint_in_object(site.kind, object))
                == Some(endpoint) =>
        {
            Some(state.clone())
        }
        _ => None,
    };
    if chain.hops.is_empty()
        && let Some(state) = endpoint_state(&chain.start)
    {
        line.truncate(line.len() - 1);
        let _ = write!(line, ": {state}]");
    }
    for (index, hop) in chain.hops.iter().enumerate() {
        // A goroutine snapshot may know no wait's age (the runtime records one only
        // where a GC saw the wait).
        let blocked = match hop.blocked_ns {
            0 => String::new(),
            ns => format!(" {}", format_ns(ns)),
        };
        let _ =
            write!(line, " ← woken by {}, blocked{blocked} in {}", hop.waker, site_text(&hop.at));
        if index + 1 == chain.hops.len()
            && let Some(state) = endpoint_state(&hop.at)
        {
            line.truncate(line.len() - 1);
            let _ = write!(line, ": {state}]");
        }
    }
    let terminal = terminal_text(&chain.terminal);
    if !terminal.is_empty() {
        let _ = write!(line, " {terminal}");
    }
    line
}

#[cfg(test)]
mod tests;
