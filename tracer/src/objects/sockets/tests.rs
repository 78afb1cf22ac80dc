use std::{
    io::{ErrorKind, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd, FromRawFd as _, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    thread,
};

use super::*;

#[test]
fn socket_links_give_their_inode() {
    assert_eq!(socket_inode("socket:[123456]"), Some(123456));
    assert_eq!(socket_inode("socket:[12"), None);
    assert_eq!(socket_inode("pipe:[99]"), None);
}

#[test]
fn protocol_names_map() {
    assert_eq!(
        kind_of_protocol_name(b"TCP"),
        SocketKind::Inet { family: AF_INET, protocol: IPPROTO_TCP }
    );
    assert_eq!(
        kind_of_protocol_name(b"UDPv6"),
        SocketKind::Inet { family: AF_INET6, protocol: IPPROTO_UDP }
    );
    assert_eq!(kind_of_protocol_name(b"UNIX-STREAM"), SocketKind::Unix);
    assert_eq!(kind_of_protocol_name(b"NETLINK"), SocketKind::Other);
}

fn info(protocol: Protocol) -> SocketInfo {
    SocketInfo::addresses_only(1, protocol, None, None)
}

#[test]
fn states_phrase() {
    let sender = SocketInfo {
        tcp_state: Some(TcpState::Established),
        send_queue: Some(4096),
        send_buffer: Some(4608),
        recv_queue: Some(0),
        ..info(Protocol::Tcp)
    };
    assert_eq!(sender.wait_state(WaitKind::Send), "send buffer full (4096/4608 bytes)");
    assert_eq!(sender.wait_state(WaitKind::Write), "send buffer full (4096/4608 bytes)");
    let closed_window = SocketInfo { peer_window_zero: Some(true), ..sender.clone() };
    assert_eq!(
        closed_window.wait_state(WaitKind::Send),
        "send buffer full (4096/4608 bytes), peer window zero"
    );
    assert_eq!(sender.wait_state(WaitKind::Recv), "waiting for data");
    let partial = SocketInfo { recv_queue: Some(12), ..sender.clone() };
    assert_eq!(partial.wait_state(WaitKind::Read), "waiting for data (12 bytes queued)");
    let connecting = SocketInfo { tcp_state: Some(TcpState::SynSent), ..info(Protocol::Tcp) };
    assert_eq!(connecting.wait_state(WaitKind::Connect), "connecting (SYN sent)");
    let listener = SocketInfo {
        tcp_state: Some(TcpState::Listen),
        accept_backlog: Some((0, 128)),
        ..info(Protocol::Tcp)
    };
    assert_eq!(listener.wait_state(WaitKind::Accept), "accept queue 0/128");
    assert_eq!(info(Protocol::Unix).wait_state(WaitKind::Send), "send buffer full");
    assert_eq!(info(Protocol::Unix).wait_state(WaitKind::Accept), "waiting for connections");
}

#[test]
fn endpoints_name_the_wait() {
    let connected = SocketInfo {
        local: Some("10.0.0.1:40000".into()),
        remote: Some("10.0.0.5:80".into()),
        ..info(Protocol::Tcp)
    };
    assert_eq!(connected.endpoint(WaitKind::Send), "10.0.0.5:80");
    assert_eq!(connected.endpoint(WaitKind::Connect), "10.0.0.5:80");
    let listener = SocketInfo { local: Some("0.0.0.0:8080".into()), ..info(Protocol::Tcp) };
    assert_eq!(listener.endpoint(WaitKind::Accept), "0.0.0.0:8080 (listening)");
    // A connection to it is another endpoint of the same address.
    let to_it = SocketInfo { remote: Some("0.0.0.0:8080".into()), ..connected.clone() };
    assert_eq!(to_it.endpoint(WaitKind::Send), "0.0.0.0:8080");
    // An unconnected UDP receiver waits on its own port.
    let receiver = SocketInfo { local: Some("[::]:53".into()), ..info(Protocol::Udp) };
    assert_eq!(receiver.endpoint(WaitKind::Recv), "[::]:53");
    assert_eq!(info(Protocol::Unix).endpoint(WaitKind::Recv), "unix");
    let client = SocketInfo { remote: Some("@bus".into()), ..info(Protocol::Unix) };
    assert_eq!(client.endpoint(WaitKind::Recv), "@bus");
}

// Real-kernel tests: sockets of this test process, resolved through /proc/self and sock_diag.

fn fd(socket: &impl AsRawFd) -> u64 {
    socket.as_raw_fd() as u64
}

fn resolve_socket(fd: u64) -> SocketInfo {
    let mut resolver = SocketResolver::new(std::process::id());
    match resolver.resolve(fd) {
        SocketLookup::Socket(info) => info,
        other => {
            panic!("fd {fd}: {other:?} ({:?}, {:?})", resolver.counts(), resolver.last_error())
        }
    }
}

/// What the client asks for with SO_SNDBUF: the kernel doubles it and raises it to
/// SOCK_MIN_SNDBUF, so the buffer fills after a few KiB.
const SMALL_SNDBUF: libc::c_int = 4096;

fn set_int_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) {
    // SAFETY: the descriptor is open for the call; the option is a c_int passed with its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(result, 0, "setsockopt {name}: {}", std::io::Error::last_os_error());
}

