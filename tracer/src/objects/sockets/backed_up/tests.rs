//! The scan's two looks, against socket tables the tests write: what the first look
//! judges and keeps for the second, what the second judges, and what tables that fail
//! cost. (The real kernel's tables are read by the real-kernel tests.)

use std::{
    cell::{Cell, RefCell},
    collections::{HashMap, HashSet},
    io,
    net::{IpAddr, Ipv4Addr},
    rc::Rc,
};

use netlink_packet_sock_diag::{
    constants::TCP_ESTABLISHED,
    inet::{InetResponseHeader, nlas::MemInfo, nlas::Nla},
};

use super::*;
use crate::objects::sockets::{
    Protocol,
    diag::{DiagKey, TcpFlow, tcp_info_saying},
};

/// Which look the tables answer as: 0 until the scan's wait, 1 after.
#[derive(Clone, Default)]
struct Look(Rc<Cell<u32>>);

impl Look {
    fn get(&self) -> usize {
        self.0.get() as usize
    }
}

/// The tests' time: the wait passes at once, `READ_AGAIN_AFTER` by the clock, and turns
/// the tables to their second look.
struct TestTime {
    start: Instant,
    look: Look,
}

impl ScanTime for TestTime {
    fn now(&self) -> Instant {
        self.start + READ_AGAIN_AFTER * self.look.0.get()
    }

    fn wait(&mut self, how_long: Duration) {
        assert_eq!(how_long, READ_AGAIN_AFTER);
        self.look.0.set(self.look.0.get() + 1);
    }
}

/// A TCP connection as one look finds it (IPv4, local port `port`).
#[derive(Clone, Copy)]
struct Connection {
    inode: u32,
    port: u16,
    unacknowledged: u32,
    flow: TcpFlow,
}

/// Data written and not yet sent, sent last `since_sent` ago, the peer's window having
/// held sending back `window_limited_ms` in all.
fn connection(inode: u32, since_sent_ms: u64, window_limited_ms: u64) -> Connection {
    Connection {
        inode,
        port: 40_000 + inode as u16,
        unacknowledged: 900,
        flow: TcpFlow {
            since_sent: Duration::from_millis(since_sent_ms),
            since_received: Duration::from_millis(since_sent_ms),
            since_acknowledged: Duration::from_millis(since_sent_ms),
            own_window_zero: Some(false),
            retransmitting: false,
            window_limited: Some(Duration::from_millis(window_limited_ms)),
            not_sent: Some(600),
            received_any: Some(true),
        },
    }
}

impl Connection {
    fn answer(&self) -> InetResponse {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        InetResponse {
            header: InetResponseHeader {
                family: AF_INET,
                state: TCP_ESTABLISHED,
                timer: None,
                socket_id: SocketId {
                    source_port: self.port,
                    destination_port: 6379,
                    source_address: localhost,
                    destination_address: localhost,
                    interface_id: 0,
                    cookie: [0; 8],
                },
                recv_queue: 0,
                send_queue: self.unacknowledged,
                uid: 0,
                inode: self.inode,
            },
            nlas: vec![
                Nla::MemInfo(MemInfo {
                    receive_queue: 0,
                    receive_queue_max: 131_072,
                    send_queue: 4608,
                    send_queue_max: 4608,
                    bottom_send_queues: 0,
                    cache: 0,
                    options: 0,
                    backlog_queue_length: 0,
                    drops: 0,
                }),
                Nla::TcpInfo(tcp_info_saying(&self.flow)),
            ]
            .into(),
        }
    }
}

/// A Unix stream socket as one look finds it, and its peer.
#[derive(Clone, Copy)]
struct UnixSocket {
    send_queue: u32,
    recv_queue: u32,
    peer_send_queue: u32,
}

const UNIX_BUFFER: u32 = 212_992;

fn unix_info(inode: u64, send_queue: u32, recv_queue: u32) -> SocketInfo {
    SocketInfo {
        send_queue: Some(send_queue),
        send_buffer: Some(UNIX_BUFFER),
        recv_queue: Some(recv_queue),
        ..SocketInfo::addresses_only(inode, Protocol::Unix, None, None)
    }
}

/// What the tables were asked.
#[derive(Default, Debug, PartialEq, Eq)]
struct Asked {
    dumps: usize,
    gets: usize,
    unix: usize,
    listeners: usize,
}

/// One namespace's tables at each of the two looks.
#[derive(Default)]
struct TestTables {
    look: Look,
    tcp: [Vec<Connection>; 2],
    /// By inode; `None` at a look: closed.
    unix: HashMap<u32, [Option<UnixSocket>; 2]>,
    /// Every request of the second look fails (a namespace gone, a timeout).
    fails_at_second_look: bool,
    /// The ports its listeners listen on.
    listening: Vec<u16>,
    asked: Rc<RefCell<Asked>>,
}

