//! `tracer record`: attach to a live process, collect its waits until the duration ends
//! (or Ctrl-C, SIGTERM, or its exit), then symbolize and write every report.

use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use crate::{
    cli::{Mode, NO_WAKERS_EXACT_ONLY, RecordArgs, sampled_only_option},
    golang::{DEFAULT_RATE_HZ, GoRecording},
    model::{Profile, ProfileKind, ProfileStack, Sampling, ThreadCounts, TimelineRecorder},
    objects::WaitObjects,
    pipeline::{
        self, Traced,
        counts::{below_threshold, trace_counts},
        late_copies::{self, LateCopies},
        members::{self, Joined, Member, Members, Selection},
        target,
    },
    probes::{
        ProbeConfig, Probes,
        events::{RingBuffers, WaitCollector, WaitDecoder},
    },
    report::summary::format_duration,
    stacks::ProcessUnwinder,
    threads::{
        blocked_now::{SavedFramePointers, collect_blocked_threads, monotonic_now_ns},
        sampler::{Sampled, TaskIterator, ThreadSampler},
        waits_before::adopt_waits_in_progress,
    },
};

pub async fn record(args: RecordArgs) -> anyhow::Result<()> {
    let RecordArgs {
        processes,
        duration,
        min_wait,
        outputs,
        top,
        mode,
        rate,
        cpu_budget,
        no_wakers,
        maps,
    } = args;
    crate::pipeline::pace::set_cpu_budget(cpu_budget);
    let selection = processes.resolve()?;
    let pids = selection.matching()?;
    // A cgroup or the host is followed (processes that start join the recording):
    // sampled, as several processes are. So is a name several processes have; one
    // process of the name is recorded as that process, in either mode.
    let single = match pids[..] {
        [pid] if !selection.all && selection.cgroup.is_none() => Some(pid),
        _ => None,
    };
    let Some(pid) = single else {
        // Several: one sampled recording of them all.
        if mode == Some(Mode::Exact) {
            anyhow::bail!(
                "several processes are recorded sampled (--mode sampled); exact mode traces \
                 one process at a time for now"
            );
        }
        if no_wakers {
            anyhow::bail!(NO_WAKERS_EXACT_ONLY);
        }
        let period = Duration::from_secs(1) / rate.unwrap_or(DEFAULT_RATE_HZ).max(1);
        return record_sampled_several(selection, pids, duration, period, &outputs, top).await;
    };
    let traced = Traced::open(pid, &outputs)?;
    if traced.is_go() {
        if let Some(path) = timeline_output(&outputs) {
            anyhow::bail!(
                "{}: a Go program's goroutines are not written as a timeline yet (its \
                 threads' are: --mode exact on a thread-based program)",
                path.display()
            );
        }
        if let Some(option) = sampled_only_option(rate, cpu_budget)
            && mode == Some(Mode::Exact)
        {
            anyhow::bail!("{option} is for --mode sampled; an exact recording sees every wait");
        }
        if no_wakers {
            anyhow::bail!(NO_WAKERS_EXACT_ONLY);
        }
        let mode = match mode.unwrap_or(Mode::Sampled) {
            Mode::Sampled => GoRecording::Sampled { rate_hz: rate.unwrap_or(DEFAULT_RATE_HZ) },
            Mode::Exact => GoRecording::Exact,
        };
        return crate::golang::record(&traced, duration, mode, &outputs, top).await;
    }
    // Python frames are read from threads while they wait: a CPython process is recorded
    // sampled unless asked otherwise.
    let is_python = traced.is_python();
    match mode.unwrap_or(if is_python { Mode::Sampled } else { Mode::Exact }) {
        Mode::Sampled => {
            if no_wakers {
                anyhow::bail!(NO_WAKERS_EXACT_ONLY);
            }
            let period = Duration::from_secs(1) / rate.unwrap_or(DEFAULT_RATE_HZ).max(1);
            let passes_ring_bytes = maps.pass_ring_buffer_bytes;
            return record_sampled(traced, duration, period, passes_ring_bytes, &outputs, top)
                .await;
        }
        Mode::Exact => {
            if let Some(option) = sampled_only_option(rate, cpu_budget) {
                anyhow::bail!("{option} is for --mode sampled; an exact recording sees every wait");
            }
        }
    }
    let btf_path = target::btf_path()?;
    let outputs = pipeline::create_outputs(&outputs)?;
    let Traced { target, image } = traced;

    let mut unwinder = ProcessUnwinder::new(pid, image);
    if is_python {
        const EXACT_PYTHON: &str = "an exact recording shows Python frames only for the waits \
             still blocked at its end (the others ended before their threads could be read): \
             --mode sampled names every wait by its Python frames";
        crate::report::note(&format!(
            "tracer: {} (pid {pid}) runs CPython; {EXACT_PYTHON}",
            target.comm
        ));
        unwinder.note_python_frames_missing(EXACT_PYTHON);
    }
    let mut collector = WaitCollector::new(pid, unwinder);
    let config = ProbeConfig { tgid: pid, min_wait, wakers: !no_wakers, maps };
    let mut probes = Probes::open(config, &btf_path)?;
    probes.attach_wait_probes()?;
    // The recording starts when the probes do: the waits that end while the threads
    // asleep are read below (seconds, for a big process on a busy host) are in it, and
    // so must that time be, or one thread reads more blocked time than it was recorded.
    let started = Instant::now();
    let started_at = SystemTime::now();
    collector.aggregate.timeline = Some(TimelineRecorder::new(monotonic_now_ns()));
    let mut rings = RingBuffers::take(&mut probes)?;
    // Without wakers, a long wait whose sleep kept no stack copy gets one from outside.
    let mut late_copier = no_wakers.then(|| LateCopies::start(pid, &probes, min_wait)).flatten();
    let mut late_copy_poll = late_copies::poll_timer().context("cannot make a timer")?;
    crate::report::note(&format!(
        "tracer: recording {} (pid {}) for {}; Ctrl-C to stop early",
        target.comm,
        target.pid,
        format_duration(duration.as_nanos() as u64)
    ));
    // The threads asleep since before the attach: their waits count from here, their
    // earlier part added when they end. (Longer than the duration on a host too busy to
    // read them in time: the recording is then as long as that reading.)
    let waits_begun_before = match adopt_waits_in_progress(pid, &mut probes) {
        Ok((ages, adopted)) => {
            log::info!("waits in progress at the attach: {adopted:?}");
            collector.decoder.ages_at_start = ages;
            adopted.waits
        }
        // Gone already: the report says it exited.
        Err(err) if target.has_exited() => {
            log::debug!("cannot read the waits in progress at the attach: {err}");
            0
        }
        Err(err) => {
            log::warn!("cannot read the waits in progress at the attach: {err}");
            0
        }
    };

    let stop =
        pipeline::run_until_stop(&target, duration.saturating_sub(started.elapsed()), async || {
            match &mut late_copier {
                Some(late_copier) => tokio::select! {
                    drained = rings.drain_when_ready(&mut collector) => drained?,
                    ticked = late_copy_poll.tick() => {
                        ticked.context("waiting for the late copies' timer")?;
                        collector.decoder.late_copies += late_copier.poll(&mut probes);
                        late_copy_poll.set_period(late_copier.interval());
                    }
                },
                None => rings.drain_when_ready(&mut collector).await?,
            }
            probes.update_stack_spans(collector.decoder.stack_spans.take_changes());
            Ok(())
        })
        .await?;
    let elapsed = started.elapsed();
    if let Some(timeline) = &mut collector.aggregate.timeline {
        timeline.stop(monotonic_now_ns());
    }
    // Waits that ended just before the stop are still in the buffer (the probes still
    // run: a pass, the rest after the detach).
    rings.drain_pass(&mut collector);
    let counters = probes.counters()?;
    let short_waits = probes.short_waits()?;
    // Neither of these may cost the recording: without them, ages are lower bounds and
    // stacks that need rbp stop early (both counted).
    let known_starts = probes.waits_in_progress(pid).unwrap_or_else(|err| {
        log::warn!("cannot read the waits in progress: {err}");
        Default::default()
    });
    let frame_pointers = pipeline::host_frame_pointers(&mut probes);
    drop(probes); // detach before the slow part
    // Records written between the drain and the detach.
    rings.drain_now(&mut collector);
    drop(rings);
    let target_exited = stop == pipeline::Stop::TargetExited || target.has_exited();
    if target_exited {
        crate::report::note(&format!(
            "tracer: pid {pid} exited during the recording; reporting what was recorded"
        ));
    }

    let WaitCollector {
        decoder:
            WaitDecoder {
                mut unwinder,
                mut objects,
                malformed_records,
                pending_wakers,
                wakers_evicted,
                late_copies,
                ..
            },
        mut aggregate,
    } = collector;
    // The waits that never ended: threads blocked before we attached, and stuck ones.
    let mut target_exited = target_exited;
    let thread_counts = if target_exited {
        ThreadCounts::default()
    } else {
        match collect_blocked_threads(
            pid,
            &mut unwinder,
            &known_starts,
            &frame_pointers,
            &mut objects,
            &mut aggregate,
        ) {
            Ok(counts) => counts,
            // Exiting now, after the recording: still report what was recorded.
            Err(_) if target.has_exited() => {
                target_exited = true;
                crate::report::note(&format!(
                    "tracer: pid {pid} exited at the end of the recording"
                ));
                ThreadCounts::default()
            }
            Err(err) => {
                return Err(err).with_context(|| format!("cannot list the threads of pid {pid}"));
            }
        }
    };
    // A waker still pending here never met its wait's record.
    let wakers_unmatched = wakers_evicted + pending_wakers.len() as u64;
    let mut base = pipeline::profile_of(&target, ProfileKind::Recording, started_at);
    base.duration = elapsed;
    base.min_wait = min_wait;
    base.no_wakers = no_wakers;
    base.target_exited = target_exited;
    base.below_threshold = below_threshold(&short_waits);
    base.counts = trace_counts(
        &counters,
        unwinder.truncated_unwinds,
        &objects,
        malformed_records,
        wakers_unmatched,
    );
    base.counts.waits_begun_before = waits_begun_before;
    base.counts.late_copies = late_copies;
    base.thread_counts = thread_counts;
    let tasks = pending_tasks_at_end(&mut unwinder, &mut objects, target_exited);
    let _report = pipeline::ReportScope::enter();
    let profile = pipeline::symbolize(aggregate, base, unwinder.image(), &mut objects);
    let mut profile = pipeline::with_stacks(profile, tasks);
    pipeline::add_wait_chains(&mut profile, &objects, &mut unwinder, &frame_pointers);
    pipeline::add_backed_up_sockets(&mut profile, &frame_pointers);
    pipeline::report(&profile, outputs, top)
}

