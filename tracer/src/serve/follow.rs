//! Which process `serve` traces: a pid, for as long as it lives, or the process with a
//! given name, found again each time it restarts. Attaches the probes and drains their
//! ring buffers into the collector (exact mode), or reads the threads at a rate and hands
//! the collector the waits that ended (sampled mode), until the process exits; then
//! detaches.

use std::{
    collections::BTreeMap,
    fmt,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Attached, Shared, StopOnDrop,
    collector::{LockedCollector, waits_in},
    lock,
};
use crate::{
    model::ProfileKind,
    pipeline::{
        Traced,
        late_copies::{self, LateCopies},
        target::{Target, TargetError},
    },
    probes::events::{RingBuffers, WaitDecoder, poll_readable, readable},
    probes::{ProbeConfig, Probes},
    stacks::{ProcessImage, ProcessUnwinder},
    threads::{
        sampler::{TaskIterator, ThreadSampler},
        waits_before::adopt_waits_in_progress,
    },
};

/// How often /proc is searched for a process with the followed name.
const SEARCH_INTERVAL: Duration = Duration::from_millis(250);

/// The process to trace.
#[derive(Clone, Debug)]
pub enum Wanted {
    Pid(u32),
    /// By name (`/proc/PID/comm`), across restarts.
    Comm(String),
}

impl Wanted {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Wanted::Pid(pid) => Some(*pid),
            Wanted::Comm(_) => None,
        }
    }
}

impl fmt::Display for Wanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wanted::Pid(pid) => write!(f, "pid {pid}"),
            Wanted::Comm(name) => write!(f, "processes named {name}"),
        }
    }
}

/// Traces the wanted process until it exits (`--pid`), or forever (`--comm`), or until
/// `stop` turns true (serve is stopping): then the waits still in the probes' buffers are
/// handed on before the detach, as at the target's exit, so that open windows hold them.
pub async fn run(
    wanted: &Wanted,
    shared: &Arc<Shared>,
    btf_path: &Path,
    min_wait: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut generation = 0;
    loop {
        let target = match wanted {
            Wanted::Pid(pid) if generation == 0 => Target::open(*pid)?,
            Wanted::Pid(pid) => {
                log::warn!("pid {pid} exited; stopping");
                return Ok(());
            }
            Wanted::Comm(name) => tokio::select! {
                target = find_by_comm(name, generation == 0) => target,
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
            },
        };
        generation += 1;
        let source = match attach(&target, shared, btf_path, min_wait, generation).await {
            Ok(source) => source,
            // The process may have exited while we attached: look again. Any other
            // failure (the verifier, the kernel's BTF) would only repeat.
            Err(err) if matches!(wanted, Wanted::Comm(_)) && vanished(&target) => {
                log::info!(
                    "pid {} ({}) exited while being attached ({err:#}); looking again",
                    target.pid,
                    target.comm
                );
                detach(shared).await;
                tokio::time::sleep(SEARCH_INTERVAL).await;
                continue;
            }
            Err(err) => {
                return Err(
                    err.context(format!("cannot attach to pid {} ({})", target.pid, target.comm))
                );
            }
        };
        match wanted {
            Wanted::Comm(name) => {
                log::info!("following {name}: attached to pid {} ({})", target.pid, target.comm);
            }
            Wanted::Pid(_) => log::info!("attached to pid {} ({})", target.pid, target.comm),
        }
        let exited = poll_readable(target.pidfd.try_clone().context("cannot dup the pidfd")?)
            .context("cannot poll the pidfd")?;
        // Whether serve is stopping (else the target exited).
        let stopping;
        match source {
            WaitSource::Probes(mut rings, mut late_copier) => {
                let mut sink = LockedCollector(&shared.collector);
                let mut late_copy_poll =
                    late_copies::poll_timer().context("cannot make a timer")?;
                stopping = loop {
                    tokio::select! {
                        _ = readable(&exited) => break false,
                        _ = stop.wait_for(|stop| *stop) => break true,
                        drained = rings.drain_when_ready(&mut sink) => drained?,
                        ticked = late_copy_poll.tick(), if late_copier.is_some() => {
                            ticked.context("waiting for the late copies' timer")?;
                            if let Some(late_copier) = &mut late_copier {
                                poll_late_copies(shared, late_copier);
                                late_copy_poll.set_period(late_copier.interval());
                            }
                        }
                    }
                    update_stack_spans(shared);
                };
                if !stopping {
                    // Before its last waits reach the windows, which then say it exited.
                    shared.exited_generation.store(generation, Ordering::Relaxed);
                }
                if stopping && let Some(attached) = lock(&shared.attached).as_ref() {
                    // Detached first, so that the probes stop writing and the drain ends
                    // (their counters stay, for the windows' counts).
                    lock(&attached.probes).detach_wait_probes();
                }
                // Waits that ended just before the exit (or the stop) are still in the
                // buffers: up to a drain interval of them.
                rings.drain_now(&mut sink);
            }
            WaitSource::Sampler(sampler) => {
                // Stops the sampling thread however `run` ends (the target's exit, or
                // serve shutting down and dropping `run`).
                let stop_reading = StopOnDrop::new();
                let mut reading = tokio::task::spawn_blocking({
                    let (shared, stop) = (Arc::clone(shared), stop_reading.flag());
                    move || sample_into_collector(sampler, &shared, &stop)
                });
                // Its reads fail once the target is gone: whichever notices first.
                let finished;
                (finished, stopping) = tokio::select! {
                    _ = readable(&exited) => (None, false),
                    _ = stop.wait_for(|stop| *stop) => (None, true),
                    finished = &mut reading => (Some(finished), false),
                };
                drop(stop_reading);
                // No read of this attachment may reach the collector after the detach.
                let finished = match finished {
                    Some(finished) => finished,
                    None => reading.await,
                };
                // The waits the last read saw ended with the process (a read that failed
                // otherwise ends none of them).
                if let Ok(mut sampler) = finished
                    && !stopping
                    && target.has_exited()
                {
                    // Before its waits reach the windows, which then say it exited.
                    shared.exited_generation.store(generation, Ordering::Relaxed);
                    sampler.end_waits_at_exit();
                    let ended = sampler.take_ended();
                    if !ended.stacks.is_empty() {
                        lock(&shared.collector).add_ended(ended);
                    }
                }
            }
        }
        if !stopping {
            log::info!("pid {} ({}) exited", target.pid, target.comm);
        }
        detach(shared).await;
        if stopping {
            return Ok(());
        }
    }
}