impl TestTables {
    fn answer_or_fail(&self) -> Result<usize, NetlinkError> {
        let look = self.look.get();
        if look == 1 && self.fails_at_second_look {
            let timed_out = io::Error::new(io::ErrorKind::TimedOut, "no answer");
            return Err(NetlinkError::Recv(timed_out));
        }
        Ok(look)
    }
}

impl SocketTables for TestTables {
    fn dump_tcp(
        &mut self,
        _family: u8,
        each: &mut dyn FnMut(InetResponse),
    ) -> Result<(), NetlinkError> {
        let look = self.answer_or_fail()?;
        self.asked.borrow_mut().dumps += 1;
        self.tcp[look].iter().for_each(|connection| each(connection.answer()));
        Ok(())
    }

    fn get_tcp(
        &mut self,
        _family: u8,
        id: &SocketId,
    ) -> Result<Option<InetResponse>, NetlinkError> {
        let look = self.answer_or_fail()?;
        self.asked.borrow_mut().gets += 1;
        let found = self.tcp[look].iter().find(|connection| connection.port == id.source_port);
        Ok(found.map(Connection::answer))
    }

    fn unix_and_peer(
        &mut self,
        inode: u32,
    ) -> Result<Option<(Record, Option<SocketInfo>)>, NetlinkError> {
        let look = self.answer_or_fail()?;
        self.asked.borrow_mut().unix += 1;
        let Some(socket) = self.unix.get(&inode).and_then(|looks| looks[look]) else {
            return Ok(None);
        };
        let info = unix_info(u64::from(inode), socket.send_queue, socket.recv_queue);
        let peer = unix_info(u64::from(inode) + 1, socket.peer_send_queue, 0);
        Ok(Some((Record { info, key: DiagKey::Unix { inode } }, Some(peer))))
    }

    fn listening_ports(&mut self, _family: u8) -> Result<HashSet<u16>, NetlinkError> {
        self.answer_or_fail()?;
        self.asked.borrow_mut().listeners += 1;
        Ok(self.listening.iter().copied().collect())
    }
}

/// Processes placed in namespaces by hand, as `list_sockets` places them from `/proc`.
#[derive(Default)]
struct TestListing(Listing);

impl TestListing {
    /// Process `pid`, in namespace `namespace` (an index; one past the last starts a new
    /// one), holding IPv4 connections and Unix sockets, each (descriptor, inode).
    fn process(
        mut self,
        pid: u32,
        namespace: usize,
        tcp: &[(u64, u32)],
        unix: &[(u64, u32)],
    ) -> Self {
        let Listing { scanned, tcp_owner, namespaces } = &mut self.0;
        let index = scanned.len();
        let mut process = Scanned { pid, ..Default::default() };
        if !tcp.is_empty() {
            process.families.insert(AF_INET);
        }
        for &(fd, inode) in tcp {
            tcp_owner.insert(u64::from(inode), (index, fd));
        }
        process.unix = unix.iter().map(|&(fd, inode)| (fd, u64::from(inode))).collect();
        scanned.push(process);
        if namespace == namespaces.len() {
            namespaces.push(Vec::new());
        }
        namespaces[namespace].push(index);
        self
    }
}

/// What a scan of `listing` found, against `tables` by the pid it was opened for; and how
/// many looks it took.
fn scan(
    listing: TestListing,
    tables: Vec<(u32, TestTables)>,
    look: &Look,
) -> (Vec<ProcessScan>, usize) {
    let mut by_pid: HashMap<u32, TestTables> = tables.into_iter().collect();
    let open = |pid: u32| {
        by_pid.remove(&pid).ok_or_else(|| NetlinkError::NetNs {
            pid,
            source: io::Error::from(io::ErrorKind::NotFound),
        })
    };
    let mut time = TestTime { start: Instant::now(), look: look.clone() };
    let found = read_tables(listing.0, open, &mut time);
    (found, look.get() + 1)
}

/// Each socket found: (descriptor, way, window-limited share).
fn ways(found: &[BackedUpSocket]) -> Vec<(u64, Backlog, Option<u8>)> {
    let mut ways: Vec<_> = found
        .iter()
        .map(|socket| (socket.fd, socket.backlog, socket.window_limited_percent))
        .collect();
    ways.sort();
    ways
}

