//! `tracer snapshot`: the threads of a live process blocked right now in futex and
//! socket waits, grouped by call stack like a goroutine profile — including threads
//! stuck since long before the tracer started. Reads /proc and attaches nothing to the
//! process: one pass of a BPF task iterator reads the threads' saved registers.

use std::time::Instant;

use crate::{
    cli::SnapshotArgs,
    golang,
    model::{ProfileKind, WaitAggregate},
    objects::WaitObjects,
    pipeline::{
        self, Traced,
        counts::trace_counts,
        target::{self, Target},
    },
    probes::{ProbeConfig, ProbeCounters, Probes},
    stacks::ProcessUnwinder,
    threads::blocked_now::{KnownWaitStarts, collect_blocked_threads},
};

pub fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let SnapshotArgs { pid, outputs, top } = args;
    let traced = Traced::open(pid, &outputs)?;
    if traced.is_go() {
        return golang::snapshot(&traced, &outputs, top);
    }
    let btf_path = target::btf_path()?;
    let outputs = pipeline::create_outputs(&outputs)?;
    let Traced { target, image } = traced;

    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    // Only the task iterator runs: it reads the saved registers, nothing is attached
    // to the process.
    let mut probes = Probes::open(
        ProbeConfig { tgid: pid, min_wait: std::time::Duration::ZERO, maps: Default::default() },
        &btf_path,
    )?;
    let frame_pointers = pipeline::host_frame_pointers(&mut probes);
    drop(probes);
    let mut unwinder = ProcessUnwinder::new(pid, image);
    let mut aggregate = WaitAggregate::default();
    let mut objects = WaitObjects::new(pid);
    let thread_counts = collect_blocked_threads(
        pid,
        &mut unwinder,
        &KnownWaitStarts::new(),
        &frame_pointers,
        &mut objects,
        &mut aggregate,
    )
    .map_err(|err| exited_or(&target, err.into()))?;
    if target.has_exited() {
        anyhow::bail!("pid {pid} exited during the snapshot");
    }
    let mut base = pipeline::profile_of(&target, ProfileKind::Snapshot, started_at);
    base.duration = started.elapsed();
    base.counts =
        trace_counts(&ProbeCounters::default(), unwinder.truncated_unwinds, &objects, 0, 0);
    base.thread_counts = thread_counts;
    let mut profile = pipeline::symbolize(aggregate, base, unwinder.image(), &mut objects);
    pipeline::add_wait_chains(&mut profile, &objects, &mut unwinder, &frame_pointers);
    log::info!("snapshot of pid {pid} took {:?}", started.elapsed());
    pipeline::report(&profile, outputs, top)
}

/// A failure to read the target is, more often than not, the target exiting: say so.
fn exited_or(target: &Target, err: anyhow::Error) -> anyhow::Error {
    if target.has_exited() {
        anyhow::anyhow!("pid {} exited during the snapshot", target.pid)
    } else {
        err.context(format!("cannot read pid {}", target.pid))
    }
}
