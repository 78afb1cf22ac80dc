//! The data model: waits aggregated by call stack and wait kind, then symbolized into
//! the `Profile` every exporter reads.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use tracer_common::{ShortWaitTotals, WaitKind};

use crate::{
    objects::locks::LockNamer,
    stacks::{Frame, ProcessImage, StackSymbolizer},
};

/// Count, total, shortest, longest and distinct threads of a set of waits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitStats {
    pub waits: u64,
    pub total_ns: u64,
    /// Shortest wait (for waits in progress: the youngest).
    pub min_ns: u64,
    /// Longest wait (for waits in progress: the oldest).
    pub max_ns: u64,
    /// The ids of the threads that waited (of the goroutines, for Go stacks).
    pub threads: BTreeSet<u32>,
    /// Some durations are lower bounds (waits that began before tracing, aged from
    /// the scheduler's accounting): reports print them as `≥`.
    pub lower_bound: bool,
    /// Waits by duration: bucket `k` counts the waits of [2^k, 2^(k+1)) nanoseconds.
    pub log2_histogram: BTreeMap<u32, u64>,
}

/// The log2 bucket of a duration (0 for zero).
pub fn log2_bucket(duration_ns: u64) -> u32 {
    duration_ns.checked_ilog2().unwrap_or(0)
}

impl WaitStats {
    pub fn add(&mut self, tid: u32, duration_ns: u64) {
        self.min_ns = if self.waits == 0 { duration_ns } else { self.min_ns.min(duration_ns) };
        self.waits += 1;
        self.total_ns += duration_ns;
        self.max_ns = self.max_ns.max(duration_ns);
        self.threads.insert(tid);
        *self.log2_histogram.entry(log2_bucket(duration_ns)).or_default() += 1;
    }

    /// Adds a wait whose duration is only known to be at least `duration_ns`.
    pub fn add_lower_bound(&mut self, tid: u32, duration_ns: u64) {
        self.add(tid, duration_ns);
        self.lower_bound = true;
    }

    pub fn merge(&mut self, other: &WaitStats) {
        let WaitStats { waits, total_ns, min_ns, max_ns, threads, lower_bound, log2_histogram } =
            other;
        if *waits == 0 {
            return;
        }
        self.min_ns = if self.waits == 0 { *min_ns } else { self.min_ns.min(*min_ns) };
        self.waits += waits;
        self.total_ns += total_ns;
        self.max_ns = self.max_ns.max(*max_ns);
        self.threads.extend(threads);
        self.lower_bound |= lower_bound;
        for (bucket, count) in log2_histogram {
            *self.log2_histogram.entry(*bucket).or_default() += count;
        }
    }
}

/// What a wait waits on, as the probes and /proc give it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WaitObject {
    /// Nothing to name (poll).
    None,
    /// A futex, by address (named when the profile is built).
    Futex(u64),
    /// A socket, by the endpoint the wait names (`10.0.0.5:80`).
    Endpoint(String),
    /// A socket that was gone (or unreadable) before it could be resolved.
    UnresolvedSocket,
}

/// One unwound stack (instruction addresses, leaf first) and the kind of wait at its tip.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub addresses: Vec<u64>,
    pub kind: WaitKind,
    pub target: WaitObject,
    /// The unwinder stopped before the root (stack copy too short, unknown code, ...).
    pub truncated: bool,
    /// A wait still in progress (at the end of a recording, or in a snapshot).
    pub in_progress: bool,
}

/// How often one waker stack woke the waits of one stack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WakerStats {
    pub wakes: u64,
    pub threads: BTreeSet<u32>,
}

/// Waits aggregated by raw stack as they arrive; symbolized once per unique stack at the end.
#[derive(Debug, Default)]
pub struct WaitAggregate {
    pub stacks: HashMap<StackKey, WaitStats>,
    /// Who woke the waits of each stack, by the waker's raw stack.
    pub wakers: HashMap<StackKey, HashMap<Vec<u64>, WakerStats>>,
    /// The name (`comm`) each thread had when last seen.
    pub thread_names: BTreeMap<u32, String>,
}