/// A sampled recording of a process's threads: read every `period` until the stop, with
/// nothing attached to the process (only the task iterator runs, for reads that see new
/// waits).
async fn record_sampled(
    traced: Traced,
    duration: Duration,
    period: Duration,
    passes_ring_bytes: Option<u32>,
    outputs: &[PathBuf],
    top: usize,
) -> anyhow::Result<()> {
    let btf_path = target::btf_path()?;
    let outputs = pipeline::create_outputs(outputs)?;
    let Traced { target, image } = traced;
    let pid = target.pid;
    let probes = Probes::open_for_passes(pid, passes_ring_bytes, &btf_path)?;
    let tasks = TaskIterator::Own(Box::new(probes));
    let unwinder = ProcessUnwinder::new(pid, image);
    let sampler = match ThreadSampler::new(pid, unwinder, tasks, period) {
        Ok(sampler) => sampler,
        // Gone before its first read: a report that says so, as an exact recording's.
        Err(_) if target.has_exited() => {
            let mut profile =
                pipeline::profile_of(&target, ProfileKind::Recording, SystemTime::now());
            profile.sampling = Some(Sampling { period, reads: 0 });
            profile.target_exited = true;
            return pipeline::report(&profile, outputs, top);
        }
        Err(err) => return Err(err).context(format!("cannot list the threads of pid {pid}")),
    };
    let mut sampler = sampler.with_passes_in_kernel();
    sampler.keep_files_of_at_most(members::kept_threads_per_process(1));
    crate::report::note(&format!(
        "tracer: recording {} (pid {pid}) for {}, sampled every {}; Ctrl-C to stop early",
        target.comm,
        format_duration(duration.as_nanos() as u64),
        format_duration(period.as_nanos() as u64),
    ));
    let started_at = SystemTime::now();
    sampler.keep_timeline(monotonic_now_ns());
    let (elapsed, target_exited) = pipeline::sample_until_stop(&target, duration, period, || {
        sampler.read()?;
        Ok(sampler.read_interval())
    })?;
    let mut sampled = sampler.finish(target_exited);
    let timing = SampledTiming { started_at, elapsed, period };
    // One read of the host's saved registers for the chains' and the backed-up sockets'
    // peers (the reads' own were of the target's threads, and are gone).
    let frame_pointers = sampled.tasks.host();
    let mut profile = sampled_profile(&target, sampled, timing, target_exited, &frame_pointers);
    pipeline::add_backed_up_sockets(&mut profile, &frame_pointers);
    pipeline::report(&profile, outputs, top)
}

