//! `tracer record` on a Go program: goroutine waits as they happen. Uprobes at
//! `runtime.gopark` (the goroutine, its wait reason and stack) and `runtime.execute` (it
//! runs again) sum each wait's length in the kernel by (stack, wait reason); this module
//! attaches them, waits, names the stacks with `.gopclntab` and writes the goroutine
//! reports, weighted by blocked time. Goroutines still parked at the end (parked before
//! the probes attached, or stuck) come from a goroutine snapshot taken then, reported as
//! still blocked; one read at the start tells which have waited the whole recording.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use object::{Object as _, ObjectSection as _};
use tokio::signal::unix::{SignalKind, signal};

use super::binary::GoBinary;
use super::goroutines::{Goroutine, GoroutineCounts};
use super::report::{GoFrame, GoSnapshot, GoroutineGroup, frames_of};
use crate::{
    model::{Profile, ProfileKind, TraceCounts, WaitStats},
    probes::{GoProbeCounters, GoWaitTotal, Probes},
    report::Output,
    report::summary::format_duration,
    stacks::ProcessImage,
    pipeline::target::{self, Target},
    objects::WaitObjects,
};

/// Go's own system goroutines start in package runtime, except these
/// (`runtime.isSystemGoroutine`; as in the snapshot report).
const USER_RUNTIME_ROOTS: &[&str] = &["runtime.main", "runtime.handleAsyncEvent"];
/// How often the recording checks whether the target has exited.
const EXIT_POLL: Duration = Duration::from_millis(100);

/// Records the goroutine waits of the Go process `target` for `duration` and writes the
/// reports.
pub async fn record(
    target: &Target,
    image: &ProcessImage,
    duration: Duration,
    outputs: &[PathBuf],
    top: usize,
) -> anyhow::Result<()> {
    let pid = target.pid;
    let outputs = outputs
        .iter()
        .map(|path| Output::create(path))
        .collect::<Result<Vec<_>, _>>()?;
    let module = image
        .modules()
        .iter()
        .find(|module| module.is_main_executable)
        .context("no main executable mapping")?;
    let binary = GoBinary::parse(module.file_bytes())
        .with_context(|| format!("{}: cannot read the Go runtime's tables", module.name()))?;
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
    let btf_path = target::btf_path()?;
    let mut probes = Probes::open_go(pid, binary.layout.goid, &btf_path)?;
    // /proc/PID/exe reaches the executable even when its path is not visible to us.
    let executable = PathBuf::from(format!("/proc/{pid}/exe"));
    probes.attach_go_probes(&executable, gopark, execute)?;
    // The goroutines parked now: those still in the same wait at the end have waited at
    // least since this read ended.
    let parked_at_start = super::read_waiting(target, &binary, module.bias)
        .map(|(goroutines, _)| goroutines)
        .unwrap_or_else(|err| {
            log::warn!("cannot read the goroutines parked at the start: {err:#}");
            Vec::new()
        });
    let start_read_ns = crate::threads::blocked_now::monotonic_now_ns();
    eprintln!(
        "tracer: recording goroutine waits of {} (pid {pid}, {}) for {}; Ctrl-C to stop early",
        target.comm,
        binary.version,
        format_duration(duration.as_nanos() as u64)
    );
    let started = Instant::now();
    let started_at = SystemTime::now();
    let target_exited = wait_for_stop(target, duration).await?;
    let elapsed = started.elapsed();
    let waits = probes.go_waits()?;
    let counters = probes.go_counters()?;
    if target_exited {
        eprintln!("tracer: pid {pid} exited during the recording; reporting what was recorded");
    }
    // Read while the probes still run: they know when the goroutines parked.
    let still = if target_exited {
        GoSnapshot::default()
    } else {
        still_parked(target, &binary, module.bias, &parked_at_start, start_read_ns, &probes)
    };
    drop(probes);
    let recording = GoRecording::build(&binary, module.bias, waits, counters, still);
    print!("{}", recording.render_text(&target.comm, pid, &binary.version, top, elapsed));
    println!("{}", crate::pipeline::own_usage::ProcessUsage::of_self());
    let GoProbeCounters { parks, parks_lost, stacks_lost, waits_lost, waits_ended } = counters;
    let still = &recording.still;
    let mut base = super::go_profile(
        ProfileKind::Recording,
        target,
        image,
        started_at,
        elapsed,
        super::thread_counts(&still.counts),
    );
    base.target_exited = target_exited;
    base.counts = TraceCounts {
        waits_started: parks,
        long_waits: waits_ended,
        // Parks the kernel could not note, stacks it could not store, waits it could not add.
        in_flight_map_full: parks_lost,
        stack_unreadable: stacks_lost,
        ring_buffer_full: waits_lost,
        unresolved_descriptors: still.counts.io_wait_unresolved,
        non_socket_io: still.counts.io_wait_not_socket,
        ..TraceCounts::default()
    };
    base.endpoint_states = still.endpoint_states.clone();
    let mut stacks = recording.snapshot.profile_stacks(module.name(), false);
    stacks.extend(still.profile_stacks(module.name(), true));
    let profile = Profile::from_symbolized(base, stacks);
    crate::report::write_outputs(outputs, &profile)
}

