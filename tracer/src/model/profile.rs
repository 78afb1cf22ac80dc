//! The `Profile`: everything the exporters need about one recording or snapshot, built
//! in one place (`Profile::new`, then `Profile::with_stacks`).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use tracer_common::{ShortWaitTotals, WaitKind};

use super::{
    WaitStats, WakerRow,
    call_site::{Language, call_site},
};
use crate::{
    chains::WaitChain,
    stacks::{Frame, UNKNOWN_FRAME},
};

/// A symbolized stack with its waits.
#[derive(Clone, Debug)]
pub struct ProfileStack {
    /// Root first, leaf last; inlined frames expanded.
    pub frames: Vec<Frame>,
    pub kind: WaitKind,
    /// What the wait waits on (`10.0.0.5:80`, `STATS_QUEUE`, `heap 0x55d0c2a4b188`),
    /// when there is something to name.
    pub object: Option<String>,
    pub truncated: bool,
    /// Still blocked when the recording ended (or at the snapshot).
    pub in_progress: bool,
    pub stats: WaitStats,
    /// Whose waits these are, in a profile of several processes (None: the profile's
    /// one process).
    pub process: Option<ProcessTag>,
}

/// A process of a profile of several.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessTag {
    pub pid: u32,
    pub comm: String,
    /// Its cgroup (v2 path, `/system.slice/redis.service`), where one was read.
    pub cgroup: Option<String>,
}

impl ProcessTag {
    /// The container the process runs in: the 64-hex-digit id that Docker, containerd,
    /// CRI-O and Podman put in the name of a container's cgroup.
    pub fn container_id(&self) -> Option<&str> {
        container_id(self.cgroup.as_deref()?)
    }

    /// The shortest name of where it runs, for a table: a container's short id, else
    /// the last part of its cgroup (`redis.service`).
    pub fn unit(&self) -> Option<&str> {
        if let Some(id) = self.container_id() {
            return id.get(..12);
        }
        let cgroup = self.cgroup.as_deref()?;
        cgroup.rsplit('/').find(|part| !part.is_empty())
    }
}

