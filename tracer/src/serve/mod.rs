//! `tracer serve`: the record pipeline kept running, behind HTTP endpoints that pprof
//! clients, continuous profilers and Prometheus scrape.
//!
//! One module per stage: `follow` (which process; attach, and re-attach when it
//! restarts; drains the ring buffers) → `collector` (waits into per-window aggregates)
//! → `worker` (one thread: unwinding of blocked threads, symbolization) → `metrics`
//! (Prometheus series) and `http` (the endpoints). A Go program's goroutines are read
//! from its memory on demand (`golang::goroutine_dump`) and answered in Go's own formats
//! (`goroutines`).

mod access;
mod backed_up;
mod collector;
mod follow;
mod goroutines;
mod host;
mod http;
mod metrics;
mod tls;
mod trigger;
mod worker;

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};
use tracer_common::Counter;

use crate::{
    cli::{Mode, ServeArgs},
    golang::GoroutineDump,
    model::{Profile, ProfileKind, TraceCounts},
    pipeline::counts::{short_waits_between, trace_counts},
    pipeline::{Traced, target},
    probes::{ProbeCounters, ProbeError, Probes, ShortWaitsByKind},
    threads::{
        blocked_now::SavedFramePointers,
        sampler::{SamplerCounts, ThreadSampler},
    },
};

pub use follow::Wanted;
pub use trigger::{Condition, parse_condition};

/// The default cap on series per metric of one process, and of a daemon of several.
const MAX_SERIES: usize = 200;
const HOST_MAX_SERIES: usize = 2000;

/// How long a stopping daemon waits for its open block windows to answer with what they
/// hold (each ends at once, then names its stacks): after its target exited, and after a
/// signal (whose sender wants the daemon gone soon; a second one ends the wait).
const WINDOWS_ANSWER_GRACE: Duration = Duration::from_secs(5);
const WINDOWS_ANSWER_GRACE_SIGNALLED: Duration = Duration::from_secs(1);
/// A window's answer is written after its count is dropped: the time left for that.
const WINDOWS_ANSWER_FLUSH: Duration = Duration::from_millis(200);
/// How long a signalled `serve --pid` waits for its follower's last drain of the probes'
/// buffers and its detach, which names the open windows' waits (milliseconds as a rule;
/// an attach in progress ends first).
const LAST_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How often the waits gathered for /metrics are folded into the series when nobody
/// scrapes, so the window stays small.
const METRICS_FOLD_INTERVAL: Duration = Duration::from_secs(10);

