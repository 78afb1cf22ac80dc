//! A sampled recording of thread waits: the target's threads read at a rate,
//! with nothing attached to it, so its cost does not grow with how often it waits or makes
//! syscalls. Each read sees which threads are blocked in a watched call; a wait seen in `n`
//! reads counts `n` sampling periods of blocked time (waits shorter than a period are caught
//! in proportion to their length, so their counts are statistical). A read is one pass over
//! the process's threads (their state, switch count, syscall and saved registers): made by
//! the kernel's timer and drained a few times a second (`kernel_passes`), or, where the
//! kernel cannot, one pass of the task iterator (all in one `read`), or two /proc files per
//! thread where the iterator does not run. Only a thread whose wait is new or changed since
//! the last read has its stack copied and unwound.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracer_common::TaskLook;

use crate::{
    model::{StackKey, ThreadCounts, TimelineRecorder, TraceCounts, WaitAggregate},
    objects::WaitObjects,
    pipeline,
    probes::{ProbeCounters, Probes},
    stacks::ProcessUnwinder,
    threads::{
        BlockedState, SampleError, SyscallState, ThreadReader, ThreadSample, ThreadSyscall,
        blocked_now::{SavedFramePointers, monotonic_now_ns, stack_key, thread_name, wait_object},
        kernel_passes::{self, PassAssembler, PassCopy, PassSource},
    },
};

/// One thread's current wait, as the reads have seen it so far.
#[derive(Debug)]
struct Wait {
    /// The call, its arguments, sp and pc, and when the thread last ran: a later read that
    /// finds all of them unchanged sees the same wait.
    state: BlockedState,
    /// Its stack and object; None for a blocked call that is not reported (a read of a
    /// pipe), kept so that it is not looked at again.
    key: Option<StackKey>,
    /// The time between the reads that saw it and the reads before those.
    blocked_ns: u64,
    /// `CLOCK_MONOTONIC` of the first read that saw it.
    first_seen_ns: u64,
    /// How long it had been blocked when first seen, from the scheduler (a lower bound).
    age_when_seen_ns: Option<u64>,
    /// Which wait this is, of all the tracker saw (for the windows it was open across).
    serial: u64,
    /// `CLOCK_MONOTONIC` of the last read that saw it.
    last_seen_ns: u64,
    /// Which read that was (the tracker's count).
    last_read: u64,
}

/// The waits of one window: each counts only its time after the window opened, so that
/// consecutive windows add up (a delta profile).
#[derive(Debug, Default)]
struct WindowLedger {
    /// The waits in progress when the window opened: their serial and time so far.
    opened_with: HashMap<u32, (u64, u64)>,
    /// The waits that ended in the window, their part in it.
    ended: WaitAggregate,
    /// The time the window's reads stood for (each the time since the one before): what
    /// its waits' times are out of. Reads spaced out by their cost make it differ from the
    /// window's wall time by up to a read's gap.
    covered_ns: u64,
}

impl WindowLedger {
    /// The part of `wait` (of thread `tid`) that fell in the window.
    fn part_of(&self, tid: u32, wait: &Wait) -> u64 {
        match self.opened_with.get(&tid) {
            Some(&(serial, before)) if serial == wait.serial => {
                wait.blocked_ns.saturating_sub(before)
            }
            _ => wait.blocked_ns,
        }
    }
}

/// The waits through successive reads: which go on, which are new, which ended.
#[derive(Debug)]
struct WaitTracker {
    period_ns: u64,
    /// When the last read was taken (`CLOCK_MONOTONIC`), if any was.
    last_read_ns: Option<u64>,
    /// The time the current read stands for: since the last read (a period for the first,
    /// and longer than a period when a read ran late).
    interval_ns: u64,
    /// The waits seen by the last read, by thread id.
    current: HashMap<u32, Wait>,
    /// The waits that ended, by stack.
    ended: WaitAggregate,
    /// Waits started so far (each wait's serial).
    started: u64,
    /// Reads observed so far.
    reads: u64,
    /// The open windows, by id.
    windows: HashMap<u64, WindowLedger>,
}

/// A thread blocked now whose wait still goes on, as [`WaitTracker::observe`] left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// The wait of an earlier read, reported (true) or not.
    Continues { reported: bool },
    /// A new wait, to be read and given to [`WaitTracker::start`].
    New,
}

impl WaitTracker {
    fn new(period: Duration) -> Self {
        Self {
            period_ns: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
            last_read_ns: None,
            interval_ns: 0,
            current: HashMap::new(),
            ended: WaitAggregate::default(),
            started: 0,
            reads: 0,
            windows: HashMap::new(),
        }
    }

    /// The blocked threads of a read taken at `now_ns`: a wait still in progress gains
    /// the time since the last read, one no longer seen (or changed) has ended.
    fn observe(
        &mut self,
        now_ns: u64,
        blocked: impl ExactSizeIterator<Item = (u32, BlockedState)>,
    ) -> Vec<Seen> {
        self.interval_ns = match self.last_read_ns {
            Some(last) => now_ns.saturating_sub(last),
            None => self.period_ns,
        };
        self.last_read_ns = Some(now_ns);
        self.reads += 1;
        for ledger in self.windows.values_mut() {
            ledger.covered_ns += self.interval_ns;
        }
        let read = self.reads;
        // In place: a read of a thousand threads blocked for good moves no wait.
        let mut seen = Vec::with_capacity(blocked.len());
        for (tid, state) in blocked {
            match self.current.get_mut(&tid) {
                Some(wait) if wait.state == state => {
                    wait.blocked_ns += self.interval_ns;
                    wait.last_seen_ns = now_ns;
                    wait.last_read = read;
                    seen.push(Seen::Continues { reported: wait.key.is_some() });
                }
                Some(_) => {
                    let earlier = self.current.remove(&tid).expect("just found");
                    self.end(tid, earlier);
                    seen.push(Seen::New);
                }
                None => seen.push(Seen::New),
            }
        }
        let ended: Vec<(u32, Wait)> =
            self.current.extract_if(|_, wait| wait.last_read != read).collect();
        for (tid, wait) in ended {
            self.end(tid, wait);
        }
        seen
    }

    /// A new wait of thread `tid` first seen by the read at `now_ns`.
    fn start(
        &mut self,
        now_ns: u64,
        tid: u32,
        state: BlockedState,
        key: Option<StackKey>,
        age_when_seen_ns: Option<u64>,
    ) {
        self.started += 1;
        let wait = Wait {
            state,
            key,
            blocked_ns: self.interval_ns,
            first_seen_ns: now_ns,
            age_when_seen_ns,
            serial: self.started,
            last_seen_ns: now_ns,
            last_read: self.reads,
        };
        self.current.insert(tid, wait);
    }

    fn end(&mut self, tid: u32, wait: Wait) {
        let Some(key) = &wait.key else { return };
        let mut key = key.clone();
        key.in_progress = false;
        if let Some(timeline) = &mut self.ended.timeline {
            // The time the reads saw it blocked, up to the last that did.
            let start_ns = wait.last_seen_ns.saturating_sub(wait.blocked_ns);
            timeline.add(tid, &key, start_ns, wait.last_seen_ns, false, None);
        }
        for ledger in self.windows.values_mut() {
            let part = ledger.part_of(tid, &wait);
            ledger.ended.add(key.clone(), tid, part);
        }
        self.ended.add(key, tid, wait.blocked_ns);
    }

    /// Ends every wait the last read saw (their process exited), each with the time the
    /// reads saw it.
    fn end_all(&mut self) {
        for (tid, wait) in std::mem::take(&mut self.current) {
            self.end(tid, wait);
        }
    }

    /// Opens window `id`: from now on, what each wait adds counts in it too.
    fn open_window(&mut self, id: u64) {
        let opened_with =
            self.current.iter().map(|(&tid, wait)| (tid, (wait.serial, wait.blocked_ns))).collect();
        let ledger = WindowLedger { opened_with, ..WindowLedger::default() };
        self.windows.insert(id, ledger);
    }

    /// The time window `id`'s reads have stood for so far; None if it is not open.
    fn window_covered(&self, id: u64) -> Option<Duration> {
        Some(Duration::from_nanos(self.windows.get(&id)?.covered_ns))
    }