impl WaitAggregate {
    pub fn add(&mut self, key: StackKey, tid: u32, duration_ns: u64) {
        self.stacks.entry(key).or_default().add(tid, duration_ns);
    }

    pub fn add_waker(&mut self, key: &StackKey, waker_tid: u32, waker_stack: Vec<u64>) {
        let stats = self.wakers.entry(key.clone()).or_default().entry(waker_stack).or_default();
        stats.wakes += 1;
        stats.threads.insert(waker_tid);
    }

    pub fn name_thread(&mut self, tid: u32, name: &str) {
        if self.thread_names.get(&tid).is_none_or(|known| known != name) {
            self.thread_names.insert(tid, name.to_string());
        }
    }

    pub fn add_lower_bound(&mut self, key: StackKey, tid: u32, duration_ns: u64) {
        self.stacks.entry(key).or_default().add_lower_bound(tid, duration_ns);
    }

    /// Names each unique stack and lock once and builds the profile on `base`.
    pub fn into_profile(
        self,
        base: Profile,
        image: &ProcessImage,
        symbolizer: &mut StackSymbolizer,
        locks: &mut LockNamer,
    ) -> Profile {
        let shared_futexes = shared_futexes(&self.stacks);
        let thread_names = self.thread_names;
        let wakers = waker_rows(self.wakers, image, symbolizer);
        let mut lock_names: HashMap<u64, Option<String>> = HashMap::new();
        let symbolized: Vec<ProfileStack> = self
            .stacks
            .into_iter()
            .map(|(key, stats)| {
                let StackKey { addresses, kind, target, truncated, in_progress } = key;
                let mut frames = symbolizer.symbolize(image, &addresses);
                frames.reverse(); // root first
                let object = match target {
                    WaitObject::None => None,
                    WaitObject::Endpoint(endpoint) => Some(endpoint),
                    WaitObject::UnresolvedSocket => Some(UNRESOLVED_SOCKET.to_string()),
                    WaitObject::Futex(address) => lock_names
                        .entry(address)
                        .or_insert_with(|| {
                            let lock = locks.name(image, address);
                            // A futex only one thread waits on (its own parker, as in
                            // Rust's channels) names nothing shared: unless a symbol
                            // names it, it stays a plain [futex].
                            (lock.from_symbol || shared_futexes.contains(&address))
                                .then_some(lock.name)
                        })
                        .clone(),
                };
                ProfileStack { frames, kind, object, truncated, in_progress, stats }
            })
            .collect();
        let mut profile = Profile::from_symbolized(base, symbolized);
        profile.thread_names = thread_names;
        profile.wakers = wakers;
        profile.modules = module_infos(image);
        profile
    }
}

/// Who woke the waits at one call site: one row per (waiting site, waker site).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakerRow {
    /// The call site of the waits (as in the call-site table).
    pub waiting_site: String,
    pub kind: WaitKind,
    /// The call site of the waker (its innermost frame in the program's own code).
    pub waker_site: String,
    /// The waker's stack, root first.
    pub waker_frames: Vec<Frame>,
    pub wakes: u64,
    pub waker_threads: BTreeSet<u32>,
}

fn waker_rows(
    wakers: HashMap<StackKey, HashMap<Vec<u64>, WakerStats>>,
    image: &ProcessImage,
    symbolizer: &mut StackSymbolizer,
) -> Vec<WakerRow> {
    let mut rows: HashMap<(String, WaitKind, String), WakerRow> = HashMap::new();
    for (key, by_waker) in wakers {
        let mut waiting = symbolizer.symbolize(image, &key.addresses);
        waiting.reverse();
        let waiting_site = call_site(&waiting).to_string();
        for (waker_stack, stats) in by_waker {
            let mut waker_frames = symbolizer.symbolize(image, &waker_stack);
            waker_frames.reverse();
            let waker_site = call_site(&waker_frames).to_string();
            let row = rows
                .entry((waiting_site.clone(), key.kind, waker_site.clone()))
                .or_insert_with(|| WakerRow {
                    waiting_site: waiting_site.clone(),
                    kind: key.kind,
                    waker_site,
                    waker_frames,
                    wakes: 0,
                    waker_threads: BTreeSet::new(),
                });
            row.wakes += stats.wakes;
            row.waker_threads.extend(stats.threads);
        }
    }
    let mut rows: Vec<WakerRow> = rows.into_values().collect();
    rows.sort_by(|a, b| b.wakes.cmp(&a.wakes).then_with(|| a.waiting_site.cmp(&b.waiting_site)));
    rows
}

