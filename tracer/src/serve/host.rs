//! `tracer serve --all` (or `--cgroup`, or several `--pid`): the per-host daemon.
//!
//! One thread reads every process of the selection at the rate (`pipeline::members`)
//! and keeps what the endpoints ask for: the waits that ended, symbolized as they end
//! (while the process's image is at hand), folded into the /metrics series and the open
//! /debug/pprof/block windows; and, between reads, answers for the threads blocked now
//! from its last read, so a snapshot costs no read of its own. Requests reach it over a
//! channel.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::oneshot;

use super::{
    lock,
    metrics::{self, CappedSeries, ProcessSeriesLabels},
    trigger::{self, TriggerConfig, Triggers},
};
use crate::{
    model::{
        ProcessTag, Profile, ProfileKind, ProfileStack, Sampling, StackKey, TraceCounts,
        WaitAggregate,
    },
    pipeline::{
        self, Namer,
        members::{Member, Members, Selection},
    },
    stacks::RenewedSymbolFiles,
    threads::sampler::SamplerCounts,
};

/// Snapshots waiting for the reading thread; more are refused (503). Windows' opening,
/// closing and dropping are never refused: a window closed must be answered, and one
/// dropped must not be left open.
const MAX_PENDING_SNAPSHOTS: usize = 16;

/// How long /metrics reuses its snapshot of the blocked threads.
const BLOCKED_SAMPLE_TTL: Duration = Duration::from_secs(2);

/// Which processes a request is about: `?pid=` and `?comm=`, or all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessFilter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

impl ProcessFilter {
    /// `comm` as processes are tagged: its control characters written out. The name
    /// asked for matches written out or as the process's own bytes.
    pub(super) fn matches(&self, pid: u32, comm: &str) -> bool {
        self.pid.is_none_or(|wanted| wanted == pid)
            && self
                .comm
                .as_deref()
                .is_none_or(|wanted| wanted == comm || crate::report::escape_name(wanted) == comm)
    }
}

impl std::fmt::Display for ProcessFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, &self.comm) {
            (Some(pid), Some(comm)) => write!(f, "pid {pid} named {comm}"),
            (Some(pid), None) => write!(f, "pid {pid}"),
            (None, Some(comm)) => write!(f, "a process named {comm}"),
            (None, None) => write!(f, "any process"),
        }
    }
}

/// Why the host daemon cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("no traced process is {0}")]
    NoSuchProcess(ProcessFilter),
    #[error("busy: too many requests waiting; retry later")]
    Busy,
    #[error("the reading thread stopped")]
    Stopped,
    #[error("cannot render the metrics")]
    Render(#[source] std::fmt::Error),
}

enum Request {
    /// The threads blocked at the last read, with their chains when asked.
    Snapshot { filter: ProcessFilter, chains: bool, reply: oneshot::Sender<Option<Profile>> },
    /// From now on, the waits of the processes `filter` picks count in window `id`.
    OpenWindow { id: u64, filter: ProcessFilter },
    /// The waits of window `id`, each with its part in the window, and what the reads
    /// counted and lost while it was open.
    CloseWindow { id: u64, reply: oneshot::Sender<ClosedWindow> },
    /// Window `id` is not wanted any more (its client went away).
    DropWindow { id: u64 },
}

/// What the reading thread answers a window's close with.
#[derive(Default)]
struct ClosedWindow {
    stacks: Vec<ProfileStack>,
    counts: TraceCounts,
    /// Whether a process it was open on exited meanwhile.
    exited: bool,
}

/// How long a window may stay open before the reader drops it (its request is gone).
const WINDOW_EXPIRY: Duration = Duration::from_secs(600);

/// The threads blocked now, as series labelled by process.
type BlockedSeries = CappedSeries<u64, ProcessSeriesLabels>;

