//! The processes of a sampled recording or daemon of several: which ones (pids, a name, a
//! cgroup, every user process on the host), joined as they appear, each read by its own
//! `ThreadSampler`. The samplers share one loaded BPF object, not one per process: its
//! task iterator, each with a link of its own to its process's tasks, and its passes in
//! the kernel, which walk every process joined (but Python programs) at the rate and are
//! drained a few times a second, each sampler handed its own process's passes.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tracer_common::Counter;

use super::counts::trace_counts;
use super::{Traced, target};
use crate::{
    model::{ProcessTag, Profile, ProfileKind, TraceCounts, WaitAggregate},
    probes::{ProbeCounters, Probes},
    stacks::ProcessUnwinder,
    threads::{
        kernel_passes::{PassSource, RecordsByProcess},
        sampler::{SiblingPlaces, TaskIterator, ThreadSampler, lock},
    },
};

/// How often the processes that match are looked for again, when new ones may join.
const LOOK_INTERVAL: Duration = Duration::from_millis(500);

/// Descriptors left to everything but the threads' kept files: the probes' maps, the
/// daemon's connections; and per process its pidfd, task directory and mapped files.
const DESCRIPTORS_RESERVED: u64 = 512;
const DESCRIPTORS_PER_PROCESS: u64 = 32;

/// The descriptors a thread's kept files take (`threads::KEPT_LEAVES`).
const DESCRIPTORS_PER_THREAD: u64 = 3;

/// Which processes to trace: the union of these.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub pids: Vec<u32>,
    /// Every process with this name.
    pub comm: Option<String>,
    /// Every process in this cgroup and below it.
    pub cgroup: Option<PathBuf>,
    /// Every user process on the host.
    pub all: bool,
}

impl Selection {
    /// The processes that match now.
    pub fn matching(&self) -> Result<Vec<u32>, target::TargetError> {
        if self.all {
            return Ok(target::user_processes());
        }
        target::select_processes(&self.pids, self.comm.as_deref(), self.cgroup.as_deref())
    }

    /// The processes of the parts that follow (the name's, the cgroup's, or every one)
    /// but for `known`: pids given are taken once, at the start.
    fn followed_besides(&self, known: &BTreeSet<u32>) -> Result<Vec<u32>, target::TargetError> {
        if self.all {
            return Ok(target::user_processes_except(known));
        }
        let mut followed = match &self.cgroup {
            Some(cgroup) => target::cgroup_processes(cgroup)?,
            None => Vec::new(),
        };
        if let Some(name) = &self.comm {
            followed.extend(target::named_processes(name));
        }
        followed.retain(|pid| !known.contains(pid));
        Ok(followed)
    }

    /// Whether processes that start later join: a name's (a worker restarted, a new one
    /// forked and renamed), a cgroup's, or every process.
    pub fn follows(&self) -> bool {
        self.all || self.cgroup.is_some() || self.comm.is_some()
    }

    /// What is traced, for messages: `every user process`, `the cgroup /sys/…`.
    pub fn describe(&self) -> String {
        if self.all {
            return "every user process".to_string();
        }
        let mut parts = Vec::new();
        if !self.pids.is_empty() {
            let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
            parts.push(format!("pid {}", pids.join(", ")));
        }
        if let Some(name) = &self.comm {
            parts.push(format!("processes named {name}"));
        }
        if let Some(cgroup) = &self.cgroup {
            parts.push(format!("the cgroup {}", cgroup.display()));
        }
        parts.join(" and ")
    }
}

/// One process being read.
pub struct Member {
    pub target: target::Target,
    pub sampler: ThreadSampler,
    /// A Go program: its threads are read (its goroutines need it traced alone).
    pub go: bool,
    /// Its process exited and gave up its place in the passes: once, as a new process
    /// given the same pid may have joined since and been given a place of its own.
    left_passes: bool,
}

impl Member {
    /// The process, as profiles of several name it.
    pub fn tag(&self) -> ProcessTag {
        ProcessTag {
            pid: self.target.pid,
            comm: self.target.comm.clone(),
            cgroup: self.target.cgroup.clone(),
        }
    }