/// The goroutines parked at the end of the recording, as a snapshot reads them (IO waits
/// named). One in the same wait as in `at_start` has waited at least since `start_read_ns`;
/// the others parked during the recording, and the park probe noted when. A failed read
/// costs only this part of the report.
fn still_parked(
    target: &Target,
    binary: &GoBinary<'_>,
    bias: u64,
    at_start: &[Goroutine],
    start_read_ns: u64,
    probes: &Probes,
) -> GoSnapshot {
    let parks = || {
        probes.go_parked().unwrap_or_else(|err| {
            log::warn!("cannot read the parks in progress: {err}");
            HashMap::new()
        })
    };
    // A goroutine's park time is its current wait's only if the same park spans the read:
    // one that woke and parked again in between has a newer entry afterwards.
    let parked_before = parks();
    let read = super::read_waiting(target, binary, bias);
    let parked_after = parks();
    let (mut goroutines, mut counts) = match read {
        Ok(read) => read,
        Err(err) => {
            eprintln!("tracer: cannot read the goroutines still parked at the end: {err:#}");
            return GoSnapshot::default();
        }
    };
    let mut targets = WaitObjects::new(target.pid);
    super::name_io_waits(target.pid, binary, &mut goroutines, &mut counts, &mut targets);
    let at_start: HashMap<u64, &Goroutine> =
        at_start.iter().map(|goroutine| (goroutine.goid, goroutine)).collect();
    let since_start = i64::try_from(start_read_ns).unwrap_or(i64::MAX);
    for goroutine in &mut goroutines {
        let same = at_start.get(&goroutine.goid).is_some_and(|earlier| goroutine.same_wait(earlier));
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
    let endpoint_states = std::mem::take(&mut targets.endpoint_states);
    GoSnapshot::build(binary, bias, goroutines, counts, endpoint_states)
}

/// Waits for the duration, Ctrl-C, SIGTERM or the target's exit; true for the exit.
async fn wait_for_stop(target: &Target, duration: Duration) -> anyhow::Result<bool> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let deadline = tokio::time::Instant::now() + duration;
    loop {
        if target.has_exited() {
            return Ok(true);
        }
        let next = (tokio::time::Instant::now() + EXIT_POLL).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                if next >= deadline {
                    return Ok(false);
                }
            }
            _ = interrupt.recv() => return Ok(false),
            _ = terminate.recv() => return Ok(false),
        }
    }
}

/// The file offset of the link-time address `address` (uprobes attach by offset).
fn file_offset_of(elf: &[u8], address: u64) -> Option<u64> {
    let file = object::File::parse(elf).ok()?;
    file.sections().find_map(|section| {
        let (offset, _) = section.file_range()?;
        let start = section.address();
        (start..start + section.size())
            .contains(&address)
            .then(|| address - start + offset)
    })
}

/// Goroutine waits grouped by named stack and wait reason; a group's `count` is its
/// blocked time in microseconds (the folded weight).
struct GoRecording {
    snapshot: GoSnapshot,
    /// Waits per group, in `snapshot.groups` order.
    waits: Vec<u64>,
    counters: GoProbeCounters,
    /// The goroutines still parked at the end.
    still: GoSnapshot,
}