/// What the reading thread and the endpoints share.
pub struct Host {
    pub selection: Selection,
    pub period: Duration,
    max_series: usize,
    requests: mpsc::Sender<Request>,
    pending_snapshots: std::sync::atomic::AtomicUsize,
    /// The waits that ended, as series (cumulative).
    waits: Mutex<metrics::WaitSeries<ProcessSeriesLabels>>,
    next_window: AtomicU64,
    /// The processes read now, and the reads so far.
    processes: Mutex<Vec<ProcessTag>>,
    reads: AtomicU64,
    /// Ended waits handed on from the reads, over every process (`tracer_events_total`,
    /// as a daemon of one process counts them).
    waits_read: AtomicU64,
    /// Waits whose stacks stopped short, over every process (of the processes that
    /// exited, and of those read now).
    truncated_unwinds: AtomicU64,
    /// What the passes in the kernel and the samplers lost (`Reader::loss_counts`).
    losses: Mutex<TraceCounts>,
    blocked_sample: tokio::sync::Mutex<Option<(Instant, Arc<BlockedSeries>)>>,
    /// The processes' backed-up sockets for /metrics, read at most every few seconds.
    backed_up: super::backed_up::BackedUpReads,
    /// How often each trigger condition fired, by whether its files were written.
    firings: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// The block windows open now, ended when the daemon stops.
    pub windows: super::OpenWindows,
}

impl Host {
    /// Joins the processes that match now and starts the reading thread; `finished`
    /// fires when it stops (every process exited and none may join).
    pub fn start(
        selection: Selection,
        period: Duration,
        max_series: usize,
        triggers: Option<TriggerConfig>,
    ) -> anyhow::Result<(Arc<Self>, oneshot::Receiver<()>)> {
        let pids = selection.matching()?;
        let (mut members, joined) = Members::start(selection.clone(), pids, period)?;
        if let Some(triggers) = &triggers {
            members.keep_rolling_timelines(triggers.window);
        }
        for joined in &joined {
            log::info!("{joined}");
        }
        let (requests, receiver) = mpsc::channel();
        let host = Arc::new(Self {
            selection,
            period,
            max_series,
            requests,
            pending_snapshots: Default::default(),
            waits: Mutex::new(metrics::WaitSeries::new(max_series)),
            next_window: AtomicU64::new(0),
            processes: Mutex::new(members.members.iter().map(Member::tag).collect()),
            reads: AtomicU64::new(0),
            truncated_unwinds: AtomicU64::new(0),
            waits_read: AtomicU64::new(0),
            losses: Mutex::new(TraceCounts::default()),
            blocked_sample: tokio::sync::Mutex::new(None),
            backed_up: Default::default(),
            firings: Mutex::new(BTreeMap::new()),
            windows: super::OpenWindows::new(),
        });
        let (finished, finished_receiver) = oneshot::channel();
        let weak = Arc::downgrade(&host);
        std::thread::Builder::new().name("tracer-read".into()).spawn(move || {
            let mut reader = Reader {
                members,
                namers: HashMap::new(),
                symbol_files: RenewedSymbolFiles::on_this_thread(),
                windows: BTreeMap::new(),
                truncated_of_exited: 0,
                sampler_counts_of_exited: SamplerCounts::default(),
                triggers: triggers.map(Triggers::new),
                host: weak,
            };
            reader.run(&receiver);
            let _ = finished.send(());
            // Open windows still end with what they hold (the exited processes' waits)
            // while the daemon stops.
            reader.answer_until_closed(&receiver);
        })?;
        Ok((host, finished_receiver))
    }

    /// The processes read now.
    pub fn processes(&self) -> Vec<ProcessTag> {
        lock(&self.processes).clone()
    }

    /// The threads blocked at the last read of the processes `filter` picks.
    pub async fn blocked_now(
        &self,
        filter: ProcessFilter,
        chains: bool,
    ) -> Result<Profile, HostError> {
        let pending = self.pending_snapshots.fetch_add(1, Ordering::Relaxed);
        let _pending = Pending(&self.pending_snapshots);
        if pending >= MAX_PENDING_SNAPSHOTS {
            return Err(HostError::Busy);
        }
        let (reply, answer) = oneshot::channel();
        self.ask(Request::Snapshot { filter: filter.clone(), chains, reply })?;
        answer.await.map_err(|_| HostError::Stopped)?.ok_or(HostError::NoSuchProcess(filter))
    }