    /// The profile of `aggregate` (this process's waits), named by `namer` (which keeps
    /// this process's symbols: one per process), each stack tagged with the process; a
    /// snapshot's has a CPython process's asyncio tasks pending now too.
    pub fn profile(
        &mut self,
        namer: &mut super::Namer,
        aggregate: WaitAggregate,
        kind: ProfileKind,
    ) -> Profile {
        let process = self.tag();
        let mut base = super::profile_of(&self.target, kind, std::time::SystemTime::now());
        let (unwinder, objects, _) = self.sampler.parts_mut();
        base.counts =
            trace_counts(&ProbeCounters::default(), unwinder.truncated_unwinds, objects, 0, 0);
        base.endpoint_states = objects.endpoint_states.clone();
        let tasks = match kind {
            ProfileKind::Snapshot => super::pending_task_stacks(unwinder, objects),
            ProfileKind::Recording => Vec::new(),
        };
        let profile = namer.profile(aggregate, base, unwinder.image());
        let mut profile = super::with_stacks(profile, tasks);
        for stack in &mut profile.stacks {
            stack.process = Some(process.clone());
        }
        profile
    }
}

/// What happened to a process that matched the selection.
pub enum Joined {
    Joined { pid: u32, comm: String, go: bool },
    LeftOut { pid: u32, reason: String },
}

/// The processes of the selection, read in turn each period.
pub struct Members {
    selection: Selection,
    period: Duration,
    /// The task iterator every member's sampler walks its process with, and the passes
    /// in the kernel.
    probes: Arc<Mutex<Probes>>,
    /// Whether the passes in the kernel can make the members' reads (their program
    /// loaded), and the passes once attached (after the first member's first read).
    passes_possible: bool,
    passes: Option<PassSource>,
    /// Records of no process the passes wrote before they stopped.
    passes_malformed: u64,
    /// Reads so far: a drain of the passes in the kernel holds several.
    reads: u64,
    pub members: Vec<Member>,
    /// Every pid that matched, joined or not (one that exited first, one refused), so
    /// that it is not tried again; pruned to the pids that still match.
    seen: BTreeSet<u32>,
    /// Processes matched once, not joined yet: they join when still there at the next
    /// look, so a short-lived command (`ls`, a health check) costs no image read.
    candidates: BTreeSet<u32>,
    last_look: Option<Instant>,
    /// Said once when a look fails (a cgroup removed), not at every look.
    look_failed: bool,
    /// Second 0 of the members' timelines, once a recording keeps them.
    timeline_origin: Option<u64>,
    /// The window of the members' rolling timelines, once a daemon keeps them.
    rolling_window: Option<Duration>,
    /// The stacks read at each place, shared by the members of one code layout (forked
    /// from one parent).
    sibling_places: SiblingPlaces,
}

impl Members {
    /// Joins `pids` (the processes that matched, after the caller's checks). Fails on
    /// the first that cannot be traced of those named by pid.
    pub fn start(
        selection: Selection,
        pids: Vec<u32>,
        period: Duration,
    ) -> anyhow::Result<(Self, Vec<Joined>)> {
        let btf_path = target::btf_path()?;
        // One object for the host's task iterator and the passes in the kernel.
        let mut probes = Probes::open_for_passes(0, None, &btf_path)?;
        let passes_possible = match probes.load_sample_passes() {
            Ok(()) => true,
            Err(err) => {
                log::info!(
                    "the kernel cannot make the reads ({:#}); reading every period",
                    anyhow::Error::from(err)
                );
                false
            }
        };
        let mut members = Self {
            selection,
            period,
            probes: Arc::new(Mutex::new(probes)),
            passes_possible,
            passes: None,
            passes_malformed: 0,
            reads: 0,
            members: Vec::new(),
            seen: BTreeSet::new(),
            candidates: BTreeSet::new(),
            last_look: Some(Instant::now()),
            look_failed: false,
            timeline_origin: None,
            rolling_window: None,
            sibling_places: SiblingPlaces::default(),
        };
        let mut joined = Vec::with_capacity(pids.len());
        for pid in pids {
            match members.join(pid) {
                Ok(member) => joined.push(member),
                // Named by pid: the user wants to know. Matched otherwise: it may have
                // exited since it matched, or be one we cannot read (said, left out).
                Err(err) if members.selection.pids.contains(&pid) => return Err(err),
                Err(err) => joined.push(Joined::LeftOut { pid, reason: format!("{err:#}") }),
            }
        }
        Ok((members, joined))
    }

