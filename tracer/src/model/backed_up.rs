//! Sockets whose data stopped moving while no thread waits on them: an event-driven
//! server (Redis, memcached, nginx) writes without blocking, so a client or upstream that
//! stops reading shows as a full queue, not as a wait. Read from the live system when a
//! report is made (`objects::sockets::backed_up`).

use std::{borrow::Cow, time::Duration};

use super::ProcessTag;

/// Which way a socket is backed up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backlog {
    /// Data this process wrote waits to be sent: the peer stopped reading (its window is
    /// closed) or reads slower than this process writes (the send buffer is full).
    Unsent,
    /// Data the peer sent waits to be read: this process stopped reading it (its own
    /// window is closed, or the Unix peer's send buffer is full).
    Unread,
    /// A request this process sent waits for its reply: a connection it made, whose last
    /// data went out (all of it acknowledged) and nothing came back since. Where an
    /// event-driven client (Node, nginx to its upstream, a tokio task) waits on a slow
    /// server, as a thread blocked in `recv` would.
    Awaiting,
}

impl Backlog {
    /// As the JSON report spells it.
    pub fn name(self) -> &'static str {
        match self {
            Backlog::Unsent => "unsent",
            Backlog::Unread => "unread",
            Backlog::Awaiting => "awaiting",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "unsent" => Some(Backlog::Unsent),
            "unread" => Some(Backlog::Unread),
            "awaiting" => Some(Backlog::Awaiting),
            _ => None,
        }
    }
}

/// One socket of the target backed up when the report was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackedUpSocket {
    /// Whose socket, in a profile of several processes (None: the profile's one process).
    pub process: Option<ProcessTag>,
    /// The descriptor the process holds it as, and the socket's inode (one socket held by
    /// several processes, inherited or passed, is listed once).
    pub fd: u64,
    pub inode: u64,
    /// The other end, as the endpoint tables name it (`10.0.0.5:80`, a Unix path, `unix`).
    pub peer: String,
    /// This end's address, where it has one.
    pub local: Option<String>,
    pub backlog: Backlog,
    /// Bytes queued that way: written and not yet acknowledged (unsent; a Unix socket's
    /// are charged to its buffer, overhead included), or not yet read (unread); none for
    /// a request awaiting its reply (all of it was acknowledged).
    pub queued_bytes: u64,
    /// The buffer they fill (SO_SNDBUF or SO_RCVBUF as the kernel keeps it; for unread
    /// Unix data the peer's SO_SNDBUF, which it is charged to), where told.
    pub buffer_bytes: Option<u64>,
    /// The receiving end's window is closed: the peer's (unsent) or this process's
    /// (unread). A TCP fact; false for other sockets.
    pub window_closed: bool,
    /// Unsent TCP data being sent again, unacknowledged (the peer, or the path to it,
    /// takes nothing).
    pub retransmitting: bool,
    /// Unsent TCP data still moving, held back by the peer's window this share (in
    /// percent) of the time between two looks: the peer reads slower than this process
    /// writes. None for a connection that stopped, and other sockets.
    pub window_limited_percent: Option<u8>,
    /// How long since data last moved that way (sent, or received), where the kernel tells
    /// (TCP).
    pub idle: Option<Duration>,
    /// A TCP connection (else a Unix socket).
    pub tcp: bool,
    /// The process at the other end, on this host, and what it does now ("peer pid 5678
    /// (python3): blocked in clock_nanosleep at main; none of its threads waits on this
    /// connection"; "peer is this process: …" when it holds both ends), where it was
    /// looked for and found.
    pub peer_process: Option<String>,
}

