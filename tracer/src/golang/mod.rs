//! Go programs: goroutines, seen from outside. A Go program's goroutines park in the Go
//! scheduler, not in the kernel, so its threads' waits say nothing about them; this module
//! reads the runtime's own goroutine list instead.
//!
//! Stages: `binary` (is it Go; version, `runtime.g` and `runtime.pollDesc` layouts,
//! `runtime.allgs`, wait-reason names) → `goroutines` (read the list and unwind each
//! waiting goroutine from /proc/PID's memory, without stopping the process) → `netpoll`
//! (the socket each goroutine in IO wait waits on) → `pclntab` (names, files, lines from
//! `.gopclntab`, which stripped binaries keep) → `stacks` (the common model's stacks, one per
//! group of goroutines, with the Go call-site rule). Everything after the model is shared
//! with threads: the same summary, the same exporters.

mod binary;
mod dump;
mod goroutines;
mod netpoll;
mod pclntab;
mod record;
mod stacks;

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use anyhow::Context as _;

use crate::{
    model::{Profile, ProfileKind, ThreadCounts, module_infos},
    objects::WaitObjects,
    pipeline::{self, Traced, target::Target},
    stacks::ProcessImage,
};

pub use binary::is_go;
pub use dump::{DumpedGoroutine, GoPc, GoroutineDump, GoroutineGroup};
pub use record::record;

/// Snapshots the goroutines of the Go process `traced` and prints/writes the reports.
pub fn snapshot(traced: &Traced, outputs: &[PathBuf], top: usize) -> anyhow::Result<()> {
    let outputs = pipeline::create_outputs(outputs)?;
    eprintln!(
        "tracer: reading the goroutines of {} (pid {})",
        traced.target.comm, traced.target.pid
    );
    let profile = snapshot_profile(traced)?;
    pipeline::report(&profile, outputs, top)
}

/// One read of the goroutines of the Go process `traced`, as a snapshot profile (what
/// `snapshot` reports).
pub fn snapshot_profile(traced: &Traced) -> anyhow::Result<Profile> {
    let (base, named, ()) = read_snapshot(traced, |namer, goroutines| {
        (stacks::from_goroutines(namer, goroutines), ())
    })?;
    Ok(Profile::from_symbolized(base, named.stacks))
}

/// One read of the goroutines of the Go process `traced`, kept goroutine by goroutine in
/// groups of the same return addresses (what `serve` answers /debug/pprof/goroutine with,
/// in Go's own formats).
pub fn goroutine_dump(traced: &Traced) -> anyhow::Result<GoroutineDump> {
    let (base, named, groups) = read_snapshot(traced, dump::group)?;
    Ok(GoroutineDump::new(base, named.stacks, groups))
}

/// One read of the goroutines of `traced`, grouped into stacks by `group`: the profile
/// without its stacks, the stacks, and what else `group` made.
fn read_snapshot<T>(
    traced: &Traced,
    group: impl FnOnce(&mut stacks::GoNamer<'_>, Vec<goroutines::Goroutine>) -> (stacks::GoStacks, T),
) -> anyhow::Result<(Profile, stacks::GoStacks, T)> {
    let Traced { target, image } = traced;
    let pid = target.pid;
    let started = Instant::now();
    let started_at = SystemTime::now();
    let (module, binary) = parse_main(image)?;
    let parsed = started.elapsed();
    let (mut goroutines, mut counts) = read_waiting(target, &binary, module.bias)?;
    let mut objects = WaitObjects::new(pid);
    name_io_waits(pid, &binary, &mut goroutines, &mut counts, &mut objects);
    let read = started.elapsed();
    let mut namer = stacks::GoNamer::new(&binary, module.bias, module.name());
    let (named, grouped) = group(&mut namer, goroutines);
    let elapsed = started.elapsed();
    log::info!(
        "goroutine snapshot of pid {pid} ({}): binary {parsed:?}, memory {:?}, grouping {:?}, total {elapsed:?}",
        binary.version,
        read - parsed,
        elapsed - read
    );
    let mut base = pipeline::profile_of(target, ProfileKind::Snapshot, started_at);
    base.duration = elapsed;
    base.thread_counts = thread_counts(&counts, named.runtime_hidden);
    base.counts.unwind_truncated = named.truncated;
    base.counts.unresolved_descriptors = counts.io_wait_unresolved;
    base.counts.non_socket_io = counts.io_wait_not_socket;
    base.endpoint_states = std::mem::take(&mut objects.endpoint_states);
    base.modules = module_infos(image);
    Ok((base, named, grouped))
}

/// The main executable of `image` and its Go runtime's tables.
fn parse_main(
    image: &ProcessImage,
) -> anyhow::Result<(&crate::stacks::Module, binary::GoBinary<'_>)> {
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
        if binary.stripped { "stripped" } else { "with symbols" }
    );
    Ok((module, binary))
}

/// A profile's "threads", which for a Go program are its goroutines; `runtime_hidden`
/// of them are the runtime's own, not shown.
fn thread_counts(counts: &goroutines::GoroutineCounts, runtime_hidden: u64) -> ThreadCounts {
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
        runtime_hidden,
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

/// Names the socket each goroutine parked on a descriptor waits on, through `objects`
/// (which keeps each endpoint's state); what cannot be named is counted.
fn name_io_waits(
    pid: u32,
    binary: &binary::GoBinary<'_>,
    goroutines: &mut [goroutines::Goroutine],
    counts: &mut goroutines::GoroutineCounts,
    objects: &mut WaitObjects,
) {
    let io_wait = binary
        .wait_reasons
        .iter()
        .position(|reason| reason == crate::model::GO_IO_WAIT)
        .and_then(|index| u8::try_from(index).ok());
    let parked = match &binary.poll_desc {
        Some(layout) => netpoll::parked_on_descriptors(pid, layout).unwrap_or_else(|err| {
            log::warn!("cannot read the netpoller's descriptors of pid {pid}: {err}");
            Default::default()
        }),
        None => {
            log::warn!(
                "{}: runtime.pollDesc's layout is unknown; IO waits are not named",
                binary.version
            );
            Default::default()
        }
    };
    netpoll::name_io_waits(goroutines, &parked, io_wait, objects, counts);
    objects.log_socket_lookups();
}