/// The object of a socket wait whose socket could not be resolved.
pub const UNRESOLVED_SOCKET: &str = "unresolved";

/// Futex addresses that more than one thread waited on.
fn shared_futexes(stacks: &HashMap<StackKey, WaitStats>) -> std::collections::HashSet<u64> {
    let mut waiters: HashMap<u64, BTreeSet<u32>> = HashMap::new();
    for (key, stats) in stacks {
        if let WaitObject::Futex(address) = key.target {
            waiters.entry(address).or_default().extend(&stats.threads);
        }
    }
    waiters
        .into_iter()
        .filter(|(_, threads)| threads.len() > 1)
        .map(|(address, _)| address)
        .collect()
}

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
}

impl ProfileStack {
    /// The innermost frame in the program's own code: not libc, not the language's
    /// standard library or runtime. Falls back to the innermost named frame.
    pub fn call_site(&self) -> &str {
        call_site(&self.frames)
    }
}

/// The innermost frame of `frames` (root first) in the program's own code: not libc,
/// not the language's standard library or runtime. Falls back to the innermost named
/// frame.
pub fn call_site(frames: &[Frame]) -> &str {
    let innermost_own = frames
        .iter()
        .rev()
        .find(|frame| frame.module_is_main && !is_runtime_function(&frame.name));
    innermost_own
        .or_else(|| frames.iter().rev().find(|frame| frame.name != UNKNOWN))
        .map_or(UNKNOWN, |frame| frame.name.as_str())
}

const UNKNOWN: &str = "[unknown]";

/// Functions of Rust's std/core/alloc, of Go's runtime and of the C runtime's start-up
/// code, which a statically linked program carries in its own executable.
fn is_runtime_function(name: &str) -> bool {
    const RUNTIME_PREFIXES: [&str; 16] = [
        "std::", "core::", "alloc::", "<std::", "<core::", "<alloc::", "__rust", "rust_panic",
        "rust_begin_unwind", "_start", "__libc_", "start_thread", "[",
        // Go's runtime, its internal packages and sync, which a Go executable carries.
        "runtime.", "internal/", "sync.",
    ];
    // `<T as core::ops::FnOnce>::call_once` style names are the runtime too.
    RUNTIME_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || name.starts_with('<') && name.contains(" as core::ops::function::")
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
    pub in_flight_map_full: u64,
    /// Wakes of long futex waits by the target's threads, with the waker's stack.
    pub wakes_seen: u64,
    /// Such wakes lost because their ring buffer was full.
    pub wake_ring_buffer_full: u64,
    /// Long waits whose unwinding stopped before the root.
    pub unwind_truncated: u64,
    /// Distinct addresses with no symbol.
    pub unknown_symbols: u64,
    /// read/write waits on descriptors that are not sockets (not socket waits: left out).
    pub non_socket_io: u64,
    /// Socket waits whose socket was gone (or unreadable) before it could be resolved.
    pub unresolved_descriptors: u64,
    /// Ring-buffer records too short or of an unknown kind.
    pub malformed_records: u64,
    /// Wakers whose wait's record never arrived (dropped, or still pending at the end) or
    /// that were evicted from the bounded table of pending wakers.
    pub wakers_unmatched: u64,
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
    /// Blocked threads whose saved rbp was not found (unwound without it; CFI that
    /// needs rbp truncates their stacks).
    pub frame_pointer_unknown: u64,
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
    pub duration: Duration,
    pub min_wait: Duration,
    /// The target exited before the recording's end.
    pub target_exited: bool,
    /// Heaviest first.
    pub stacks: Vec<ProfileStack>,
    /// Waits under the threshold, per kind (no stacks).
    pub below_threshold: Vec<(WaitKind, ShortWaitTotals)>,
    pub counts: TraceCounts,
    /// The threads read from /proc (snapshot, or the in-progress waits of a recording).
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
}

