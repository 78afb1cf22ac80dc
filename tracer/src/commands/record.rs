//! `tracer record`: attach to a live process, collect its waits until the duration ends
//! (or Ctrl-C, SIGTERM, or its exit), then symbolize and write every report.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracer_common::{Counter, ShortWaitTotals, WaitKind};

use crate::{
    model::{Profile, ProfileKind, ThreadCounts, TraceCounts, WaitAggregate},
    threads::blocked_now::{SavedFramePointers, collect_blocked_threads},
    cli::RecordArgs,
    probes::events::{RingBuffers, WaitDecoder, WaitSink, poll_readable, readable},
    objects::locks::LockNamer,
    probes::{ProbeConfig, ProbeCounters, Probes, ShortWaitsByKind},
    report::{
        Output,
        summary::{format_duration, render_summary},
    },
    stacks::{ProcessImage, StackSymbolizer, StackWalker},
    pipeline::target::{self, Target},
    objects::WaitObjects,
};

pub async fn record(args: RecordArgs) -> anyhow::Result<()> {
    let RecordArgs { pid, duration, min_wait, outputs, top, maps } = args;
    // Checks in the order that leaves nothing behind: formats, privileges, target,
    // kernel, then the files themselves.
    for path in &outputs {
        crate::report::Format::from_path(path)?;
    }
    target::check_root()?;
    let target = Target::open(pid)?;
    // A Go program's goroutines wait in the Go scheduler, not in the kernel: record those.
    let image = ProcessImage::snapshot(pid)
        .with_context(|| format!("cannot read the memory map of pid {pid}"))?;
    if image
        .modules()
        .iter()
        .any(|module| module.is_main_executable && crate::golang::is_go(module.file_bytes()))
    {
        return crate::golang::record(&target, &image, duration, &outputs, top).await;
    }
    let btf_path = target::btf_path()?;
    let outputs = outputs
        .iter()
        .map(|path| Output::create(path))
        .collect::<Result<Vec<_>, _>>()?;

    let mut collector = WaitCollector::new(pid, StackWalker::new(pid, image));
    let mut probes = Probes::open(ProbeConfig { tgid: pid, min_wait, maps }, &btf_path)?;
    probes.attach_wait_probes()?;
    let mut rings = RingBuffers::take(&mut probes)?;
    eprintln!(
        "tracer: recording {} (pid {}) for {}; Ctrl-C to stop early",
        target.comm,
        target.pid,
        format_duration(duration.as_nanos() as u64)
    );

    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let stop = wait_for_stop(&target, duration, &mut rings, &mut collector).await?;
    let elapsed = started.elapsed();
    // Waits that ended just before the stop are still in the buffer.
    rings.drain_now(&mut collector);
    let counters = probes.counters()?;
    let short_waits = probes.short_waits()?;
    // Neither of these may cost the recording: without them, ages are lower bounds and
    // stacks that need rbp stop early (both counted).
    let known_starts = probes.waits_in_progress(pid).unwrap_or_else(|err| {
        log::warn!("cannot read the waits in progress: {err}");
        Default::default()
    });
    let frame_pointers = match probes.task_registers() {
        Ok(registers) => SavedFramePointers::from_tasks(&registers),
        Err(err) => {
            log::warn!("cannot read the threads' saved registers: {err}");
            SavedFramePointers::default()
        }
    };
    drop(probes); // detach before the slow part
    // Records written between the drain and the detach.
    rings.drain_now(&mut collector);
    drop(rings);
    let target_exited = stop == Stop::TargetExited || target.has_exited();
    if target_exited {
        eprintln!("tracer: pid {pid} exited during the recording; reporting what was recorded");
    }

    let WaitCollector {
        decoder: WaitDecoder { mut walker, mut targets, malformed_records, pending_wakers, wakers_evicted },
        mut aggregate,
    } = collector;
    // The waits that never ended: threads blocked before we attached, and stuck ones.
    let mut target_exited = target_exited;
    let thread_counts = if target_exited {
        ThreadCounts::default()
    } else {
        match collect_blocked_threads(
            pid,
            &mut walker,
            &known_starts,
            &frame_pointers,
            &mut targets,
            &mut aggregate,
        ) {
            Ok(counts) => counts,
            // Exiting now, after the recording: still report what was recorded.
            Err(_) if target.has_exited() => {
                target_exited = true;
                eprintln!("tracer: pid {pid} exited at the end of the recording");
                ThreadCounts::default()
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot list the threads of pid {pid}"));
            }
        }
    };
    // A waker still pending here never met its wait's record.
    let wakers_unmatched = wakers_evicted + pending_wakers.len() as u64;
    let counts =
        trace_counts(&counters, walker.truncated_walks, &targets, malformed_records, wakers_unmatched);
    let base = Profile {
        kind: ProfileKind::Recording,
        pid,
        start_unix_ns: target::unix_ns(started_at),
        command_line: target.command_line.clone(),
        comm: target.comm.clone(),
        duration: elapsed,
        min_wait,
        target_exited,
        stacks: Vec::new(),
        below_threshold: below_threshold(&short_waits),
        counts,
        thread_counts,
        endpoint_states: std::mem::take(&mut targets.endpoint_states),
        thread_names: Default::default(),
        wakers: Vec::new(),
        modules: Default::default(),
    };
    targets.log_socket_lookups();
    let mut symbolizer = StackSymbolizer::new();
    let mut profile =
        aggregate.into_profile(base, walker.image(), &mut symbolizer, &mut LockNamer::new());
    profile.counts.unknown_symbols = symbolizer.unknown_addresses;
    print!("{}", render_summary(&profile, top));
    println!("{}", crate::pipeline::own_usage::ProcessUsage::of_self());
    crate::report::write_outputs(outputs, &profile)
}