    /// The waits of the processes `filter` picks over the next `seconds`, each counting
    /// only its time in the window (those that ended in it and those still going on), so
    /// consecutive windows add up: the delta profile continuous profilers pull.
    pub async fn window(&self, filter: ProcessFilter, seconds: u64) -> Result<Profile, HostError> {
        let matched: Vec<ProcessTag> = self
            .processes()
            .into_iter()
            .filter(|process| filter.matches(process.pid, &process.comm))
            .collect();
        if matched.is_empty() {
            return Err(HostError::NoSuchProcess(filter));
        }
        let one_asked_for = filter.pid.is_some();
        let id = self.next_window.fetch_add(1, Ordering::Relaxed);
        let reads_before = self.reads.load(Ordering::Relaxed);
        let started_at = SystemTime::now();
        self.ask(Request::OpenWindow { id, filter })?;
        let mut open = OpenWindow { host: self, id, closed: false };
        let opened = Instant::now();
        log::info!("block profile: a window of {seconds}s open");
        self.windows.hold(Duration::from_secs(seconds), opened).await;
        let duration = opened.elapsed();
        let (reply, answer) = oneshot::channel();
        self.ask(Request::CloseWindow { id, reply })?;
        open.closed = true;
        let ClosedWindow { stacks, counts, exited } =
            answer.await.map_err(|_| HostError::Stopped)?;
        let mut base = Profile::new(ProfileKind::Recording, 0, self.selection.describe());
        base.counts = counts;
        base.target_exited = exited;
        // A window asked for one process (`?pid=`) is named as that process's.
        if let (true, [process]) = (one_asked_for, matched.as_slice()) {
            base.pid = process.pid;
            base.comm = process.comm.clone();
            base.cgroup = process.cgroup.clone();
        }
        base.start_unix_ns = pipeline::target::unix_ns(started_at);
        base.duration = duration;
        let reads = self.reads.load(Ordering::Relaxed).saturating_sub(reads_before);
        base.sampling = Some(Sampling { period: self.period, reads });
        let mut processes: Vec<ProcessTag> =
            stacks.iter().filter_map(|stack| stack.process.clone()).collect();
        processes.sort();
        processes.dedup();
        base.processes = processes;
        let mut profile = Profile::from_symbolized(base, stacks);
        profile.counts.unknown_symbols = profile.unknown_addresses();
        Ok(profile)
    }

    /// The threads blocked now as series: one snapshot serves every scrape for a while.
    pub async fn blocked_series(&self) -> Result<Arc<BlockedSeries>, HostError> {
        let mut sample = self.blocked_sample.lock().await;
        if let Some((taken, series)) = sample.as_ref()
            && taken.elapsed() < BLOCKED_SAMPLE_TTL
        {
            return Ok(Arc::clone(series));
        }
        let series = match self.blocked_now(ProcessFilter::default(), false).await {
            Ok(snapshot) => metrics::blocked_series(&snapshot, self.max_series),
            // Nothing traced right now (a cgroup that emptied): no series.
            Err(HostError::NoSuchProcess(_)) => CappedSeries::new(self.max_series),
            // Snapshots queued past the bound: the last sample rather than no gauge.
            Err(HostError::Busy) => match sample.as_ref() {
                Some((_, series)) => return Ok(Arc::clone(series)),
                None => return Err(HostError::Busy),
            },
            Err(err) => return Err(err),
        };
        let series = Arc::new(series);
        *sample = Some((Instant::now(), Arc::clone(&series)));
        Ok(series)
    }

