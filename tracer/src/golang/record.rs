//! `tracer record` on a Go program, two ways. Sampled (the default): the goroutines read
//! from outside at a rate ([`super::sampler`]), nothing attached, so a busy service pays
//! nothing per goroutine switch. Exact: goroutine waits as they happen. Uprobes at
//! `runtime.gopark` (the goroutine, its wait reason and stack) and `runtime.execute` (it
//! runs again) sum each wait's length in the kernel by (stack, wait reason); this module
//! attaches them, waits, names the stacks with `.gopclntab` into the common model, weighted
//! by blocked time. Goroutines still parked at the end (parked before
//! the probes attached, or stuck) come from a goroutine snapshot taken then, reported as
//! still blocked; one read at the start tells which have waited the whole recording.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use object::{Object as _, ObjectSection as _};

use super::{
    binary::GoBinary,
    goroutines::{Goroutine, GoroutineCounts},
    sampler::{Sampled, Sampler},
    stacks::{self, GoNamer, GoStacks},
};
use crate::{
    chains,
    model::{Profile, ProfileKind, Sampling, module_infos},
    objects::WaitObjects,
    pipeline::{self, Traced, counts::go_trace_counts, target::Target},
    probes::Probes,
    report::summary::format_duration,
};

/// How to record a Go program's goroutine waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoRecording {
    /// Read the goroutines `rate_hz` times a second.
    Sampled { rate_hz: u32 },
    /// Uprobes on every park and every run (about 20 µs per goroutine switch).
    Exact,
}

/// Records the goroutine waits of the Go process `traced` for `duration` and writes the
/// reports.
pub async fn record(
    traced: &Traced,
    duration: Duration,
    mode: GoRecording,
    outputs: &[PathBuf],
    top: usize,
) -> anyhow::Result<()> {
    match mode {
        GoRecording::Sampled { rate_hz } => {
            let period = Duration::from_secs(1) / rate_hz.max(1);
            record_sampled(traced, duration, period, outputs, top).await
        }
        GoRecording::Exact => record_exact(traced, duration, outputs, top).await,
    }
}

/// A sampled recording: the goroutines read every `period` until the stop.
async fn record_sampled(
    traced: &Traced,
    duration: Duration,
    period: Duration,
    outputs: &[PathBuf],
    top: usize,
) -> anyhow::Result<()> {
    let Traced { target, image } = traced;
    let pid = target.pid;
    let outputs = pipeline::create_outputs(outputs)?;
    let (module, binary) = super::parse_main(image)?;
    let mut sampler = Sampler::new(target, &binary, image, module.bias, period);
    crate::report::note(&format!(
        "tracer: recording the goroutine waits of {} (pid {pid}, {}) for {}, sampled every {}; \
         Ctrl-C to stop early",
        target.comm,
        binary.version,
        format_duration(duration.as_nanos() as u64),
        format_duration(period.as_nanos() as u64),
    ));
    let started_at = SystemTime::now();
    let (elapsed, target_exited) =
        pipeline::sample_until_stop(target, duration, period, || sampler.read().map(|()| period))?;
    let window = SampledWindow { started_at, elapsed, target_exited };
    let profile = sampled_profile(traced, &binary, module, sampler, window, Peers::Read);
    pipeline::report(&profile, outputs, top)
}

