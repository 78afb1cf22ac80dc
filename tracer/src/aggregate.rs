//! The data model: waits aggregated by call stack and wait kind, then symbolized into
//! the `Profile` every exporter reads.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use tracer_common::{ShortWaitTotals, WaitKind};

use crate::stacks::Frame;

/// Count, total, maximum and distinct threads of a set of waits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitStats {
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub threads: BTreeSet<u32>,
}

impl WaitStats {
    pub fn add(&mut self, tid: u32, duration_ns: u64) {
        self.waits += 1;
        self.total_ns += duration_ns;
        self.max_ns = self.max_ns.max(duration_ns);
        self.threads.insert(tid);
    }

    pub fn merge(&mut self, other: &WaitStats) {
        let WaitStats { waits, total_ns, max_ns, threads } = other;
        self.waits += waits;
        self.total_ns += total_ns;
        self.max_ns = self.max_ns.max(*max_ns);
        self.threads.extend(threads);
    }
}

/// One unwound stack (instruction addresses, leaf first) and the kind of wait at its tip.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub addresses: Vec<u64>,
    pub kind: WaitKind,
    /// The unwinder stopped before the root (stack copy too short, unknown code, ...).
    pub truncated: bool,
}

/// Waits aggregated by raw stack as they arrive; symbolized once per unique stack at the end.
#[derive(Debug, Default)]
pub struct WaitAggregate {
    pub stacks: HashMap<StackKey, WaitStats>,
}

impl WaitAggregate {
    pub fn add(&mut self, key: StackKey, tid: u32, duration_ns: u64) {
        self.stacks.entry(key).or_default().add(tid, duration_ns);
    }
}

/// A symbolized stack with its waits.
#[derive(Clone, Debug)]
pub struct ProfileStack {
    /// Root first, leaf last; inlined frames expanded.
    pub frames: Vec<Frame>,
    pub kind: WaitKind,
    pub truncated: bool,
    pub stats: WaitStats,
}

impl ProfileStack {
    /// The innermost frame in the program's own code: not libc, not the language's
    /// standard library or runtime. Falls back to the innermost named frame.
    pub fn call_site(&self) -> &str {
        let innermost_own = self
            .frames
            .iter()
            .rev()
            .find(|frame| frame.module_is_main && !is_runtime_function(&frame.name));
        innermost_own
            .or_else(|| self.frames.iter().rev().find(|frame| frame.name != UNKNOWN))
            .map_or(UNKNOWN, |frame| frame.name.as_str())
    }
}

const UNKNOWN: &str = "[unknown]";

/// Functions of Rust's std/core/alloc and of the C runtime's start-up code, which a
/// statically linked program carries in its own executable.
fn is_runtime_function(name: &str) -> bool {
    const RUNTIME_PREFIXES: [&str; 13] = [
        "std::", "core::", "alloc::", "<std::", "<core::", "<alloc::", "__rust", "rust_panic",
        "rust_begin_unwind", "_start", "__libc_", "start_thread", "[",
    ];
    // `<T as core::ops::FnOnce>::call_once` style names are the runtime too.
    RUNTIME_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
        || name.starts_with('<') && name.contains(" as core::ops::function::")
}

/// What the probes and the daemon saw and missed: every loss is shown in every report.
#[derive(Clone, Debug, Default)]
pub struct TraceCounts {
    pub calls_entered: u64,
    pub returned_without_waiting: u64,
    pub short_waits: u64,
    pub long_waits: u64,
    pub ring_buffer_full: u64,
    pub stack_unreadable: u64,
    pub stack_shortened: u64,
    pub in_flight_map_full: u64,
    /// Long waits whose unwinding stopped before the root.
    pub unwind_truncated: u64,
    /// Distinct addresses with no symbol.
    pub unknown_symbols: u64,
    /// read/write waits on descriptors that are not sockets (not socket waits: left out).
    pub non_socket_io: u64,
    /// read/write waits whose descriptor was closed before it could be resolved.
    pub unresolved_descriptors: u64,
}

/// Everything the exporters need about one recording.
#[derive(Clone, Debug)]
pub struct Profile {
    pub pid: u32,
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
}

impl Profile {
    /// Merges stacks that symbolize to the same frames and sorts them heaviest first.
    pub fn from_symbolized(
        mut base: Profile,
        symbolized: impl IntoIterator<Item = ProfileStack>,
    ) -> Profile {
        let mut merged: HashMap<(Vec<String>, WaitKind, bool), ProfileStack> = HashMap::new();
        for stack in symbolized {
            let names = stack.frames.iter().map(|frame| frame.name.clone()).collect();
            merged
                .entry((names, stack.kind, stack.truncated))
                .and_modify(|existing| existing.stats.merge(&stack.stats))
                .or_insert(stack);
        }
        let mut stacks: Vec<ProfileStack> = merged.into_values().collect();
        stacks.sort_by(|a, b| {
            b.stats
                .total_ns
                .cmp(&a.stats.total_ns)
                .then_with(|| a.kind.cmp(&b.kind))
        });
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
            truncated: false,
            stats,
        }
    }

    #[test]
    fn stats_count_total_max_and_threads() {
        let mut stats = WaitStats::default();
        stats.add(1, 10);
        stats.add(2, 30);
        stats.add(1, 20);
        assert_eq!((stats.waits, stats.total_ns, stats.max_ns), (3, 60, 30));
        assert_eq!(stats.threads.len(), 2);
    }

    #[test]
    fn raw_stacks_aggregate_by_addresses_and_kind() {
        let mut aggregate = WaitAggregate::default();
        let key = |kind| StackKey { addresses: vec![1, 2, 3], kind, truncated: false };
        aggregate.add(key(WaitKind::Futex), 7, 100);
        aggregate.add(key(WaitKind::Futex), 8, 50);
        aggregate.add(key(WaitKind::Send), 7, 5);
        assert_eq!(aggregate.stacks.len(), 2);
        assert_eq!(aggregate.stacks[&key(WaitKind::Futex)].total_ns, 150);
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
            pid: 1,
            comm: "app".into(),
            duration: Duration::from_secs(1),
            min_wait: Duration::from_millis(1),
            target_exited: false,
            stacks: vec![],
            below_threshold: vec![],
            counts: TraceCounts::default(),
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