impl BackedUpSocket {
    /// A short phrase on why, for a table that gives the idle time beside it.
    pub fn reason(&self) -> Cow<'static, str> {
        if let Some(percent) = self.window_limited_percent {
            return format!("{SLOW_READER} (window-limited {percent}%)").into();
        }
        Cow::Borrowed(match (self.backlog, self.window_closed, self.retransmitting) {
            (Backlog::Unsent, true, _) => "peer stopped reading (window closed)",
            (Backlog::Unsent, false, true) => "peer not acknowledging (retransmitting)",
            // A Unix socket has no window to tell a stopped reader from a slow one.
            (Backlog::Unsent, false, false) => "send buffer full (peer slow or stopped)",
            (Backlog::Unread, true, _) => "process not reading (window closed)",
            // A Unix socket's unread data is charged to the writer's buffer.
            (Backlog::Unread, false, _) => "process slow or not reading (peer's buffer full)",
            (Backlog::Awaiting, ..) => "no reply yet (request acknowledged)",
        })
    }

    /// The bytes queued, where they say something: a request awaiting its reply queues
    /// none.
    pub fn queued(&self) -> Option<u64> {
        (self.backlog != Backlog::Awaiting).then_some(self.queued_bytes)
    }

    /// `reason` without its explanation, for a line with no room (`top`'s header).
    pub fn brief_reason(&self) -> &'static str {
        match self.reason() {
            Cow::Borrowed(reason) => reason.split_once(" (").map_or(reason, |(brief, _)| brief),
            Cow::Owned(_) => SLOW_READER,
        }
    }
}

/// Why a connection whose peer's window holds back its sends is listed.
const SLOW_READER: &str = "peer reads slowly";

/// Sockets kept per process: a proxy whose upstream stopped reading can hold thousands,
/// and the report names the heaviest (the rest are counted).
pub const BACKED_UP_KEPT: usize = 256;

/// The backed-up sockets of a profile's processes, those stopped first, each heaviest
/// first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackedUp {
    pub sockets: Vec<BackedUpSocket>,
    /// Backed-up sockets not listed: past `BACKED_UP_KEPT` of their process.
    pub left_out: u64,
}

impl BackedUp {
    /// `sockets` of one process, the heaviest `BACKED_UP_KEPT` kept.
    pub fn of(mut sockets: Vec<BackedUpSocket>) -> Self {
        sort_heaviest_first(&mut sockets);
        let left_out = sockets.len().saturating_sub(BACKED_UP_KEPT) as u64;
        sockets.truncate(BACKED_UP_KEPT);
        Self { sockets, left_out }
    }