    /// Closes window `id`: the waits that ended in it and the waits in progress at the
    /// last read, each with its time since the window opened. None if it was not open.
    fn close_window(&mut self, id: u64) -> Option<WaitAggregate> {
        let ledger = self.windows.remove(&id)?;
        let mut aggregate = WaitAggregate::default();
        for (&tid, wait) in &self.current {
            if let Some(key) = &wait.key {
                aggregate.add(key.clone(), tid, ledger.part_of(tid, wait));
            }
        }
        let WindowLedger { ended, .. } = ledger;
        for (key, stats) in ended.stacks {
            aggregate.stacks.entry(key).or_default().merge(&stats);
        }
        Some(aggregate)
    }

    /// The waits that ended since the last call.
    fn take_ended(&mut self) -> WaitAggregate {
        std::mem::take(&mut self.ended)
    }

    /// The waits in progress at the last read, as a snapshot sees them: each aged from
    /// the scheduler's accounting when first seen plus the time since (a lower bound).
    fn in_progress(&self) -> WaitAggregate {
        let mut aggregate = WaitAggregate::default();
        let last_read_ns = self.last_read_ns.unwrap_or(0);
        for (&tid, wait) in &self.current {
            let Wait { key: Some(key), first_seen_ns, age_when_seen_ns, .. } = wait else {
                continue;
            };
            let since_seen = last_read_ns.saturating_sub(*first_seen_ns);
            aggregate.add_lower_bound(key.clone(), tid, age_when_seen_ns.unwrap_or(0) + since_seen);
        }
        aggregate
    }

    /// The ended waits, with the waits still in progress at the last read added as such:
    /// aged from the scheduler's accounting when first seen plus the time since, a lower
    /// bound as a snapshot's ages are. With `target_exited` nothing waits any more: they
    /// ended with their process, each with the time the reads saw it.
    fn finish(mut self, target_exited: bool) -> WaitAggregate {
        if target_exited {
            self.end_all();
            return self.ended;
        }
        let Self { current, mut ended, last_read_ns, .. } = self;
        for (tid, wait) in current {
            let Wait { key: Some(key), first_seen_ns, age_when_seen_ns, .. } = wait else {
                continue;
            };
            let last_read_ns = last_read_ns.unwrap_or(first_seen_ns);
            let since_seen = last_read_ns.saturating_sub(first_seen_ns);
            let blocked_ns = age_when_seen_ns.unwrap_or(0) + since_seen;
            if let Some(timeline) = &mut ended.timeline {
                let start_ns = last_read_ns.saturating_sub(blocked_ns);
                timeline.add(tid, &key, start_ns, last_read_ns, true, None);
            }
            ended.add_lower_bound(key, tid, blocked_ns);
        }
        ended
    }
}

/// What a sampled recording gathered, for the profile.
pub struct Sampled {
    /// The waits that ended, and those still in progress at the last read.
    pub aggregate: WaitAggregate,
    pub unwinder: ProcessUnwinder,
    pub objects: WaitObjects,
    /// The threads as the last read found them; `frame_pointer_unknown` counts every
    /// stack of the recording unwound without its saved rbp.
    pub thread_counts: ThreadCounts,
    pub reads: u64,
    /// Reads of threads that woke, exited or were unreadable while read (their wait, if it
    /// went on, is seen again by the next read).
    pub threads_skipped: u64,
    /// The task iterator the reads used, for a last pass over the host.
    pub tasks: TaskIterator,
    pub sampler_counts: SamplerCounts,
}

/// What a sampler counted beside its probes: what it lost (its passes in the kernel, the
/// threads it could not read, the waits gone before their stack was read) and the waits it
/// counted at an earlier stack of their thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SamplerCounts {
    /// Records that could not be read (never expected).
    pub malformed_records: u64,
    /// Passes given up because their end came after the drain that gave them up: reads
    /// lost that the kernel's count of incomplete passes does not hold.
    pub late_passes: u64,
    /// Reads of a thread that failed (`SampleError::Unreadable`).
    pub thread_reads_failed: u64,
    /// New waits a read saw whose thread ran or exited before their stack could be read,
    /// at a place none of its (or, at the same place in its stack, any thread's) last
    /// read waits was, or in a Python program: their time in the reads that saw them is
    /// not counted.
    pub waits_unread: u64,
    /// New waits a read saw whose thread ran or exited before their stack could be read,
    /// counted at the stack of its (or any thread's, or a process's of the same code
    /// layout) last read wait at the same place (see `ThreadPlaces`, `SiblingPlaces`).
    pub waits_at_last_place: u64,
}

impl std::ops::AddAssign for SamplerCounts {
    fn add_assign(&mut self, other: Self) {
        self.malformed_records += other.malformed_records;
        self.late_passes += other.late_passes;
        self.thread_reads_failed += other.thread_reads_failed;
        self.waits_unread += other.waits_unread;
        self.waits_at_last_place += other.waits_at_last_place;
    }
}

impl SamplerCounts {
    /// `counts` with these added.
    pub fn add_to(self, mut counts: TraceCounts) -> TraceCounts {
        counts.malformed_records += self.malformed_records;
        counts.reads_lost += self.late_passes;
        counts.thread_reads_failed += self.thread_reads_failed;
        counts.waits_unread += self.waits_unread;
        counts.waits_at_last_place += self.waits_at_last_place;
        counts
    }
}

/// Where a thread made a blocking call: the call, its first two arguments (the object it
/// waits on: a futex word, a descriptor; and the operation or buffer), and the stack and
/// instruction pointers it made it from: the same function at the same depth of the
/// stack. Two waits of a thread at one place have the same stack unless two callers of
/// the same frame sizes reach the same call on the same object, which then share one: the
/// stack of the earlier stands for the later when the later's could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CallPlace {
    nr: i64,
    object: [u64; 2],
    sp: u64,
    pc: u64,
}

impl CallPlace {
    fn of(syscall: &SyscallState) -> Self {
        Self {
            nr: syscall.nr,
            object: [syscall.args[0], syscall.args[1]],
            sp: syscall.sp,
            pc: syscall.pc,
        }
    }

    /// The place in any thread of the process: its stack pointer within its page. A
    /// pool's threads run the same code on stacks that glibc lays out alike (each thread's
    /// descriptor and TLS at the top of a page-aligned mapping), so the same call from the
    /// same function at the same depth has the same stack pointer within its page in every
    /// one of them; two callers of the lock at depths a multiple of 4 KiB apart would share
    /// one place.
    fn in_any_thread(&self) -> Self {
        const PAGE: u64 = 4096;
        Self { sp: self.sp % PAGE, ..*self }
    }
}

/// A stack as unwound: its return addresses, and whether the unwind stopped early.
type ReadStack = (Arc<[u64]>, bool);

/// The last read stack at each place (exact: the same call, object, sp and pc) of the
/// processes read together whose code is mapped at the same addresses, as processes
/// forked from one parent are (PostgreSQL's backends): a wait in one whose stack could
/// not be read is given another's at the same place. A process of one thread rarely has
/// a stack read while it sleeps (a pass copies a stack only when its tick lands in the
/// process, which a sleeping thread is not), so a backend holding a row lock across a
/// 10 ms sleep, 23 times in 10 s, lost 89% of that time, learning its place alone.
/// Keyed by the layout of the process's code (`code_layout`): processes of other
/// layouts share nothing.
#[derive(Clone, Debug, Default)]
pub struct SiblingPlaces(Arc<Mutex<HashMap<(u64, CallPlace), ReadStack>>>);

/// The most places kept for all processes together (past it they are forgotten and
/// noted anew).
const SIBLING_PLACES: usize = 16_384;

impl SiblingPlaces {
    fn note(&self, layout: u64, place: CallPlace, stack: &ReadStack) {
        let mut places = lock(&self.0);
        if places.len() >= SIBLING_PLACES {
            places.clear();
        }
        places.insert((layout, place), stack.clone());
    }

    fn stack_at(&self, layout: u64, place: &CallPlace) -> Option<ReadStack> {
        lock(&self.0).get(&(layout, *place)).cloned()
    }
}

/// The layout of a process's code: every executable mapping's file and address. Two
/// processes of one layout run the same code at the same addresses, so a stack read in
/// one names the same functions in the other.
fn code_layout(image: &crate::stacks::ProcessImage) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for module in image.modules() {
        let range = (module.avma_range.start, module.avma_range.end);
        (&module.path, range, module.file_offset, module.bias).hash(&mut hasher);
    }
    hasher.finish()
}