/// A sampled recording of `duration` (or until the target exits), taken on the calling
/// thread: what serve answers /debug/pprof/block with for a Go program. It ends early
/// once `stop` is set (its client went away, or serve is shutting down): a window nobody
/// waits for must not go on reading the program, nor hold up serve's exit.
pub fn sample_window(
    traced: &Traced,
    duration: Duration,
    period: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Profile> {
    let Traced { target, image } = traced;
    let (module, binary) = super::parse_main(image)?;
    let mut sampler = Sampler::new(target, &binary, image, module.bias, period).for_a_window();
    let started = Instant::now();
    let started_at = SystemTime::now();
    let mut target_exited = false;
    loop {
        let read_started = Instant::now();
        if let Err(err) = sampler.read() {
            if target.has_exited() {
                target_exited = true;
                break;
            }
            return Err(err);
        }
        let elapsed = started.elapsed();
        if elapsed >= duration || stop.load(Ordering::Relaxed) {
            break;
        }
        // The next read a period after this one began: at once if this one ran late.
        let next = period.saturating_sub(read_started.elapsed());
        std::thread::sleep(next.min(duration - elapsed));
    }
    let window = SampledWindow { started_at, elapsed: started.elapsed(), target_exited };
    // A window's chains stop short of the processes behind its endpoints, as a thread
    // window's do (serve reads those for snapshots only).
    Ok(sampled_profile(traced, &binary, module, sampler, window, Peers::NotRead))
}

/// When a sampled recording began, how long it lasted, and whether its target exited.
struct SampledWindow {
    started_at: SystemTime,
    elapsed: Duration,
    target_exited: bool,
}

/// Whether a sampled profile's chains read the processes behind its endpoints.
enum Peers {
    Read,
    NotRead,
}

/// The profile of a sampled recording, with its chains: from the channels and locks the
/// goroutines still waiting at the last read are blocked on, to those holding them (see
/// `holders.rs`), and on to endpoints (and, with `Peers::Read`, the processes behind them).
fn sampled_profile(
    traced: &Traced,
    binary: &GoBinary<'_>,
    module: &crate::stacks::Module,
    sampler: Sampler<'_>,
    SampledWindow { started_at, elapsed, target_exited }: SampledWindow,
    peers: Peers,
) -> Profile {
    let Traced { target, image } = traced;
    let period = sampler.period();
    let Sampled {
        ended,
        still_waiting,
        last_read_ns,
        mut objects,
        last_counts,
        reads,
        skipped,
        read_at_last_place,
        io_wait_unresolved,
        io_wait_not_socket,
        objects_unnamed,
    } = sampler.finish();
    let mut namer = GoNamer::new(binary, module.bias, module.name());
    let ended = stacks::from_groups(&mut namer, ended, false);
    let mut base = pipeline::profile_of(target, ProfileKind::Recording, started_at);
    base.duration = elapsed;
    base.sampling = Some(Sampling { period, reads });
    base.target_exited = target_exited;
    base.counts.go_runtime_waits_hidden = ended.runtime_hidden;
    base.counts.go_goroutines_skipped = skipped;
    base.counts.waits_at_last_place = read_at_last_place;
    base.modules = module_infos(image);
    let mut profile_stacks = ended.stacks;
    let mut truncated = ended.truncated;
    let mut goroutine_holders = BTreeMap::new();
    if !target_exited {
        let mut maps = namer.stack_maps();
        goroutine_holders =
            super::holders::goroutine_holders(target.pid, &still_waiting, &mut maps);
        // Aged at the last read: a window's waits end with it, not when they are named.
        let still = match last_read_ns {
            Some(at) => stacks::from_goroutines_at(&mut namer, still_waiting, at),
            None => stacks::from_goroutines(&mut namer, still_waiting),
        };
        base.thread_counts = super::thread_counts(&last_counts, still.runtime_hidden);
        truncated += still.truncated;
        profile_stacks.extend(still.stacks);
    }
    base.counts.unwind_truncated = truncated;
    base.counts.unresolved_descriptors = io_wait_unresolved;
    base.counts.non_socket_io = io_wait_not_socket;
    base.counts.go_objects_unnamed = objects_unnamed;
    base.endpoint_states = std::mem::take(&mut objects.endpoint_states);
    let mut profile = Profile::from_symbolized(base, profile_stacks);
    let sockets = match peers {
        Peers::Read => std::mem::take(&mut objects.endpoint_sockets),
        Peers::NotRead => BTreeMap::new(),
    };
    let facts = chains::live::gather_goroutines(&profile, &sockets, goroutine_holders);
    chains::add_to(&mut profile, &facts);
    // A Go peer's threads are the runtime's; a C or Rust peer's frames that need a
    // saved rbp end their walk.
    crate::pipeline::add_backed_up_sockets(
        &mut profile,
        &crate::threads::blocked_now::SavedFramePointers::default(),
    );
    profile
}

/// An exact recording: uprobes at every park and run.
async fn record_exact(
    traced: &Traced,
    duration: Duration,
    outputs: &[PathBuf],
    top: usize,
) -> anyhow::Result<()> {
    let Traced { target, image } = traced;
    let pid = target.pid;
    let outputs = pipeline::create_outputs(outputs)?;
    let (module, binary) = super::parse_main(image)?;
    // The probes read the register ABI (Go 1.17+, amd64): g in R14, arguments from RAX.
    let file_offset = |name: &str| {
        let entry = binary
            .pclntab
            .function_range(name)
            .with_context(|| format!("{}: no function {name} in .gopclntab", module.name()))?
            .start;
        file_offset_of(module.file_bytes(), entry)
            .with_context(|| format!("{}: {name} at {entry:#x} is in no section", module.name()))
    };
    let gopark = file_offset("runtime.gopark")?;
    let execute = file_offset("runtime.execute")?;
    let btf_path = pipeline::target::btf_path()?;
    let mut probes = Probes::open_go(pid, binary.layout.goid, &btf_path)?;
    // /proc/PID/exe reaches the executable even when its path is not visible to us.
    let executable = PathBuf::from(format!("/proc/{pid}/exe"));
    probes.attach_go_probes(&executable, gopark, execute)?;
    // The goroutines parked now: those still in the same wait at the end have waited at
    // least since this read ended.
    let mut reader = super::reader(&binary, pid, module.bias, false);
    let parked_at_start = super::read_waiting(target, &mut reader)
        .map(|(goroutines, _)| goroutines)
        .unwrap_or_else(|err| {
            log::warn!("cannot read the goroutines parked at the start: {err:#}");
            Vec::new()
        });
    let start_read_ns = crate::threads::blocked_now::monotonic_now_ns();
    crate::report::note(&format!(
        "tracer: recording goroutine waits of {} (pid {pid}, {}) for {}; Ctrl-C to stop early",
        target.comm,
        binary.version,
        format_duration(duration.as_nanos() as u64)
    ));
    let started = Instant::now();
    let started_at = SystemTime::now();
    // The probes sum the waits in the kernel: nothing to drain while recording.
    let stop =
        pipeline::run_until_stop(target, duration, async || std::future::pending().await).await?;
    let target_exited = stop == pipeline::Stop::TargetExited || target.has_exited();
    let elapsed = started.elapsed();
    let waits = probes.go_waits()?;
    let counters = probes.go_counters()?;
    if target_exited {
        crate::report::note(&format!(
            "tracer: pid {pid} exited during the recording; reporting what was recorded"
        ));
    }
    // Read while the probes still run: they know when the goroutines parked.
    let still = if target_exited {
        None
    } else {
        still_parked(
            target,
            &mut super::WaitNamer::new(pid, &binary, image),
            &mut reader,
            &parked_at_start,
            start_read_ns,
            &probes,
        )
    };
    drop(probes);

    let mut namer = GoNamer::new(&binary, module.bias, module.name());
    let ended = stacks::from_kernel_totals(&mut namer, waits);
    let mut base = pipeline::profile_of(target, ProfileKind::Recording, started_at);
    base.duration = elapsed;
    base.target_exited = target_exited;
    base.counts = go_trace_counts(&counters);
    base.counts.go_runtime_waits_hidden = ended.runtime_hidden;
    // The ended waits whose stack stopped short of runtime.goexit, and (below) the
    // goroutines still parked whose stack did.
    base.counts.unwind_truncated = ended.truncated;
    base.modules = module_infos(image);
    let mut profile_stacks = ended.stacks;
    let mut goroutine_holders = BTreeMap::new();
    let mut sockets = BTreeMap::new();
    if let Some(StillParked { goroutines, counts, mut objects }) = still {
        goroutine_holders =
            super::holders::goroutine_holders(pid, &goroutines, &mut namer.stack_maps());
        sockets = std::mem::take(&mut objects.endpoint_sockets);
        let GoStacks { stacks, runtime_hidden, truncated } =
            stacks::from_goroutines(&mut namer, goroutines);
        base.thread_counts = super::thread_counts(&counts, runtime_hidden);
        base.counts.unwind_truncated += truncated;
        base.counts.unresolved_descriptors = counts.io_wait_unresolved;
        base.counts.non_socket_io = counts.io_wait_not_socket;
        base.counts.go_objects_unnamed = counts.objects_unnamed;
        base.endpoint_states = std::mem::take(&mut objects.endpoint_states);
        profile_stacks.extend(stacks);
    }
    let mut profile = Profile::from_symbolized(base, profile_stacks);
    // The kernel's sums keep no goroutine ids: chains start from the goroutines still
    // parked at the end, as a snapshot's do.
    let facts = chains::live::gather_goroutines(&profile, &sockets, goroutine_holders);
    chains::add_to(&mut profile, &facts);
    // A Go peer's threads are the runtime's; a C or Rust peer's frames that need a
    // saved rbp end their walk.
    crate::pipeline::add_backed_up_sockets(
        &mut profile,
        &crate::threads::blocked_now::SavedFramePointers::default(),
    );
    pipeline::report(&profile, outputs, top)
}

/// The goroutines parked at the end of a recording, their IO waits named.
struct StillParked {
    goroutines: Vec<Goroutine>,
    counts: GoroutineCounts,
    objects: WaitObjects,
}

/// The goroutines parked at the end of the recording, as a snapshot reads them (IO waits
/// named). One in the same wait as in `at_start` has waited at least since `start_read_ns`;
/// the others parked during the recording, and the park probe noted when. A failed read
/// costs only this part of the report.
fn still_parked(
    target: &Target,
    waits: &mut super::WaitNamer<'_>,
    reader: &mut super::goroutines::GoroutineReader<'_>,
    at_start: &[Goroutine],
    start_read_ns: u64,
    probes: &Probes,
) -> Option<StillParked> {
    let parks = || {
        probes.go_parked().unwrap_or_else(|err| {
            log::warn!("cannot read the parks in progress: {err}");
            HashMap::new()
        })
    };
    // A goroutine's park time is its current wait's only if the same park spans the read:
    // one that woke and parked again in between has a newer entry afterwards.
    let parked_before = parks();
    let read = read_most_parked(target, reader);
    let parked_after = parks();
    let (mut goroutines, mut counts) = match read {
        Ok(read) => read,
        Err(err) => {
            crate::report::note(&format!(
                "tracer: cannot read the goroutines still parked at the end: {err:#}"
            ));
            return None;
        }
    };
    waits.name(&mut goroutines, &mut counts);
    let objects = std::mem::replace(&mut waits.objects, WaitObjects::new(target.pid));
    let at_start: HashMap<u64, &Goroutine> =
        at_start.iter().map(|goroutine| (goroutine.goid, goroutine)).collect();
    let since_start = i64::try_from(start_read_ns).unwrap_or(i64::MAX);
    for goroutine in &mut goroutines {
        let same =
            at_start.get(&goroutine.goid).is_some_and(|earlier| goroutine.same_wait(earlier));
        if same && (goroutine.wait_since == 0 || goroutine.wait_since > since_start) {
            goroutine.wait_since = since_start;
        } else if !same
            && let Some(&parked) = parked_after.get(&goroutine.goid)
            && parked_before.get(&goroutine.goid) == Some(&parked)
            && let Ok(parked) = i64::try_from(parked)
        {
            // Parked while the probes watched: the probe's time is exact.
            goroutine.wait_since = parked;
        }
    }
    Some(StillParked { goroutines, counts, objects })
}

/// The goroutines parked now: of up to `READS` reads, the one that found the most parked.
/// Goroutines that take turns (a pile-up whose queue moves, a ping-pong) are each parked
/// again within microseconds, but any one read may catch many of them between two waits,
/// running or in a run queue; so the read is made again, briefly later, while it caught
/// any. One read is reported whole, so its counts describe one moment.
fn read_most_parked(
    target: &Target,
    reader: &mut super::goroutines::GoroutineReader<'_>,
) -> anyhow::Result<(Vec<Goroutine>, super::goroutines::GoroutineCounts)> {
    const READS: usize = 3;
    const BETWEEN_READS: Duration = Duration::from_millis(2);
    let mut best = super::read_waiting(target, reader)?;
    for _ in 1..READS {
        if best.1.running + best.1.runnable == 0 {
            break;
        }
        std::thread::sleep(BETWEEN_READS);
        // A later read that fails (the process exiting) leaves the one in hand.
        let Ok(again) = super::read_waiting(target, reader) else { break };
        if again.1.waiting > best.1.waiting {
            best = again;
        }
    }
    Ok(best)
}

/// The file offset of the link-time address `address` (uprobes attach by offset).
fn file_offset_of(elf: &[u8], address: u64) -> Option<u64> {
    let file = object::File::parse(elf).ok()?;
    file.sections().find_map(|section| {
        let (offset, _) = section.file_range()?;
        let start = section.address();
        let end = start.checked_add(section.size())?;
        (start..end).contains(&address).then(|| (address - start).checked_add(offset)).flatten()
    })
}