/// One sampled recording of several processes, read in turn each period, reported as
/// one profile whose stacks name their process; with a cgroup or `--all`, the processes
/// that start meanwhile join as they are seen. A Go program's threads are read (its
/// goroutines need it recorded alone).
async fn record_sampled_several(
    selection: Selection,
    pids: Vec<u32>,
    duration: Duration,
    period: Duration,
    outputs: &[PathBuf],
    top: usize,
) -> anyhow::Result<()> {
    pipeline::check_outputs(outputs)?;
    let (mut members, joined) = Members::start(selection, pids, period)?;
    let outputs = pipeline::create_outputs(outputs)?;
    for joined in joined.iter().filter(|joined| !matches!(joined, Joined::Joined { go: false, .. }))
    {
        crate::report::note(&format!("tracer: {joined}"));
    }
    // Every one left out (said above), and none may join: nothing to record.
    if members.members.is_empty() && !members.selection().follows() {
        anyhow::bail!("no process of {} can be recorded", members.selection().describe());
    }
    let following =
        if members.selection().follows() { ", and those that start meanwhile," } else { "" };
    crate::report::note(&format!(
        "tracer: recording {} processes of {}{following} for {}, sampled every {}; Ctrl-C to \
         stop early",
        members.members.len(),
        members.selection().describe(),
        format_duration(duration.as_nanos() as u64),
        format_duration(period.as_nanos() as u64),
    ));
    let started_at = SystemTime::now();
    members.keep_timelines(monotonic_now_ns());
    let elapsed = pipeline::sample_while(duration, period, || {
        for joined in members.look_for_new() {
            crate::report::note(&format!("tracer: {joined}"));
        }
        members.read().then(|| members.read_interval())
    })?;
    // Once more, for what is still blocked at the end.
    members.read();
    let timing = SampledTiming { started_at, elapsed, period };
    let pass_counts = members.pass_counts();
    let _report = pipeline::ReportScope::enter();
    // Every member's sampler shares one task iterator: the host's saved registers are
    // read once, for every process's chains and backed-up sockets' peers.
    let frame_pointers = members
        .members
        .first_mut()
        .map(|member| member.sampler.parts_mut().2.host())
        .unwrap_or_default();
    let mut profiles: Vec<Profile> = members
        .members
        .into_iter()
        .map(|Member { target, sampler, .. }| {
            let exited = target.has_exited();
            if exited {
                crate::report::note(&format!(
                    "tracer: pid {} exited during the recording; reporting what was recorded",
                    target.pid
                ));
            }
            sampled_profile(&target, sampler.finish(exited), timing, exited, &frame_pointers)
        })
        .collect();
    pipeline::add_backed_up_sockets_to(&mut profiles, &frame_pointers);
    let mut profile = Profile::of_processes(profiles);
    profile.counts.add(pass_counts);
    pipeline::report(&profile, outputs, top)
}