#[test]
fn full_send_buffer_resolves() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(address).unwrap();
    // The peer never reads.
    let (_server, _) = listener.accept().unwrap();
    set_int_option(&client, libc::SOL_SOCKET, libc::SO_SNDBUF, SMALL_SNDBUF);
    client.set_nonblocking(true).unwrap();
    let chunk = [0u8; 16 * 1024];
    let mut written = 0usize;
    loop {
        match client.write(&chunk) {
            Ok(n) => written += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) => panic!("write after {written} bytes: {error}"),
        }
    }
    let info = resolve_socket(fd(&client));
    println!("after {written} bytes: {info:?}");
    assert_eq!(info.protocol, Protocol::Tcp);
    assert_eq!(info.tcp_state, Some(TcpState::Established));
    assert_eq!(info.remote.as_deref(), Some(address.to_string().as_str()));
    assert_eq!(info.endpoint(WaitKind::Send), address.to_string());
    assert!(info.send_queue.is_some_and(|queued| queued > 0), "{info:?}");
    assert!(info.send_buffer.is_some_and(|size| size >= SMALL_SNDBUF as u32), "{info:?}");
    // 6.18 reports tcpi_snd_wnd, so the window is known either way.
    assert!(info.peer_window_zero.is_some(), "{info:?}");
    let state = info.wait_state(WaitKind::Send);
    assert!(state.starts_with("send buffer full ("), "{state}");
}

/// The receiver's SO_RCVBUF in the window test: small, so its window closes before the
/// sender's (autotuned) send buffer fills.
const SMALL_RCVBUF: libc::c_int = 4096;

#[test]
fn closed_peer_window_is_seen() {
    let listener = listener_with(16, Some(SMALL_RCVBUF));
    let address = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(address).unwrap();
    let (_server, _) = listener.accept().unwrap();
    client.set_nonblocking(true).unwrap();
    let chunk = [0u8; 16 * 1024];
    let mut written = 0usize;
    loop {
        match client.write(&chunk) {
            Ok(n) => written += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) => panic!("write after {written} bytes: {error}"),
        }
    }
    // The last segments take a moment to be answered with the zero window.
    let mut info = resolve_socket(fd(&client));
    for _ in 0..50 {
        if info.peer_window_zero == Some(true) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
        info = resolve_socket(fd(&client));
    }
    println!("after {written} bytes: {info:?}");
    assert_eq!(info.peer_window_zero, Some(true), "{info:?}");
    assert!(info.wait_state(WaitKind::Send).ends_with(", peer window zero"));
}

#[test]
fn idle_connection_waits_for_data() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let client = TcpStream::connect(address).unwrap();
    let (_server, _) = listener.accept().unwrap();
    let info = resolve_socket(fd(&client));
    assert_eq!(info.recv_queue, Some(0));
    assert_eq!(info.peer_window_zero, Some(false));
    assert_eq!(info.wait_state(WaitKind::Recv), "waiting for data");
    assert_eq!(info.endpoint(WaitKind::Recv), address.to_string());
}