    fn join(&mut self, pid: u32) -> anyhow::Result<Joined> {
        self.seen.insert(pid);
        let traced = Traced::open(pid, &[])?;
        let go = traced.is_go();
        let Traced { target, image } = traced;
        let unwinder = ProcessUnwinder::new(pid, image);
        let tasks = TaskIterator::Shared { probes: Arc::clone(&self.probes), pid };
        let mut sampler = ThreadSampler::new(pid, unwinder, tasks, self.period)
            .with_context(|| format!("cannot list the threads of pid {pid}"))?;
        sampler.share_places(self.sibling_places.clone());
        if self.passes_possible && sampler.take_shared_passes() {
            // Watched before the sampler's first read, whose pass of the iterator shows
            // the passes the process's leader.
            if let Err(err) = lock(&self.probes).watch_in_passes(pid) {
                log::debug!("pid {pid}: read every period: {err}");
                sampler.read_here_from_now();
            }
        }
        if let Some(origin_ns) = self.timeline_origin {
            sampler.keep_timeline(origin_ns);
        }
        if let Some(window) = self.rolling_window {
            sampler.keep_rolling_timeline(window);
        }
        let comm = target.comm.clone();
        self.members.push(Member { target, sampler, go, left_passes: false });
        self.share_descriptors();
        Ok(Joined::Joined { pid, comm, go })
    }

    /// Splits the descriptor limit between the members' kept thread files: with many
    /// processes each keeps fewer open (the rest are opened per read, as before).
    fn share_descriptors(&mut self) {
        let per_member = kept_threads_per_process(self.members.len());
        for member in &mut self.members {
            member.sampler.keep_files_of_at_most(per_member);
        }
    }

    /// Keeps every member's waits in time from `origin_ns` (`CLOCK_MONOTONIC`) on, and
    /// those of the processes that join later.
    pub fn keep_timelines(&mut self, origin_ns: u64) {
        self.timeline_origin = Some(origin_ns);
        for member in &mut self.members {
            member.sampler.keep_timeline(origin_ns);
        }
    }

    /// Keeps every member's last `window` of waits in time (a daemon's triggers), and
    /// those of the processes that join later.
    pub fn keep_rolling_timelines(&mut self, window: Duration) {
        self.rolling_window = Some(window);
        for member in &mut self.members {
            member.sampler.keep_rolling_timeline(window);
        }
    }