/// The `.trace.json` among the outputs, if any.
fn timeline_output(outputs: &[PathBuf]) -> Option<&PathBuf> {
    outputs.iter().find(|path| {
        crate::report::Format::from_path(path).is_ok_and(|f| f == crate::report::Format::TraceJson)
    })
}

/// When and how often a sampled recording read.
#[derive(Clone, Copy)]
struct SampledTiming {
    started_at: SystemTime,
    elapsed: Duration,
    period: Duration,
}

/// A CPython process's asyncio tasks still pending at the end of a recording, as its
/// threads still blocked are (read once, at the end: tasks are not traced).
fn pending_tasks_at_end(
    unwinder: &mut ProcessUnwinder,
    objects: &mut WaitObjects,
    target_exited: bool,
) -> Vec<ProfileStack> {
    if target_exited {
        return Vec::new();
    }
    pipeline::pending_task_stacks(unwinder, objects)
}

/// The profile of one process's sampled recording, with its chains (whose peers unwind
/// with the host's saved registers, `frame_pointers`).
fn sampled_profile(
    target: &target::Target,
    sampled: Sampled,
    timing: SampledTiming,
    target_exited: bool,
    frame_pointers: &SavedFramePointers,
) -> Profile {
    let Sampled {
        aggregate,
        mut unwinder,
        mut objects,
        thread_counts,
        reads,
        threads_skipped,
        tasks,
        sampler_counts,
    } = sampled;
    log::info!("{reads} reads; {threads_skipped} thread reads skipped (woke, exited, unreadable)");
    let SampledTiming { started_at, elapsed, period } = timing;
    let mut base = pipeline::profile_of(target, ProfileKind::Recording, started_at);
    base.duration = elapsed;
    base.sampling = Some(Sampling { period, reads });
    base.target_exited = target_exited;
    let counters = tasks.counters();
    base.counts =
        sampler_counts.add_to(trace_counts(&counters, unwinder.truncated_unwinds, &objects, 0, 0));
    base.thread_counts = thread_counts;
    let pending = pending_tasks_at_end(&mut unwinder, &mut objects, target_exited);
    let _report = pipeline::ReportScope::enter();
    let profile = pipeline::symbolize(aggregate, base, unwinder.image(), &mut objects);
    let mut profile = pipeline::with_stacks(profile, pending);
    pipeline::add_wait_chains(&mut profile, &objects, &mut unwinder, frame_pointers);
    profile
}