/// Whether `target` exited or vanished (so a failed attach is worth retrying).
fn vanished(target: &Target) -> bool {
    target.has_exited()
        || matches!(
            Target::open(target.pid),
            Err(TargetError::NoSuchProcess(_) | TargetError::Zombie(_))
        )
}

/// Where an attachment's waits come from. One per attachment, moved once: the sizes of
/// its variants do not matter.
#[allow(clippy::large_enum_variant)]
enum WaitSource {
    /// The probes' ring buffers (exact mode), and without wakers the copier of long
    /// waits' stacks.
    Probes(RingBuffers, Option<LateCopies>),
    /// Reads of the threads at a rate (sampled mode).
    Sampler(ThreadSampler),
}

/// Hands the probes what the decoder learned of the threads' stack spans (see
/// `probes::stack_spans`); one lock at a time.
/// Copies the stacks of the attached process's long waits that kept none (without
/// wakers), counted with the attachment's decoder.
fn poll_late_copies(shared: &Shared, late_copier: &mut LateCopies) {
    let Some(probes) = lock(&shared.attached).as_ref().map(|attached| Arc::clone(&attached.probes))
    else {
        return;
    };
    let copies = late_copier.poll(&mut lock(&probes));
    if let Some(decoder) = lock(&shared.collector).decoder.as_mut() {
        decoder.late_copies += copies;
    }
}

fn update_stack_spans(shared: &Shared) {
    let changes = match lock(&shared.collector).decoder.as_mut() {
        Some(decoder) => decoder.stack_spans.take_changes(),
        None => return,
    };
    if let Some(attached) = lock(&shared.attached).as_ref() {
        lock(&attached.probes).update_stack_spans(changes);
    }
}