    /// Lets in the processes that started since the last look (at most once per
    /// `LOOK_INTERVAL`), when the selection follows new ones.
    pub fn look_for_new(&mut self) -> Vec<Joined> {
        if !self.selection.follows()
            || self.last_look.is_some_and(|last| last.elapsed() < LOOK_INTERVAL)
        {
            return Vec::new();
        }
        self.last_look = Some(Instant::now());
        for member in &mut self.members {
            // A process that execs or moves renames itself: the labels follow.
            member.target.refresh_names();
        }
        // The pids already seen that are gone: forgotten (a reused pid is a new process).
        self.seen.retain(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        let matching = match self.selection.followed_besides(&self.seen) {
            Ok(matching) => matching,
            Err(err) => {
                if !std::mem::replace(&mut self.look_failed, true) {
                    log::warn!("cannot look for new processes: {err}");
                }
                return Vec::new();
            }
        };
        let new: BTreeSet<u32> =
            matching.into_iter().filter(|pid| !self.seen.contains(pid)).collect();
        self.candidates.retain(|pid| new.contains(pid));
        let mut joined = Vec::new();
        for pid in new {
            if !self.candidates.remove(&pid) {
                self.candidates.insert(pid);
                continue;
            }
            joined.push(match self.join(pid) {
                Ok(member) => member,
                Err(err) => Joined::LeftOut { pid, reason: format!("{err:#}") },
            });
        }
        joined
    }

    /// One read of every live member: a drain of the passes in the kernel, each member
    /// handed its process's, and a read by the tracer of the others (a process's first,
    /// a Python program's). False when there is nothing left to read (every member
    /// exited, and nothing new may join).
    pub fn read(&mut self) -> bool {
        let (mut records, walk_interval) = self.drain_passes();
        let mut alive = false;
        let mut most_reads = 0;
        for member in &mut self.members {
            let pid = member.target.pid;
            if member.target.has_exited() {
                // Its slot for a process that joins later (a recording keeps the member
                // to the end; a daemon drops it, which does the same).
                if !member.left_passes {
                    lock(&self.probes).unwatch_in_passes(pid);
                    member.left_passes = true;
                }
                continue;
            }
            alive = true;
            let reads_before = member.sampler.reads();
            let read = match walk_interval {
                Some(interval) if member.sampler.reads_shared_passes() => {
                    let records = records.remove(&pid).unwrap_or_default();
                    member.sampler.read_passes(&records, interval)
                }
                _ => member.sampler.read(),
            };
            // A read that fails is of a process exiting: the next look says so.
            if let Err(err) = read {
                log::debug!("pid {pid}: read failed: {err}");
            }
            most_reads = most_reads.max(member.sampler.reads() - reads_before);
        }
        self.reads += most_reads;
        self.attach_passes();
        alive || self.selection.follows()
    }

    /// The records the passes in the kernel wrote since the last drain, by process, and
    /// how often they walk each process; none before they are attached, or once they
    /// stopped (every member reads by itself from then on). A member whose process has
    /// more threads than a pass walks reads by itself from then on.
    fn drain_passes(&mut self) -> (RecordsByProcess, Option<Duration>) {
        let Some(source) = &mut self.passes else {
            return (RecordsByProcess::new(), None);
        };
        let drained = source.drain(&mut lock(&self.probes));
        match drained {
            Ok(mut drained) => {
                let walk_interval = source.walk_interval();
                for member in &mut self.members {
                    let pid = member.target.pid;
                    if drained.unwalkable.iter().any(|&(tgid, _)| tgid == pid) {
                        // The whole passes made before it grew past a pass first.
                        let records = drained.records.remove(&pid).unwrap_or_default();
                        if let Err(err) = member.sampler.read_passes(&records, walk_interval) {
                            log::debug!("pid {pid}: read failed: {err}");
                        }
                        member.sampler.read_here_from_now();
                    }
                }
                (drained.records, Some(walk_interval))
            }
            Err(why) => {
                log::info!("{why}; each process read every period");
                self.stop_passes();
                (RecordsByProcess::new(), None)
            }
        }
    }

    /// Attaches the passes in the kernel once a member reads by them (its first read
    /// showed them its process).
    fn attach_passes(&mut self) {
        if self.passes.is_some()
            || !self.members.iter().any(|member| member.sampler.reads_shared_passes())
        {
            return;
        }
        let label = self.selection.describe();
        let attached = PassSource::attach(&mut lock(&self.probes), self.period, label);
        match attached {
            Ok(source) => self.passes = Some(source),
            Err(err) => {
                log::info!(
                    "the kernel cannot make the reads ({:#}); reading every period",
                    anyhow::Error::from(err)
                );
                self.stop_passes();
            }
        }
    }

    /// Every member reads by itself from now on.
    fn stop_passes(&mut self) {
        if let Some(source) = self.passes.take() {
            self.passes_malformed += source.malformed();
        }
        self.passes_possible = false;
        for member in &mut self.members {
            member.sampler.read_here_from_now();
        }
    }

    /// The reads made so far (of the process read most: each made its own).
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// How long until the next `read` is due: the period while any member reads by
    /// itself, the drains' interval when the passes make every read.
    pub fn read_interval(&self) -> Duration {
        self.members
            .iter()
            .filter(|member| !member.target.has_exited())
            .map(|member| member.sampler.read_interval())
            .min()
            .unwrap_or(self.period)
    }

    /// What the passes in the kernel lost that no member's counts hold: their ring's
    /// losses, the passes not read whole, records of no process.
    pub fn pass_counts(&self) -> TraceCounts {
        let counters = lock(&self.probes).counters().unwrap_or_default();
        TraceCounts {
            ring_buffer_full: counters.get(Counter::PassRingFull),
            reads_lost: counters.get(Counter::PassesIncomplete),
            malformed_records: self.passes_malformed
                + self.passes.as_ref().map_or(0, PassSource::malformed),
            ..TraceCounts::default()
        }
    }

    /// Takes out the members whose process exited (a daemon's, after their last waits
    /// were taken).
    pub fn remove_exited(&mut self) -> Vec<Member> {
        let (exited, live) =
            std::mem::take(&mut self.members).into_iter().partition(|m| m.target.has_exited());
        self.members = live;
        if !exited.is_empty() {
            self.share_descriptors();
        }
        exited
    }

    pub fn selection(&self) -> &Selection {
        &self.selection
    }
}

/// How many threads of each of `processes` sampled processes may keep their files open
/// (`ThreadSampler::keep_files_of_at_most`) within the descriptor limit, raised first.
pub fn kept_threads_per_process(processes: usize) -> usize {
    let limit = raise_descriptor_limit();
    let processes = processes.max(1) as u64;
    let reserved = DESCRIPTORS_RESERVED + DESCRIPTORS_PER_PROCESS * processes;
    (limit.saturating_sub(reserved) / DESCRIPTORS_PER_THREAD / processes) as usize
}

/// Raises the soft limit on open descriptors to the hard one (systemd's default soft
/// limit is 1,024) and returns it.
fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write one rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

impl std::fmt::Display for Joined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Joined::Joined { pid, comm, go: false } => write!(f, "pid {pid} ({comm}) joined"),
            Joined::Joined { pid, comm, go: true } => write!(
                f,
                "pid {pid} ({comm}) joined: a Go program, its threads are read (trace it \
                 alone, --pid {pid}, for its goroutines)"
            ),
            Joined::LeftOut { pid, reason } => write!(f, "pid {pid} left out: {reason}"),
        }
    }
}
