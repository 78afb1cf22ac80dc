//! `tracer snapshot`: the threads of a live process blocked right now in futex and
//! socket waits, grouped by call stack like a goroutine profile — including threads
//! stuck since long before the tracer started. Reads /proc and attaches nothing to the
//! process: one pass of a BPF task iterator reads the threads' saved registers.

use std::time::Instant;


use crate::{
    model::{Profile, ProfileKind, TraceCounts, WaitAggregate},
    threads::blocked_now::{KnownWaitStarts, SavedFramePointers, collect_blocked_threads},
    cli::SnapshotArgs,
    golang,
    objects::locks::LockNamer,
    report::{Format, Output, summary::render_summary},
    stacks::{ProcessImage, StackSymbolizer, StackWalker},
    probes::{ProbeConfig, Probes},
    pipeline::target::{self, Target},
    objects::WaitObjects,
};

pub fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let SnapshotArgs { pid, outputs, top } = args;
    for path in &outputs {
        Format::from_path(path)?;
    }
    target::check_root()?;
    let target = Target::open(pid)?;
    // A Go program's goroutines wait in the Go scheduler, not in the kernel: read them.
    let image = ProcessImage::snapshot(pid).map_err(|err| exited_or(&target, err.into()))?;
    let is_go = image
        .modules()
        .iter()
        .any(|module| module.is_main_executable && golang::is_go(module.file_bytes()));
    if is_go {
        return golang::snapshot(&target, &image, &outputs, top);
    }
    let btf_path = target::btf_path()?;
    let outputs = outputs
        .iter()
        .map(|path| Output::create(path))
        .collect::<Result<Vec<_>, _>>()?;

    let started = Instant::now();
    let started_at = std::time::SystemTime::now();
    // Only the task iterator runs: it reads the saved registers, nothing is attached
    // to the process.
    let mut probes = Probes::open(
        ProbeConfig { tgid: pid, min_wait: std::time::Duration::ZERO, maps: Default::default() },
        &btf_path,
    )?;
    // Without the saved registers, stacks whose CFI needs rbp stop early (counted).
    let frame_pointers = match probes.task_registers() {
        Ok(registers) => SavedFramePointers::from_tasks(&registers),
        Err(err) => {
            log::warn!("cannot read the threads' saved registers: {err}");
            SavedFramePointers::default()
        }
    };
    drop(probes);
    let mut walker = StackWalker::new(pid, image);
    let mut aggregate = WaitAggregate::default();
    let mut targets = WaitObjects::new(pid);
    let thread_counts =
        collect_blocked_threads(
            pid,
            &mut walker,
            &KnownWaitStarts::new(),
            &frame_pointers,
            &mut targets,
            &mut aggregate,
        )
            .map_err(|err| exited_or(&target, err.into()))?;
    if target.has_exited() {
        anyhow::bail!("pid {pid} exited during the snapshot");
    }
    let base = Profile {
        kind: ProfileKind::Snapshot,
        pid,
        start_unix_ns: target::unix_ns(started_at),
        command_line: target.command_line.clone(),
        comm: target.comm.clone(),
        duration: started.elapsed(),
        min_wait: std::time::Duration::ZERO,
        target_exited: false,
        stacks: Vec::new(),
        below_threshold: Vec::new(),
        counts: TraceCounts {
            unwind_truncated: walker.truncated_walks,
            non_socket_io: targets.non_socket_io,
            unresolved_descriptors: targets.unresolved_sockets,
            ..TraceCounts::default()
        },
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
    log::info!("snapshot of pid {pid} took {:?}", started.elapsed());
    print!("{}", render_summary(&profile, top));
    println!("{}", crate::pipeline::own_usage::ProcessUsage::of_self());
    crate::report::write_outputs(outputs, &profile)
}

/// A failure to read the target is, more often than not, the target exiting: say so.
fn exited_or(target: &Target, err: anyhow::Error) -> anyhow::Error {
    if target.has_exited() {
        anyhow::anyhow!("pid {} exited during the snapshot", target.pid)
    } else {
        err.context(format!("cannot read pid {}", target.pid))
    }
}