/// Reads the threads every period and hands the collector the waits that ended, until
/// `stop` or a read fails (the target exited); gives the sampler back. On a blocking
/// thread: a read can take milliseconds of /proc reads and unwinding.
fn sample_into_collector(
    mut sampler: ThreadSampler,
    shared: &Shared,
    stop: &AtomicBool,
) -> ThreadSampler {
    let mut pace = crate::pipeline::pace::ReadPace::new(sampler.period());
    while !stop.load(Ordering::Relaxed) {
        if let Err(err) = pace.read(|| sampler.read()) {
            log::debug!("sampling stopped: {err}");
            return sampler;
        }
        pace.set_period(sampler.read_interval());
        let ended = sampler.take_ended();
        shared.note_sampled_read(&sampler);
        if !ended.stacks.is_empty() {
            lock(&shared.collector).add_ended(ended);
        }
        sampler.objects_mut().forget_endpoints_beyond(super::collector::MAX_ENDPOINT_STATES);
        // In slices, so that a stop (serve's, waiting for this thread) is seen soon even
        // when the budget spaces the reads seconds apart.
        let next = pace.next();
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(next.saturating_duration_since(Instant::now()).min(STOP_POLL));
        }
    }
    sampler
}

/// How often a sampling thread between reads looks whether it is stopped.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Loads the probes for `target` (attaching them in exact mode; in sampled mode they only
/// serve the task iterator) and hands the decoder, the probes and images for the worker
/// to the shared state.
async fn attach(
    target: &Target,
    shared: &Shared,
    btf_path: &Path,
    min_wait: Duration,
    generation: u64,
) -> anyhow::Result<WaitSource> {
    let pid = target.pid;
    // One table of Python frames for the three images: stacks unwound with one are
    // symbolized with another.
    let python_frames = crate::python::PythonFrameTable::default();
    let image = |what| {
        let mut image = ProcessImage::snapshot(pid)
            .with_context(|| format!("cannot read the memory map of pid {pid} ({what})"))?;
        image.python_frames = python_frames.clone();
        anyhow::Ok(image)
    };
    let unwinder = ProcessUnwinder::new(pid, image("unwinding")?);
    shared
        .worker
        .attach(generation, pid, image("unwinding blocked threads")?, image("symbolizing")?)
        .await;
    // A Go program's goroutines park in its runtime, not in the kernel: they are read
    // from its memory on request (its threads are traced all the same).
    let go = {
        let traced = Traced { target: Target::open(pid)?, image: image("goroutines")? };
        traced.is_go().then(|| Arc::new(traced))
    };
    if go.is_some() {
        log::info!("pid {pid} is a Go program: /debug/pprof/goroutine reads its goroutines");
    }
    let (probes, source) = match shared.sampling {
        Some(period) => {
            let tasks = TaskIterator::Own(Box::new(Probes::open_for_passes(pid, None, btf_path)?));
            let mut sampler = ThreadSampler::new(pid, unwinder, tasks, period)
                .with_context(|| format!("cannot list the threads of pid {pid}"))?
                .with_passes_in_kernel();
            sampler.keep_files_of_at_most(crate::pipeline::members::kept_threads_per_process(1));
            lock(&shared.collector).generation = generation;
            (Probes::open_for_reading(pid, btf_path)?, WaitSource::Sampler(sampler))
        }
        None => {
            let mut probes = Probes::open(
                ProbeConfig {
                    tgid: pid,
                    min_wait,
                    wakers: shared.wakers,
                    maps: Default::default(),
                },
                btf_path,
            )?;
            probes.attach_wait_probes()?;
            let rings = RingBuffers::take(&mut probes)?;
            // Without wakers, a long wait whose sleep kept no stack copy gets one late.
            let late_copier =
                (!shared.wakers).then(|| LateCopies::start(pid, &probes, min_wait)).flatten();
            let mut decoder = WaitDecoder::new(pid, unwinder);
            // Threads asleep since before the attach: their waits count when they end.
            match adopt_waits_in_progress(pid, &mut probes) {
                Ok((ages, adopted)) => {
                    log::debug!("pid {pid}: waits in progress at the attach: {adopted:?}");
                    decoder.ages_at_start = ages;
                }
                Err(err) => log::warn!("pid {pid}: cannot read the waits in progress: {err}"),
            }
            let mut collector = lock(&shared.collector);
            collector.decoder = Some(decoder);
            collector.generation = generation;
            (probes, WaitSource::Probes(rings, late_copier))
        }
    };
    *lock(&shared.last_attached) = Some((pid, target.comm.clone()));
    *lock(&shared.attached) = Some(Attached {
        pid,
        comm: target.comm.clone(),
        generation,
        probes: Arc::new(Mutex::new(probes)),
        go,
    });
    Ok(source)
}