/// Each thread's last read waits at up to `PLACES_PER_THREAD` places, the latest first
/// (where each was made, and its stack), and the last read wait of any thread at each
/// place in a thread's stack (`CallPlace::in_any_thread`): the stack a thread that
/// exited before its wait was read (a thread per request) is given.
#[derive(Debug, Default)]
struct ThreadPlaces {
    by_thread: HashMap<u32, Vec<(CallPlace, ReadStack)>>,
    in_any_thread: HashMap<CallPlace, ReadStack>,
    /// Those of the processes of the same code layout, with this one's layout and how
    /// many modules it was hashed over (a library loaded since changes it).
    siblings: Option<(u64, usize, SiblingPlaces)>,
}

/// The most places of any thread kept (past it they are forgotten and noted anew).
const PLACES_IN_ANY_THREAD: usize = 4096;

impl ThreadPlaces {
    /// Keeps `stack` as thread `tid`'s stack at `place`.
    fn note(&mut self, tid: u32, place: CallPlace, stack: ReadStack) {
        if self.in_any_thread.len() >= PLACES_IN_ANY_THREAD {
            self.in_any_thread.clear();
        }
        self.in_any_thread.insert(place.in_any_thread(), stack.clone());
        if let Some((layout, _, siblings)) = &self.siblings {
            siblings.note(*layout, place, &stack);
        }
        let places = self.by_thread.entry(tid).or_insert_with(|| Vec::with_capacity(1));
        places.retain(|(known, _)| *known != place);
        places.insert(0, (place, stack));
        places.truncate(PLACES_PER_THREAD);
    }

    /// Thread `tid`'s last read stack at `place`, if it waited there; else the last read
    /// stack of any thread at the same place in its stack; else a sibling process's at
    /// the same place.
    fn stack_at(&self, tid: u32, place: &CallPlace) -> Option<ReadStack> {
        let own = self.by_thread.get(&tid).and_then(|places| {
            places.iter().find(|(known, _)| known == place).map(|(_, stack)| stack)
        });
        own.or_else(|| self.in_any_thread.get(&place.in_any_thread())).cloned().or_else(|| {
            let (layout, _, siblings) = self.siblings.as_ref()?;
            siblings.stack_at(*layout, place)
        })
    }

    /// Forgets the threads not in `tids` (sorted): they exited.
    fn keep_only(&mut self, tids: &[u32]) {
        self.by_thread.retain(|tid, _| tids.binary_search(tid).is_ok());
    }
}

/// The task iterator a sampler reads its threads with: their state and switch count, and
/// their saved registers (rbp among them, which CFI needs for frames that keep the frame
/// pointer).
pub enum TaskIterator {
    /// Its own probes' task iterator, over its process's tasks alone.
    Own(Box<Probes>),
    /// One loaded iterator shared by the samplers of many processes (`--all`), each
    /// walking its own process's tasks (one object loaded, not one per process), whose
    /// passes in the kernel their owner drains (`Members`).
    Shared { probes: Arc<Mutex<Probes>>, pid: u32 },
}

impl TaskIterator {
    /// A look at each of the process's threads.
    fn looks(&mut self) -> Result<Vec<TaskLook>, crate::probes::ProbeError> {
        match self {
            TaskIterator::Own(probes) => probes.task_looks(),
            TaskIterator::Shared { probes, pid } => lock(probes).process_task_looks(*pid),
        }
    }

    /// What its own probes counted (the passes in the kernel, their losses); nothing
    /// for a shared iterator, whose passes' counters its owner reports
    /// (`Members::pass_counts`).
    pub fn counters(&self) -> ProbeCounters {
        match self {
            TaskIterator::Own(probes) => probes.counters().unwrap_or_default(),
            TaskIterator::Shared { .. } => ProbeCounters::default(),
        }
    }

    /// The saved registers of every task on the host: for the wait chains, which unwind
    /// the peers behind endpoints.
    pub fn host(&mut self) -> SavedFramePointers {
        match self {
            TaskIterator::Own(probes) => pipeline::host_frame_pointers(probes),
            TaskIterator::Shared { probes, .. } => pipeline::host_frame_pointers(&mut lock(probes)),
        }
    }
}

impl Drop for TaskIterator {
    /// A shared iterator's link to the process is closed with its sampler.
    fn drop(&mut self) {
        if let TaskIterator::Shared { probes, pid } = self {
            lock(probes).forget_process(*pid);
        }
    }
}

/// Its data even if a panicking thread poisoned it: each critical section leaves it whole.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the blocked threads of one process at a rate.
pub struct ThreadSampler {
    pid: u32,
    reader: ThreadReader,
    unwinder: ProcessUnwinder,
    objects: WaitObjects,
    /// Loaded, never attached: only the task iterator runs, once per read.
    tasks: TaskIterator,
    /// False once the iterator failed: the reads go to /proc from then on, so that a
    /// wait's run count always comes from the same source.
    iterator_works: bool,
    tracker: WaitTracker,
    thread_names: WaitAggregate,
    threads_skipped: u64,
    /// Of those, the reads that failed (unreadable): a loss, in the profile's counts.
    thread_reads_failed: u64,
    /// Each thread's last read stacks at a few places: a new wait of the thread at one of
    /// them whose stack cannot be read (the thread ran before it was) is counted with it.
    places: ThreadPlaces,
    /// New waits counted with their thread's last read stack at their place.
    waits_at_last_place: u64,
    /// New waits lost: their thread ran before their stack was read, and had no read
    /// stack at their place, or is a Python program's (a loss, in the profile's counts).
    waits_unread: u64,
    /// The switch count of each thread's last wait counted in `waits_unread`: the passes
    /// of one drain that each saw it count it once.
    unread_switches: HashMap<u32, u64>,
    /// The waits the current read skipped that a look showed, by thread and switch count:
    /// which of a drain's lost waits more than one pass saw (`read_kernel_passes`).
    skipped_looks: Vec<(u32, u64)>,
    frame_pointer_unknown: u64,
    last_counts: ThreadCounts,
    /// The window a daemon's rolling timeline keeps.
    rolling_window: Option<Duration>,
    /// Whether the reads are to move into the kernel after the first
    /// (`with_passes_in_kernel`), and the passes once they have.
    passes: Passes,
    /// The passes' records, put together into whole passes; kept when the reads come
    /// back here, for what it lost.
    assembler: PassAssembler,
    /// Until when the drains of the passes in the kernel come at the period: a drain
    /// that lost the stacks of waits longer than a period (no pass ticked in their
    /// process, and they ended before the drain) hurries the next, so that the waits of
    /// a process whose threads rarely run beside each other keep their stacks, as the
    /// tracer's own reads kept them (`drains_at_the_period_keep_more`).
    hurried_until: Option<Instant>,
}

/// Where a sampler's reads are made.
enum Passes {
    /// By the sampler, at the rate.
    Here,
    /// By the sampler until its first read, by its own probes' passes in the kernel after.
    ToKernel,
    /// By its own probes' passes in the kernel, drained every `DRAIN_INTERVAL`.
    InKernel(Box<PassSource>),
    /// By the sampler until its first read, then by passes in the kernel shared with the
    /// samplers of other processes, whose owner drains them and hands each sampler its
    /// own (`read_passes`).
    ToShared,
    Shared,
}

/// How many places of a thread's last read waits a sampler keeps (see `ThreadPlaces`): a
/// worker's few waits in a loop (its queue, its lock, its socket).
const PLACES_PER_THREAD: usize = 4;

/// How long the drains keep to the period after one that lost stacks a faster drain keeps
/// (see `ThreadSampler::hurried_until`).
const HURRIED_FOR: Duration = Duration::from_secs(2);

