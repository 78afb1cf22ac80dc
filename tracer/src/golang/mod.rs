//! Go programs: goroutines, seen from outside. A Go program's goroutines park in the Go
//! scheduler, not in the kernel, so its threads' waits say nothing about them; this module
//! reads the runtime's own goroutine list instead.
//!
//! Stages: `binary` (is it Go; version, `runtime.g` and `runtime.pollDesc` layouts,
//! `runtime.allgs`, wait-reason names) → `goroutines` (read the list and unwind each
//! waiting goroutine from /proc/PID's memory, without stopping the process) → `netpoll`
//! (the socket each goroutine in IO wait waits on) → `pclntab` (names, files, lines from
//! `.gopclntab`, which stripped binaries keep) → `report` (the pprof-like stdout table, and
//! the `Profile` the report exporters write).

mod binary;
mod goroutines;
mod netpoll;
mod pclntab;
mod record;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;

use crate::{
    model::{Profile, ProfileKind, ProfileStack, ThreadCounts, TraceCounts, module_infos},
    report::Output,
    stacks::ProcessImage,
    pipeline::target::{self, Target},
    objects::WaitObjects,
};

pub use binary::is_go;
pub use record::record;

/// Snapshots the goroutines of the Go process `target`, whose main executable is a module
/// of `image`, and prints/writes the reports.
pub fn snapshot(
    target: &Target,
    image: &ProcessImage,
    outputs: &[PathBuf],
    top: usize,
) -> anyhow::Result<()> {
    let pid = target.pid;
    let outputs = outputs
        .iter()
        .map(|path| Output::create(path))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let started_at = SystemTime::now();
    let module = image
        .modules()
        .iter()
        .find(|module| module.is_main_executable)
        .context("no main executable mapping")?;
    let binary = binary::GoBinary::parse(module.file_bytes())
        .with_context(|| format!("{}: cannot read the Go runtime's tables", module.name()))?;
    log::info!(
        "{}: {}, runtime.g layout from {:?}, allgs at {:#x}, {} wait reasons, {}",
        module.name(),
        binary.version,
        binary.layout_source,
        binary.allgs,
        binary.wait_reasons.len(),
        if binary.stripped {
            "stripped"
        } else {
            "with symbols"
        }
    );
    let parsed = started.elapsed();
    let (mut goroutines, mut counts) = read_waiting(target, &binary, module.bias)?;
    let mut targets = WaitObjects::new(pid);
    name_io_waits(pid, &binary, &mut goroutines, &mut counts, &mut targets);
    let read = started.elapsed();
    let endpoint_states = std::mem::take(&mut targets.endpoint_states);
    let snapshot =
        report::GoSnapshot::build(&binary, module.bias, goroutines, counts, endpoint_states);
    let elapsed = started.elapsed();
    log::info!(
        "goroutine snapshot of pid {pid}: binary {parsed:?}, memory {:?}, grouping {:?}, total {elapsed:?}",
        read - parsed,
        elapsed - read
    );
    print!(
        "{}",
        snapshot.render_text(&target.comm, pid, &binary.version, top, elapsed)
    );
    println!("{}", crate::pipeline::own_usage::ProcessUsage::of_self());
    let thread_counts = thread_counts(&snapshot.counts);
    let stacks = snapshot.profile_stacks(module.name(), true);
    let mut base =
        go_profile(ProfileKind::Snapshot, target, image, started_at, elapsed, thread_counts);
    base.counts.unresolved_descriptors = snapshot.counts.io_wait_unresolved;
    base.counts.non_socket_io = snapshot.counts.io_wait_not_socket;
    base.endpoint_states = snapshot.endpoint_states.clone();
    let profile = Profile::from_symbolized(base, stacks);
    crate::report::write_outputs(outputs, &profile)
}

/// A profile's "threads", which for a Go program are its goroutines.
fn thread_counts(counts: &goroutines::GoroutineCounts) -> ThreadCounts {
    let goroutines::GoroutineCounts {
        total,
        waiting,
        running,
        runnable,
        in_syscall,
        changed_while_read,
        unreadable,
        io_wait_named: _,
        io_wait_unresolved: _,
        io_wait_not_socket: _,
    } = *counts;
    ThreadCounts {
        threads: total,
        blocked_in_waits: waiting,
        elsewhere: running + runnable + in_syscall,
        woke_while_read: changed_while_read,
        unreadable,
        ..ThreadCounts::default()
    }
}

/// One read of the goroutines of `target`, whose executable `binary` is mapped at `bias`:
/// the waiting ones, and every one counted.
fn read_waiting(
    target: &Target,
    binary: &binary::GoBinary<'_>,
    bias: u64,
) -> anyhow::Result<(Vec<goroutines::Goroutine>, goroutines::GoroutineCounts)> {
    let pid = target.pid;
    let addresses = goroutines::RuntimeAddresses {
        allgs: binary.allgs.wrapping_add(bias),
        goexit: binary.goexit.start.wrapping_add(bias)..binary.goexit.end.wrapping_add(bias),
    };
    goroutines::read_goroutines(pid, &binary.layout, &addresses).map_err(|err| {
        if target.has_exited() {
            anyhow::anyhow!("pid {pid} exited during the snapshot")
        } else {
            anyhow::Error::new(err).context(format!("cannot read the goroutines of pid {pid}"))
        }
    })
}

/// Names the socket each goroutine parked on a descriptor waits on, through `targets`
/// (which keeps each endpoint's state); what cannot be named is counted.
fn name_io_waits(
    pid: u32,
    binary: &binary::GoBinary<'_>,
    goroutines: &mut [goroutines::Goroutine],
    counts: &mut goroutines::GoroutineCounts,
    targets: &mut WaitObjects,
) {
    let io_wait = binary
        .wait_reasons
        .iter()
        .position(|reason| reason == "IO wait")
        .and_then(|index| u8::try_from(index).ok());
    let parked = match &binary.poll_desc {
        Some(layout) => netpoll::parked_on_descriptors(pid, layout).unwrap_or_else(|err| {
            log::warn!("cannot read the netpoller's descriptors of pid {pid}: {err}");
            Default::default()
        }),
        None => {
            log::warn!("{}: runtime.pollDesc's layout is unknown; IO waits are not named", binary.version);
            Default::default()
        }
    };
    netpoll::name_io_waits(goroutines, &parked, io_wait, targets, counts);
    targets.log_socket_lookups();
}

/// A goroutine profile of `target` before its stacks are added.
fn go_profile(
    kind: ProfileKind,
    target: &Target,
    image: &ProcessImage,
    started_at: SystemTime,
    duration: Duration,
    thread_counts: ThreadCounts,
) -> Profile {
    Profile {
        kind,
        pid: target.pid,
        start_unix_ns: target::unix_ns(started_at),
        command_line: target.command_line.clone(),
        comm: target.comm.clone(),
        duration,
        min_wait: Duration::ZERO,
        target_exited: false,
        stacks: Vec::<ProfileStack>::new(),
        below_threshold: Vec::new(),
        counts: TraceCounts::default(),
        thread_counts,
        endpoint_states: Default::default(),
        thread_names: Default::default(),
        wakers: Vec::new(),
        modules: module_infos(image),
    }
}