#[test]
fn stopped_connections_are_judged_at_the_first_look_and_moving_ones_at_the_second() {
    let look = Look::default();
    let asked = Rc::new(RefCell::new(Asked::default()));
    // 10: nothing sent for 2 s, stopped. 11: moving, its window holding it back 80 ms of
    // the 100 between the looks. 12: moving, held back 5 ms. 13: moving, stopped since.
    // 14: moving, closed since. 15: idle with nothing to send. 16: another process's.
    let first = vec![
        connection(10, 2000, 0),
        connection(11, 10, 10_000),
        connection(12, 10, 10_000),
        connection(13, 10, 10_000),
        connection(14, 10, 10_000),
        Connection { unacknowledged: 0, ..connection(15, 5000, 0) },
        connection(16, 2000, 0),
    ];
    let second = vec![
        connection(10, 2100, 0),
        connection(11, 20, 10_080),
        connection(12, 20, 10_005),
        connection(13, 1100, 10_090),
        Connection { unacknowledged: 0, ..connection(15, 5100, 0) },
        connection(16, 2100, 0),
    ];
    let tables = TestTables {
        look: look.clone(),
        tcp: [first, second],
        asked: asked.clone(),
        ..Default::default()
    };
    let held = [(3, 10), (4, 11), (5, 12), (6, 13), (7, 14), (8, 15)];
    let listing = TestListing::default().process(100, 0, &held, &[]);
    let (found, looks) = scan(listing, vec![(100, tables)], &look);
    assert_eq!(looks, 2);
    let (sockets, failed) = &found[0];
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(
        ways(sockets),
        [(3, Backlog::Unsent, None), (4, Backlog::Unsent, Some(80)), (6, Backlog::Unsent, None)]
    );
    // The four moving ones asked for one by one; the slow one's idle time is its second
    // look's.
    assert_eq!(*asked.borrow(), Asked { dumps: 1, gets: 4, unix: 0, listeners: 0 });
    let slow = sockets.iter().find(|socket| socket.fd == 4).unwrap();
    assert_eq!(slow.idle, Some(Duration::from_millis(20)));
}

#[test]
fn more_moving_connections_than_are_asked_for_one_by_one_are_read_again_in_a_dump() {
    let look = Look::default();
    let asked = Rc::new(RefCell::new(Asked::default()));
    let count = ASKED_ONE_BY_ONE as u32 + 44;
    let inodes = 1000..1000 + count;
    let first = inodes.clone().map(|inode| connection(inode, 10, 0)).collect();
    // Every other one slow.
    let slow = |inode: u32| if inode.is_multiple_of(2) { 60 } else { 10 };
    let second = inodes.clone().map(|inode| connection(inode, 10, slow(inode))).collect();
    let tables = TestTables {
        look: look.clone(),
        tcp: [first, second],
        asked: asked.clone(),
        ..Default::default()
    };
    let held: Vec<(u64, u32)> = inodes.map(|inode| (u64::from(inode), inode)).collect();
    let listing = TestListing::default().process(100, 0, &held, &[]);
    let (found, _) = scan(listing, vec![(100, tables)], &look);
    let sockets = &found[0].0;
    assert_eq!(sockets.len(), count as usize / 2);
    assert!(sockets.iter().all(|socket| socket.fd.is_multiple_of(2)));
    assert!(sockets.iter().all(|socket| socket.window_limited_percent == Some(60)));
    assert_eq!(*asked.borrow(), Asked { dumps: 2, gets: 0, unix: 0, listeners: 0 });
}

#[test]
fn a_unix_socket_counts_only_the_ways_backed_up_at_both_looks() {
    let look = Look::default();
    let asked = Rc::new(RefCell::new(Asked::default()));
    let full = UnixSocket { send_queue: UNIX_BUFFER, recv_queue: 0, peer_send_queue: 0 };
    let moving = UnixSocket { send_queue: 4096, ..full };
    let unread = UnixSocket { send_queue: 0, recv_queue: 180_224, peer_send_queue: UNIX_BUFFER };
    let both = UnixSocket { send_queue: UNIX_BUFFER, ..unread };
    let unix = HashMap::from([
        // Full at both looks; full for a moment; full only at the second (not looked at
        // again); both ways, then unread alone; full, then closed; full, then both ways
        // (unread only at the second look: not counted).
        (20, [Some(full), Some(full)]),
        (21, [Some(full), Some(moving)]),
        (22, [Some(moving), Some(full)]),
        (23, [Some(both), Some(unread)]),
        (24, [Some(full), None]),
        (25, [Some(full), Some(both)]),
    ]);
    let tables =
        TestTables { look: look.clone(), unix, asked: asked.clone(), ..Default::default() };
    let held = [(5, 20), (6, 21), (7, 22), (8, 23), (9, 24), (10, 25)];
    let listing = TestListing::default().process(100, 0, &[], &held);
    let (found, looks) = scan(listing, vec![(100, tables)], &look);
    assert_eq!(looks, 2);
    assert_eq!(
        ways(&found[0].0),
        [(5, Backlog::Unsent, None), (8, Backlog::Unread, None), (10, Backlog::Unsent, None)]
    );
    // Six at the first look, the five backed up then at the second.
    assert_eq!(*asked.borrow(), Asked { dumps: 0, gets: 0, unix: 11, listeners: 0 });
}