/// The container id in a cgroup path: the last part holding 64 hex digits, as
/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`
/// or `/docker/<id>` (cgroup v1 style) name it.
pub fn container_id(cgroup: &str) -> Option<&str> {
    cgroup.rsplit('/').find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = part.rsplit(['-', ':']).next()?;
        (id.len() == 64 && id.bytes().all(|byte| byte.is_ascii_hexdigit())).then_some(id)
    })
}

impl std::fmt::Display for ProcessTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.comm, self.pid)
    }
}

impl ProfileStack {
    /// The innermost frame in the program's own code: not libc, not the language's
    /// standard library or runtime. Falls back to the innermost named frame.
    pub fn call_site(&self) -> &str {
        call_site(&self.frames, Language::of(self.kind))
    }
}

/// What the probes and the daemon saw and missed: every loss is shown in every report.
#[derive(Clone, Debug, Default)]
pub struct TraceCounts {
    pub waits_started: u64,
    pub waits_discarded: u64,
    pub short_waits: u64,
    pub long_waits: u64,
    pub ring_buffer_full: u64,
    pub stack_unreadable: u64,
    pub stack_shortened: u64,
    /// Long waits whose stack was copied in part, as far as their thread's last walk from
    /// the same place read (not a loss: a walk that needed more counts as truncated).
    pub stack_partial: u64,
    /// Short waits' sleep copies sent for their walk to size the thread's later copies
    /// (not waits: nothing of them is reported).
    pub span_samples: u64,
    /// Such copies not sent: the ring buffer was full, or the copy was gone (not a loss
    /// of what is reported: the thread copies its whole stack until a later sample).
    pub span_samples_dropped: u64,
    /// Sleeps whose stack was copied whole (waits likely ended from outside: socket
    /// calls, timed or shared futex waits), no span being known for their thread at that
    /// place yet: each cost the sleeping thread a few microseconds.
    pub sleep_copies_whole: u64,
    /// Sleeps that kept a copy of their stack, whole or in part.
    pub sleep_copies: u64,
    /// Long waits whose sleep kept no copy, whose stack the tracer copied from outside
    /// while they still slept (exact mode without wakers).
    pub late_copies: u64,
    pub in_flight_map_full: u64,
    /// Wakes of long futex waits by the target's threads, with the waker's stack.
    pub wakes_seen: u64,
    /// Such wakes lost because their ring buffer was full.
    pub wake_ring_buffer_full: u64,
    /// Long waits whose unwinding stopped before the root.
    pub unwind_truncated: u64,
    /// Distinct addresses with no symbol.
    pub unknown_symbols: u64,
    /// read/write waits on descriptors neither sockets nor pipes (files, ttys, eventfds: left
    /// out).
    pub non_socket_io: u64,
    /// Socket waits whose socket was gone (or unreadable) before it could be resolved.
    pub unresolved_descriptors: u64,
    /// Endpoints whose peer on this host could not be looked for (a table of sockets that
    /// could not be read): their chains may end at the endpoint short of it.
    pub peer_lookups_failed: u64,
    /// Processes whose sockets could not all be read for backed-up queues (their
    /// descriptors or a socket table unreadable): those not read are not listed.
    pub socket_scans_failed: u64,
    /// Ended waits of a process that exited (or of a daemon that stopped) lost before
    /// their stacks were named: `serve`'s windows, whose process's image was gone.
    pub waits_unnamed: u64,
    /// Ring-buffer records too short or of an unknown kind.
    pub malformed_records: u64,
    /// Sampled reads lost: passes in the kernel given up, having missed a thread (its
    /// look lost to a full ring, or the thread list unreadable part way) or ended too late
    /// to be read in order. The next read takes over their time, so blocked time is kept;
    /// waits that began and ended between two reads are not seen.
    pub reads_lost: u64,
    /// A sampled recording's reads of a thread that failed (its files or its stack
    /// unreadable: an exec under way, a stack pointer in no mapping): the thread's wait,
    /// if it was in one, is not counted for that period.
    pub thread_reads_failed: u64,
    /// A sampled recording's new waits whose thread ran or exited before their stack could
    /// be read, made at no place of its (or any thread's) last read waits, or in a Python
    /// program: their time in the reads that saw them is not counted.
    pub waits_unread: u64,
    /// A sampled recording's new waits whose thread ran or exited (or goroutine changed)
    /// before their stack could be read, counted at the stack of a last read wait at the
    /// same place (a thread's: the same call on the same object from the same stack and
    /// instruction pointers, or failing that any thread's from the same place in its
    /// stack; a goroutine's: the same reason and saved registers): not a loss, an
    /// attribution, wrong only where two callers of the same frame sizes reach the same
    /// call (on the same object, for a thread).
    pub waits_at_last_place: u64,
    /// Wakers whose wait's record never arrived (dropped, or still pending at the end) or
    /// that were evicted from the bounded table of pending wakers.
    pub wakers_unmatched: u64,
    /// Goroutine parks the Go probes could not note (their map of parked goroutines was
    /// full).
    pub go_parks_lost: u64,
    /// Goroutine parks whose stack the Go probes' stack map could not store.
    pub go_stacks_lost: u64,
    /// Ended goroutine waits the Go probes could not add (their totals map was full).
    pub go_waits_lost: u64,
    /// Goroutines a sampled read left out: changed while read, or unreadable (a wait the
    /// read before saw keeps that read's time; one begun since loses it).
    pub go_goroutines_skipped: u64,
    /// Goroutines blocked on a channel or a sync lock that could not be read (or whose
    /// layout is not known), or in a system call whose thread was not found blocked:
    /// their object is the wait reason alone.
    pub go_objects_unnamed: u64,
    /// Ended waits of the Go runtime's own system goroutines (GC workers, sweeper, …):
    /// not shown.
    pub go_runtime_waits_hidden: u64,
    /// Waits already in progress when an exact recording attached, handed to the probes
    /// from the threads' saved state (their earlier part is a lower bound).
    pub waits_begun_before: u64,
}

impl TraceCounts {
    /// How many of `fields_mut` (the first ones) are losses; the rest, from
    /// `waits_started` on, is what was seen.
    pub const LOSSES: usize = 20;

    /// Adds `other`'s counts to these, field by field.
    pub fn add(&mut self, mut other: TraceCounts) {
        for ((_, sum), (_, add)) in self.fields_mut().into_iter().zip(other.fields_mut()) {
            *sum += *add;
        }
    }

    /// Every counter by name, losses first, in a fixed order: for the formats that list
    /// them (pprof comments, metrics) and read them back by name.
    pub fn fields_mut(&mut self) -> [(&'static str, &mut u64); 36] {
        let TraceCounts {
            waits_started,
            waits_discarded,
            short_waits,
            long_waits,
            ring_buffer_full,
            stack_unreadable,
            stack_shortened,
            stack_partial,
            span_samples,
            span_samples_dropped,
            sleep_copies_whole,
            sleep_copies,
            late_copies,
            in_flight_map_full,
            wakes_seen,
            wake_ring_buffer_full,
            unwind_truncated,
            unknown_symbols,
            non_socket_io,
            unresolved_descriptors,
            peer_lookups_failed,
            socket_scans_failed,
            waits_unnamed,
            malformed_records,
            reads_lost,
            thread_reads_failed,
            waits_unread,
            waits_at_last_place,
            wakers_unmatched,
            go_parks_lost,
            go_stacks_lost,
            go_waits_lost,
            go_goroutines_skipped,
            go_objects_unnamed,
            go_runtime_waits_hidden,
            waits_begun_before,
        } = self;
        [
            ("ring_buffer_full", ring_buffer_full),
            ("in_flight_map_full", in_flight_map_full),
            ("stack_unreadable", stack_unreadable),
            ("unwind_truncated", unwind_truncated),
            ("unknown_symbols", unknown_symbols),
            ("unresolved_descriptors", unresolved_descriptors),
            ("peer_lookups_failed", peer_lookups_failed),
            ("socket_scans_failed", socket_scans_failed),
            ("waits_unnamed", waits_unnamed),
            ("malformed_records", malformed_records),
            ("wakers_unmatched", wakers_unmatched),
            ("go_parks_lost", go_parks_lost),
            ("go_stacks_lost", go_stacks_lost),
            ("go_waits_lost", go_waits_lost),
            ("go_goroutines_skipped", go_goroutines_skipped),
            ("go_objects_unnamed", go_objects_unnamed),
            ("wake_ring_buffer_full", wake_ring_buffer_full),
            ("reads_lost", reads_lost),
            ("thread_reads_failed", thread_reads_failed),
            ("waits_unread", waits_unread),
            ("waits_started", waits_started),
            ("waits_discarded", waits_discarded),
            ("short_waits", short_waits),
            ("long_waits", long_waits),
            ("stack_shortened", stack_shortened),
            ("stack_partial", stack_partial),
            ("span_samples", span_samples),
            ("span_samples_dropped", span_samples_dropped),
            ("sleep_copies_whole", sleep_copies_whole),
            ("sleep_copies", sleep_copies),
            ("late_copies", late_copies),
            ("waits_at_last_place", waits_at_last_place),
            ("non_socket_io", non_socket_io),
            ("wakes_seen", wakes_seen),
            ("go_runtime_waits_hidden", go_runtime_waits_hidden),
            ("waits_begun_before", waits_begun_before),
        ]
    }

    /// What each counter grew by since `then` (serve's windows).
    pub fn since(&self, then: &TraceCounts) -> TraceCounts {
        let mut grown = self.clone();
        let mut then = then.clone();
        for ((_, now), (_, then)) in grown.fields_mut().into_iter().zip(then.fields_mut()) {
            *now = now.saturating_sub(*then);
        }
        grown
    }
}

/// What a profile holds, and so what a stack's weight means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileKind {
    /// Waits over a recording: weight = blocked time; waits still in progress at the
    /// end are marked as such.
    Recording,
    /// Threads blocked at one moment: weight = number of threads.
    Snapshot,
}

/// Threads looked at by a snapshot (or at the end of a recording), and why some were
/// not reported: nothing is dropped silently.
#[derive(Clone, Debug, Default)]
pub struct ThreadCounts {
    pub threads: u64,
    /// Blocked in a watched wait (reported).
    pub blocked_in_waits: u64,
    /// Running, or blocked outside the watched calls (sleep, disk, page fault).
    pub elsewhere: u64,
    /// Exited while being read.
    pub exited_while_read: u64,
    /// Woke while being read (their half-read stacks are dropped).
    pub woke_while_read: u64,
    /// Could not be read (permissions, exec in progress).
    pub unreadable: u64,
    /// Goroutines of the Go runtime's own (GC workers, sweeper, finalizers, …): not
    /// shown.
    pub runtime_hidden: u64,
    /// Blocked threads whose saved rbp was not found (unwound without it; CFI that
    /// needs rbp truncates their stacks).
    pub frame_pointer_unknown: u64,
}

impl ThreadCounts {
    /// Every counter by name, in a fixed order: for the formats that list them (pprof
    /// comments) and read them back by name, and to add counts up.
    pub fn fields_mut(&mut self) -> [(&'static str, &mut u64); 8] {
        let ThreadCounts {
            threads,
            blocked_in_waits,
            elsewhere,
            exited_while_read,
            woke_while_read,
            unreadable,
            runtime_hidden,
            frame_pointer_unknown,
        } = self;
        [
            ("threads", threads),
            ("blocked_in_waits", blocked_in_waits),
            ("elsewhere", elsewhere),
            ("exited_while_read", exited_while_read),
            ("woke_while_read", woke_while_read),
            ("unreadable", unreadable),
            ("frame_pointer_unknown", frame_pointer_unknown),
            ("runtime_hidden", runtime_hidden),
        ]
    }

    /// Adds another process's counts to these.
    pub fn add(&mut self, other: &ThreadCounts) {
        let mut other = other.clone();
        for ((_, sum), (_, add)) in self.fields_mut().into_iter().zip(other.fields_mut()) {
            *sum += *add;
        }
    }
}

/// Everything the exporters need about one recording or snapshot.
#[derive(Clone, Debug)]
pub struct Profile {
    pub kind: ProfileKind,
    pub pid: u32,
    /// When the recording (or snapshot) began, nanoseconds since the Unix epoch.
    pub start_unix_ns: Option<u64>,
    /// The target's command line, read when tracing began.
    pub command_line: Option<Vec<String>>,
    pub comm: String,
    /// The process's cgroup (v2 path), where it was read.
    pub cgroup: Option<String>,
    pub duration: Duration,
    pub min_wait: Duration,
    /// How a recording was taken: `None` when every wait was seen as it happened (exact),
    /// else the sampling of a sampled recording.
    pub sampling: Option<Sampling>,
    /// An exact recording without the wake probe (`--no-wakers`): no waker was looked
    /// for, so `wakers` is empty and no chain goes through one.
    pub no_wakers: bool,
    /// The target exited before the recording's end.
    pub target_exited: bool,
    /// Heaviest first.
    pub stacks: Vec<ProfileStack>,
    /// Waits under the threshold, per kind (no stacks).
    pub below_threshold: Vec<(WaitKind, ShortWaitTotals)>,
    pub counts: TraceCounts,
    /// The threads read (snapshot, or the in-progress waits of a recording).
    pub thread_counts: ThreadCounts,
    /// Why each endpoint's waits wait (`send buffer full (4096/4608 bytes)`), as
    /// last seen.
    pub endpoint_states: BTreeMap<String, String>,
    /// Thread names (`comm`) by thread id.
    pub thread_names: BTreeMap<u32, String>,
    /// Who woke the long futex waits, when the wake was visible to the probes (a
    /// thread of the target waking another), most wakes first.
    pub wakers: Vec<WakerRow>,
    /// The target's executable modules by file name (`Frame::module`), for exporters
    /// that describe mappings (pprof).
    pub modules: BTreeMap<String, ModuleInfo>,
    /// In a profile of several processes, each one's modules by pid: a library's range
    /// differs between processes (`modules` then gives it none). Empty otherwise.
    pub process_modules: BTreeMap<u32, BTreeMap<String, ModuleInfo>>,
    /// The address of each named lock (a futex object), for reading its holder.
    pub lock_addresses: BTreeMap<String, u64>,
    /// From the sites where threads pile up to what holds them up, heaviest first.
    pub chains: Vec<WaitChain>,
    /// The processes of a profile of several (`Profile::of_processes`), in the order
    /// given; empty for one process (`pid` and `comm`).
    pub processes: Vec<ProcessTag>,
    /// The waits in time (a recording's), when kept.
    pub timeline: Option<super::Timeline>,
    /// The CPython interpreter whose Python frames the stacks hold, if the process runs one.
    pub python: Option<PythonInfo>,
    /// Sockets whose data stopped moving, as the report was made (an event-driven
    /// server's client that stopped reading is a queue, not a wait).
    pub backed_up: super::BackedUp,
}

/// A CPython process's Python frames: which interpreter, and what could not be had.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonInfo {
    /// "3.11" (what `Py_Version` says), or "unknown" where it could not be told.
    pub version: String,
    /// Why some or all of the stacks have no Python frames (an unsupported version, an
    /// exact recording's waits that ended), for the report to say.
    pub missing: Option<String>,
    /// Frames whose code object could not be read, left out of their stacks.
    pub unreadable_frames: u64,
    /// Stacks cut short: a thread's deeper than the frames read (its root end left out),
    /// a task's await chain deeper than the coroutines read (its innermost left out).
    pub truncated_stacks: u64,
}

impl PythonInfo {
    /// What two processes' interpreters say together: their versions (each once), the
    /// first reason frames are missing, the losses summed.
    fn join(mut self, other: PythonInfo) -> PythonInfo {
        if !self.version.split(", ").any(|version| version == other.version) {
            self.version = format!("{}, {}", self.version, other.version);
        }
        self.missing = self.missing.or(other.missing);
        self.unreadable_frames += other.unreadable_frames;
        self.truncated_stacks += other.truncated_stacks;
        self
    }
}

/// A sampled recording: the process was read every `period`, `reads` times; a wait seen
/// in `n` reads counts as `n` periods, so waits shorter than a period are statistical.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    pub period: Duration,
    pub reads: u64,
}

/// One executable or library of the target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The path as the target sees it.
    pub path: String,
    /// The GNU build id, hex, when the file has one.
    pub build_id: Option<String>,
    /// The executable address range it was mapped at (0 to 0 in a profile of several
    /// processes that mapped it at different places: see `Profile::process_modules`).
    pub start: u64,
    pub end: u64,
    /// The file offset mapped at `start` (pprof's `Mapping.file_offset`).
    pub file_offset: u64,
}

impl ModuleInfo {
    /// Joins where `other`, a file of the same name in another process, is mapped: the
    /// range stays when it is the same, else none is given (a tool finding file offsets
    /// from one process's range would be wrong for the other's addresses); the build id
    /// stays when both have it (two builds of one name have no one id).
    pub fn join_place(&mut self, other: &ModuleInfo) {
        if (self.start, self.end, self.file_offset) != (other.start, other.end, other.file_offset) {
            (self.start, self.end, self.file_offset) = (0, 0, 0);
        }
        if self.build_id != other.build_id {
            self.build_id = None;
        }
    }
}

impl Profile {
    /// An empty profile of `kind` about process `pid` (`comm`): the one constructor.
    /// Each source fills in what it saw; `from_symbolized` adds the stacks.
    pub fn new(kind: ProfileKind, pid: u32, comm: String) -> Self {
        Self {
            kind,
            pid,
            start_unix_ns: None,
            command_line: None,
            comm,
            cgroup: None,
            duration: Duration::ZERO,
            min_wait: Duration::ZERO,
            sampling: None,
            no_wakers: false,
            target_exited: false,
            stacks: Vec::new(),
            below_threshold: Vec::new(),
            counts: TraceCounts::default(),
            thread_counts: ThreadCounts::default(),
            endpoint_states: BTreeMap::new(),
            thread_names: BTreeMap::new(),
            wakers: Vec::new(),
            modules: BTreeMap::new(),
            process_modules: BTreeMap::new(),
            lock_addresses: BTreeMap::new(),
            chains: Vec::new(),
            processes: Vec::new(),
            timeline: None,
            python: None,
            backed_up: super::BackedUp::default(),
        }
    }

    /// What waits in this profile, as reports name it: the goroutines of a Go program
    /// (goroutine stacks, or the runtime's own goroutines hidden), else threads; both
    /// where a profile of several processes holds a Go program's goroutines and other
    /// programs' threads.
    pub fn waiters(&self) -> &'static str {
        let go = self.thread_counts.runtime_hidden > 0
            || self.stacks.iter().any(|stack| stack.kind == WaitKind::Goroutine);
        let threads = self.stacks.iter().any(|stack| waiters_of(stack.kind) == "threads");
        match (go, threads) {
            (true, true) => MIXED_WAITERS,
            (true, false) => "goroutines",
            (false, _) => "threads",
        }
    }

    /// `1 thread`, `3 threads`: a count of this profile's waiters, in the singular for one.
    pub fn count_waiters(&self, count: u64) -> String {
        match self.waiters() {
            MIXED_WAITERS if count == 1 => "1 thread or goroutine".to_string(),
            waiters => counted(count, waiters),
        }
    }

    /// Distinct addresses of the profile's frames (stacks and wakers) that got no symbol.
    pub fn unknown_addresses(&self) -> u64 {
        let stacks = self.stacks.iter().flat_map(|stack| &stack.frames);
        let wakers = self.wakers.iter().flat_map(|row| &row.waker_frames);
        let unknown: std::collections::HashSet<u64> = stacks
            .chain(wakers)
            .filter(|frame| frame.name == UNKNOWN_FRAME)
            .map(|frame| frame.address)
            .collect();
        unknown.len() as u64
    }

    /// One profile of the processes `profiles` were made of, each stack tagged with its
    /// process: counts summed, tables joined, heaviest first. Its `pid` is 0 and its
    /// `comm` says how many processes (`2 processes`); `processes` lists them.
    pub fn of_processes(profiles: Vec<Profile>) -> Profile {
        let kind = profiles.first().map_or(ProfileKind::Snapshot, |profile| profile.kind);
        let mut merged = Profile::new(kind, 0, format!("{} processes", profiles.len()));
        let mut below: BTreeMap<WaitKind, ShortWaitTotals> = BTreeMap::new();
        let mut chains = Vec::new();
        let mut timelines = Vec::new();
        for profile in profiles {
            let tag = ProcessTag {
                pid: profile.pid,
                comm: profile.comm.clone(),
                cgroup: profile.cgroup.clone(),
            };
            merged.start_unix_ns = match (merged.start_unix_ns, profile.start_unix_ns) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            merged.duration = merged.duration.max(profile.duration);
            merged.min_wait = profile.min_wait;
            // The most-read process's reads (one that joined late, or exited early, was
            // read fewer times than the recording's).
            merged.sampling = match (merged.sampling, profile.sampling) {
                (Some(a), Some(b)) => Some(if b.reads > a.reads { b } else { a }),
                (a, b) => a.or(b),
            };
            if let Some(python) = profile.python {
                merged.python = Some(match merged.python.take() {
                    Some(earlier) => earlier.join(python),
                    None => python,
                });
            }
            merged.no_wakers |= profile.no_wakers;
            merged.target_exited |= profile.target_exited;
            merged.stacks.extend(profile.stacks.into_iter().map(|mut stack| {
                stack.process = Some(tag.clone());
                stack
            }));
            for (kind, totals) in profile.below_threshold {
                let sum = below.entry(kind).or_default();
                sum.count += totals.count;
                sum.total_ns += totals.total_ns;
            }
            merged.counts.add(profile.counts);
            merged.thread_counts.add(&profile.thread_counts);
            merged.endpoint_states.extend(profile.endpoint_states);
            merged.thread_names.extend(profile.thread_names);
            merged.wakers.extend(profile.wakers);
            merged.process_modules.insert(profile.pid, profile.modules.clone());
            for (name, module) in profile.modules {
                merged.modules.entry(name).or_insert_with(|| module.clone()).join_place(&module);
            }
            chains.extend(profile.chains.into_iter().map(|mut chain| {
                chain.process = Some(tag.clone());
                chain
            }));
            if let Some(timeline) = profile.timeline {
                timelines.push((tag.clone(), timeline));
            }
            merged.backed_up.join(profile.backed_up, &tag);
            merged.processes.push(tag);
        }
        merged.below_threshold = below.into_iter().collect();
        merged.timeline = (!timelines.is_empty()).then(|| super::Timeline::of_processes(timelines));
        let weight = |chain: &WaitChain| match kind {
            ProfileKind::Recording => (chain.blocked_ns, chain.threads),
            ProfileKind::Snapshot => (chain.threads, chain.blocked_ns),
        };
        chains.sort_by_key(|chain| std::cmp::Reverse(weight(chain)));
        merged.chains = chains;
        let stacks = std::mem::take(&mut merged.stacks);
        Profile::from_symbolized(merged, stacks)
    }

    /// Merges stacks that symbolize to the same frames and sorts them heaviest first.
    pub fn from_symbolized(
        mut base: Profile,
        symbolized: impl IntoIterator<Item = ProfileStack>,
    ) -> Profile {
        type MergeKey = (Option<ProcessTag>, Vec<String>, WaitKind, Option<String>, bool, bool);
        let mut merged: HashMap<MergeKey, ProfileStack> = HashMap::new();
        for stack in symbolized {
            let names = stack.frames.iter().map(|frame| frame.name.clone()).collect();
            let (process, object) = (stack.process.clone(), stack.object.clone());
            merged
                .entry((process, names, stack.kind, object, stack.truncated, stack.in_progress))
                .and_modify(|existing| existing.stats.merge(&stack.stats))
                .or_insert(stack);
        }
        let mut stacks: Vec<ProfileStack> = merged.into_values().collect();
        // Heaviest first: by blocked time in a recording, by threads (then their
        // total age) in a snapshot.
        let heaviness = |stack: &ProfileStack| match base.kind {
            ProfileKind::Recording => (stack.stats.total_ns, 0),
            ProfileKind::Snapshot => (stack.stats.threads.len() as u64, stack.stats.total_ns),
        };
        // Ties in an order of their own, the same at every run (the map's is not).
        fn names(stack: &ProfileStack) -> impl Iterator<Item = &String> {
            stack.frames.iter().map(|frame| &frame.name)
        }
        stacks.sort_by(|a, b| {
            heaviness(b)
                .cmp(&heaviness(a))
                .then_with(|| a.kind.cmp(&b.kind))
                .then_with(|| a.process.cmp(&b.process))
                .then_with(|| names(a).cmp(names(b)))
                .then_with(|| a.object.cmp(&b.object))
                .then_with(|| (a.truncated, a.in_progress).cmp(&(b.truncated, b.in_progress)))
        });
        base.stacks = stacks;
        base
    }
}

/// The waiters of a profile holding both threads and goroutines (see `Profile::waiters`).
pub const MIXED_WAITERS: &str = "threads and goroutines";

/// What waits at a stack of `kind`, as reports name it: goroutines, else threads (an
/// asyncio task's stack is its thread's).
pub fn waiters_of(kind: WaitKind) -> &'static str {
    if kind == WaitKind::Goroutine { "goroutines" } else { "threads" }
}

/// `1 thread`, `2 threads`: `plural` (an English plural in `s`) after the count, in the
/// singular for one.
pub fn counted(count: u64, plural: &str) -> String {
    let noun = if count == 1 { plural.strip_suffix('s').unwrap_or(plural) } else { plural };
    format!("{count} {noun}")
}