    /// The OpenMetrics text of one scrape.
    pub async fn render_metrics(&self) -> Result<String, HostError> {
        let blocked = self.blocked_series().await?;
        let tracer = metrics::TracerTotals {
            events: self.waits_read.load(Ordering::Relaxed),
            lost: {
                let passes = lock(&self.losses);
                vec![
                    ("unwind_truncated", self.truncated_unwinds.load(Ordering::Relaxed)),
                    // The passes in the kernel lose to a full ring of their own.
                    ("ring_buffer_full", passes.ring_buffer_full),
                    ("malformed_record", passes.malformed_records),
                    ("sampled_read", passes.reads_lost),
                    ("thread_read_failed", passes.thread_reads_failed),
                    ("sampled_wait_unread", passes.waits_unread),
                ]
            },
        };
        let processes: Vec<(u32, Option<ProcessTag>)> = lock(&self.processes)
            .iter()
            .map(|process| (process.pid, Some(process.clone())))
            .collect();
        let backed_up = self.backed_up.series(processes, 0).await;
        let waits = lock(&self.waits);
        metrics::render(&metrics::Scrape {
            blocked: Some(&blocked),
            goroutines: None,
            waits: &waits,
            tracer: &tracer,
            usage: pipeline::own_usage::ProcessUsage::of_self(),
            processes: Some(lock(&self.processes).len()),
            firings: Some(&lock(&self.firings)),
            short_waits: None,
            backed_up: Some(&backed_up),
        })
        .map_err(HostError::Render)
    }

    fn ask(&self, request: Request) -> Result<(), HostError> {
        self.requests.send(request).map_err(|_| HostError::Stopped)
    }
}

/// One snapshot waiting, counted while it waits.
struct Pending<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tells the reader to drop the window if the request ends early (the client went away).
struct OpenWindow<'a> {
    host: &'a Host,
    id: u64,
    closed: bool,
}

impl Drop for OpenWindow<'_> {
    fn drop(&mut self) {
        if !self.closed {
            // Fails only when the reader has stopped, and its windows with it.
            let _ = self.host.ask(Request::DropWindow { id: self.id });
        }
    }
}

struct ReaderWindow {
    filter: ProcessFilter,
    opened: Instant,
    of_exited: Vec<ProfileStack>,
    /// What the passes every process shares had counted when it opened.
    shared_counts_at_open: TraceCounts,
    /// Each process's own counts when the window took it in (at its opening, or when
    /// the process joined).
    counts_at_open: HashMap<u32, TraceCounts>,
    /// What the processes that exited while it was open counted in it.
    counts_of_exited: TraceCounts,
    /// Whether a process it was open on exited.
    exited: bool,
}

impl ReaderWindow {
    fn new(filter: ProcessFilter, shared_counts_at_open: TraceCounts) -> Self {
        Self {
            filter,
            opened: Instant::now(),
            of_exited: Vec::new(),
            shared_counts_at_open,
            counts_at_open: HashMap::new(),
            counts_of_exited: TraceCounts::default(),
            exited: false,
        }
    }

    /// What `member` counted since this window took it in.
    fn counts_of(&self, member: &Member) -> TraceCounts {
        let at_open = self.counts_at_open.get(&member.target.pid).cloned().unwrap_or_default();
        own_counts(member).since(&at_open)
    }
}

/// What a process's reads counted and lost by themselves (unwinds truncated, descriptors
/// unresolved, its passes' records lost), beside the passes every process shares.
fn own_counts(member: &Member) -> TraceCounts {
    member.sampler.trace_counts(&crate::probes::ProbeCounters::default())
}

/// The profile of one process's `aggregate`, named by that process's own symbolizer.
fn member_profile(
    member: &mut Member,
    namers: &mut HashMap<u32, Namer>,
    aggregate: WaitAggregate,
    kind: ProfileKind,
) -> Profile {
    member.profile(namers.entry(member.target.pid).or_default(), aggregate, kind)
}

/// The reading thread: owns the processes' samplers and their symbolizers (which
/// cannot move between threads).
struct Reader {
    members: Members,
    namers: HashMap<u32, Namer>,
    /// The files the namers parse, shared by all of them (a libc every process maps is
    /// parsed once), renewed every 10 minutes.
    symbol_files: RenewedSymbolFiles,
    /// The open windows: which processes each is about, when it opened, and the waits
    /// of its processes that exited while it was open.
    windows: BTreeMap<u64, ReaderWindow>,
    truncated_of_exited: u64,
    /// What the samplers of the processes that exited counted beside the passes.
    sampler_counts_of_exited: SamplerCounts,
    /// `--trigger`, when given.
    triggers: Option<Triggers>,
    /// Weak: the thread stops when the daemon drops the host.
    host: std::sync::Weak<Host>,
}

