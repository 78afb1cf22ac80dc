//! The tracing pipeline that `record`, `snapshot` and `serve` share: the target process →
//! its memory-map image → the sources of waits (the probes' records, the threads blocked
//! now from /proc, a Go program's goroutines) → the decoder → the `Profile` → the
//! exporters. Each command runs these stages; none builds a profile its own way.

pub mod counts;
pub mod late_copies;
pub mod members;
pub mod own_usage;
pub mod pace;
pub mod stop_watch;
pub mod target;

use std::{
    os::fd::OwnedFd,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{Signal, SignalKind, signal},
};

use crate::{
    chains, golang,
    model::{Profile, ProfileKind, WaitAggregate},
    objects::{WaitObjects, locks::LockNamer},
    probes::{
        Probes,
        events::{poll_readable, readable},
    },
    report::{Format, Output, summary::render_summary_in},
    stacks::{ProcessImage, ProcessUnwinder, StackSymbolizer},
    threads::blocked_now::SavedFramePointers,
};
use stop_watch::StopWatch;
use target::Target;

/// The checks every command makes before it opens a process: the output formats, then
/// the capabilities.
pub fn check_outputs(outputs: &[PathBuf]) -> anyhow::Result<()> {
    for path in outputs {
        Format::from_path(path)?;
    }
    target::check_capabilities()?;
    Ok(())
}

/// A process checked and opened for tracing, with its memory map read once (files kept
/// open, so a process that exits mid-trace is still symbolized).
pub struct Traced {
    pub target: Target,
    pub image: ProcessImage,
}

impl Traced {
    /// The checks in the order that leaves nothing behind: output formats, privileges,
    /// the target, its memory map. The output files are created later (`create_outputs`).
    pub fn open(pid: u32, outputs: &[PathBuf]) -> anyhow::Result<Self> {
        check_outputs(outputs)?;
        let target = Target::open(pid)?;
        let image = ProcessImage::snapshot(pid).map_err(|err| {
            if target.has_exited() {
                anyhow::anyhow!("pid {pid} exited while it was being read")
            } else {
                anyhow::Error::new(err).context(format!("cannot read the memory map of pid {pid}"))
            }
        })?;
        Ok(Self { target, image })
    }

    /// A Go program's goroutines wait in the Go scheduler, not in the kernel: its source
    /// of waits is the runtime's memory.
    pub fn is_python(&self) -> bool {
        crate::python::runs_cpython(&self.image)
    }

    pub fn is_go(&self) -> bool {
        self.image.main_module().is_some_and(|module| golang::is_go(module.file_bytes()))
    }
}

/// Why a recording stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    DurationElapsed,
    Interrupted,
    TargetExited,
}

/// What stops a recording: Ctrl-C, SIGTERM or SIGHUP (the terminal closed), and the exit
/// of its target when it has one (its pidfd turns readable). Made on the runtime that
/// waits for them; from then on those signals stop the recording instead of the tracer.
pub struct StopSources {
    sigterm: Signal,
    sigint: Signal,
    /// None under `nohup` (SIGHUP ignored when the tracer started): a recording started
    /// so outlives the terminal, as the user asked.
    sighup: Option<Signal>,
    exited: Option<AsyncFd<OwnedFd>>,
}

impl StopSources {
    pub fn new(pidfd: Option<OwnedFd>) -> anyhow::Result<Self> {
        let sighup = match sighup_ignored() {
            true => None,
            false => Some(signal(SignalKind::hangup()).context("cannot handle SIGHUP")?),
        };
        Ok(Self {
            sigterm: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            sigint: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            sighup,
            exited: pidfd.map(poll_readable).transpose().context("cannot poll the pidfd")?,
        })
    }

