//! `tracer snapshot`: the threads of a live process blocked right now in futex and
//! socket waits, grouped by call stack like a goroutine profile — including threads
//! stuck since long before the tracer started. Reads /proc and attaches nothing to the
//! process: one pass of a BPF task iterator reads the threads' saved registers.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    cli::SnapshotArgs,
    golang,
    model::{Profile, ProfileKind, WaitAggregate},
    objects::WaitObjects,
    pipeline::{
        self, Traced,
        counts::trace_counts,
        target::{self, Target},
    },
    probes::{ProbeConfig, ProbeCounters, Probes},
    stacks::ProcessUnwinder,
    threads::blocked_now::{KnownWaitStarts, SavedFramePointers, collect_blocked_threads},
};

pub fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let SnapshotArgs { pid, comm, cgroup, outputs, top } = args;
    let cgroup = cgroup.as_deref().map(target::cgroup_path).transpose()?;
    let pids = target::select_processes(&pid, comm.as_deref(), cgroup.as_deref())?;
    if pids.is_empty() {
        anyhow::bail!("no process is in the cgroup");
    }
    if let [pid] = pids[..] {
        let traced = Traced::open(pid, &outputs)?;
        if traced.is_go() {
            return golang::snapshot(&traced, &outputs, top);
        }
        let outputs = pipeline::create_outputs(&outputs)?;
        let mut probes = open_probes(pid)?;
        let frame_pointers = pipeline::host_frame_pointers(&mut probes);
        drop(probes);
        let profile = snapshot_profile(traced, &frame_pointers)?;
        return pipeline::report(&profile, outputs, top);
    }
    snapshot_several(&pids, &outputs, top)
}

/// One report of several processes' blocked threads, each stack tagged with its
/// process. One that exits meanwhile is left out and said so; Go programs are
/// snapshotted one at a time for now.
fn snapshot_several(pids: &[u32], outputs: &[PathBuf], top: usize) -> anyhow::Result<()> {
    let mut traced = Vec::with_capacity(pids.len());
    for (index, &pid) in pids.iter().enumerate() {
        // The output formats are checked with the first.
        let one = Traced::open(pid, if index == 0 { outputs } else { &[] })?;
        if one.is_go() {
            anyhow::bail!("pid {pid} is a Go program: snapshot it alone (--pid {pid})");
        }
        traced.push(one);
    }
    let outputs = pipeline::create_outputs(outputs)?;
    // One pass over the host's tasks serves every process.
    let mut probes = open_probes(pids[0])?;
    let frame_pointers = pipeline::host_frame_pointers(&mut probes);
    drop(probes);
    let mut profiles = Vec::with_capacity(traced.len());
    for one in traced {
        let pid = one.target.pid;
        match snapshot_profile(one, &frame_pointers) {
            Ok(profile) => profiles.push(profile),
            Err(err) => eprintln!("tracer: pid {pid} left out: {err:#}"),
        }
    }
    if profiles.is_empty() {
        anyhow::bail!("every process exited during the snapshot");
    }
    pipeline::report(&Profile::of_processes(profiles), outputs, top)
}

/// The task iterator alone: it reads the saved registers, nothing is attached.
fn open_probes(pid: u32) -> anyhow::Result<Probes> {
    let btf_path = target::btf_path()?;
    let config = ProbeConfig { tgid: pid, min_wait: Duration::ZERO, maps: Default::default() };
    Ok(Probes::open(config, &btf_path)?)
}

/// The snapshot profile of one process (its threads blocked now, its chains).
fn snapshot_profile(
    traced: Traced,
    frame_pointers: &SavedFramePointers,
) -> anyhow::Result<Profile> {
    let Traced { target, image } = traced;
    let pid = target.pid;
    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    let mut unwinder = ProcessUnwinder::new(pid, image);
    let mut aggregate = WaitAggregate::default();
    let mut objects = WaitObjects::new(pid);
    let thread_counts = collect_blocked_threads(
        pid,
        &mut unwinder,
        &KnownWaitStarts::new(),
        frame_pointers,
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
    pipeline::add_wait_chains(&mut profile, &objects, &mut unwinder, frame_pointers);
    log::info!("snapshot of pid {pid} took {:?}", started.elapsed());
    Ok(profile)
}

/// A failure to read the target is, more often than not, the target exiting: say so.
fn exited_or(target: &Target, err: anyhow::Error) -> anyhow::Error {
    if target.has_exited() {
        anyhow::anyhow!("pid {} exited during the snapshot", target.pid)
    } else {
        err.context(format!("cannot read pid {}", target.pid))
    }
}