/// How long /metrics reuses its sample of the blocked threads: sampling reads every
/// thread's files and stack and runs the task iterator, too much to repeat for each of
/// several scrapers' scrapes.
const BLOCKED_SAMPLE_TTL: Duration = Duration::from_secs(2);

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        pid,
        comm,
        cgroup,
        all,
        listen,
        token_file,
        tls_cert,
        tls_key,
        tls_client_ca,
        insecure,
        min_wait,
        max_series,
        mode,
        rate,
        cpu_budget,
        no_wakers,
        trigger,
        trigger_dir,
        trigger_cooldown,
        trigger_window,
        trigger_keep,
    } = args;
    crate::pipeline::pace::set_cpu_budget(cpu_budget);
    if let Some(dir) = &trigger_dir {
        trigger::check_dir(dir)?;
    }
    let triggers = trigger_dir.map(|dir| trigger::TriggerConfig {
        conditions: trigger,
        dir,
        cooldown: trigger_cooldown,
        window: trigger_window,
        keep: trigger_keep,
    });
    let tls = match (&tls_cert, &tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key, tls_client_ca.as_deref())?),
        _ => None,
    };
    let tls_mode = Tls::of(tls.as_ref(), tls_client_ca.is_some());
    let access = Arc::new(access::Access::for_listen(
        listen,
        token_file.as_deref(),
        tls.is_some(),
        insecure,
    )?);
    // Several processes, a cgroup or the host, or triggers: the per-host daemon, sampled.
    if all || cgroup.is_some() || pid.len() > 1 || triggers.is_some() {
        if mode == Mode::Exact {
            anyhow::bail!(
                "several processes, and triggers, are read sampled (--mode sampled); exact \
                 mode traces one process at a time"
            );
        }
        if no_wakers {
            anyhow::bail!(crate::cli::NO_WAKERS_EXACT_ONLY);
        }
        if comm.is_some() {
            anyhow::bail!(
                "--trigger watches processes given by --pid, --cgroup or --all (--comm \
                 follows one process across restarts, without triggers)"
            );
        }
        let cgroup = cgroup.as_deref().map(target::cgroup_path).transpose()?;
        let selection = crate::pipeline::members::Selection { pids: pid, comm: None, cgroup, all };
        let period = Duration::from_secs(1) / rate.unwrap_or(crate::golang::DEFAULT_RATE_HZ);
        let max_series = max_series.unwrap_or(HOST_MAX_SERIES);
        let host = HostOptions { period, max_series, triggers };
        return serve_host(selection, host, listen, access, (tls, tls_mode)).await;
    }
    let max_series = max_series.unwrap_or(MAX_SERIES);
    let pid = pid.first().copied();
    let sampling = match mode {
        Mode::Sampled => {
            if no_wakers {
                anyhow::bail!(crate::cli::NO_WAKERS_EXACT_ONLY);
            }
            Some(Duration::from_secs(1) / rate.unwrap_or(crate::golang::DEFAULT_RATE_HZ))
        }
        Mode::Exact => {
            if let Some(option) = crate::cli::sampled_only_option(rate, cpu_budget) {
                anyhow::bail!("{option} is for --mode sampled; exact mode sees every wait")
            }
            None
        }
    };
    let wanted = match (pid, comm) {
        (Some(pid), _) => Wanted::Pid(pid),
        (None, Some(name)) => Wanted::Comm(name),
        (None, None) => anyhow::bail!("give --pid or --comm"),
    };
    target::check_capabilities()?;
    if let Wanted::Pid(pid) = wanted {
        crate::pipeline::target::Target::open(pid)?;
    }
    let btf_path = target::btf_path()?;
    let (listener, local, mut signals) = listen_on(listen, &access, tls_mode).await?;

    let shared = Arc::new(Shared::new(
        wanted.clone(),
        min_wait,
        sampling,
        !no_wakers,
        max_series,
        worker::Worker::start().context("cannot start the symbolizer thread")?,
    ));
    let scheme = if tls.is_some() { "https" } else { "http" };
    crate::report::note(&format!("tracer: serving {wanted} on {scheme}://{local}/"));
    match sampling {
        Some(period) => crate::report::note(&format!(
            "tracer: its threads read every {}, nothing attached to them (--mode exact sees \
             every wait)",
            crate::report::summary::format_duration(period.as_nanos() as u64)
        )),
        None if no_wakers => {
            crate::report::note("tracer: every wait traced as it happens (exact mode, no wakers)")
        }
        None => crate::report::note("tracer: every wait traced as it happens (exact mode)"),
    }
    let server =
        tokio::spawn(http::run(listener, http::Daemon::One(Arc::clone(&shared)), access, tls));
    let folder = tokio::spawn({
        let shared = Arc::clone(&shared);
        async move {
            let mut ticks = tokio::time::interval(METRICS_FOLD_INTERVAL);
            loop {
                ticks.tick().await;
                shared.fold_metrics_window().await;
            }
        }
    });
    let (stop, stop_requested) = tokio::sync::watch::channel(false);
    let following = follow::run(&wanted, &shared, &btf_path, min_wait, stop_requested);
    tokio::pin!(following);
    let (outcome, grace) = tokio::select! {
        outcome = &mut following => (outcome, WINDOWS_ANSWER_GRACE),
        signal = signals.next() => {
            log::info!("{signal}: detaching");
            // The follower drains the probes' buffers once more and detaches (naming the
            // open windows' waits); a second signal, or an attach in progress that
            // outlasts the limit, does not wait (the windows' waits not yet named are
            // counted lost).
            stop.send_replace(true);
            let outcome = tokio::select! {
                outcome = &mut following => outcome,
                () = tokio::time::sleep(LAST_DRAIN_LIMIT) => {
                    log::warn!("the last drain did not end within {LAST_DRAIN_LIMIT:?}");
                    Ok(())
                }
                signal = signals.next() => {
                    log::info!("{signal} again: not waiting for the last drain");
                    Ok(())
                }
            };
            (outcome, WINDOWS_ANSWER_GRACE_SIGNALLED)
        }
    };
    // Open block windows answer now with what they hold, before the server goes: a
    // target's last waits before it exited are what its client asked for.
    shared.windows.close_and_wait(grace, &mut signals).await;
    server.abort();
    folder.abort();
    let attached = lock(&shared.attached).take();
    // Detaches the probes (or the sampling of blocked threads in flight does, as it ends).
    drop(attached);
    log::info!("detached; stopped");
    outcome
}

/// The per-host daemon: the processes of `selection`, read every `period`, until a
/// signal (or, for pids given, until all have exited).
/// How the per-host daemon reads and what it keeps.
struct HostOptions {
    period: Duration,
    max_series: usize,
    triggers: Option<trigger::TriggerConfig>,
}

async fn serve_host(
    selection: crate::pipeline::members::Selection,
    options: HostOptions,
    listen: std::net::SocketAddr,
    access: Arc<access::Access>,
    (tls, tls_mode): (Option<tokio_rustls::TlsAcceptor>, Tls),
) -> anyhow::Result<()> {
    target::check_capabilities()?;
    let (listener, local, mut signals) = listen_on(listen, &access, tls_mode).await?;
    let described = selection.describe();
    let HostOptions { period, max_series, triggers } = options;
    if let Some(triggers) = &triggers {
        let conditions: Vec<String> = triggers.conditions.iter().map(ToString::to_string).collect();
        crate::report::note(&format!(
            "tracer: trigger {} writes to {} (at most once per {})",
            conditions.join(" or "),
            triggers.dir.display(),
            crate::report::summary::format_duration(triggers.cooldown.as_nanos() as u64)
        ));
    }
    let (host, finished) = tokio::task::spawn_blocking(move || {
        host::Host::start(selection, period, max_series, triggers)
    })
    .await
    .context("cannot start reading the processes")??;
    let scheme = if tls.is_some() { "https" } else { "http" };
    crate::report::note(&format!(
        "tracer: read every {}, nothing attached; serving {described} ({} processes now) on \
         {scheme}://{local}/",
        crate::report::summary::format_duration(period.as_nanos() as u64),
        host.processes().len(),
    ));
    let server =
        tokio::spawn(http::run(listener, http::Daemon::Host(Arc::clone(&host)), access, tls));
    let (outcome, grace) = tokio::select! {
        finished = finished => match finished {
            Ok(()) => {
                log::info!("every process exited; stopping");
                (Ok(()), WINDOWS_ANSWER_GRACE)
            }
            // Its sender dropped unsent: the thread panicked (said on stderr).
            Err(_) => (
                Err(anyhow::anyhow!("the thread reading the processes stopped")),
                WINDOWS_ANSWER_GRACE_SIGNALLED,
            ),
        },
        signal = signals.next() => {
            log::info!("{signal}: stopping");
            (Ok(()), WINDOWS_ANSWER_GRACE_SIGNALLED)
        }
    };
    // Open windows answer with what they hold: the reading thread answers them until the
    // daemon is gone, after every process exited too.
    host.windows.close_and_wait(grace, &mut signals).await;
    server.abort();
    outcome
}