    /// Runs `work` again and again until `duration` has passed or a stop comes.
    pub async fn wait(
        &mut self,
        duration: Duration,
        mut work: impl AsyncFnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Stop> {
        let Self { sigterm, sigint, sighup, exited } = self;
        let exited = async {
            match exited {
                Some(fd) => readable(fd).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(exited);
        let hangup = async {
            match sighup {
                Some(sighup) => sighup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(hangup);
        let deadline = tokio::time::sleep(duration);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(Stop::DurationElapsed),
                _ = sigint.recv() => return Ok(Stop::Interrupted),
                _ = sigterm.recv() => return Ok(Stop::Interrupted),
                _ = &mut hangup => return Ok(Stop::Interrupted),
                _ = &mut exited => return Ok(Stop::TargetExited),
                done = work() => done?,
            }
        }
    }
}

/// Whether SIGHUP is ignored (the tracer was started under `nohup`); listening for it
/// would take that back.
pub fn sighup_ignored() -> bool {
    // SAFETY: sigaction with no new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Runs `work` (draining what the probes send) again and again until `duration` has
/// passed, Ctrl-C, SIGTERM or SIGHUP (the terminal closed) comes, or `target` exits (its
/// pidfd turns readable).
pub async fn run_until_stop(
    target: &Target,
    duration: Duration,
    work: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Stop> {
    let pidfd = target.pidfd.try_clone().context("cannot dup the pidfd")?;
    StopSources::new(Some(pidfd))?.wait(duration, work).await
}

/// The loop of every sampled recording (threads and goroutines alike): `read` at once and
/// then every `period`, or less often when reads would take more than their share of a
/// CPU (`pace`; a read that runs late delays the next, it does not bunch them up)
/// until `duration` has passed, Ctrl-C or SIGTERM comes, or `target` exits; then once more
/// for what is still blocked at the end, unless the target has exited. A read that fails
/// because the target exited stops nothing by itself: the pidfd ends the loop at once and
/// what was read stands. The reads run on this thread, between sleeps on a `StopWatch`.
/// `read` returns the time until the next read is due: the period, or longer for a
/// sampler whose passes the kernel makes. Returns how long it ran and whether the target
/// exited.
pub fn sample_until_stop(
    target: &Target,
    duration: Duration,
    period: Duration,
    mut read: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<(Duration, bool)> {
    let started = std::time::Instant::now();
    let mut pace = pace::ReadPace::new(period);
    let pidfd = target.pidfd.try_clone().context("cannot dup the pidfd")?;
    let watch = StopWatch::start(Some(pidfd), duration)?;
    while !watch.sleep_until(pace.next()).context("cannot wait for the next read")? {
        match pace.read(&mut read) {
            Err(_) if target.has_exited() => {}
            Err(err) => return Err(err),
            Ok(interval) => pace.set_period(interval),
        }
    }
    let stop = watch.finish()?;
    let elapsed = started.elapsed();
    let mut target_exited = stop == Some(Stop::TargetExited) || target.has_exited();
    if !target_exited && read().is_err() {
        target_exited = target.has_exited();
    }
    if target_exited {
        crate::report::note(&format!(
            "tracer: pid {} exited during the recording; reporting what was recorded",
            target.pid
        ));
    }
    Ok((elapsed, target_exited))
}

/// The loop of a sampled recording of several processes: `read` at once and then when
/// the last read says the next is due (paced as `sample_until_stop`'s) until `duration`
/// has passed, Ctrl-C, SIGTERM or SIGHUP comes, or `read` says there is nothing left to
/// read (None). Returns how long it ran.
pub fn sample_while(
    duration: Duration,
    period: Duration,
    mut read: impl FnMut() -> Option<Duration>,
) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    let mut pace = pace::ReadPace::new(period);
    let watch = StopWatch::start(None, duration)?;
    while !watch.sleep_until(pace.next()).context("cannot wait for the next read")? {
        match pace.read(&mut read) {
            Some(interval) => pace.set_period(interval),
            None => break,
        }
    }
    watch.finish()?;
    Ok(started.elapsed())
}

/// An empty profile of `kind` about `target`, begun at `started_at`.
pub fn profile_of(target: &Target, kind: ProfileKind, started_at: SystemTime) -> Profile {
    let mut profile = Profile::new(kind, target.pid, target.comm.clone());
    profile.start_unix_ns = target::unix_ns(started_at);
    profile.command_line = target.command_line.clone();
    profile.cgroup = target.cgroup.clone();
    profile
}

/// Checks that each output file can be written (after every check; a refused run leaves
/// none behind, and an earlier report stays until the new one replaces it whole).
pub fn create_outputs(paths: &[PathBuf]) -> anyhow::Result<Vec<Output>> {
    Ok(paths.iter().map(|path| Output::create(path)).collect::<Result<Vec<_>, _>>()?)
}

/// The saved frame pointers of every task on the host, from one pass of the task
/// iterator: for the one pass at the end of a recording or in a snapshot, whose wait
/// chains unwind other processes' threads too (the peers of local endpoints).
pub fn host_frame_pointers(probes: &mut Probes) -> SavedFramePointers {
    frame_pointers_of(probes.host_task_looks())
}

/// The saved frame pointers in the looks of a pass. Without them, stacks whose CFI needs
/// rbp stop early (counted), so a failed pass costs only that.
pub fn frame_pointers_of(
    looks: Result<Vec<tracer_common::TaskLook>, crate::probes::ProbeError>,
) -> SavedFramePointers {
    match looks {
        Ok(looks) => SavedFramePointers::from_tasks(&looks),
        Err(err) => {
            log::warn!("cannot read the threads' saved registers: {err}");
            SavedFramePointers::default()
        }
    }
}

/// What one report shares between its profiles (its processes', its chains' peers')
/// while it lives, on this thread: the files symbolization parses, and the host's
/// descriptors the chains find their peers' owners in. The report of 300 processes each
/// reading a pipe took 24 s of the tracer's CPU without them, 0.7 s with.
pub struct ReportScope {
    _files: crate::stacks::SharedSymbolFiles,
    _descriptors: chains::live::SharedDescriptorTable,
}

impl ReportScope {
    pub fn enter() -> Self {
        Self {
            _files: crate::stacks::SharedSymbolFiles::on_this_thread(),
            _descriptors: chains::live::SharedDescriptorTable::on_this_thread(),
        }
    }
}

/// The symbolization stage, with its caches (symbols by address, lock names): names each
/// unique stack and lock of an aggregate once and builds the profile. `record` and
/// `snapshot` use one per run, `serve` one per attached process.
pub struct Namer {
    symbolizer: StackSymbolizer,
    locks: LockNamer,
}

impl Default for Namer {
    fn default() -> Self {
        Self { symbolizer: StackSymbolizer::new(), locks: LockNamer::new() }
    }
}

impl Namer {
    /// The profile of `aggregate` on `base`. Unknown symbols are counted from the profile
    /// itself (distinct addresses), so a cached `[unknown]` still counts in a later one.
    pub fn profile(
        &mut self,
        aggregate: WaitAggregate,
        base: Profile,
        image: &ProcessImage,
    ) -> Profile {
        let Self { symbolizer, locks } = self;
        let mut profile = aggregate.into_profile(base, image, symbolizer, locks);
        profile.counts.unknown_symbols = profile.unknown_addresses();
        profile
    }
}

/// The symbolization stage of one run: the profile of `aggregate` on `base`, with the
/// endpoints' states `objects` saw.
pub fn symbolize(
    aggregate: WaitAggregate,
    mut base: Profile,
    image: &ProcessImage,
    objects: &mut WaitObjects,
) -> Profile {
    base.endpoint_states = std::mem::take(&mut objects.endpoint_states);
    objects.log_socket_lookups();
    Namer::default().profile(aggregate, base, image)
}

/// A CPython process's asyncio tasks pending now, as stacks of kind `task` (none for
/// another process).
pub fn pending_task_stacks(
    unwinder: &mut ProcessUnwinder,
    objects: &mut WaitObjects,
) -> Vec<crate::model::ProfileStack> {
    crate::python::task_stacks(&unwinder.pending_python_tasks(), objects)
}

/// `profile` with `stacks` added among its own (merged and ordered as symbolized ones).
pub fn with_stacks(mut profile: Profile, stacks: Vec<crate::model::ProfileStack>) -> Profile {
    if stacks.is_empty() {
        return profile;
    }
    let own = std::mem::take(&mut profile.stacks);
    Profile::from_symbolized(profile, own.into_iter().chain(stacks))
}

/// The wait-chains stage: reads what the chains end in from the live system (the
/// processes behind local endpoints, lock holders, what the wakers do now) and joins the
/// profile's sites, wakers and those into chains.
pub fn add_wait_chains(
    profile: &mut Profile,
    objects: &WaitObjects,
    unwinder: &mut ProcessUnwinder,
    frame_pointers: &SavedFramePointers,
) {
    let facts = chains::live::gather(profile, &objects.endpoint_sockets, unwinder, frame_pointers);
    chains::add_to(profile, &facts);
}

/// The backed-up sockets stage: reads the process's sockets as the report is made, for
/// the queues no wait shows (an event-driven server's client that stopped reading). A
/// process gone has none; one whose sockets cannot all be read is counted. The peers'
/// threads unwind with `frame_pointers` as the chains' do (empty where none were read:
/// a frame that needs a saved rbp ends the walk there).
pub fn add_backed_up_sockets(profile: &mut Profile, frame_pointers: &SavedFramePointers) {
    add_backed_up_sockets_to(std::slice::from_mut(profile), frame_pointers);
}

/// `add_backed_up_sockets` for the profiles of several processes, read together (the
/// processes of one network namespace share its socket tables' dumps).
pub fn add_backed_up_sockets_to(profiles: &mut [Profile], frame_pointers: &SavedFramePointers) {
    let mut live: Vec<&mut Profile> =
        profiles.iter_mut().filter(|profile| !profile.target_exited).collect();
    let pids: Vec<u32> = live.iter().map(|profile| target::live_thread(profile.pid)).collect();
    let scans = crate::objects::sockets::backed_up::scan_processes(&pids);
    for (profile, (sockets, failed)) in live.iter_mut().zip(scans) {
        profile.backed_up = crate::model::BackedUp::of(sockets);
        if let Some(failed) = failed {
            log::warn!("backed-up sockets of pid {}: {failed}", profile.pid);
            profile.counts.socket_scans_failed += 1;
        }
        add_backed_up_peers(profile, frame_pointers);
    }
}

/// Where the heaviest backed-up sockets' peers on this host are stuck (a client that
/// stopped reading): the chains' peer lookup, for sockets no wait names.
fn add_backed_up_peers(profile: &mut Profile, frame_pointers: &SavedFramePointers) {
    use crate::objects::sockets::{Protocol, SocketInfo};
    let sockets = &mut profile.backed_up.sockets;
    let heaviest = sockets.len().min(chains::live::BACKED_UP_PEERS_LOOKED_FOR);
    let looked_for = &mut sockets[..heaviest];
    if looked_for.is_empty() {
        return;
    }
    let sockets: Vec<SocketInfo> = looked_for
        .iter()
        .map(|socket| {
            let protocol = if socket.tcp { Protocol::Tcp } else { Protocol::Unix };
            let remote = Some(socket.peer.clone());
            SocketInfo::addresses_only(socket.inode, protocol, socket.local.clone(), remote)
        })
        .collect();
    let pid = target::live_thread(profile.pid);
    let (peers, failed) = chains::live::socket_peers(pid, &sockets, frame_pointers);
    profile.counts.peer_lookups_failed += failed;
    for socket in looked_for {
        let Some(peer) = peers.get(&socket.inode) else { continue };
        // A process that holds both ends (a socketpair it writes and never reads).
        let holder = socket.process.as_ref().map_or(profile.pid, |process| process.pid);
        socket.peer_process = Some(match peer.pid == holder {
            true => format!("peer is this process{}", chains::peer_doing_text(peer, &socket.peer)),
            false => chains::peer_text(peer, &socket.peer),
        });
    }
}

/// The last stage of `record` and `snapshot`: every output file, then the summary and the
/// tracer's own cost on stdout (files first: a stdout that is gone must not cost them),
/// then the error of the outputs that could not be written, if any.
pub fn report(profile: &Profile, outputs: Vec<Output>, top: usize) -> anyhow::Result<()> {
    let written = crate::report::write_outputs(outputs, profile, top);
    let summary = render_summary_in(profile, top, crate::report::stdout_columns());
    crate::report::print_stdout(&format!("{summary}{}\n", own_usage::ProcessUsage::of_self()))?;
    written
}