impl Reader {
    /// Reads the processes at the pace, answering requests between reads, until every
    /// process exited (or the daemon is gone).
    fn run(&mut self, requests: &mpsc::Receiver<Request>) {
        let mut pace = match self.host.upgrade() {
            Some(host) => crate::pipeline::pace::ReadPace::new(host.period),
            None => return,
        };
        loop {
            let Some(host) = self.host.upgrade() else { return };
            self.renew_symbol_files();
            let joined = self.members.look_for_new();
            for joined in &joined {
                log::info!("{joined}");
            }
            if !joined.is_empty() {
                self.open_windows_of_newcomers();
            }
            let alive = pace.read(|| self.members.read());
            pace.set_period(self.members.read_interval());
            host.reads.store(self.members.reads(), Ordering::Relaxed);
            self.hand_on_ended(&host);
            self.check_triggers(&host);
            for mut exited in self.members.remove_exited() {
                log::info!("pid {} ({}) exited", exited.target.pid, exited.target.comm);
                // The waits its last read saw ended with it: in the open windows, and
                // counted read (its series end with it below, so none is named).
                exited.sampler.end_waits_at_exit();
                let ended = exited.sampler.take_ended();
                host.waits_read.fetch_add(super::collector::waits_in(&ended), Ordering::Relaxed);
                // Its part of the open windows, symbolized while its image is at hand.
                for (&id, window) in &mut self.windows {
                    if let Some(waits) = exited.sampler.close_window(id) {
                        window.counts_of_exited.add(window.counts_of(&exited));
                        window.exited = true;
                        let profile = member_profile(
                            &mut exited,
                            &mut self.namers,
                            waits,
                            ProfileKind::Recording,
                        );
                        window.of_exited.extend(profile.stacks);
                    }
                }
                self.namers.remove(&exited.target.pid);
                self.truncated_of_exited += exited.sampler.truncated_unwinds();
                self.sampler_counts_of_exited += exited.sampler.sampler_counts();
                // Its series end with it: the cap is for the processes there now.
                lock(&host.waits).retain(|labels| labels.pid != exited.target.pid.to_string());
            }
            self.expire_windows();
            *lock(&host.processes) = self.members.members.iter().map(Member::tag).collect();
            let truncated: u64 =
                self.members.members.iter().map(|m| m.sampler.truncated_unwinds()).sum();
            host.truncated_unwinds.store(self.truncated_of_exited + truncated, Ordering::Relaxed);
            *lock(&host.losses) = self.loss_counts();
            if !alive {
                return;
            }
            drop(host);
            // Requests are answered until the next read is due. A read overdue comes first:
            // `recv_timeout` of zero still hands over a request queued, and clients asking
            // one after another would keep every process from being read again.
            loop {
                let wait = pace.next().saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    break;
                }
                match requests.recv_timeout(wait) {
                    Ok(request) => self.answer(request),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }

    /// Answers requests until the daemon is gone: after every process exited.
    fn answer_until_closed(&mut self, requests: &mpsc::Receiver<Request>) {
        while let Ok(request) = requests.recv() {
            self.answer(request);
        }
    }

    /// A new set of parsed files for the namers every 10 minutes; the namers are made
    /// again with it (their caches of names refill at the next reports).
    fn renew_symbol_files(&mut self) {
        if self.symbol_files.renew_when_due() {
            self.namers.clear();
        }
    }

    /// What the passes in the kernel and the samplers lost, over every process (of the
    /// processes that exited, and of those read now).
    fn loss_counts(&self) -> TraceCounts {
        let mut losses = self.sampler_counts_of_exited;
        for member in &self.members.members {
            losses += member.sampler.sampler_counts();
        }
        losses.add_to(self.members.pass_counts())
    }

    /// Symbolizes each process's waits that ended since the last read and hands them on.
    fn hand_on_ended(&mut self, host: &Host) {
        for member in &mut self.members.members {
            let ended = member.sampler.take_ended();
            member
                .sampler
                .objects_mut()
                .forget_endpoints_beyond(super::collector::MAX_ENDPOINT_STATES);
            if ended.stacks.is_empty() {
                continue;
            }
            host.waits_read.fetch_add(super::collector::waits_in(&ended), Ordering::Relaxed);
            let profile = member_profile(member, &mut self.namers, ended, ProfileKind::Recording);
            lock(&host.waits).fold(&profile);
        }
    }

    /// Fires the trigger for each process whose blocked threads meet a condition (each
    /// process at most once per cooldown, so one noisy process hides no other's).
    fn check_triggers(&mut self, host: &Host) {
        let Some(triggers) = &mut self.triggers else { return };
        if !triggers.due() {
            return;
        }
        let _report = pipeline::ReportScope::enter();
        let Self { members, namers, .. } = self;
        let live: Vec<u32> = members.members.iter().map(|member| member.target.pid).collect();
        triggers.forget_processes_except(&live);
        for member in &mut members.members {
            if triggers.holding(member.target.pid) {
                continue;
            }
            let blocked: Vec<(StackKey, u64)> =
                member.sampler.blocked_ages().map(|(key, age)| (key.clone(), age)).collect();
            let mut named = None;
            let firing = triggers.first_met(blocked.iter().map(|(key, age)| (key, *age)), || {
                let blocked = member.sampler.blocked_now();
                let profile = member_profile(member, namers, blocked, ProfileKind::Snapshot);
                named = Some(profile.clone());
                profile
            });
            let Some(firing) = firing else { continue };
            triggers.fired(member.target.pid);
            let mut snapshot = match named {
                Some(profile) => profile,
                None => {
                    let blocked = member.sampler.blocked_now();
                    member_profile(member, namers, blocked, ProfileKind::Snapshot)
                }
            };
            snapshot.thread_counts = member.sampler.thread_counts();
            let (unwinder, objects, tasks) = member.sampler.parts_mut();
            let frame_pointers = tasks.host();
            pipeline::add_wait_chains(&mut snapshot, objects, unwinder, &frame_pointers);
            pipeline::add_backed_up_sockets(&mut snapshot, &frame_pointers);
            let config = &triggers.config;
            let (window, length) =
                member.sampler.timeline_window(config.window).unwrap_or_default();
            let mut window = member_profile(member, namers, window, ProfileKind::Recording);
            window.duration = length;
            let written = trigger::write_firing(&config.dir, &snapshot, window, host.period);
            let result = if written.is_ok() { "written" } else { "failed" };
            *lock(&host.firings).entry((firing.condition.to_string(), result)).or_default() += 1;
            match written {
                Ok(stem) => {
                    crate::report::note(&format!(
                        "tracer: trigger {} fired: {} of {} (pid {}); wrote {}.*",
                        firing.condition,
                        firing.what,
                        member.target.comm,
                        member.target.pid,
                        stem.display()
                    ));
                    triggers.keep_written(stem);
                }
                Err(err) => crate::report::note(&format!(
                    "tracer: trigger {} fired ({} of pid {}), but its files cannot be \
                     written: {err:#}",
                    firing.condition, firing.what, member.target.pid
                )),
            }
        }
    }

    /// Drops the windows nobody closed (their request is long gone), in every member too.
    fn expire_windows(&mut self) {
        let expired: Vec<u64> = self
            .windows
            .iter()
            .filter(|(_, window)| window.opened.elapsed() >= WINDOW_EXPIRY)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.drop_window(id);
        }
    }

    fn drop_window(&mut self, id: u64) {
        self.windows.remove(&id);
        for member in &mut self.members.members {
            member.sampler.close_window(id);
        }
    }

    /// Opens the open windows in the members that joined since they opened.
    fn open_windows_of_newcomers(&mut self) {
        for member in &mut self.members.members {
            for (&id, window) in &mut self.windows {
                if window.filter.matches(member.target.pid, &member.target.comm)
                    && !member.sampler.has_window(id)
                {
                    member.sampler.open_window(id);
                    window.counts_at_open.insert(member.target.pid, own_counts(member));
                }
            }
        }
    }

    fn answer(&mut self, request: Request) {
        match request {
            Request::Snapshot { filter, chains, reply } => {
                let _ = reply.send(self.snapshot(&filter, chains));
            }
            Request::OpenWindow { id, filter } => {
                let mut window = ReaderWindow::new(filter, self.members.pass_counts());
                for member in &mut self.members.members {
                    if window.filter.matches(member.target.pid, &member.target.comm) {
                        member.sampler.open_window(id);
                        window.counts_at_open.insert(member.target.pid, own_counts(member));
                    }
                }
                self.windows.insert(id, window);
            }
            Request::CloseWindow { id, reply } => {
                let Some(mut window) = self.windows.remove(&id) else {
                    let _ = reply.send(ClosedWindow::default());
                    return;
                };
                // The passes' losses, shared by every process, count in each window: for a
                // window of one process of several, an upper bound.
                let mut counts = self.members.pass_counts().since(&window.shared_counts_at_open);
                counts.add(std::mem::take(&mut window.counts_of_exited));
                let mut stacks = std::mem::take(&mut window.of_exited);
                let Self { members, namers, .. } = self;
                for member in &mut members.members {
                    let Some(waits) = member.sampler.close_window(id) else { continue };
                    counts.add(window.counts_of(member));
                    if !waits.stacks.is_empty() {
                        let profile = member_profile(member, namers, waits, ProfileKind::Recording);
                        stacks.extend(profile.stacks);
                    }
                }
                let _ = reply.send(ClosedWindow { stacks, counts, exited: window.exited });
            }
            Request::DropWindow { id } => self.drop_window(id),
        }
    }

    /// The snapshot of the processes `filter` picks; None when it picks none.
    fn snapshot(&mut self, filter: &ProcessFilter, chains: bool) -> Option<Profile> {
        // The processes' libraries, and their peers', parsed once for all (in the
        // namers' shared files), and the host's descriptors read once.
        let _report = pipeline::ReportScope::enter();
        let mut profiles = Vec::new();
        let started_at = SystemTime::now();
        let picked: Vec<usize> = (0..self.members.members.len())
            .filter(|&index| {
                let target = &self.members.members[index].target;
                filter.matches(target.pid, &target.comm)
            })
            .collect();
        // The host's saved registers as the chains last read them (each member's read is
        // of the whole host), for the backed-up sockets' peers too.
        let mut host_frame_pointers = None;
        let first = picked.first().copied();
        for index in picked {
            let member = &mut self.members.members[index];
            let blocked = member.sampler.blocked_now();
            let mut profile =
                member_profile(member, &mut self.namers, blocked, ProfileKind::Snapshot);
            profile.start_unix_ns = pipeline::target::unix_ns(started_at);
            profile.thread_counts = member.sampler.thread_counts();
            if chains && !profile.stacks.is_empty() {
                let (unwinder, objects, tasks) = member.sampler.parts_mut();
                let frame_pointers = host_frame_pointers.insert(tasks.host());
                pipeline::add_wait_chains(&mut profile, objects, unwinder, frame_pointers);
            }
            profiles.push(profile);
        }
        // A server with nothing blocked may still have a client that stopped reading.
        if chains {
            // Nothing blocked, no chains: read for the peers alone.
            let frame_pointers = host_frame_pointers.unwrap_or_else(|| {
                let first = first.map(|index| &mut self.members.members[index]);
                first.map(|member| member.sampler.parts_mut().2.host()).unwrap_or_default()
            });
            pipeline::add_backed_up_sockets_to(&mut profiles, &frame_pointers);
        }
        (!profiles.is_empty()).then(|| Profile::of_processes(profiles))
    }
}
