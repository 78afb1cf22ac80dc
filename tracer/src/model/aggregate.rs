//! Waits aggregated by raw stack (addresses, wait kind, object) as they arrive, before
//! anything is symbolized: the cheap per-wait step of the pipeline.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tracer_common::WaitKind;

use super::WaitStats;

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
    /// An object named where it was read (a Python `Queue stats_queue`).
    Named(String),
}

/// One unwound stack (instruction addresses, leaf first) and the kind of wait at its tip.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub addresses: Vec<u64>,
    pub kind: WaitKind,
    pub object: WaitObject,
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
    /// The waits in time, when the recording keeps them (`record`).
    pub timeline: Option<super::timeline::TimelineRecorder>,
}

impl WaitAggregate {
    pub fn add(&mut self, key: StackKey, tid: u32, duration_ns: u64) {
        self.stacks.entry(key).or_default().add(u64::from(tid), duration_ns);
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
        self.stacks.entry(key).or_default().add_lower_bound(u64::from(tid), duration_ns);
    }
}
