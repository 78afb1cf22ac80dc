//! `tracer record`: attach to a live process, collect its waits until the duration ends
//! (or Ctrl-C, SIGTERM, or its exit), then symbolize and write every report.

use std::{
    collections::HashMap,
    mem::size_of,
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};
use tracer_common::{Counter, ShortWaitTotals, WaitKind, WaitRecord, WakeRecord};

use crate::{
    aggregate::{Profile, ProfileKind, StackKey, ThreadCounts, TraceCounts, WaitAggregate},
    blocked_now::{SavedFramePointers, collect_blocked_threads},
    cli::RecordArgs,
    locks::LockNamer,
    probes::{ProbeConfig, ProbeCounters, Probes, ShortWaitsByKind},
    report::{
        Output,
        summary::{format_duration, render_summary},
    },
    stacks::{ProcessImage, StackSymbolizer, StackWalker, UserRegs},
    target::{self, Target},
    wait_targets::WaitTargets,
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
    target::ensure_tracefs()?;

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
        decoder: WaitDecoder { mut walker, mut targets, malformed_records, pending_wakers: _ },
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
    let counts = trace_counts(&counters, walker.truncated_walks, &targets, malformed_records);
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
    crate::report::write_outputs(outputs, &profile)
}

/// What the probes and the collector saw and lost (`unknown_symbols` is filled in by
/// symbolization).
pub fn trace_counts(
    counters: &ProbeCounters,
    unwind_truncated: u64,
    targets: &WaitTargets,
    malformed_records: u64,
) -> TraceCounts {
    TraceCounts {
        calls_entered: counters.get(Counter::CallsEntered),
        returned_without_waiting: counters.get(Counter::ReturnedWithoutWaiting),
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

/// The probes' two ring buffers: long waits, and the wakers of long futex waits.
pub struct RingBuffers {
    pub waits: AsyncFd<RingBuf<MapData>>,
    pub wakes: AsyncFd<RingBuf<MapData>>,
}

impl RingBuffers {
    /// Takes both ring buffers out of the probes and registers them with the runtime.
    pub fn take(probes: &mut Probes) -> anyhow::Result<Self> {
        Ok(Self {
            waits: poll_readable(probes.take_wait_records()?)
                .context("cannot poll the probes' ring buffer")?,
            wakes: poll_readable(probes.take_wake_records()?)
                .context("cannot poll the probes' ring buffer")?,
        })
    }

    /// Waits until either buffer has records, then drains both into `sink` (wakes
    /// first). Cancel-safe: records stay in the buffers until drained.
    pub async fn drain_when_readable(&mut self, sink: &mut impl WaitSink) -> anyhow::Result<()> {
        let Self { waits, wakes } = self;
        tokio::select! {
            guard = waits.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                drain(wakes.get_mut(), guard.get_inner_mut(), sink);
                guard.clear_ready();
            }
            guard = wakes.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                while let Some(item) = guard.get_inner_mut().next() {
                    sink.add_wake(&item);
                }
                guard.clear_ready();
            }
        }
        Ok(())
    }

    /// Drains whatever is in both buffers now, without waiting.
    pub fn drain_now(&mut self, sink: &mut impl WaitSink) {
        drain(self.wakes.get_mut(), self.waits.get_mut(), sink);
    }
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
            drained = rings.drain_when_readable(collector) => drained?,
        }
    }
}

/// Registers an owned descriptor with the runtime, for readiness to read.
pub fn poll_readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor (a ring-buffer map or a pidfd), which stays
    // open and the same for as long as the AsyncFd holds `inner`.
    Ok(unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }?)
}

pub async fn readable(fd: &AsyncFd<OwnedFd>) {
    // A pidfd polls readable once, when the process exits.
    if let Ok(mut guard) = fd.readable().await {
        guard.retain_ready();
    }
}

/// Wakes first: a waker's record is written before its wakee can even return, so
/// reading them first lets each long wait find its waker.
fn drain(wakes: &mut RingBuf<MapData>, waits: &mut RingBuf<MapData>, sink: &mut impl WaitSink) {
    while let Some(item) = wakes.next() {
        sink.add_wake(&item);
    }
    while let Some(item) = waits.next() {
        sink.add_record(&item);
    }
}