/// Detaches the probes, keeps their counters, and symbolizes what the open windows hold
/// of this process while its image is still at hand.
async fn detach(shared: &Shared) {
    shared.keep_sampled_counters();
    drop(shared.take_attached());
    let (generation, windows) = {
        let mut collector = lock(&shared.collector);
        collector.end_decoder();
        let windows: Vec<_> = collector
            .windows
            .iter_mut()
            .filter(|(_, window)| !window.aggregate.stacks.is_empty())
            .map(|(&id, window)| (id, std::mem::take(&mut window.aggregate)))
            .collect();
        (collector.generation, windows)
    };
    shared.fold_metrics_window().await;
    // The waits taken out of the windows until each is named and handed back: those of a
    // detach cut short (serve stopping) are counted lost when this is dropped.
    let mut taken: BTreeMap<u64, u64> =
        windows.iter().map(|(id, aggregate)| (*id, waits_in(aggregate))).collect();
    let unnamed = UnnamedWaits { shared, windows: &mut taken };
    for (id, aggregate) in windows {
        let base = shared.base_profile(ProfileKind::Recording, Duration::ZERO);
        let symbolized = shared.worker.symbolize(generation, aggregate, base).await;
        let waits = unnamed.windows.remove(&id).unwrap_or_default();
        let mut collector = lock(&shared.collector);
        match symbolized {
            Ok(profile) => {
                if let Some(window) = collector.windows.get_mut(&id) {
                    window.earlier.extend(profile.stacks);
                }
            }
            Err(err) => {
                log::warn!("window {id}: {waits} waits of the exited process lost: {err}");
                lose_window_waits(&mut collector, id, waits);
            }
        }
    }
    shared.worker.detach().await;
}

/// Window waits a detach took out to name, by window: those still here when it is
/// dropped were never handed back.
struct UnnamedWaits<'a> {
    shared: &'a Shared,
    windows: &'a mut BTreeMap<u64, u64>,
}

impl Drop for UnnamedWaits<'_> {
    fn drop(&mut self) {
        let mut collector = lock(&self.shared.collector);
        for (&id, &waits) in self.windows.iter() {
            lose_window_waits(&mut collector, id, waits);
        }
    }
}

/// Counts `waits` of window `id` lost (in its answer's log and in the metrics).
fn lose_window_waits(collector: &mut super::collector::Collector, id: u64, waits: u64) {
    collector.block_window_lost += waits;
    if let Some(window) = collector.windows.get_mut(&id) {
        window.lost_waits += waits;
    }
}

/// Waits for a live process named `name`; says so once when there is none yet.
async fn find_by_comm(name: &str, first: bool) -> Target {
    let mut said = false;
    loop {
        if let Some(target) = process_named(name) {
            return target;
        }
        if !said {
            if first {
                log::info!("no process named {name} yet; waiting for one");
            } else {
                log::info!("waiting for a process named {name} to start again");
            }
            said = true;
        }
        tokio::time::sleep(SEARCH_INTERVAL).await;
    }
}

/// The live user process named `name` that started first (not the lowest pid: pids wrap
/// around), other than this one; when there are several, said once per pick.
fn process_named(name: &str) -> Option<Target> {
    let mut pids = crate::pipeline::target::named_processes(name);
    // Processes whose start cannot be read (gone already) last.
    pids.sort_by_key(|&pid| (started_at_ticks(pid).unwrap_or(u64::MAX), pid));
    let named = pids.len();
    let target = pids.into_iter().find_map(|pid| match Target::open(pid) {
        Ok(target) => Some(target),
        Err(TargetError::Zombie(_) | TargetError::NoSuchProcess(_)) => None,
        Err(err) => {
            log::debug!("pid {pid}: {err}");
            None
        }
    })?;
    if named > 1 {
        crate::report::note(&format!(
            "tracer: {named} processes named {}; following the first started that can be \
             traced, pid {} (serve --pid repeated, or --cgroup, watches several)",
            crate::report::escape_name(name),
            target.pid
        ));
    }
    Some(target)
}

/// When process `pid` started, in clock ticks since boot (/proc/PID/stat's 22nd field).
fn started_at_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    crate::pipeline::target::stat_field(&stat, 22)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process started later has a later start, whatever its pid.
    #[test]
    fn a_child_started_after_us_starts_later() {
        let own = started_at_ticks(std::process::id()).expect("our own start");
        let mut child = std::process::Command::new("sleep").arg("5").spawn().expect("sleep");
        let started = started_at_ticks(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(started.is_some_and(|started| started >= own), "{started:?} < {own}");
        assert_eq!(started_at_ticks(u32::MAX), None);
    }
}