impl ThreadSampler {
    pub fn new(
        pid: u32,
        unwinder: ProcessUnwinder,
        tasks: TaskIterator,
        period: Duration,
    ) -> std::io::Result<Self> {
        Ok(Self {
            pid,
            reader: ThreadReader::new(pid)?,
            unwinder,
            objects: WaitObjects::new(pid),
            tasks,
            iterator_works: true,
            tracker: WaitTracker::new(period),
            thread_names: WaitAggregate::default(),
            threads_skipped: 0,
            thread_reads_failed: 0,
            places: ThreadPlaces::default(),
            waits_at_last_place: 0,
            waits_unread: 0,
            unread_switches: HashMap::new(),
            skipped_looks: Vec::new(),
            frame_pointer_unknown: 0,
            last_counts: ThreadCounts::default(),
            rolling_window: None,
            passes: Passes::Here,
            assembler: PassAssembler::default(),
            hurried_until: None,
        })
    }

    /// Shares the stacks read at each place with the samplers of the processes of the same
    /// code layout (see `SiblingPlaces`).
    pub fn share_places(&mut self, siblings: SiblingPlaces) {
        let modules = self.unwinder.image().modules().len();
        self.places.siblings = Some((code_layout(self.unwinder.image()), modules, siblings));
    }

    /// Hashes the code layout again when the image's modules changed (a library loaded
    /// after the fork, at an address of this process's own).
    fn refresh_code_layout(&mut self) {
        let image = self.unwinder.image();
        if let Some((layout, modules, _)) = &mut self.places.siblings
            && *modules != image.modules().len()
        {
            *modules = image.modules().len();
            *layout = code_layout(image);
        }
    }

    /// Has the kernel make the reads after the first (`kernel_passes`), where it can: a
    /// process of its own probes' iterator, not a Python program (whose frames are read
    /// from its memory when unwinding, which must be at the look's time). Elsewhere, and
    /// if the passes cannot be attached, the sampler reads at the rate itself.
    pub fn with_passes_in_kernel(mut self) -> Self {
        let python = self.unwinder.python().is_some();
        let TaskIterator::Own(probes) = &mut self.tasks else { return self };
        if python {
            return self;
        }
        match probes.load_sample_passes() {
            Ok(()) => self.passes = Passes::ToKernel,
            Err(err) => log::info!(
                "pid {}: the kernel cannot make the reads ({:#}); reading every period",
                self.pid,
                anyhow::Error::from(err)
            ),
        }
        self
    }

    /// Has passes in the kernel that its owner shares with other samplers make the reads
    /// after the first, unless the process is a Python program (see
    /// `with_passes_in_kernel`); false if it reads at the rate itself.
    pub fn take_shared_passes(&mut self) -> bool {
        if self.unwinder.python().is_some() {
            return false;
        }
        self.passes = Passes::ToShared;
        true
    }

    /// Whether its reads are the shared passes' now (`read_passes`), after its first.
    pub fn reads_shared_passes(&self) -> bool {
        matches!(self.passes, Passes::Shared)
    }

    /// Makes the reads itself from now on: the shared passes stopped.
    pub fn read_here_from_now(&mut self) {
        self.passes = Passes::Here;
    }

    /// How long until the next `read` is due: the period, or the drain's interval once
    /// the kernel makes the passes (the period while a drain hurries them).
    pub fn read_interval(&self) -> Duration {
        let hurried = self.hurried_until.is_some_and(|until| Instant::now() < until);
        match &self.passes {
            Passes::InKernel(source) if hurried => source.period(),
            Passes::InKernel(_) | Passes::Shared if !hurried => kernel_passes::DRAIN_INTERVAL,
            _ => self.period(),
        }
    }

