//! The numbers kept per set of waits: count, total, extremes, threads, histogram.

use std::collections::{BTreeMap, BTreeSet};

/// Count, total, shortest, longest and distinct threads of a set of waits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaitStats {
    pub waits: u64,
    pub total_ns: u64,
    /// Shortest wait (for waits in progress: the youngest).
    pub min_ns: u64,
    /// Longest wait (for waits in progress: the oldest).
    pub max_ns: u64,
    /// The ids of the threads that waited (of the goroutines, for Go stacks: a
    /// goroutine's id is 64 bits, and a long-lived service's pass 2^32).
    pub threads: BTreeSet<u64>,
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
    pub fn add(&mut self, tid: u64, duration_ns: u64) {
        // The first wait with a duration sets the minimum (a wait of unknown age has none).
        self.min_ns =
            if self.log2_histogram.is_empty() { duration_ns } else { self.min_ns.min(duration_ns) };
        self.waits += 1;
        self.total_ns += duration_ns;
        self.max_ns = self.max_ns.max(duration_ns);
        self.threads.insert(tid);
        *self.log2_histogram.entry(log2_bucket(duration_ns)).or_default() += 1;
    }

    /// Adds many waits known only to be at least their age (`None`: an age not known at
    /// all, as in `add_unaged`), by thread id. The id set is sorted and built once: a
    /// snapshot of 600,000 goroutines in one group inserts no id one by one.
    pub fn add_lower_bounds(&mut self, waits: impl IntoIterator<Item = (u64, Option<u64>)>) {
        let mut ids: Vec<u64> = std::mem::take(&mut self.threads).into_iter().collect();
        // Buckets counted in an array, then merged: one map entry per bucket, not per wait.
        let mut buckets = [0u64; 64];
        // The first wait with a duration sets the minimum, as in `add`.
        let mut first = self.log2_histogram.is_empty();
        for (tid, age) in waits {
            self.waits += 1;
            if let Some(duration_ns) = age {
                self.min_ns = if first { duration_ns } else { self.min_ns.min(duration_ns) };
                first = false;
                self.total_ns += duration_ns;
                self.max_ns = self.max_ns.max(duration_ns);
                buckets[log2_bucket(duration_ns) as usize] += 1;
            }
            ids.push(tid);
        }
        for (bucket, count) in (0u32..).zip(buckets).filter(|&(_, count)| count > 0) {
            *self.log2_histogram.entry(bucket).or_default() += count;
        }
        self.lower_bound = true;
        ids.sort_unstable();
        ids.dedup();
        self.threads = ids.into_iter().collect();
    }

    /// Adds a wait whose age is not known at all (a goroutine whose runtime has not
    /// recorded when it began waiting): it counts, its time does not.
    pub fn add_unaged(&mut self, tid: u64) {
        self.waits += 1;
        self.threads.insert(tid);
        // Shown as "≥0", like a thread whose age the scheduler does not tell.
        self.lower_bound = true;
    }

    /// Adds a wait whose duration is only known to be at least `duration_ns`.
    pub fn add_lower_bound(&mut self, tid: u64, duration_ns: u64) {
        self.add(tid, duration_ns);
        self.lower_bound = true;
    }

    pub fn merge(&mut self, other: &WaitStats) {
        let WaitStats { waits, total_ns, min_ns, max_ns, threads, lower_bound, log2_histogram } =
            other;
        if *waits == 0 {
            return;
        }
        if !log2_histogram.is_empty() || self.log2_histogram.is_empty() && self.waits == 0 {
            self.min_ns =
                if self.log2_histogram.is_empty() { *min_ns } else { self.min_ns.min(*min_ns) };
        }
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