/// What the probes and the collector saw and lost (`unknown_symbols` is filled in by
/// symbolization).
pub fn trace_counts(
    counters: &ProbeCounters,
    unwind_truncated: u64,
    targets: &WaitObjects,
    malformed_records: u64,
    wakers_unmatched: u64,
) -> TraceCounts {
    TraceCounts {
        waits_started: counters.get(Counter::WaitsStarted),
        waits_discarded: counters.get(Counter::WaitsDiscarded),
        short_waits: counters.get(Counter::ShortWaits),
        long_waits: counters.get(Counter::LongWaits),
        ring_buffer_full: counters.get(Counter::RingBufferFull),
        stack_unreadable: counters.get(Counter::StackUnreadable),
        stack_shortened: counters.get(Counter::StackShortened),
        in_flight_map_full: counters.get(Counter::InFlightMapFull),
        wakes_seen: counters.get(Counter::WakesSent),
        wake_ring_buffer_full: counters.get(Counter::WakeRingBufferFull),
        unwind_truncated,
        unknown_symbols: 0,
        non_socket_io: targets.non_socket_io,
        unresolved_descriptors: targets.unresolved_sockets,
        malformed_records,
        wakers_unmatched,
    }
}

/// The waits under the threshold, per kind. read/write under the threshold are not
/// resolved to sockets (no record reaches userspace), so they stay `read`/`write`: any
/// descriptor. Goroutine waits are not syscalls: the probes never count them.
pub fn below_threshold(short_waits: &ShortWaitsByKind) -> Vec<(WaitKind, ShortWaitTotals)> {
    WaitKind::ALL
        .iter()
        .filter(|&&kind| kind != WaitKind::Goroutine)
        .map(|&kind| (kind, short_waits[kind as usize]))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    DurationElapsed,
    Interrupted,
    TargetExited,
}

async fn wait_for_stop(
    target: &Target,
    duration: Duration,
    rings: &mut RingBuffers,
    collector: &mut WaitCollector,
) -> anyhow::Result<Stop> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let exited = poll_readable(target.pidfd.try_clone().context("cannot dup the pidfd")?)
        .context("cannot poll the pidfd")?;
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Ok(Stop::DurationElapsed),
            _ = sigint.recv() => return Ok(Stop::Interrupted),
            _ = sigterm.recv() => return Ok(Stop::Interrupted),
            _ = readable(&exited) => return Ok(Stop::TargetExited),
            drained = rings.drain_when_ready(collector) => drained?,
        }
    }
}

/// Turns wait records into unwound stacks and aggregates them as they arrive.
struct WaitCollector {
    decoder: WaitDecoder,
    aggregate: WaitAggregate,
}

impl WaitCollector {
    fn new(pid: u32, walker: StackWalker) -> Self {
        Self { decoder: WaitDecoder::new(pid, walker), aggregate: WaitAggregate::default() }
    }
}

impl WaitSink for WaitCollector {
    fn add_wake(&mut self, bytes: &[u8]) {
        self.decoder.add_wake(bytes);
    }

    fn add_record(&mut self, bytes: &[u8]) {
        if let Some(wait) = self.decoder.decode(bytes) {
            wait.add_to(&mut self.aggregate);
        }
    }
}