/// A TCP listener on 127.0.0.1 with an explicit `listen` backlog (std picks its own).
fn listener_with_backlog(backlog: libc::c_int) -> TcpListener {
    listener_with(backlog, None)
}

/// Same, with SO_RCVBUF set before `listen` so that accepted sockets inherit it (and the
/// window scale they announce fits it).
fn listener_with(backlog: libc::c_int, receive_buffer: Option<libc::c_int>) -> TcpListener {
    // SAFETY: plain socket creation; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: `address` is a valid sockaddr_in and its size is passed.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
    if let Some(size) = receive_buffer {
        set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, size);
    }
    // SAFETY: listen on the socket we own.
    let listening = unsafe { libc::listen(socket.as_raw_fd(), backlog) };
    assert_eq!(listening, 0, "listen: {}", std::io::Error::last_os_error());
    TcpListener::from(socket)
}

/// Backlog of the listener in the accept test: small, below any somaxconn clamp.
const ACCEPT_BACKLOG: u32 = 5;

#[test]
fn listener_reports_accept_queue() {
    let listener = listener_with_backlog(ACCEPT_BACKLOG as libc::c_int);
    let address = listener.local_addr().unwrap();
    let _clients: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(address).unwrap()).collect();
    // The server side of the handshake completes in softirq context; give it a moment.
    let mut info = resolve_socket(fd(&listener));
    for _ in 0..50 {
        if info.accept_backlog.is_some_and(|(current, _)| current == 2) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
        info = resolve_socket(fd(&listener));
    }
    assert_eq!(info.tcp_state, Some(TcpState::Listen));
    assert_eq!(info.accept_backlog, Some((2, ACCEPT_BACKLOG)), "{info:?}");
    assert_eq!(info.endpoint(WaitKind::Accept), format!("{address} (listening)"));
    assert_eq!(info.wait_state(WaitKind::Accept), format!("accept queue 2/{ACCEPT_BACKLOG}"));
}