/// Where the ring buffers' records go: `record`'s one aggregate, or `serve`'s windows.
pub trait WaitSink {
    /// A waker record (the stack of a thread that woke a long futex wait).
    fn add_wake(&mut self, bytes: &[u8]);
    /// A long-wait record.
    fn add_record(&mut self, bytes: &[u8]);
}

/// Wakers waiting for their wait's record, by (woken thread, wait start). Bounded: a
/// wake whose wait never ends (or was dropped) must not pile up.
const MAX_PENDING_WAKERS: usize = 65_536;

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

/// One long wait, unwound and resolved, with its waker when one was seen.
#[derive(Clone, Debug)]
pub struct Wait {
    pub key: StackKey,
    pub tid: u32,
    pub duration_ns: u64,
    /// The thread's name (`comm`) when the wait ended.
    pub thread_name: String,
    /// The waker's thread id and unwound stack.
    pub waker: Option<(u32, Vec<u64>)>,
}

impl Wait {
    pub fn add_to(self, aggregate: &mut WaitAggregate) {
        let Self { key, tid, duration_ns, thread_name, waker } = self;
        if let Some((waker_tid, waker_stack)) = waker {
            aggregate.add_waker(&key, waker_tid, waker_stack);
        }
        aggregate.add(key, tid, duration_ns);
        aggregate.name_thread(tid, &thread_name);
    }
}

/// Turns ring-buffer records into `Wait`s: unwinds stacks, resolves what each wait
/// waits on, and pairs each wait with its waker.
pub struct WaitDecoder {
    pub walker: StackWalker,
    pub targets: WaitTargets,
    /// Waker (tid, unwound stack) of a long wait, until the wait's own record arrives.
    pub pending_wakers: HashMap<(u32, u64), (u32, Vec<u64>)>,
    pub malformed_records: u64,
}

impl WaitDecoder {
    pub fn new(pid: u32, walker: StackWalker) -> Self {
        Self {
            walker,
            targets: WaitTargets::new(pid),
            pending_wakers: HashMap::new(),
            malformed_records: 0,
        }
    }

    pub fn add_wake(&mut self, bytes: &[u8]) {
        if bytes.len() < size_of::<WakeRecord>() {
            self.malformed_records += 1;
            return;
        }
        // SAFETY: as in `decode`: a whole plain-old-data record, read unaligned.
        let record: WakeRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let stack_len = (record.stack_len as usize).min(record.stack.len());
        let regs = UserRegs { ip: record.ip, sp: record.sp, bp: record.bp };
        let walked = self.walker.walk(regs, &record.stack[..stack_len]);
        if self.pending_wakers.len() >= MAX_PENDING_WAKERS {
            self.pending_wakers.clear();
        }
        self.pending_wakers.insert(
            (record.wakee_tid, record.wait_start_ns),
            (record.waker_tid, walked.addresses),
        );
    }

    /// The wait of one record; None for a malformed record or a wait not reported
    /// (read/write off sockets).
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Wait> {
        if bytes.len() < size_of::<WaitRecord>() {
            self.malformed_records += 1;
            return None;
        }
        // SAFETY: the buffer holds a whole WaitRecord (checked above), a plain-old-data
        // struct for which every bit pattern is valid; read_unaligned needs no alignment.
        let record: WaitRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let Some(kind) = WaitKind::from_u32(record.kind) else {
            self.malformed_records += 1;
            return None;
        };
        let (kind, target) = self.targets.resolve(kind, record.object)?;
        let stack_len = (record.stack_len as usize).min(record.stack.len());
        let regs = UserRegs { ip: record.ip, sp: record.sp, bp: record.bp };
        let walked = self.walker.walk(regs, &record.stack[..stack_len]);
        let key = StackKey {
            addresses: walked.addresses,
            kind,
            target,
            truncated: walked.truncated,
            in_progress: false,
        };
        let waker = self.pending_wakers.remove(&(record.tid, record.start_ns));
        let comm_len = record.comm.iter().position(|&byte| byte == 0).unwrap_or(record.comm.len());
        Some(Wait {
            key,
            tid: record.tid,
            duration_ns: record.duration_ns,
            thread_name: String::from_utf8_lossy(&record.comm[..comm_len]).into_owned(),
            waker,
        })
    }
}