    /// Keeps the per-thread files of at most `threads` threads open (see
    /// `ThreadReader::keep_files_of_at_most`).
    pub fn keep_files_of_at_most(&mut self, threads: usize) {
        self.reader.keep_files_of_at_most(threads);
    }

    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.tracker.period_ns)
    }

    /// One read of the threads: a look at each (its syscall and how often it has run),
    /// then a stack copy and unwind of each whose wait is new. Once its own probes make
    /// the passes in the kernel, a drain of those made since the last call, each read as
    /// if made here.
    pub fn read(&mut self) -> std::io::Result<()> {
        if let Passes::InKernel(_) = self.passes {
            return self.read_kernel_passes();
        }
        let looks = self.looks_from_iterator();
        self.read_at(monotonic_now_ns(), looks, &HashMap::new())?;
        match self.passes {
            Passes::ToKernel => self.move_passes_to_kernel(),
            // The iterator's pass showed the shared passes the process.
            Passes::ToShared if self.iterator_works => self.passes = Passes::Shared,
            Passes::ToShared => self.passes = Passes::Here,
            _ => {}
        }
        Ok(())
    }

    /// Attaches the passes in the kernel, after the first read (whose pass of the task
    /// iterator shows them the process), or stays with reads here.
    fn move_passes_to_kernel(&mut self) {
        self.passes = Passes::Here;
        let TaskIterator::Own(probes) = &mut self.tasks else { return };
        if !self.iterator_works {
            return;
        }
        let period = Duration::from_nanos(self.tracker.period_ns);
        match PassSource::attach(probes, period, format!("pid {}", self.pid)) {
            Ok(source) => self.passes = Passes::InKernel(Box::new(source)),
            Err(err) => log::info!(
                "pid {}: the kernel cannot make the reads ({:#}); reading every period",
                self.pid,
                anyhow::Error::from(err)
            ),
        }
    }

    /// A drain of its own probes' passes, read in turn (`read_passes`); or, when the
    /// passes must stop (`PassSource::drain`), a read here, as all from then on.
    fn read_kernel_passes(&mut self) -> std::io::Result<()> {
        let (Passes::InKernel(source), TaskIterator::Own(probes)) =
            (&mut self.passes, &mut self.tasks)
        else {
            return Ok(());
        };
        match source.drain(probes) {
            // Its process has more threads than a pass walks: the passes let it go, after
            // the whole ones made before it grew are read.
            Ok(mut drained) if drained.unwalkable.iter().any(|&(tgid, _)| tgid == self.pid) => {
                probes.stop_sample_passes();
                let walk_interval = source.walk_interval();
                let records = drained.records.remove(&self.pid).unwrap_or_default();
                self.passes = Passes::Here;
                self.read_passes(&records, walk_interval)?;
                self.read()
            }
            Ok(mut drained) => {
                let walk_interval = source.walk_interval();
                let records = drained.records.remove(&self.pid).unwrap_or_default();
                self.read_passes(&records, walk_interval)
            }
            Err(why) => {
                log::info!("pid {}: {why}; reading every period", self.pid);
                self.passes = Passes::Here;
                self.read()
            }
        }
    }

    /// The passes in the kernel over this process since the last drain (`records`, its
    /// records of the drain), read in turn; a pass walks the process every
    /// `walk_interval` (a period, or a few when processes are walked in turns). A drain
    /// that finds none for two such intervals (the process gone, or not seen by a pass)
    /// reads here instead.
    pub fn read_passes(
        &mut self,
        records: &[Vec<u8>],
        walk_interval: Duration,
    ) -> std::io::Result<()> {
        let drained = self.assembler.take(records);
        // Passes the reads here already went past (a drain that found none read here).
        let last_read_ns = self.tracker.last_read_ns.unwrap_or(0);
        let mut passes = drained.into_iter().filter(|pass| pass.time_ns > last_read_ns);
        let Some(first) = passes.next() else {
            // None due yet (the last drain took the last pass, or the one being written
            // is not whole yet): nothing to read.
            let now_ns = monotonic_now_ns();
            if now_ns.saturating_sub(last_read_ns) < 2 * walk_interval.as_nanos() as u64 {
                return Ok(());
            }
            let looks = self.looks_from_iterator();
            return self.read_at(now_ns, looks, &HashMap::new());
        };
        let started_before = self.tracker.started;
        // The waits this drain lost, by thread and switch count, and how many passes saw
        // each.
        let mut lost: HashMap<(u32, u64), u32> = HashMap::new();
        for pass in std::iter::once(first).chain(passes) {
            self.read_at(pass.time_ns, Some(pass.looks), &pass.copies)?;
            for wait in self.skipped_looks.drain(..) {
                *lost.entry(wait).or_default() += 1;
            }
        }
        let kept = self.tracker.started - started_before;
        let outlived_a_pass = lost.values().filter(|&&passes| passes > 1).count() as u64;
        if drains_at_the_period_keep_more(kept, lost.len() as u64, outlived_a_pass) {
            self.hurried_until = Some(Instant::now() + HURRIED_FOR);
        }
        Ok(())
    }

    /// One read's looks (None: read from /proc), taken at `now_ns`, with the stacks the
    /// pass that took them copied (`copies`, by thread).
    fn read_at(
        &mut self,
        now_ns: u64,
        looks: Option<Vec<TaskLook>>,
        copies: &HashMap<u32, PassCopy>,
    ) -> std::io::Result<()> {
        self.skipped_looks.clear();
        let mut counts = ThreadCounts::default();
        let blocked = match &looks {
            Some(looks) => self.blocked_in_looks(looks, &mut counts),
            None => self.blocked_in_proc(&mut counts)?,
        };
        let seen =
            self.tracker.observe(now_ns, blocked.iter().map(|&(tid, state, _)| (tid, state)));
        // The saved rbp of every thread, gathered once and only when a wait is new: from
        // the looks, or from a pass of the iterator after a read from /proc.
        let mut frame_pointers = None;
        for (&(tid, state, look), seen) in blocked.iter().zip(seen) {
            match seen {
                Seen::Continues { reported: true } => counts.blocked_in_waits += 1,
                Seen::Continues { reported: false } => counts.elsewhere += 1,
                Seen::New => {
                    let frame_pointers = frame_pointers.get_or_insert_with(|| match &looks {
                        Some(looks) => SavedFramePointers::from_tasks(looks),
                        None => pipeline::frame_pointers_of(self.tasks.looks()),
                    });
                    let look = looks.as_deref().zip(look).map(|(looks, index)| &looks[index]);
                    let copy = copies.get(&tid);
                    self.start(now_ns, tid, state, look, copy, frame_pointers, &mut counts);
                }
            }
        }
        self.frame_pointer_unknown += counts.frame_pointer_unknown;
        self.last_counts = counts;
        Ok(())
    }

    /// A pass of the task iterator over the process's threads, while the iterator works.
    /// None sends this read to /proc: after a failure (logged once, and every read from
    /// then on), or when the pass found no thread (the process may have exited, which
    /// /proc tells).
    fn looks_from_iterator(&mut self) -> Option<Vec<TaskLook>> {
        if !self.iterator_works {
            return None;
        }
        match self.tasks.looks() {
            Ok(looks) if looks.is_empty() => None,
            Ok(looks) => Some(looks),
            Err(err) => {
                log::warn!(
                    "pid {}: the task iterator failed ({err}); reading threads from /proc",
                    self.pid
                );
                self.iterator_works = false;
                None
            }
        }
    }

    /// The threads blocked in a syscall, as the looks show them (with the index of their
    /// look); counts the others.
    fn blocked_in_looks(
        &mut self,
        looks: &[TaskLook],
        counts: &mut ThreadCounts,
    ) -> Vec<(u32, BlockedState, Option<usize>)> {
        let mut tids: Vec<u32> = looks.iter().map(|look| look.tid).collect();
        tids.sort_unstable();
        self.forget_threads_except(&tids);
        counts.threads = looks.len() as u64;
        let mut blocked = Vec::with_capacity(looks.len());
        for (index, look) in looks.iter().enumerate() {
            match ThreadSyscall::of_look(look) {
                ThreadSyscall::Blocked(syscall) => {
                    let state = BlockedState { syscall, runs: Some(look.switches) };
                    blocked.push((look.tid, state, Some(index)));
                }
                ThreadSyscall::Running | ThreadSyscall::NotInSyscall { .. } => {
                    counts.elsewhere += 1
                }
            }
        }
        blocked
    }

    /// Forgets what it kept of threads not in `tids` (sorted): they exited.
    fn forget_threads_except(&mut self, tids: &[u32]) {
        self.reader.forget_threads_except(tids);
        self.places.keep_only(tids);
        self.unread_switches.retain(|tid, _| tids.binary_search(tid).is_ok());
    }

    /// The threads blocked in a syscall, from their /proc files; counts the others.
    fn blocked_in_proc(
        &mut self,
        counts: &mut ThreadCounts,
    ) -> std::io::Result<Vec<(u32, BlockedState, Option<usize>)>> {
        let tids = self.reader.thread_ids()?;
        self.forget_threads_except(&tids);
        counts.threads = tids.len() as u64;
        let mut blocked = Vec::with_capacity(tids.len());
        for tid in tids {
            match self.reader.peek(tid) {
                Ok(Some(state)) => blocked.push((tid, state, None)),
                Ok(None) => counts.elsewhere += 1,
                Err(err) => self.skip(tid, &err, counts),
            }
        }
        Ok(blocked)
    }

    /// Reads the new wait of thread `tid`, which this read found in `state` (through
    /// `look`, when the task iterator or a pass in the kernel read it, with the stack the
    /// pass copied, if it did), and starts tracking it.
    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        now_ns: u64,
        tid: u32,
        state: BlockedState,
        look: Option<&TaskLook>,
        copy: Option<&PassCopy>,
        frame_pointers: &SavedFramePointers,
        counts: &mut ThreadCounts,
    ) {
        // Only the first read meets waits that began before the recording; their age is
        // the part of them it did not see. Later waits need no age, and what a look
        // already read is not read again from /proc. A pass's copy is of the wait it saw
        // (the same switch count); without one, the stack is read now, which fails (Woke)
        // if the thread ran since the look.
        let copy = copy.zip(look).filter(|(copy, look)| copy.switches == look.switches);
        let sample = match (look, copy) {
            _ if self.tracker.reads == 1 => self.reader.sample(tid),
            (_, Some((copy, look))) => Ok(Some(sample_of_copy(look, state.syscall, copy))),
            (Some(look), None) => self.reader.sample_look(look, state.syscall).map(Some),
            (None, None) => self.reader.sample_without_age(tid),
        };
        let sample = match sample {
            // The copy is of the wait the read found only if the thread is still in that
            // call: otherwise it woke since, and the next read sees what it does now.
            Ok(Some(sample)) if sample.syscall != state.syscall => Err(SampleError::Woke),
            other => other,
        };
        let sample = match sample {
            Ok(Some(sample)) => sample,
            Ok(None) => {
                counts.elsewhere += 1;
                return;
            }
            // A short-lived thread may be gone by the drain: its wait is lost the same way.
            Err(err @ (SampleError::Woke | SampleError::Exited)) => {
                self.start_unread(now_ns, tid, state, look, &err, counts);
                return;
            }
            Err(err) => {
                self.skip(tid, &err, counts);
                return;
            }
        };
        let key = match wait_object(&sample, &mut self.objects) {
            Some(wait) => {
                let mut key =
                    stack_key(&sample, wait.clone(), &mut self.unwinder, frame_pointers, counts);
                // A pass's copy fills at most its buffer: an unwind that ran out of it is
                // read again here, whole, if the thread has not run since.
                if let (Ok(cut), Some((copy, look))) = (&key, copy)
                    && cut.truncated
                    && copy.may_be_cut()
                    && let Ok(whole) = self.reader.sample_look(look, state.syscall)
                {
                    let mut ignored = ThreadCounts::default();
                    key = stack_key(&whole, wait, &mut self.unwinder, frame_pointers, &mut ignored);
                }
                let key = match key {
                    Ok(key) => key,
                    Err(err) => {
                        // A Python program's frames gone before they were read: lost.
                        if matches!(err, SampleError::Woke) {
                            self.count_unread(tid, look);
                        }
                        self.skip(tid, &err, counts);
                        return;
                    }
                };
                counts.blocked_in_waits += 1;
                let name = thread_name(&sample, &mut self.unwinder);
                self.thread_names.name_thread(tid, &name);
                Some(key)
            }
            None => {
                counts.elsewhere += 1;
                None
            }
        };
        if let Some(key) = key.as_ref().filter(|_| self.unwinder.python().is_none()) {
            let stack = (Arc::from(key.addresses.as_slice()), key.truncated);
            self.refresh_code_layout();
            self.places.note(tid, CallPlace::of(&state.syscall), stack);
        }
        self.tracker.start(now_ns, tid, state, key, sample.blocked_for_at_least_ns);
    }

    /// A new wait of thread `tid` in `state` whose stack could not be read: the thread
    /// ran (`err` Woke) or exited before it was. A call not reported (a sleep) loses
    /// nothing. Made where one of the thread's last read waits was (or, failing that, any
    /// thread's at the same place in its stack), it is counted with that stack (not in a
    /// Python program, whose frames are not on its native stack), its object named now
    /// from the call's arguments (a descriptor may be another connection's than at the
    /// thread's last wait there); any other is lost, counted (a read or write of a file
    /// among them: only its descriptor, not looked up for a wait lost, tells it is not
    /// reported).
    fn start_unread(
        &mut self,
        now_ns: u64,
        tid: u32,
        state: BlockedState,
        look: Option<&TaskLook>,
        err: &SampleError,
        counts: &mut ThreadCounts,
    ) {
        let args = state.syscall.args;
        let Some((kind, object)) =
            tracer_common::classify_syscall(state.syscall.nr, |n| Ok::<_, ()>(args[n]))
                .ok()
                .flatten()
        else {
            // Tracked so that it is not looked at again.
            counts.elsewhere += 1;
            self.tracker.start(now_ns, tid, state, None, None);
            return;
        };
        let python = self.unwinder.python().is_some();
        let place = CallPlace::of(&state.syscall);
        self.refresh_code_layout();
        let Some((addresses, truncated)) = self.places.stack_at(tid, &place).filter(|_| !python)
        else {
            // Which passes lost it: drains that lose many hurry (`read_passes`).
            if let Some(look) = look {
                self.skipped_looks.push((tid, look.switches));
            }
            self.count_unread(tid, look);
            self.skip(tid, err, counts);
            return;
        };
        let Some((kind, object)) = self.objects.resolve(kind, object) else {
            // A file's read or write: not reported.
            counts.elsewhere += 1;
            self.tracker.start(now_ns, tid, state, None, None);
            return;
        };
        self.waits_at_last_place += 1;
        counts.blocked_in_waits += 1;
        if let Some(look) = look {
            let name = crate::probes::comm_text(&look.comm);
            self.thread_names.name_thread(tid, &name);
        }
        let key =
            StackKey { addresses: addresses.to_vec(), kind, object, truncated, in_progress: true };
        self.tracker.start(now_ns, tid, state, Some(key), None);
    }

    /// Counts a new wait of thread `tid` whose stack could not be read, once however many
    /// passes saw it (by its `look`'s switch count).
    fn count_unread(&mut self, tid: u32, look: Option<&TaskLook>) {
        let seen_before = look.is_some_and(|look| {
            self.unread_switches.insert(tid, look.switches) == Some(look.switches)
        });
        if !seen_before {
            self.waits_unread += 1;
        }
    }

    fn skip(&mut self, tid: u32, err: &SampleError, counts: &mut ThreadCounts) {
        self.threads_skipped += 1;
        match err {
            SampleError::Exited => counts.exited_while_read += 1,
            SampleError::Woke => counts.woke_while_read += 1,
            SampleError::Unreadable(source) => {
                log::debug!("thread {tid} of pid {} unreadable: {source}", self.pid);
                counts.unreadable += 1;
                self.thread_reads_failed += 1;
            }
        }
    }

    /// The waits that ended since the last call, with their threads' names: for a
    /// recording that never ends (serve), which hands them on as they end.
    pub fn take_ended(&mut self) -> WaitAggregate {
        // The rolling timeline stays: it is the daemon's last window, not one read's.
        let timeline = self.tracker.ended.timeline.take();
        let mut ended = self.tracker.take_ended();
        self.tracker.ended.timeline = timeline;
        if let (Some(timeline), Some(window), Some(now_ns)) =
            (&mut self.tracker.ended.timeline, self.rolling_window, self.tracker.last_read_ns)
        {
            timeline.prune_ended_before(now_ns.saturating_sub(window.as_nanos() as u64));
        }
        name_threads(&mut ended, &self.thread_names.thread_names);
        // Never-ending (serve): only the names of the threads blocked now are kept, or a
        // process that keeps making threads would grow them for good. A thread is named
        // again when it next blocks.
        let current = &self.tracker.current;
        self.thread_names.thread_names.retain(|tid, _| current.contains_key(tid));
        ended
    }

    /// Keeps the waits in time from now on (`CLOCK_MONOTONIC` `origin_ns` is second 0):
    /// a recording's timeline and per-second counts.
    pub fn keep_timeline(&mut self, origin_ns: u64) {
        self.tracker.ended.timeline = Some(TimelineRecorder::new(origin_ns));
    }

    /// Keeps the waits of the last `window` in time (a daemon's): see `timeline_window`.
    pub fn keep_rolling_timeline(&mut self, window: Duration) {
        let now_ns = monotonic_now_ns();
        self.tracker.ended.timeline = Some(TimelineRecorder::rolling(now_ns));
        self.rolling_window = Some(window);
    }

    /// The last `window` of waits as a recording, and how long it really is (less when
    /// the process has not been watched that long): the waits that ended in it and those
    /// in progress at the last read (still blocked), each cut to the window; None unless
    /// `keep_rolling_timeline` was called.
    pub fn timeline_window(&self, window: Duration) -> Option<(WaitAggregate, Duration)> {
        let rolling = self.tracker.ended.timeline.as_ref()?;
        let now_ns = self.tracker.last_read_ns.unwrap_or_else(monotonic_now_ns);
        let origin_ns = now_ns.saturating_sub(window.as_nanos() as u64).max(rolling.origin_ns());
        let (mut timeline, mut aggregate) = rolling.window_since(origin_ns);
        for (&tid, wait) in &self.tracker.current {
            let Some(key) = &wait.key else { continue };
            let since_seen = now_ns.saturating_sub(wait.first_seen_ns);
            let start_ns = now_ns.saturating_sub(wait.age_when_seen_ns.unwrap_or(0) + since_seen);
            timeline.add(tid, key, start_ns, now_ns, true, None);
            let part_ns = now_ns.saturating_sub(start_ns.max(origin_ns));
            aggregate.add_lower_bound(key.clone(), tid, part_ns);
        }
        name_threads(&mut aggregate, &self.thread_names.thread_names);
        aggregate.timeline = Some(timeline);
        Some((aggregate, Duration::from_nanos(now_ns - origin_ns)))
    }

    /// The waits blocked now: per stack, the threads and the oldest's age (a lower
    /// bound): what a trigger looks at, without reading or naming anything.
    pub fn blocked_ages(&self) -> impl Iterator<Item = (&StackKey, u64)> {
        let now_ns = self.tracker.last_read_ns.unwrap_or(0);
        self.tracker.current.values().filter_map(move |wait| {
            let key = wait.key.as_ref()?;
            let since_seen = now_ns.saturating_sub(wait.first_seen_ns);
            Some((key, wait.age_when_seen_ns.unwrap_or(0) + since_seen))
        })
    }

    /// The process exited: the waits the last read saw ended with it (`take_ended` hands
    /// them on).
    pub fn end_waits_at_exit(&mut self) {
        self.tracker.end_all();
    }

    /// Opens window `id` (see `close_window`).
    pub fn open_window(&mut self, id: u64) {
        self.tracker.open_window(id);
    }

    /// The time window `id`'s reads have stood for so far, the time its waits are out of
    /// (a rate's denominator); None if it is not open.
    pub fn window_covered(&self, id: u64) -> Option<Duration> {
        self.tracker.window_covered(id)
    }

    /// Whether window `id` is open.
    pub fn has_window(&self, id: u64) -> bool {
        self.tracker.windows.contains_key(&id)
    }

    /// The waits of window `id`, with their threads' names: those that ended since it
    /// opened and those in progress at the last read, each counting only its time since
    /// the window opened, so that consecutive windows add up. None if it was not open.
    pub fn close_window(&mut self, id: u64) -> Option<WaitAggregate> {
        let mut window = self.tracker.close_window(id)?;
        name_threads(&mut window, &self.thread_names.thread_names);
        Some(window)
    }

    /// The threads blocked at the last read, with their threads' names: a snapshot that
    /// costs no read of its own.
    pub fn blocked_now(&self) -> WaitAggregate {
        let mut blocked = self.tracker.in_progress();
        name_threads(&mut blocked, &self.thread_names.thread_names);
        blocked
    }

    /// The threads as the last read found them.
    pub fn thread_counts(&self) -> ThreadCounts {
        ThreadCounts { frame_pointer_unknown: self.frame_pointer_unknown, ..self.last_counts }
    }

    /// The unwinder and what the reads found out about the waits' objects, for
    /// symbolizing what the sampler gathered and for wait chains.
    pub fn parts_mut(&mut self) -> (&mut ProcessUnwinder, &mut WaitObjects, &mut TaskIterator) {
        (&mut self.unwinder, &mut self.objects, &mut self.tasks)
    }

    /// Reads so far.
    pub fn reads(&self) -> u64 {
        self.tracker.reads
    }

    /// What the reads found out about the waits' objects (endpoints and their states).
    pub fn objects_mut(&mut self) -> &mut WaitObjects {
        &mut self.objects
    }

    /// Long waits (and frames of blocked threads) whose unwinding stopped before the root.
    pub fn truncated_unwinds(&self) -> u64 {
        self.unwinder.truncated_unwinds
    }

    /// What its own probes counted so far (the passes in the kernel and their losses).
    pub fn probe_counters(&self) -> ProbeCounters {
        self.tasks.counters()
    }

    /// What it counted so far beside its probes' counters: its losses, and the waits
    /// counted at a place's stack.
    pub fn sampler_counts(&self) -> SamplerCounts {
        SamplerCounts {
            malformed_records: self.assembler.malformed(),
            late_passes: self.assembler.late(),
            thread_reads_failed: self.thread_reads_failed,
            waits_unread: self.waits_unread,
            waits_at_last_place: self.waits_at_last_place,
        }
    }

    /// What the reads counted and lost so far, as a report shows it, with its probes'
    /// `counters` (`probe_counters`).
    pub fn trace_counts(&self, counters: &ProbeCounters) -> TraceCounts {
        self.sampler_counts().add_to(pipeline::counts::trace_counts(
            counters,
            self.truncated_unwinds(),
            &self.objects,
            0,
            0,
        ))
    }

    /// What the reads gathered; with `target_exited` the waits the last read saw ended
    /// with the process (none is left in progress).
    pub fn finish(self, target_exited: bool) -> Sampled {
        let sampler_counts = self.sampler_counts();
        let Self {
            tracker,
            thread_names,
            unwinder,
            objects,
            threads_skipped,
            frame_pointer_unknown,
            last_counts,
            tasks,
            ..
        } = self;
        let reads = tracker.reads;
        let mut aggregate = tracker.finish(target_exited);
        aggregate.thread_names = thread_names.thread_names;
        // The last read's threads are gone with their process; the stacks unwound without
        // their saved rbp count over the whole recording.
        let thread_counts = if target_exited {
            ThreadCounts { frame_pointer_unknown, ..ThreadCounts::default() }
        } else {
            ThreadCounts { frame_pointer_unknown, ..last_counts }
        };
        Sampled {
            aggregate,
            unwinder,
            objects,
            thread_counts,
            reads,
            threads_skipped,
            tasks,
            sampler_counts,
        }
    }
}