/// One executable or library of the target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The path as the target sees it.
    pub path: String,
    /// The GNU build id, hex, when the file has one.
    pub build_id: Option<String>,
    /// The executable address range it was mapped at.
    pub start: u64,
    pub end: u64,
}

/// The modules of `image` by file name, with their build ids (read once per file).
pub fn module_infos(image: &ProcessImage) -> BTreeMap<String, ModuleInfo> {
    use object::Object as _;
    let mut modules: BTreeMap<String, ModuleInfo> = BTreeMap::new();
    for module in image.modules() {
        let info = modules.entry(module.name().to_string()).or_insert_with(|| ModuleInfo {
            path: module.path.to_string_lossy().into_owned(),
            build_id: object::File::parse(module.file_bytes())
                .ok()
                .and_then(|file| file.build_id().ok().flatten())
                .map(|id| id.iter().map(|byte| format!("{byte:02x}")).collect()),
            start: module.avma_range.start,
            end: module.avma_range.end,
        });
        info.start = info.start.min(module.avma_range.start);
        info.end = info.end.max(module.avma_range.end);
    }
    modules
}

impl Profile {
    /// Merges stacks that symbolize to the same frames and sorts them heaviest first.
    pub fn from_symbolized(
        mut base: Profile,
        symbolized: impl IntoIterator<Item = ProfileStack>,
    ) -> Profile {
        type MergeKey = (Vec<String>, WaitKind, Option<String>, bool, bool);
        let mut merged: HashMap<MergeKey, ProfileStack> = HashMap::new();
        for stack in symbolized {
            let names = stack.frames.iter().map(|frame| frame.name.clone()).collect();
            let object = stack.object.clone();
            merged
                .entry((names, stack.kind, object, stack.truncated, stack.in_progress))
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
        stacks.sort_by(|a, b| heaviness(b).cmp(&heaviness(a)).then_with(|| a.kind.cmp(&b.kind)));
        base.stacks = stacks;
        base
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn frame(name: &str, main: bool) -> Frame {
        Frame {
            name: name.to_string(),
            module: if main { "app".into() } else { "libc.so.6".into() },
            module_is_main: main,
            file: None,
            line: None,
            inlined: false,
            address: 0,
        }
    }

    pub(crate) fn stack(names: &[(&str, bool)], kind: WaitKind, tids: &[(u32, u64)]) -> ProfileStack {
        let mut stats = WaitStats::default();
        for &(tid, ns) in tids {
            stats.add(tid, ns);
        }
        ProfileStack {
            frames: names.iter().map(|&(n, m)| frame(n, m)).collect(),
            kind,
            object: None,
            truncated: false,
            in_progress: false,
            stats,
        }
    }

    #[test]
    fn stats_count_total_min_max_and_threads() {
        let mut stats = WaitStats::default();
        stats.add(1, 20);
        stats.add(2, 30);
        stats.add(1, 10);
        assert_eq!((stats.waits, stats.total_ns, stats.min_ns, stats.max_ns), (3, 60, 10, 30));
        assert_eq!(stats.threads.len(), 2);
        // 10 and 20 fall in [8, 16) and [16, 32); 30 in [16, 32).
        assert_eq!(stats.log2_histogram, [(3, 1), (4, 2)].into());
        assert!(!stats.lower_bound);
    }

    #[test]
    fn merged_stats_keep_the_extremes_and_the_lower_bound_mark() {
        let mut exact = WaitStats::default();
        exact.add(1, 50);
        let mut estimated = WaitStats::default();
        estimated.add_lower_bound(2, 5);
        estimated.add_lower_bound(3, 500);
        exact.merge(&estimated);
        exact.merge(&WaitStats::default());
        assert_eq!((exact.waits, exact.min_ns, exact.max_ns), (3, 5, 500));
        assert_eq!(exact.log2_histogram.values().sum::<u64>(), 3);
        assert!(exact.lower_bound);
        assert_eq!(exact.threads.len(), 3);
    }

    #[test]
    fn raw_stacks_aggregate_by_addresses_and_kind() {
        let mut aggregate = WaitAggregate::default();
        let key = |kind| StackKey {
            addresses: vec![1, 2, 3],
            kind,
            target: WaitObject::None,
            truncated: false,
            in_progress: false,
        };
        aggregate.add(key(WaitKind::Futex), 7, 100);
        aggregate.add(key(WaitKind::Futex), 8, 50);
        aggregate.add(key(WaitKind::Send), 7, 5);
        assert_eq!(aggregate.stacks.len(), 2);
        assert_eq!(aggregate.stacks[&key(WaitKind::Futex)].total_ns, 150);
    }

    #[test]
    fn only_shared_futexes_count_as_shared() {
        let mut stacks = HashMap::new();
        let mut key = |target, tids: &[u32]| {
            let mut stats = WaitStats::default();
            for &tid in tids {
                stats.add(tid, 1);
            }
            let key = StackKey {
                addresses: vec![tids[0] as u64],
                kind: WaitKind::Futex,
                target,
                truncated: false,
                in_progress: false,
            };
            stacks.insert(key, stats);
        };
        key(WaitObject::Futex(0x10), &[1, 2]);
        key(WaitObject::Futex(0x20), &[3]);
        key(WaitObject::Futex(0x30), &[4]);
        key(WaitObject::Futex(0x30), &[5]);
        key(WaitObject::None, &[6, 7]);
        let shared = shared_futexes(&stacks);
        assert_eq!(shared, [0x10, 0x30].into_iter().collect());
    }

    #[test]
    fn call_site_skips_libc_and_rust_std() {
        let stack = stack(
            &[
                ("start_thread", false),
                ("std::sys::thread::unix::Thread::new::thread_start", true),
                ("app::handler", true),
                ("app::send_stat", true),
                ("std::sync::mpmc::array::Channel<T>::send", true),
                ("<std::sync::mpsc::SyncSender<T>>::send", true),
                ("syscall", false),
            ],
            WaitKind::Futex,
            &[(1, 1)],
        );
        assert_eq!(stack.call_site(), "app::send_stat");
    }

    #[test]
    fn crates_named_like_the_runtime_are_still_the_program() {
        let stack = stack(&[("rust_pileup::send_stat", true), ("syscall", false)], WaitKind::Futex, &[]);
        assert_eq!(stack.call_site(), "rust_pileup::send_stat");
    }

    #[test]
    fn call_site_falls_back_to_innermost_named_frame() {
        let stack = stack(&[("clone3", false), ("__lll_lock_wait", false)], WaitKind::Futex, &[]);
        assert_eq!(stack.call_site(), "__lll_lock_wait");
    }

    #[test]
    fn identical_symbolized_stacks_merge_and_sort_heaviest_first() {
        let base = Profile {
            kind: ProfileKind::Recording,
            pid: 1,
            start_unix_ns: None,
            command_line: None,
            comm: "app".into(),
            duration: Duration::from_secs(1),
            min_wait: Duration::from_millis(1),
            target_exited: false,
            stacks: vec![],
            below_threshold: vec![],
            counts: TraceCounts::default(),
            thread_counts: ThreadCounts::default(),
            endpoint_states: BTreeMap::new(),
            thread_names: BTreeMap::new(),
            wakers: Vec::new(),
            modules: BTreeMap::new(),
        };
        let a = stack(&[("main", true), ("f", true)], WaitKind::Futex, &[(1, 10)]);
        let b = stack(&[("main", true), ("f", true)], WaitKind::Futex, &[(2, 15)]);
        let c = stack(&[("main", true), ("g", true)], WaitKind::Send, &[(3, 100)]);
        let profile = Profile::from_symbolized(base, [a, b, c]);
        assert_eq!(profile.stacks.len(), 2);
        assert_eq!(profile.stacks[0].kind, WaitKind::Send);
        assert_eq!(profile.stacks[1].stats.total_ns, 25);
        assert_eq!(profile.stacks[1].stats.threads.len(), 2);
    }
}