/// The listening socket and its address (said unguarded if it is), and the signals that
/// stop the daemon: what both daemons set up before they serve.
async fn listen_on(
    listen: std::net::SocketAddr,
    access: &access::Access,
    tls_mode: Tls,
) -> anyhow::Result<(TcpListener, std::net::SocketAddr, StopSignals)> {
    let listener =
        TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr().context("cannot read the listening address")?;
    warn_if_unguarded(local, access, tls_mode);
    let hangup = match crate::pipeline::sighup_ignored() {
        true => None,
        false => Some(signal(SignalKind::hangup()).context("cannot handle SIGHUP")?),
    };
    let signals = StopSignals {
        term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        hangup,
    };
    Ok((listener, local, signals))
}

/// The signals that stop a daemon: the first starts the stop, a second cuts its waits.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    /// SIGHUP (the terminal it was started from closed) stops it as SIGTERM does, so
    /// that open windows are answered (it killed the daemon on the spot); None under
    /// `nohup`, which asked it to outlive the terminal.
    hangup: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Resolves at the next of them, with its name for the log.
    async fn next(&mut self) -> &'static str {
        let hangup = async {
            match &mut self.hangup {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "interrupted",
            _ = hangup => "SIGHUP",
        }
    }
}

/// Says so when serve listens off loopback without a token or client certificates:
/// with --insecure, or with TLS alone (which encrypts, but lets anyone in).
fn warn_if_unguarded(local: std::net::SocketAddr, access: &access::Access, tls: Tls) {
    if local.ip().is_loopback() || access.has_token() || tls == Tls::WithClientCertificates {
        return;
    }
    let how = match tls {
        Tls::No => "without a token or TLS (--insecure)",
        _ => "over TLS without a token or --tls-client-ca",
    };
    crate::report::note(&format!(
        "tracer: warning: listening on {local}, which is not a loopback address, {how}: \
         whoever reaches it can read the target's call stacks"
    ));
}

/// How serve's connections are secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tls {
    No,
    ServerOnly,
    WithClientCertificates,
}

impl Tls {
    fn of(acceptor: Option<&tokio_rustls::TlsAcceptor>, client_ca: bool) -> Self {
        match (acceptor, client_ca) {
            (None, _) => Tls::No,
            (Some(_), false) => Tls::ServerOnly,
            (Some(_), true) => Tls::WithClientCertificates,
        }
    }
}