/// Gives `aggregate` the names `names` knows of its threads.
fn name_threads(aggregate: &mut WaitAggregate, names: &BTreeMap<u32, String>) {
    let WaitAggregate { stacks, thread_names, .. } = aggregate;
    let tids = stacks.values().flat_map(|stats| &stats.threads);
    for tid in tids.filter_map(|&tid| u32::try_from(tid).ok()) {
        if let Some(name) = names.get(&tid) {
            thread_names.insert(tid, name.clone());
        }
    }
}

/// Whether drains at the period would have kept enough more stacks to hurry the next
/// drains to it: a drain kept `kept` new waits and lost `lost` (gone before it could copy
/// their stacks), of which `outlived_a_pass` were seen by more than one pass, so lasted
/// over a period, and a drain at the period would have found them going on. Hurry when
/// those are a tenth of the new waits: a process whose waits no tick in it sees (one
/// thread, or threads that never run beside each other) loses most of them; waits
/// shorter than a period (a server's microsecond polls) are lost at any pace, so are no
/// reason to wake the tracer more often.
fn drains_at_the_period_keep_more(kept: u64, lost: u64, outlived_a_pass: u64) -> bool {
    outlived_a_pass > 0 && outlived_a_pass * 10 >= kept + lost
}

/// A new wait's sample from the stack a pass in the kernel copied, as `sample_look` would
/// read it now: the pass saw the thread blocked in `syscall` with the copy's switch count.
fn sample_of_copy(look: &TaskLook, syscall: SyscallState, copy: &PassCopy) -> ThreadSample {
    ThreadSample {
        tid: look.tid,
        comm: crate::probes::comm_text(&look.comm),
        syscall,
        stack: copy.stack.clone(),
        blocked_for_at_least_ns: None,
        exec_start_ns: None,
        runs: Some(look.switches),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn drains_hurry_when_a_tenth_of_the_new_waits_outlived_a_pass_and_were_lost() {
        use super::drains_at_the_period_keep_more as hurry;
        assert!(!hurry(0, 0, 0), "nothing new, nothing lost");
        assert!(!hurry(245, 1, 1), "a stray pass outside the process");
        assert!(hurry(9, 1, 1));
        assert!(hurry(0, 5, 5), "a single thread's long waits, all gone");
        assert!(!hurry(0, 400, 0), "a server's microsecond polls, each seen by one pass");
        assert!(hurry(0, 400, 40), "a tenth of them long");
    }

    #[test]
    fn a_threads_places_keep_the_latest_stack_of_each() {
        let place = |sp: u64, futex: u64| CallPlace { nr: 202, object: [futex, 128], sp, pc: 0x10 };
        let stack = |pc: u64| -> ReadStack { (Arc::from(vec![pc, 0x99]), false) };
        let mut places = ThreadPlaces::default();
        places.note(7, place(0x7000, 0xa0), stack(0x1));
        assert_eq!(places.stack_at(7, &place(0x7000, 0xa0)).map(|s| s.0[0]), Some(0x1));
        // Another lock, another depth: not the place.
        assert!(places.stack_at(7, &place(0x7000, 0xb0)).is_none());
        assert!(places.stack_at(7, &place(0x7100, 0xa0)).is_none());
        // Another thread at the same depth of its own stack (a page-aligned stack): the
        // place of any thread; at another depth, none.
        assert_eq!(places.stack_at(8, &place(0x9_7000, 0xa0)).map(|s| s.0[0]), Some(0x1));
        assert!(places.stack_at(8, &place(0x9_7010, 0xa0)).is_none());
        // Read again there: the later stack is kept.
        places.note(7, place(0x7000, 0xa0), stack(0x2));
        assert_eq!(places.stack_at(7, &place(0x7000, 0xa0)).map(|s| s.0[0]), Some(0x2));
        // At most a few places of its own, the oldest let go first (its stack still the
        // place's of any thread, until another thread's is read there).
        for n in 0..PLACES_PER_THREAD as u64 {
            places.note(7, place(0x8000 + n * 0x100, 0xa0), stack(0x3));
        }
        let own: Vec<u64> = places.by_thread[&7].iter().map(|(place, _)| place.sp).collect();
        assert_eq!(own, [0x8300, 0x8200, 0x8100, 0x8000]);
        // A thread gone is forgotten, its stacks left to the places of any thread.
        places.note(9, place(0x7000, 0xa0), stack(0x4));
        places.keep_only(&[9]);
        assert_eq!(places.stack_at(7, &place(0x8100, 0xa0)).map(|s| s.0[0]), Some(0x3));
        // 0x8000 is at 0x7000's place in its page: thread 9's stack there, noted last.
        assert_eq!(places.stack_at(7, &place(0x8000, 0xa0)).map(|s| s.0[0]), Some(0x4));
        assert_eq!(places.by_thread.len(), 1);
        assert_eq!(places.stack_at(9, &place(0x7000, 0xa0)).map(|s| s.0[0]), Some(0x4));
    }

    use tracer_common::WaitKind;

    use super::*;
    use crate::{model::WaitObject, threads::SyscallState};

    const FUTEX: i64 = 202;
    const MS: u64 = 1_000_000;

    /// Thread blocked on `futex`, having been run `runs` times.
    fn blocked(futex: u64, runs: u64) -> BlockedState {
        BlockedState {
            syscall: SyscallState { nr: FUTEX, args: [futex, 0, 0, 0, 0, 0], sp: 0x7000, pc: 0x10 },
            runs: Some(runs),
        }
    }

    fn key(futex: u64) -> StackKey {
        StackKey {
            addresses: vec![0x10, 0x20],
            kind: WaitKind::Futex,
            object: WaitObject::Futex(futex),
            truncated: false,
            in_progress: true,
        }
    }

    /// One read at `now`: the new waits are started with their key and `age`.
    fn read(tracker: &mut WaitTracker, now: u64, threads: &[(u32, BlockedState)], age: u64) {
        let seen = tracker.observe(now, threads.iter().copied());
        for (&(tid, state), seen) in threads.iter().zip(seen) {
            if seen == Seen::New {
                let futex = state.syscall.args[0];
                tracker.start(now, tid, state, Some(key(futex)), Some(age));
            }
        }
    }

    fn ended(aggregate: &WaitAggregate, futex: u64) -> &crate::model::WaitStats {
        let mut key = key(futex);
        key.in_progress = false;
        &aggregate.stacks[&key]
    }

    #[test]
    fn a_wait_that_continues_counts_one_interval_per_read() {
        let mut tracker = WaitTracker::new(Duration::from_millis(20));
        // Thread 1 waits through three reads, thread 2 through one.
        read(&mut tracker, 0, &[(1, blocked(0xa0, 5)), (2, blocked(0xa0, 7))], 0);
        read(&mut tracker, 20 * MS, &[(1, blocked(0xa0, 5))], 0);
        read(&mut tracker, 40 * MS, &[(1, blocked(0xa0, 5))], 0);
        read(&mut tracker, 60 * MS, &[], 0);
        let aggregate = tracker.finish(false);
        let stats = ended(&aggregate, 0xa0);
        assert_eq!((stats.waits, stats.total_ns, stats.max_ns), (2, 80 * MS, 60 * MS));
        assert_eq!(stats.threads.len(), 2);
        assert_eq!(aggregate.stacks.len(), 1, "nothing is still in progress");
    }

    #[test]
    fn the_waits_of_a_process_that_exited_end_with_it() {
        let mut tracker = WaitTracker::new(Duration::from_millis(20));
        // Both threads blocked through the last three reads before the process exited.
        for n in 0..3 {
            read(&mut tracker, n * 20 * MS, &[(1, blocked(0xa0, 5)), (2, blocked(0xb0, 7))], 0);
        }
        let aggregate = tracker.finish(true);
        for futex in [0xa0, 0xb0] {
            let stats = ended(&aggregate, futex);
            assert_eq!((stats.waits, stats.total_ns), (1, 60 * MS), "futex {futex:#x}");
        }
        assert_eq!(aggregate.stacks.len(), 2, "none in progress");
    }

    #[test]
    fn a_changed_call_or_a_run_in_between_is_a_new_wait() {
        let mut tracker = WaitTracker::new(Duration::from_millis(10));
        read(&mut tracker, 0, &[(1, blocked(0xa0, 5))], 0);
        // Another futex: the first wait ended. A late read stands for the whole time since.
        read(&mut tracker, 25 * MS, &[(1, blocked(0xb0, 5))], 0);
        // The same futex, but the thread ran since (its run count moved): a new wait again.
        read(&mut tracker, 35 * MS, &[(1, blocked(0xb0, 6))], 0);
        let aggregate = tracker.finish(false);
        assert_eq!((ended(&aggregate, 0xa0).waits, ended(&aggregate, 0xa0).total_ns), (1, 10 * MS));
        assert_eq!((ended(&aggregate, 0xb0).waits, ended(&aggregate, 0xb0).total_ns), (1, 25 * MS));
        let still = &aggregate.stacks[&key(0xb0)];
        assert_eq!((still.waits, still.total_ns), (1, 0), "aged from its first read, the last");
    }

    #[test]
    fn a_wait_in_progress_at_the_end_is_aged_from_the_scheduler_and_reads() {
        let mut tracker = WaitTracker::new(Duration::from_millis(10));
        // Blocked 3 s before the first read, then through 5 reads.
        for n in 0..5 {
            read(&mut tracker, n * 10 * MS, &[(1, blocked(0xa0, 5))], 3_000 * MS);
        }
        let aggregate = tracker.finish(false);
        let still = &aggregate.stacks[&key(0xa0)];
        assert_eq!((still.waits, still.total_ns), (1, 3_040 * MS));
        assert!(still.lower_bound, "the age is a lower bound");
        assert_eq!(aggregate.stacks.len(), 1, "no wait ended");
        // A target that exited has nothing in progress: the wait ended with it.
        let mut tracker = WaitTracker::new(Duration::from_millis(10));
        read(&mut tracker, 0, &[(1, blocked(0xa0, 5))], 0);
        let aggregate = tracker.finish(true);
        assert!(!aggregate.stacks.contains_key(&key(0xa0)));
        assert_eq!(ended(&aggregate, 0xa0).waits, 1);
    }

    #[test]
    fn windows_count_each_wait_only_in_their_time_so_consecutive_ones_add_up() {
        let mut tracker = WaitTracker::new(Duration::from_millis(10));
        // Thread 1 waits from 0 to 50 ms; thread 2 from 20 ms on, past the end.
        read(&mut tracker, 0, &[(1, blocked(0xa0, 5))], 0);
        read(&mut tracker, 10 * MS, &[(1, blocked(0xa0, 5))], 0);
        tracker.open_window(1);
        read(&mut tracker, 20 * MS, &[(1, blocked(0xa0, 5)), (2, blocked(0xb0, 3))], 0);
        read(&mut tracker, 30 * MS, &[(1, blocked(0xa0, 5)), (2, blocked(0xb0, 3))], 0);
        assert_eq!(tracker.window_covered(1), Some(Duration::from_millis(20)));
        let first = tracker.close_window(1).unwrap();
        tracker.open_window(2);
        read(&mut tracker, 40 * MS, &[(1, blocked(0xa0, 5)), (2, blocked(0xb0, 3))], 0);
        read(&mut tracker, 50 * MS, &[(2, blocked(0xb0, 3))], 0);
        assert_eq!(tracker.window_covered(2), Some(Duration::from_millis(20)));
        let second = tracker.close_window(2).unwrap();
        let time = |window: &WaitAggregate, futex: u64, in_progress: bool| {
            let mut key = key(futex);
            key.in_progress = in_progress;
            window.stacks.get(&key).map_or(0, |stats| stats.total_ns)
        };
        // Window 1 (10–30 ms): 20 ms of thread 1 (going on), 20 ms of thread 2.
        assert_eq!(time(&first, 0xa0, true), 20 * MS);
        assert_eq!(time(&first, 0xb0, true), 20 * MS);
        // Window 2 (30–50 ms): thread 1 ended in it (last seen at 40 ms), counted from
        // 30 ms; thread 2 goes on.
        assert_eq!(time(&second, 0xa0, false), 10 * MS);
        assert_eq!(time(&second, 0xa0, true), 0);
        assert_eq!(time(&second, 0xb0, true), 20 * MS);
        // Each window's reads stood for 20 ms; a read spaced out stretches its window.
        assert_eq!(tracker.window_covered(2), None, "closed");
        tracker.open_window(3);
        read(&mut tracker, 80 * MS, &[(2, blocked(0xb0, 3))], 0);
        assert_eq!(tracker.window_covered(3), Some(Duration::from_millis(30)));
        // The windows add up to the wait's time after the first opened (50 − 20 ms).
        assert_eq!(ended(&tracker.finish(false), 0xa0).total_ns, 50 * MS);
        assert_eq!(time(&first, 0xa0, true) + time(&second, 0xa0, false), 30 * MS);
    }

    #[test]
    fn an_unreported_wait_is_remembered_and_never_counted() {
        let mut tracker = WaitTracker::new(Duration::from_millis(10));
        let pipe_read = blocked(0xa0, 5);
        let seen = tracker.observe(0, [(1, pipe_read)].into_iter());
        assert_eq!(seen, [Seen::New]);
        tracker.start(0, 1, pipe_read, None, None);
        let seen = tracker.observe(10 * MS, [(1, pipe_read)].into_iter());
        assert_eq!(seen, [Seen::Continues { reported: false }]);
        tracker.observe(20 * MS, std::iter::empty());
        assert!(tracker.finish(false).stacks.is_empty());
    }
}