#[test]
fn connect_to_full_listener_stays_in_syn_sent() {
    // Backlog 0 still admits one connection (sk_acceptq_is_full is `>`); never accepted, it
    // fills the queue, and tcp_conn_request drops every later SYN.
    let listener = listener_with_backlog(0);
    let address = listener.local_addr().unwrap();
    let _queued = TcpStream::connect(address).unwrap();
    thread::sleep(Duration::from_millis(20));

    // SAFETY: plain socket creation; the result is checked before use.
    let raw = unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let client = unsafe { OwnedFd::from_raw_fd(raw) };
    let SocketAddr::V4(v4) = address else { panic!("{address} is not IPv4") };
    let target = sockaddr(v4);
    // SAFETY: `target` is a valid sockaddr_in and its size is passed.
    let connected = unsafe {
        libc::connect(
            client.as_raw_fd(),
            (&raw const target).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let error = std::io::Error::last_os_error();
    assert!(
        connected == -1 && error.raw_os_error() == Some(libc::EINPROGRESS),
        "connect: {connected} {error}"
    );

    let info = resolve_socket(fd(&client));
    assert_eq!(info.tcp_state, Some(TcpState::SynSent), "{info:?}");
    assert_eq!(info.wait_state(WaitKind::Connect), "connecting (SYN sent)");
    assert_eq!(info.endpoint(WaitKind::Connect), address.to_string());
    let listener_info = resolve_socket(fd(&listener));
    assert_eq!(listener_info.accept_backlog, Some((1, 0)), "{listener_info:?}");
}

fn sockaddr(address: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: address.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*address.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

#[test]
fn udp_resolves() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect("127.0.0.1:9").unwrap();
    let info = resolve_socket(fd(&socket));
    assert_eq!(info.protocol, Protocol::Udp);
    assert_eq!(info.local, Some(socket.local_addr().unwrap().to_string()));
    assert_eq!(info.endpoint(WaitKind::Recv), "127.0.0.1:9");
    assert_eq!(info.wait_state(WaitKind::Recv), "waiting for data");
}

#[test]
fn socketpair_resolves_as_unix() {
    let (left, _right) = UnixStream::pair().unwrap();
    let info = resolve_socket(fd(&left));
    assert_eq!(info.protocol, Protocol::Unix);
    assert_eq!((info.local.as_deref(), info.remote.as_deref()), (None, None));
    assert_eq!(info.endpoint(WaitKind::Recv), "unix");
    assert_eq!(info.wait_state(WaitKind::Recv), "waiting for data");
}

#[test]
fn named_unix_sockets_resolve() {
    let path = std::env::temp_dir().join(format!("tracer-sockets-{}.sock", std::process::id()));
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let client = UnixStream::connect(&path).unwrap();
    let name = path.to_string_lossy().into_owned();

    let listening = resolve_socket(fd(&listener));
    // Until accepted, the server end has no inode (UNIX_DIAG_PEER says 0): no remote yet.
    let waiting = resolve_socket(fd(&client));
    let (_server, _) = listener.accept().unwrap();
    let connected = resolve_socket(fd(&client));
    fs::remove_file(&path).unwrap();
    assert_eq!(listening.local.as_deref(), Some(name.as_str()));
    assert_eq!(listening.endpoint(WaitKind::Accept), format!("{name} (listening)"));
    assert!(
        listening.accept_backlog.is_some_and(|(current, max)| current == 1 && max > 0),
        "{listening:?}"
    );
    assert_eq!(waiting.remote, None);
    // The client's peer is the server end, which carries the listener's name.
    assert_eq!(connected.remote.as_deref(), Some(name.as_str()));
    assert_eq!(connected.endpoint(WaitKind::Send), name);
}

#[test]
fn closed_unix_sockets_are_forgotten() {
    // A service whose connections are Unix sockets, each a new inode: the table keeps
    // those open, and at most a pruning's worth of closed ones.
    let mut resolver = SocketResolver::new(std::process::id());
    let kept = UnixStream::pair().unwrap();
    assert!(matches!(resolver.resolve(fd(&kept.0)), SocketLookup::Socket(_)));
    for _ in 0..3 * PRUNE_AFTER {
        let (one, _other) = UnixStream::pair().unwrap();
        // Its number was the last one's: looked up afresh, not taken as that socket.
        resolver.descriptors.clear();
        assert!(matches!(resolver.resolve(fd(&one)), SocketLookup::Socket(_)));
    }
    // Other tests' sockets, open in parallel threads, are kept too when pruning meets them.
    assert!(resolver.table.len() <= PRUNE_AFTER + 64, "{} sockets kept", resolver.table.len());
    let link = fs::read_link(format!("/proc/self/fd/{}", fd(&kept.0))).unwrap();
    let inode = socket_inode(&link.to_string_lossy()).unwrap();
    assert!(resolver.table.contains_key(&inode), "the open socket is kept");
}

/// A descriptor number far above what the other tests (in parallel threads) get.
const CLOSED_FD: libc::c_int = 5000;

#[test]
fn closed_descriptor_is_unresolved() {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: duplicates an open descriptor to the lowest free number >= CLOSED_FD.
    let raw = unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_DUPFD_CLOEXEC, CLOSED_FD) };
    assert!(raw >= CLOSED_FD, "fcntl: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is the duplicate just made, owned here only.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });

    let mut resolver = SocketResolver::new(std::process::id());
    assert_eq!(resolver.resolve(raw as u64), SocketLookup::Unresolved);
    assert_eq!(resolver.counts().closed, 1);
    assert_eq!(resolver.counts().resolved, 0);
}

#[test]
fn a_descriptor_closed_after_a_lookup_is_unresolved_once_the_answer_is_stale() {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: duplicates an open descriptor to the lowest free number >= CLOSED_FD + 1.
    let raw = unsafe { libc::fcntl(socket.as_raw_fd(), libc::F_DUPFD_CLOEXEC, CLOSED_FD + 1) };
    assert!(raw > CLOSED_FD, "fcntl: {}", std::io::Error::last_os_error());
    let mut resolver = SocketResolver::new(std::process::id());
    assert!(matches!(resolver.resolve(raw as u64), SocketLookup::Socket(_)));
    // SAFETY: `raw` is the duplicate just made, owned here only.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });
    thread::sleep(FRESH_FOR + Duration::from_millis(10));
    assert_eq!(resolver.resolve(raw as u64), SocketLookup::Unresolved);
    assert_eq!(resolver.counts().closed, 1);
}

/// A wait's descriptor closed and reused before the lookup (a client connection per
/// request): named by the socket it was open on when the wait ended, as the table knew
/// it, else unresolved; never by the socket now at its number.
#[test]
fn a_descriptor_reused_since_the_wait_is_not_named_by_its_new_socket() {
    use std::os::unix::fs::MetadataExt as _;
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let second = TcpListener::bind("127.0.0.1:0").unwrap();
    let inode = |listener: &TcpListener| {
        let fd = listener.as_raw_fd();
        fs::metadata(format!("/proc/self/fd/{fd}")).unwrap().ino()
    };
    let (first_inode, second_address) = (inode(&first), second.local_addr().unwrap().to_string());
    // SAFETY: duplicates an open descriptor to the lowest free number >= CLOSED_FD + 2.
    let raw = unsafe { libc::fcntl(first.as_raw_fd(), libc::F_DUPFD_CLOEXEC, CLOSED_FD + 2) };
    assert!(raw > CLOSED_FD, "fcntl: {}", std::io::Error::last_os_error());
    let mut resolver = SocketResolver::new(std::process::id());
    let named = |lookup: SocketLookup| match lookup {
        SocketLookup::Socket(info) => info.local,
        other => panic!("{other:?}"),
    };
    let first_address = named(resolver.resolve_opened(raw as u64, first_inode));
    // The number now on the second listener, read again past the answer's freshness.
    // SAFETY: dup2 onto the duplicate made above, which it closes first.
    assert_eq!(unsafe { libc::dup2(second.as_raw_fd(), raw) }, raw);
    thread::sleep(FRESH_FOR + Duration::from_millis(10));
    assert_eq!(named(resolver.resolve_opened(raw as u64, first_inode)), first_address);
    assert_ne!(first_address.as_deref(), Some(second_address.as_str()));
    // A socket the table never knew: unresolved, not the second listener.
    assert_eq!(
        resolver.resolve_opened(raw as u64, first_inode + 1_000_000),
        SocketLookup::Unresolved
    );
    assert_eq!(resolver.counts().reused, 2);
    // Without the probe's inode, what the number is open on now.
    assert_eq!(named(resolver.resolve_opened(raw as u64, 0)), Some(second_address));
    // SAFETY: the descriptor dup2 made, owned here only.
    drop(unsafe { OwnedFd::from_raw_fd(raw) });
}

#[test]
fn a_pipe_is_named_by_its_inode_and_a_file_is_not_a_socket() {
    let (reader, _writer) = std::io::pipe().unwrap();
    let mut resolver = SocketResolver::new(std::process::id());
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd(&reader))).unwrap();
    let inode = crate::objects::pipe_inode(link.to_str().unwrap()).expect("a pipe's link");
    assert_eq!(resolver.resolve(fd(&reader)), SocketLookup::Pipe(inode));
    let file = std::fs::File::open("/proc/self/status").unwrap();
    assert_eq!(resolver.resolve(fd(&file)), SocketLookup::NotSocket);
}

#[test]
fn cached_sockets_refresh_and_gone_ones_are_counted() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut resolver = SocketResolver::new(std::process::id());
    let first = resolver.resolve(fd(&listener));
    assert!(matches!(first, SocketLookup::Socket(_)), "{first:?}");
    // A second socket right after the dump is held back rather than dumped for again...
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(resolver.resolve(fd(&other)), SocketLookup::Unresolved);
    assert_eq!(resolver.counts().held_back, 1);
    // ...and found by the next dump.
    thread::sleep(DUMP_INTERVAL);
    assert!(matches!(resolver.resolve(fd(&other)), SocketLookup::Socket(_)));
    // A cached socket is asked about again once stale.
    thread::sleep(FRESH_FOR);
    assert_eq!(resolver.resolve(fd(&listener)), first);
    assert_eq!(resolver.counts().resolved, 3);
}