#[test]
fn no_second_look_when_the_first_leaves_nothing_to_look_at() {
    let look = Look::default();
    let tables = TestTables {
        look: look.clone(),
        tcp: [vec![connection(10, 2000, 0), connection(11, 10, 0)], Vec::new()],
        unix: HashMap::from([(
            20,
            [Some(UnixSocket { send_queue: 10, recv_queue: 0, peer_send_queue: 0 }), None],
        )]),
        ..Default::default()
    };
    // 11 is moving with nothing waiting to be sent: no window can hold it back.
    let mut tables = tables;
    tables.tcp[0][1].flow.not_sent = Some(0);
    let listing = TestListing::default().process(100, 0, &[(3, 10), (4, 11)], &[(5, 20)]);
    let (found, looks) = scan(listing, vec![(100, tables)], &look);
    assert_eq!(looks, 1, "the scan waited for nothing");
    assert_eq!(ways(&found[0].0), [(3, Backlog::Unsent, None)]);
}

#[test]
fn tables_that_fail_are_counted_for_their_namespace_alone() {
    let look = Look::default();
    // Namespace 0 (pids 100, 101) answers the first look and fails the second: what the
    // first found stays, and both processes are counted. Namespace 1 (pid 200) reads
    // both looks. Namespace 2 (pid 300) cannot be opened.
    let failing = TestTables {
        look: look.clone(),
        tcp: [vec![connection(10, 2000, 0), connection(11, 10, 0)], Vec::new()],
        fails_at_second_look: true,
        ..Default::default()
    };
    let reading = TestTables {
        look: look.clone(),
        tcp: [vec![connection(30, 10, 0)], vec![connection(30, 10, 70)]],
        ..Default::default()
    };
    let listing = TestListing::default()
        .process(100, 0, &[(3, 10)], &[])
        .process(101, 0, &[(4, 11)], &[])
        .process(200, 1, &[(5, 30)], &[])
        .process(300, 2, &[(6, 40)], &[]);
    let (found, _) = scan(listing, vec![(100, failing), (200, reading)], &look);
    let said = |index: usize| found[index].1.as_ref().map(ToString::to_string);
    assert_eq!(ways(&found[0].0), [(3, Backlog::Unsent, None)]);
    assert!(said(0).is_some_and(|said| said.contains("socket tables")), "{:?}", said(0));
    assert!(found[1].0.is_empty() && said(1).is_some(), "{:?}", found[1]);
    assert_eq!(ways(&found[2].0), [(5, Backlog::Unsent, Some(70))]);
    assert!(said(2).is_none(), "{:?}", said(2));
    assert!(said(3).is_some_and(|said| said.contains("pid 300")), "{:?}", said(3));
}

#[test]
fn a_request_awaits_its_reply_on_a_connection_the_process_made() {
    let look = Look::default();
    let asked = Rc::new(RefCell::new(Asked::default()));
    // Sent 2 s ago, acknowledged, nothing back since: the one made (local port 40010)
    // awaits its reply; the one accepted (local port 8080, a listener's) sent its reply.
    let request = |inode: u32, port: u16| Connection {
        port,
        unacknowledged: 0,
        flow: TcpFlow {
            since_received: Duration::from_secs(9),
            not_sent: Some(0),
            ..connection(inode, 2000, 0).flow
        },
        ..connection(inode, 2000, 0)
    };
    let first = vec![request(10, 40_010), request(11, 8080)];
    let tables = TestTables {
        look: look.clone(),
        tcp: [first, Vec::new()],
        listening: vec![8080],
        asked: asked.clone(),
        ..Default::default()
    };
    let listing = TestListing::default().process(100, 0, &[(3, 10), (4, 11)], &[]);
    let (found, looks) = scan(listing, vec![(100, tables)], &look);
    assert_eq!(ways(&found[0].0), [(3, Backlog::Awaiting, None)]);
    assert_eq!(found[0].0[0].idle, Some(Duration::from_secs(2)));
    // Nothing to look at again; the listeners asked for once.
    assert_eq!(looks, 1);
    assert_eq!(*asked.borrow(), Asked { dumps: 1, gets: 0, unix: 0, listeners: 1 });
}

#[test]
fn a_process_gone_has_no_sockets() {
    // No process has this pid (above the kernel's pid_max).
    let gone = scan_processes(&[u32::MAX - 1]);
    assert_eq!(gone.len(), 1);
    assert!(gone[0].0.is_empty());
    assert!(gone[0].1.is_none(), "a process gone is no failure: {:?}", gone[0].1);
}