/// Gives the heap's free pages of every malloc arena back to the system.
fn release_free_memory() {
    // SAFETY: malloc_trim only reads and trims the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Locks a mutex, taking the data even if a panicking thread poisoned it: every
/// critical section leaves the data consistent.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The attached process and its probes.
pub struct Attached {
    pub pid: u32,
    pub comm: String,
    pub generation: u64,
    /// Shared with the blocking task that samples the threads blocked now, so the
    /// sampling does not hold `Shared::attached`.
    pub probes: Arc<Mutex<Probes>>,
    /// A Go program, opened for reading its goroutines; `None` for any other.
    pub go: Option<Arc<Traced>>,
}

/// What the drain task, the endpoints and the follower share.
pub struct Shared {
    pub wanted: Wanted,
    pub min_wait: Duration,
    /// The period of the reads in sampled mode; None in exact mode.
    pub sampling: Option<Duration>,
    /// In exact mode, whether the wake probe is attached too (`ProbeConfig::wakers`).
    pub wakers: bool,
    /// Reads of the current attachment's sampler, and what they counted and lost.
    sampled: Mutex<SampledProgress>,
    pub max_series: usize,
    pub collector: Mutex<collector::Collector>,
    pub attached: Mutex<Option<Attached>>,
    /// The pid and name of the last process attached, kept after it exits: the windows
    /// open then hold its waits.
    pub last_attached: Mutex<Option<(u32, String)>>,
    pub worker: worker::Worker,
    pub waits: Mutex<metrics::WaitSeries>,
    /// Probe counters of earlier attachments, so totals never go down on re-attach.
    pub earlier_counters: Mutex<ProbeCounters>,
    /// The waits under --min-wait of earlier attachments (exact mode), likewise.
    earlier_short_waits: Mutex<ShortWaitsByKind>,
    /// What earlier attachments' samplers counted beside their probes, likewise.
    earlier_sampler_counts: Mutex<SamplerCounts>,
    /// Earlier attachments' samplers' unwinds truncated, likewise.
    earlier_sampled_unwinds_truncated: Mutex<u64>,
    /// The counts the last attachment ended with (exact mode): the windows that close
    /// after its detach (its target exited, serve stops) count up to there.
    detached_counts: Mutex<Option<CountsMark>>,
    /// The last sample of the blocked threads for /metrics; locked across sampling so
    /// concurrent scrapes share one.
    blocked_sample: tokio::sync::Mutex<Option<BlockedSample>>,
    /// The attached process's backed-up sockets for /metrics, read at most every few
    /// seconds.
    pub backed_up: backed_up::BackedUpReads,
    /// The last read of a Go program's goroutines; locked across reading, so one read
    /// at a time runs and requests that waited for it share it.
    goroutine_read: tokio::sync::Mutex<Option<Arc<GoroutineRead>>>,
    /// The block windows open now, ended when the daemon stops.
    pub windows: OpenWindows,
    /// The attachment (its generation) whose target exited last, 0 for none: a window
    /// open when it changed says its process exited.
    pub exited_generation: std::sync::atomic::AtomicU64,
}

/// One read of a Go program's goroutines, and its /metrics series.
pub struct GoroutineRead {
    generation: u64,
    /// When the read began: a request that came before that may use it.
    started: Instant,
    pub dump: GoroutineDump,
    pub series: metrics::CappedSeries<u64, metrics::GoroutineLabels>,
}

/// The blocked threads of one attachment, as series, and when they were sampled.
struct BlockedSample {
    generation: u64,
    taken: Instant,
    series: Arc<metrics::CappedSeries<u64>>,
}

/// How far the current attachment's sampler got.
#[derive(Clone, Debug, Default)]
struct SampledProgress {
    generation: u64,
    reads: u64,
    /// The reads of the attachments before it: a window open across a restart counts
    /// both processes' reads.
    earlier_reads: u64,
    /// What its reads counted and lost, as windows report it.
    counts: TraceCounts,
    /// Its probes' counters (the passes in the kernel and their losses) and what its
    /// sampler counted beside, until the detach moves them to the earlier attachments'.
    counters: ProbeCounters,
    sampler_counts: SamplerCounts,
    /// Its unwinds truncated (`counts.unwind_truncated`), likewise until the detach.
    unwinds_truncated: u64,
}

/// Where an attachment's counters stood when a window opened.
#[derive(Clone, Debug)]
pub struct CountsMark {
    pub generation: u64,
    pub counts: TraceCounts,
    pub short_waits: ShortWaitsByKind,
    /// The samplers' reads so far, of every attachment (sampled mode).
    pub reads: u64,
}

impl Shared {
    fn new(
        wanted: Wanted,
        min_wait: Duration,
        sampling: Option<Duration>,
        wakers: bool,
        max_series: usize,
        worker: worker::Worker,
    ) -> Self {
        Self {
            wanted,
            min_wait,
            sampling,
            wakers,
            sampled: Mutex::new(SampledProgress::default()),
            max_series,
            collector: Mutex::new(collector::Collector::default()),
            attached: Mutex::new(None),
            last_attached: Mutex::new(None),
            worker,
            waits: Mutex::new(metrics::WaitSeries::new(max_series)),
            earlier_counters: Mutex::new(ProbeCounters::default()),
            earlier_short_waits: Mutex::new(Default::default()),
            earlier_sampler_counts: Mutex::new(SamplerCounts::default()),
            earlier_sampled_unwinds_truncated: Mutex::new(0),
            detached_counts: Mutex::new(None),
            blocked_sample: tokio::sync::Mutex::new(None),
            backed_up: Default::default(),
            goroutine_read: tokio::sync::Mutex::new(None),
            windows: OpenWindows::new(),
            exited_generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The pid, name and generation of the attached process.
    pub fn attached_process(&self) -> Option<(u32, String, u64)> {
        lock(&self.attached).as_ref().map(|a| (a.pid, a.comm.clone(), a.generation))
    }

    /// After each read of the sampler: its reads so far and what they counted.
    pub fn note_sampled_read(&self, sampler: &ThreadSampler) {
        let counters = sampler.probe_counters();
        let counts = sampler.trace_counts(&counters);
        self.note_sampled_progress(sampler.reads(), counts, counters, sampler.sampler_counts());
    }

    /// The sampler's `reads` so far, what they counted (`counts`), its probes' `counters`
    /// and what its passes lost beside them.
    fn note_sampled_progress(
        &self,
        reads: u64,
        counts: TraceCounts,
        counters: ProbeCounters,
        sampler_counts: SamplerCounts,
    ) {
        let generation = lock(&self.collector).generation;
        let unwinds_truncated = counts.unwind_truncated;
        let mut progress = lock(&self.sampled);
        let earlier_reads = match progress.generation {
            same if same == generation => progress.earlier_reads,
            _ => progress.earlier_reads + progress.reads,
        };
        *progress = SampledProgress {
            generation,
            reads,
            earlier_reads,
            counts,
            counters,
            sampler_counts,
            unwinds_truncated,
        };
    }

    /// Moves the sampler's counters to the earlier attachments' at a detach, so that the
    /// totals never go down.
    pub fn keep_sampled_counters(&self) {
        // Moved under the sampler's lock, which a scrape holds while it adds both up: it
        // never sees them in neither place (a counter that goes down reads as a restart).
        let mut progress = lock(&self.sampled);
        *lock(&self.earlier_counters) += std::mem::take(&mut progress.counters);
        *lock(&self.earlier_sampler_counts) += std::mem::take(&mut progress.sampler_counts);
        *lock(&self.earlier_sampled_unwinds_truncated) +=
            std::mem::take(&mut progress.unwinds_truncated);
    }

    /// Ends the attachment, its probes' counters moved to the earlier attachments' under
    /// the attachment's lock, which a scrape holds while it adds them up (see
    /// `keep_sampled_counters`).
    pub fn take_attached(&self) -> Option<Attached> {
        if self.sampling.is_none()
            && let Some(last) = self.counts_mark()
        {
            *lock(&self.detached_counts) = Some(last);
        }
        let mut attached = lock(&self.attached);
        let counters =
            attached.as_ref().and_then(|attached| lock(&attached.probes).counters().ok());
        if let Some(counters) = counters {
            *lock(&self.earlier_counters) += counters;
        }
        let short_waits =
            attached.as_ref().and_then(|attached| lock(&attached.probes).short_waits().ok());
        if let Some(short_waits) = short_waits {
            add_short_waits(&mut lock(&self.earlier_short_waits), &short_waits);
        }
        attached.take()
    }

    /// The waits under --min-wait over the daemon's life, by kind (exact mode: summed in
    /// the kernel, without stacks; none in sampled mode).
    pub fn total_short_waits(&self) -> ShortWaitsByKind {
        // Under the attachment's lock, as the detach moves them (see `total_counters`).
        let attached = lock(&self.attached);
        let current =
            attached.as_ref().and_then(|attached| lock(&attached.probes).short_waits().ok());
        let mut total = *lock(&self.earlier_short_waits);
        if let Some(current) = current {
            add_short_waits(&mut total, &current);
        }
        total
    }

    /// The current attachment's counters: what its probes and the decoder saw (in
    /// sampled mode, the sampler's reads and unwinds); between attachments, those the last
    /// one ended with.
    pub fn counts_mark(&self) -> Option<CountsMark> {
        if self.sampling.is_some() {
            let progress = lock(&self.sampled);
            return Some(CountsMark {
                generation: progress.generation,
                counts: progress.counts.clone(),
                short_waits: Default::default(),
                reads: progress.earlier_reads + progress.reads,
            });
        }
        let (generation, probes) = {
            let attached = lock(&self.attached);
            let Some(attached) = attached.as_ref() else {
                return lock(&self.detached_counts).clone();
            };
            (attached.generation, Arc::clone(&attached.probes))
        };
        let (counters, short_waits) = {
            let probes = lock(&probes);
            (probes.counters().ok()?, probes.short_waits().ok()?)
        };
        let collector = lock(&self.collector);
        let decoder = collector.decoder.as_ref()?;
        if collector.generation != generation {
            return None;
        }
        let mut counts = trace_counts(
            &counters,
            decoder.unwinder.truncated_unwinds,
            &decoder.objects,
            decoder.malformed_records,
            decoder.wakers_evicted,
        );
        counts.late_copies = decoder.late_copies;
        Some(CountsMark { generation, counts, short_waits, reads: 0 })
    }

    /// An empty profile of `kind` about the attached process (or the one wanted).
    pub fn base_profile(&self, kind: ProfileKind, duration: Duration) -> Profile {
        let (pid, comm) = match self.attached_process() {
            Some((pid, comm, _)) => (pid, comm),
            None => match lock(&self.last_attached).clone() {
                Some(last) => last,
                None => (self.wanted.pid().unwrap_or(0), self.wanted.to_string()),
            },
        };
        let start = std::time::SystemTime::now().checked_sub(duration);
        let mut profile = Profile::new(kind, pid, comm);
        profile.start_unix_ns = start.and_then(crate::pipeline::target::unix_ns);
        profile.duration = duration;
        if kind == ProfileKind::Recording {
            profile.min_wait = self.min_wait;
            profile.no_wakers = self.sampling.is_none() && !self.wakers;
        }
        profile
    }

    /// The threads blocked now in the attached process, as a snapshot profile.
    pub async fn blocked_now(&self, chains: worker::ChainsWanted) -> Result<Profile, ServeError> {
        let (pid, generation, probes) = {
            let attached = lock(&self.attached);
            let attached = attached.as_ref().ok_or(ServeError::NotAttached)?;
            (attached.pid, attached.generation, Arc::clone(&attached.probes))
        };
        // The task iterator and the /proc reads block: off the runtime's threads.
        let (known_starts, frame_pointers) = tokio::task::spawn_blocking(move || {
            let mut probes = lock(&probes);
            let known_starts = probes.waits_in_progress(pid)?;
            // The chains unwind the peers behind endpoints too: every task's registers.
            let registers = match chains {
                worker::ChainsWanted::WithFacts => probes.host_task_looks()?,
                worker::ChainsWanted::No => probes.task_looks()?,
            };
            Ok::<_, ProbeError>((known_starts, SavedFramePointers::from_tasks(&registers)))
        })
        .await
        .map_err(ServeError::Sampling)?
        .map_err(ServeError::Probes)?;
        let base = self.base_profile(ProfileKind::Snapshot, Duration::ZERO);
        Ok(self.worker.blocked_now(generation, base, known_starts, frame_pointers, chains).await?)
    }

    /// The threads blocked now, as /metrics series: sampled at most once per
    /// `BLOCKED_SAMPLE_TTL`, however many scrape.
    pub async fn blocked_series(&self) -> Result<Arc<metrics::CappedSeries<u64>>, ServeError> {
        let mut sample = self.blocked_sample.lock().await;
        let (_, _, generation) = self.attached_process().ok_or(ServeError::NotAttached)?;
        if let Some(sample) = sample.as_ref()
            && sample.generation == generation
            && sample.taken.elapsed() < BLOCKED_SAMPLE_TTL
        {
            return Ok(Arc::clone(&sample.series));
        }
        let snapshot = match self.blocked_now(worker::ChainsWanted::No).await {
            Ok(snapshot) => snapshot,
            // The symbolizer's queue full (clients asking for snapshots): the last sample
            // of this process rather than no gauge, which Prometheus would mark stale (an
            // alert's `for:` starting over).
            Err(ServeError::Worker(worker::WorkerError::Busy)) => match sample.as_ref() {
                Some(last) if last.generation == generation => {
                    return Ok(Arc::clone(&last.series));
                }
                _ => return Err(ServeError::Worker(worker::WorkerError::Busy)),
            },
            Err(err) => return Err(err),
        };
        let series = Arc::new(metrics::blocked_series(&snapshot, self.max_series));
        *sample =
            Some(BlockedSample { generation, taken: Instant::now(), series: Arc::clone(&series) });
        Ok(series)
    }

    /// Whether the attached process is a Go program.
    pub fn is_go(&self) -> bool {
        self.go_target().is_some()
    }

    /// The attached process, if it is a Go program.
    pub fn go_target(&self) -> Option<Arc<Traced>> {
        lock(&self.attached).as_ref().and_then(|attached| attached.go.clone())
    }

    /// The goroutines of the attached Go program, from a read that began at
    /// `not_before` or later: the last one if it did, else a new one (one at a time; a
    /// request that waited for a read in flight takes that read).
    pub async fn goroutines(&self, not_before: Instant) -> Result<Arc<GoroutineRead>, ServeError> {
        let mut last = self.goroutine_read.lock().await;
        let (generation, traced) = {
            let attached = lock(&self.attached);
            let attached = attached.as_ref().ok_or(ServeError::NotAttached)?;
            let traced = attached.go.clone().ok_or_else(|| ServeError::NotGo {
                pid: attached.pid,
                comm: attached.comm.clone(),
            })?;
            (attached.generation, traced)
        };
        if let Some(read) = last.as_ref()
            && read.generation == generation
            && read.started >= not_before
        {
            return Ok(Arc::clone(read));
        }
        // Drop the last read before taking the next: at the seed's scale each is large.
        *last = None;
        let started = Instant::now();
        let max_series = self.max_series;
        // Reading another process's memory and naming the frames: off the runtime's threads.
        let read = tokio::task::spawn_blocking(move || {
            let dump = crate::golang::goroutine_dump(&traced);
            // The read's working memory (hundreds of MiB at the seed's scale) is free now;
            // each blocking thread has its own malloc arena, so unless it goes back to the
            // system each read on another thread would keep that much more.
            release_free_memory();
            let dump = dump?;
            let series = metrics::goroutine_series(&dump, max_series);
            Ok::<_, anyhow::Error>(GoroutineRead { generation, started, dump, series })
        })
        .await
        .map_err(|err| ServeError::Goroutines(err.into()))?
        .map_err(|err| ServeError::Goroutines(err.into()))?;
        log::debug!(
            "read {} goroutines in {} groups in {:?}",
            read.dump.goroutines(),
            read.dump.groups.len(),
            started.elapsed()
        );
        let read = Arc::new(read);
        *last = Some(Arc::clone(&read));
        Ok(read)
    }

    /// Folds the waits gathered since the last fold into the Prometheus series. Waits
    /// that cannot be symbolized are counted as lost: the symbolizer waits for room in
    /// its queue, so that means the target restarted meanwhile (the image the waits
    /// need is gone) or the symbolizer stopped, and a retry would not help.
    pub async fn fold_metrics_window(&self) {
        let (generation, window) = {
            let mut collector = lock(&self.collector);
            if collector.metrics_window.stacks.is_empty() {
                return;
            }
            (collector.generation, std::mem::take(&mut collector.metrics_window))
        };
        let waits = collector::waits_in(&window);
        let base = self.base_profile(ProfileKind::Recording, Duration::ZERO);
        match self.worker.symbolize(generation, window, base).await {
            Ok(profile) => lock(&self.waits).fold(&profile),
            Err(err) => {
                log::warn!("{waits} waits lost to /metrics: {err}");
                lock(&self.collector).metrics_window_lost += waits;
            }
        }
    }

    /// The probe counters over every attachment (in sampled mode, the sampler's).
    pub fn total_counters(&self) -> ProbeCounters {
        // The attachment's and the sampler's locks held while adding up: a detach moves
        // counters under them. (Locked in the order the detach takes them.)
        let attached = lock(&self.attached);
        let current = attached.as_ref().and_then(|attached| lock(&attached.probes).counters().ok());
        let progress = lock(&self.sampled);
        let mut total = *lock(&self.earlier_counters);
        total += progress.counters;
        if let Some(counters) = current {
            total += counters;
        }
        total
    }

    /// What the samplers counted beside their probes' counters, over every attachment.
    fn total_sampler_counts(&self) -> SamplerCounts {
        let progress = lock(&self.sampled);
        let mut total = *lock(&self.earlier_sampler_counts);
        total += progress.sampler_counts;
        total
    }

    /// The samplers' unwinds truncated, over every attachment (sampled mode).
    fn total_sampled_unwinds_truncated(&self) -> u64 {
        let progress = lock(&self.sampled);
        *lock(&self.earlier_sampled_unwinds_truncated) + progress.unwinds_truncated
    }

    /// Records read and events lost, over every attachment.
    pub fn tracer_totals(&self) -> metrics::TracerTotals {
        let counters = self.total_counters();
        let sampler_counts = self.total_sampler_counts();
        let sampled_unwinds_truncated = self.total_sampled_unwinds_truncated();
        let collector = lock(&self.collector);
        metrics::TracerTotals {
            events: collector.records_read,
            lost: vec![
                // A sampled daemon's passes in the kernel lose to a full ring of their own.
                (
                    "ring_buffer_full",
                    counters.get(Counter::RingBufferFull) + counters.get(Counter::PassRingFull),
                ),
                ("wake_ring_buffer_full", counters.get(Counter::WakeRingBufferFull)),
                ("in_flight_map_full", counters.get(Counter::InFlightMapFull)),
                ("stack_unreadable", counters.get(Counter::StackUnreadable)),
                (
                    "malformed_record",
                    collector.malformed_records() + sampler_counts.malformed_records,
                ),
                (
                    "sampled_read",
                    counters.get(Counter::PassesIncomplete) + sampler_counts.late_passes,
                ),
                ("thread_read_failed", sampler_counts.thread_reads_failed),
                ("sampled_wait_unread", sampler_counts.waits_unread),
                ("unwind_truncated", collector.unwinds_truncated() + sampled_unwinds_truncated),
                ("wakers_unmatched", collector.wakers_unmatched()),
                ("window_full", collector.stacks_dropped),
                ("metrics_window", collector.metrics_window_lost),
                ("block_window", collector.block_window_lost),
            ],
        }
    }
}

fn add_short_waits(total: &mut ShortWaitsByKind, more: &ShortWaitsByKind) {
    for (total, more) in total.iter_mut().zip(more) {
        total.count += more.count;
        total.total_ns += more.total_ns;
    }
}

/// The counts of a window: what the attachment saw since `mark` (all of it when the
/// target was re-attached meanwhile).
pub fn counts_since(
    now: &CountsMark,
    mark: Option<&CountsMark>,
) -> (TraceCounts, ShortWaitsByKind) {
    match mark.filter(|mark| mark.generation == now.generation) {
        Some(mark) => (
            counts_between(&now.counts, &mark.counts),
            short_waits_between(&now.short_waits, &mark.short_waits),
        ),
        None => (now.counts.clone(), now.short_waits),
    }
}

/// What the counters of one attachment grew by from `then` to `now`.
fn counts_between(now: &TraceCounts, then: &TraceCounts) -> TraceCounts {
    now.since(then)
}

/// Why an endpoint cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No process is attached (the followed one exited and none restarted yet).
    #[error("no process attached yet")]
    NotAttached,
    /// Goroutines were asked of a process that is not a Go program.
    #[error("pid {pid} ({comm}) is not a Go program: /debug/pprof/threads shows its threads")]
    NotGo { pid: u32, comm: String },
    /// The goroutines of the Go program could not be read.
    #[error("cannot read the goroutines")]
    Goroutines(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Reading the probes' maps failed.
    #[error("cannot read the probes")]
    Probes(#[source] ProbeError),
    /// The task sampling the blocked threads panicked or was cancelled.
    #[error("cannot sample the blocked threads")]
    Sampling(#[source] tokio::task::JoinError),
    /// The symbolizer thread could not build the profile.
    #[error(transparent)]
    Worker(#[from] worker::WorkerError),
    /// The metrics could not be encoded as text.
    #[error("cannot render the metrics")]
    Render(#[source] std::fmt::Error),
}

/// A daemon's open block windows: how many, and the word that ends them when it stops
/// (each then answers with what it holds, rather than being reset with the server).
pub struct OpenWindows {
    closing: tokio::sync::watch::Sender<bool>,
    open: AtomicUsize,
}

impl OpenWindows {
    fn new() -> Self {
        Self { closing: tokio::sync::watch::channel(false).0, open: AtomicUsize::new(0) }
    }

    /// Counts a window open while the guard lives.
    pub fn opened(&self) -> OpenWindowCount<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenWindowCount(self)
    }

    /// Resolves once the daemon stops (at once if it has).
    pub fn closing(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut closing = self.closing.subscribe();
        async move {
            // An error: the sender is gone with the daemon, which stops too.
            let _ = closing.wait_for(|closing| *closing).await;
        }
    }

    /// Holds a window open for `length` from `opened`, or until the daemon stops (then
    /// the client gets what it held, for as long as it was open).
    pub async fn hold(&self, length: Duration, opened: Instant) {
        tokio::select! {
            () = tokio::time::sleep_until((opened + length).into()) => {}
            () = self.closing() => {
                log::info!("block profile: ended after {:?}, serve is stopping", opened.elapsed());
            }
        }
    }

    /// Ends every open window and waits, up to `grace` or another signal, for their
    /// answers to be made and written.
    async fn close_and_wait(&self, grace: Duration, signals: &mut StopSignals) {
        self.closing.send_replace(true);
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        let answered = async {
            while self.open.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(WINDOWS_ANSWER_FLUSH).await;
        };
        tokio::select! {
            () = answered => {}
            () = tokio::time::sleep(grace) => log::warn!("open block windows not answered"),
            signal = signals.next() => {
                log::info!("{signal} again: not waiting for open windows");
            }
        }
    }
}

/// Counts a block window open in its `OpenWindows` while it lives.
pub struct OpenWindowCount<'a>(&'a OpenWindows);

impl Drop for OpenWindowCount<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A flag set when this is dropped: stops a thread (a sampling loop, which cannot be
/// cancelled) however the task that started it ends, by its own end, its client going
/// away, or serve shutting down and dropping every task.
struct StopOnDrop(Arc<AtomicBool>);

impl StopOnDrop {
    fn new() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }

    /// The flag, for the thread to look at.
    fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }

    /// Sets the flag now.
    fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{ShortWaitTotals, WAIT_KIND_COUNT};

    use super::*;

    fn mark(generation: u64, long_waits: u64, short_count: u64) -> CountsMark {
        let mut short_waits = [ShortWaitTotals::default(); WAIT_KIND_COUNT];
        short_waits[0] = ShortWaitTotals { count: short_count, total_ns: short_count * 10 };
        CountsMark {
            generation,
            counts: TraceCounts { long_waits, ..TraceCounts::default() },
            short_waits,
            reads: 0,
        }
    }

    #[test]
    fn window_counts_are_the_growth_since_the_mark_of_the_same_attachment() {
        let now = mark(2, 50, 7);
        let (counts, short) = counts_since(&now, Some(&mark(2, 20, 3)));
        assert_eq!(counts.long_waits, 30);
        assert_eq!((short[0].count, short[0].total_ns), (4, 40));
        // Re-attached meanwhile: everything the new attachment saw.
        let (counts, short) = counts_since(&now, Some(&mark(1, 20, 3)));
        assert_eq!(counts.long_waits, 50);
        assert_eq!(short[0].count, 7);
        let (counts, _) = counts_since(&now, None);
        assert_eq!(counts.long_waits, 50);
    }

    /// The loss `reason` of /metrics' totals.
    fn lost(shared: &Shared, reason: &str) -> u64 {
        let totals = shared.tracer_totals();
        totals.lost.iter().find(|(name, _)| *name == reason).expect("a known reason").1
    }

    #[test]
    fn a_sampled_daemons_losses_reach_its_windows_and_metrics_and_outlive_its_attachment() {
        let worker = worker::Worker::start().expect("the symbolizer thread starts");
        let period = Some(Duration::from_millis(20));
        let shared = Shared::new(Wanted::Pid(1), Duration::ZERO, period, false, 10, worker);
        // A read's progress: the ring full `ring_full` times, which cost `incomplete`
        // passes; `losses` beside the probes' counters; ten unwinds truncated a read.
        let note = |shared: &Shared, reads, ring_full, incomplete, losses: SamplerCounts| {
            let mut counters = ProbeCounters::default();
            counters.0[Counter::PassRingFull as usize] = ring_full;
            counters.0[Counter::PassesIncomplete as usize] = incomplete;
            let objects = crate::objects::WaitObjects::new(1);
            let counts = losses.add_to(trace_counts(&counters, 10 * reads, &objects, 0, 0));
            shared.note_sampled_progress(reads, counts, counters, losses);
        };
        let totals = |shared: &Shared| {
            [
                "ring_buffer_full",
                "malformed_record",
                "sampled_read",
                "thread_read_failed",
                "sampled_wait_unread",
                "unwind_truncated",
            ]
            .map(|reason| lost(shared, reason))
        };
        let losses = SamplerCounts {
            malformed_records: 2,
            late_passes: 1,
            thread_reads_failed: 6,
            waits_unread: 9,
            waits_at_last_place: 40,
        };
        note(&shared, 5, 3, 2, losses);
        let mark = shared.counts_mark().expect("sampled mode always has a mark");
        assert_eq!((mark.reads, mark.counts.ring_buffer_full), (5, 3));
        assert_eq!((mark.counts.malformed_records, mark.counts.reads_lost), (2, 3));
        assert_eq!(mark.counts.thread_reads_failed, 6);
        assert_eq!((mark.counts.waits_unread, mark.counts.waits_at_last_place), (9, 40));
        assert_eq!(totals(&shared), [3, 2, 3, 6, 9, 50]);
        // The process exits: its counts stay in the totals, and the next one's add to them.
        shared.keep_sampled_counters();
        assert_eq!(totals(&shared), [3, 2, 3, 6, 9, 50]);
        lock(&shared.collector).generation += 1;
        let losses = SamplerCounts {
            late_passes: 4,
            thread_reads_failed: 1,
            waits_unread: 2,
            ..SamplerCounts::default()
        };
        note(&shared, 1, 1, 1, losses);
        assert_eq!(totals(&shared), [4, 2, 8, 7, 11, 60]);
    }
}