impl GoRecording {
    fn build(
        binary: &GoBinary<'_>,
        bias: u64,
        totals: Vec<GoWaitTotal>,
        counters: GoProbeCounters,
        still: GoSnapshot,
    ) -> Self {
        let mut names: HashMap<u64, Vec<GoFrame>> = HashMap::new();
        let mut name = |pc: u64| {
            names
                .entry(pc)
                .or_insert_with(|| frames_of(binary, pc.wrapping_sub(bias), pc))
                .clone()
        };
        // (function names, reason) → (frames, waits, ns, truncated)
        type Group = (Vec<GoFrame>, u64, u64, bool);
        let mut groups: HashMap<(Vec<String>, u8), Group> = HashMap::new();
        for GoWaitTotal { pcs, caller, reason, count, total_ns } in totals {
            let mut frames = Vec::with_capacity(pcs.len() + 1);
            let mut truncated = true;
            // The leaf is gopark's entry itself; the rest are return addresses, whose
            // call is one byte back.
            for (index, &pc) in pcs.iter().enumerate() {
                let named = if index == 0 { name(pc) } else { name(pc.wrapping_sub(1)) };
                if named.iter().any(|frame| frame.function == "runtime.goexit") {
                    truncated = false;
                    break;
                }
                frames.extend(named);
                if index == 0 && caller != 0 {
                    frames.extend(name(caller.wrapping_sub(1)));
                }
            }
            if frames.is_empty() {
                frames.push(GoFrame {
                    function: "[stack lost]".to_owned(),
                    file: None,
                    line: None,
                    pc: 0,
                    inlined: false,
                });
            }
            let key = (frames.iter().map(|frame| frame.function.clone()).collect(), reason);
            let entry = groups.entry(key).or_insert((frames, 0, 0, truncated));
            entry.1 += count;
            entry.2 += total_ns;
        }
        let mut rows: Vec<(GoroutineGroup, u64)> = groups
            .into_iter()
            .map(|((_, reason), (frames, waits, total_ns, truncated))| {
                let root = frames.last().map(|frame| frame.function.as_str()).unwrap_or_default();
                let system =
                    !truncated && root.starts_with("runtime.") && !USER_RUNTIME_ROOTS.contains(&root);
                let wait_reason = match binary.wait_reasons.get(usize::from(reason)) {
                    Some(name) if !name.is_empty() => name.clone(),
                    _ => format!("wait reason {reason}"),
                };
                let group = GoroutineGroup {
                    count: total_ns / 1_000,
                    frames,
                    wait_reason,
                    object: None,
                    longest_wait: None,
                    truncated,
                    system,
                    // The kernel sums waits by stack: no goroutine ids, no extremes.
                    stats: WaitStats { waits, total_ns, ..WaitStats::default() },
                };
                (group, waits)
            })
            .collect();
        rows.sort_by(|(a, _), (b, _)| b.count.cmp(&a.count).then_with(|| a.headline().cmp(b.headline())));
        let (groups, waits) = rows.into_iter().unzip();
        let snapshot = GoSnapshot { groups, ..GoSnapshot::default() };
        Self { snapshot, waits, counters, still }
    }

    /// The stdout table: a summary line, then the groups by blocked time (at most `top`,
    /// 0 for all), each headed like pprof's `N @ function [reason]` with time and waits.
    fn render_text(&self, comm: &str, pid: u32, version: &str, top: usize, took: Duration) -> String {
        let GoProbeCounters { parks, parks_lost, stacks_lost, waits_lost, waits_ended } = self.counters;
        let groups = &self.snapshot.groups;
        let system_us: u64 = groups.iter().filter(|group| group.system).map(|group| group.count).sum();
        let total_us: u64 = groups.iter().map(|group| group.count).sum();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "goroutine waits of pid {pid} ({comm}, {version}) over {}: {parks} parks, {waits_ended} ended, \
             {} blocked in all; {} in runtime system goroutines hidden; lost: {parks_lost} parks, \
             {stacks_lost} stacks, {waits_lost} waits",
            format_duration(took.as_nanos() as u64),
            format_duration(total_us * 1_000),
            format_duration(system_us * 1_000),
        );
        let shown: Vec<(&GoroutineGroup, u64)> = groups
            .iter()
            .zip(&self.waits)
            .filter(|(group, _)| !group.system)
            .map(|(group, &waits)| (group, waits))
            .collect();
        let limit = if top == 0 { shown.len() } else { top.min(shown.len()) };
        for (group, waits) in &shown[..limit] {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{} in {waits} waits @ {} [{}]",
                format_duration(group.count * 1_000),
                group.headline(),
                group.wait_reason
            );
            group.write_frames(&mut out);
        }
        if limit < shown.len() {
            let _ = writeln!(out, "\n… {} more stacks (--top 0 shows all)", shown.len() - limit);
        }
        let still = &self.still;
        let GoroutineCounts { waiting, changed_while_read, unreadable, .. } = still.counts;
        let _ = writeln!(
            out,
            "\nstill blocked at the end of the recording: {waiting} goroutines waiting; {} runtime \
             system goroutines hidden; {changed_while_read} skipped (changed while read), \
             {unreadable} unreadable",
            still.system_goroutines(),
        );
        still.write_io_wait_counts(&mut out);
        still.write_groups(&mut out, top);
        still.write_endpoints(&mut out);
        out
    }
}