    /// Adds another process's, tagged with it (a profile of several); a socket already
    /// listed (by inode) for an earlier process is not listed again.
    pub fn join(&mut self, other: BackedUp, process: &ProcessTag) {
        let listed: std::collections::HashSet<(u64, Backlog)> =
            self.sockets.iter().map(|socket| (socket.inode, socket.backlog)).collect();
        self.sockets.extend(other.sockets.into_iter().filter_map(|mut socket| {
            if listed.contains(&(socket.inode, socket.backlog)) {
                return None;
            }
            socket.process = Some(process.clone());
            Some(socket)
        }));
        sort_heaviest_first(&mut self.sockets);
        self.left_out += other.left_out;
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// How many are backed up: those listed and those left out.
    pub fn count(&self) -> u64 {
        self.sockets.len() as u64 + self.left_out
    }
}

/// Queues stopped first, then requests awaiting their replies, then those still moving
/// (a server's many slow clients must not push a stopped one out of the sockets kept, the
/// peers looked for, or `top`'s line); the most bytes queued first, the longest awaited
/// first, then in a fixed order.
fn sort_heaviest_first(sockets: &mut [BackedUpSocket]) {
    sockets.sort_by(|a, b| {
        let class = |socket: &BackedUpSocket| match socket.backlog {
            Backlog::Awaiting => 1,
            _ if socket.window_limited_percent.is_some() => 2,
            _ => 0,
        };
        class(a)
            .cmp(&class(b))
            .then_with(|| b.queued_bytes.cmp(&a.queued_bytes))
            .then_with(|| b.idle.cmp(&a.idle))
            .then_with(|| a.process.cmp(&b.process))
            .then_with(|| a.fd.cmp(&b.fd))
            .then_with(|| a.backlog.cmp(&b.backlog))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(fd: u64, backlog: Backlog, queued_bytes: u64) -> BackedUpSocket {
        BackedUpSocket {
            process: None,
            fd,
            inode: 1000 + fd,
            peer: "10.0.0.7:51234".to_string(),
            local: Some("10.0.0.2:6379".to_string()),
            backlog,
            queued_bytes,
            buffer_bytes: Some(4096),
            window_closed: true,
            retransmitting: false,
            window_limited_percent: None,
            idle: Some(Duration::from_millis(1500)),
            tcp: true,
            peer_process: None,
        }
    }

    #[test]
    fn each_way_says_why_in_its_own_words() {
        let unsent = socket(3, Backlog::Unsent, 4096);
        assert_eq!(unsent.reason(), "peer stopped reading (window closed)");
        let lost = BackedUpSocket { window_closed: false, retransmitting: true, ..unsent.clone() };
        assert_eq!(lost.reason(), "peer not acknowledging (retransmitting)");
        let full = BackedUpSocket { window_closed: false, ..unsent.clone() };
        assert_eq!(full.reason(), "send buffer full (peer slow or stopped)");
        let unread = socket(4, Backlog::Unread, 100);
        assert_eq!(unread.reason(), "process not reading (window closed)");
        assert_eq!(unread.brief_reason(), "process not reading");
        let slow = BackedUpSocket {
            window_closed: false,
            window_limited_percent: Some(87),
            ..unsent.clone()
        };
        assert_eq!(slow.reason(), "peer reads slowly (window-limited 87%)");
        assert_eq!(slow.brief_reason(), "peer reads slowly");
        assert_eq!(full.brief_reason(), "send buffer full");
        assert_eq!(Backlog::from_name(Backlog::Unread.name()), Some(Backlog::Unread));
        let awaiting = BackedUpSocket { window_closed: false, ..socket(5, Backlog::Awaiting, 0) };
        assert_eq!(awaiting.reason(), "no reply yet (request acknowledged)");
        assert_eq!(awaiting.brief_reason(), "no reply yet");
        assert_eq!(Backlog::from_name(Backlog::Awaiting.name()), Some(Backlog::Awaiting));
        assert_eq!(Backlog::from_name("sideways"), None);
    }

    #[test]
    fn a_process_keeps_its_heaviest_and_counts_the_rest() {
        let many: Vec<BackedUpSocket> =
            (0..BACKED_UP_KEPT as u64 + 3).map(|fd| socket(fd, Backlog::Unsent, fd * 10)).collect();
        let kept = BackedUp::of(many);
        assert_eq!(kept.sockets.len(), BACKED_UP_KEPT);
        assert_eq!(kept.left_out, 3);
        // The three lightest (fds 0, 1, 2) went.
        assert_eq!(kept.sockets.first().map(|s| s.fd), Some(BACKED_UP_KEPT as u64 + 2));
        assert_eq!(kept.sockets.last().map(|s| s.fd), Some(3));
        assert_eq!(kept.count(), BACKED_UP_KEPT as u64 + 3);
        assert!(!kept.is_empty() && BackedUp::default().is_empty());
        // A server's many slow readers, heavier each than its one stopped client: the
        // stopped one is kept, first.
        let mut many: Vec<BackedUpSocket> = (0..BACKED_UP_KEPT as u64 + 3)
            .map(|fd| BackedUpSocket {
                window_limited_percent: Some(90),
                ..socket(fd + 10, Backlog::Unsent, 1 << 20)
            })
            .collect();
        many.push(socket(3, Backlog::Unsent, 100));
        let kept = BackedUp::of(many);
        assert_eq!(kept.sockets[0].fd, 3, "{:?}", kept.sockets[0]);
        assert_eq!(kept.left_out, 4);
    }

    #[test]
    fn processes_joined_are_tagged_and_ordered_together() {
        let tag = |pid: u32| ProcessTag { pid, comm: "redis".to_string(), cgroup: None };
        let mut all = BackedUp::default();
        all.join(BackedUp::of(vec![socket(5, Backlog::Unsent, 10)]), &tag(1));
        let second = BackedUp { left_out: 2, ..BackedUp::of(vec![socket(6, Backlog::Unread, 99)]) };
        all.join(second, &tag(2));
        let order: Vec<(u32, u64)> =
            all.sockets.iter().map(|s| (s.process.as_ref().map_or(0, |p| p.pid), s.fd)).collect();
        assert_eq!(order, [(2, 6), (1, 5)]);
        assert_eq!(all.left_out, 2);
        // A socket the third process shares with the first (inherited): listed once.
        all.join(BackedUp::of(vec![socket(5, Backlog::Unsent, 10)]), &tag(3));
        assert_eq!(all.sockets.len(), 2);
    }
}
