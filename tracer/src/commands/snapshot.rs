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
    let SnapshotArgs { processes, outputs, top } = args;
    if let Some(path) = outputs.iter().find(|path| {
        crate::report::Format::from_path(path).is_ok_and(|f| f == crate::report::Format::TraceJson)
    }) {
        anyhow::bail!(
            "{}: a snapshot has no waits in time: `tracer record --output FILE.trace.json` \
             writes the timeline",
            path.display()
        );
    }
    let selection = processes.resolve()?;
    let pids = selection.matching()?;
    if pids.is_empty() {
        anyhow::bail!("no process matches: {}", selection.describe());
    }
    if let [pid] = pids[..]
        && !selection.all
    {
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
    let named = if selection.all { &[][..] } else { &selection.pids[..] };
    snapshot_several(&pids, named, &outputs, top)
}

/// One report of several processes' blocked threads (a Go program's goroutines), each
/// stack tagged with its process. Those named by pid must be readable; any other that
/// exits meanwhile or cannot be read is left out, and said so.
fn snapshot_several(
    pids: &[u32],
    named: &[u32],
    outputs: &[PathBuf],
    top: usize,
) -> anyhow::Result<()> {
    pipeline::check_outputs(outputs)?;
    let mut traced = Vec::with_capacity(pids.len());
    let mut left_out = Vec::new();
    for &pid in pids {
        match Traced::open(pid, &[]) {
            Ok(one) => traced.push(one),
            Err(err) if named.contains(&pid) => return Err(err),
            Err(err) => left_out.push((pid, format!("{err:#}"))),
        }
    }
    let outputs = pipeline::create_outputs(outputs)?;
    // One pass over the host's tasks serves every process.
    let mut probes = open_probes(pids[0])?;
    let frame_pointers = pipeline::host_frame_pointers(&mut probes);
    drop(probes);
    let mut profiles = Vec::with_capacity(traced.len());
    let _report = pipeline::ReportScope::enter();
    for one in traced {
        let pid = one.target.pid;
        let profile = if one.is_go() {
            golang::snapshot_profile(&one).map(|mut profile| {
                profile.cgroup = one.target.cgroup.clone();
                profile
            })
        } else {
            snapshot_profile(one, &frame_pointers)
        };
        match profile {
            Ok(profile) => profiles.push(profile),
            Err(err) => left_out.push((pid, format!("{err:#}"))),
        }
    }
    say_left_out(&left_out);
    if profiles.is_empty() {
        anyhow::bail!("every process exited during the snapshot");
    }
    pipeline::report(&Profile::of_processes(profiles), outputs, top)
}

/// Names the processes left out of a snapshot of several: each, or (many of them, as
/// under --all) how many and the first few.
fn say_left_out(left_out: &[(u32, String)]) {
    const NAMED: usize = 5;
    for (pid, reason) in left_out.iter().take(NAMED) {
        crate::report::note(&format!("tracer: pid {pid} left out: {reason}"));
    }
    if left_out.len() > NAMED {
        crate::report::note(&format!(
            "tracer: {} more processes left out (-v names them)",
            left_out.len() - NAMED
        ));
        for (pid, reason) in &left_out[NAMED..] {
            log::info!("pid {pid} left out: {reason}");
        }
    }
}

/// The task iterator alone: it reads the saved registers, nothing is attached.
fn open_probes(pid: u32) -> anyhow::Result<Probes> {
    let btf_path = target::btf_path()?;
    let config = ProbeConfig {
        tgid: pid,
        min_wait: Duration::ZERO,
        wakers: false,
        maps: Default::default(),
    };
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
    // A CPython process's asyncio tasks pending in its event loops.
    let tasks = pipeline::pending_task_stacks(&mut unwinder, &mut objects);
    let mut base = pipeline::profile_of(&target, ProfileKind::Snapshot, started_at);
    base.duration = started.elapsed();
    base.counts =
        trace_counts(&ProbeCounters::default(), unwinder.truncated_unwinds, &objects, 0, 0);
    base.thread_counts = thread_counts;
    let _report = pipeline::ReportScope::enter();
    let profile = pipeline::symbolize(aggregate, base, unwinder.image(), &mut objects);
    let mut profile = pipeline::with_stacks(profile, tasks);
    pipeline::add_wait_chains(&mut profile, &objects, &mut unwinder, frame_pointers);
    pipeline::add_backed_up_sockets(&mut profile, frame_pointers);
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
