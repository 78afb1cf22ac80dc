//! A sampled recording of goroutine waits: the goroutines read from outside at a rate,
//! with nothing attached to the process, so its cost does not grow with how often its
//! goroutines switch. Each read sees which goroutines wait where; a wait seen in `n` reads
//! counts `n` sampling periods of blocked time (waits shorter than a period are caught
//! in proportion to their length, so their counts are statistical). Only a goroutine
//! whose wait changed since the last read has its stack walked again.

use std::collections::HashMap;
use std::time::Duration;

use super::{
    WaitNamer,
    binary::GoBinary,
    goroutines::{Goroutine, GoroutineCounts, GoroutineReader},
    stacks::{GroupedWaits, WaitGroups},
};
use crate::{objects::WaitObjects, pipeline::target::Target, stacks::ProcessImage};

/// The rate when none is asked for: 49 reads a second (off the beat of timers that fire
/// at round rates), so a wait of 21 ms or more is always seen.
pub const DEFAULT_RATE_HZ: u32 = 49;

/// One goroutine's current wait, as the reads have seen it so far.
struct Wait {
    /// As last read (its object named when first seen).
    goroutine: Goroutine,
    /// The time between the reads that saw it and the reads before those.
    blocked_ns: u64,
    /// `CLOCK_MONOTONIC` of the first read that saw it.
    first_seen_ns: u64,
}

/// The waits through successive reads: which go on, which are new, which ended.
struct WaitTracker {
    period_ns: u64,
    /// When the recording began (`CLOCK_MONOTONIC`): the first read, taken at once, stands
    /// for the goroutines waiting then.
    started_ns: u64,
    /// When the first read was taken, if any was.
    first_read_ns: Option<u64>,
    /// When the last read was taken (`CLOCK_MONOTONIC`), if any was.
    last_read_ns: Option<u64>,
    /// The time the current read stands for: since the last read (a period for the
    /// first, and longer than a period when a read ran late).
    interval_ns: u64,
    /// The waits seen by the last read, by goroutine id.
    current: HashMap<u64, Wait>,
    /// The waits that ended, grouped.
    ended: WaitGroups,
    /// A window of a delta profile: the goroutines still waiting count from its start,
    /// not from when the runtime says they parked (consecutive windows add up).
    from_start_only: bool,
}

impl WaitTracker {
    /// A tracker of a recording that began at `started_ns` (`CLOCK_MONOTONIC`).
    fn new(period: Duration, started_ns: u64) -> Self {
        Self {
            period_ns: period.as_nanos() as u64,
            started_ns,
            first_read_ns: None,
            last_read_ns: None,
            interval_ns: 0,
            current: HashMap::new(),
            ended: WaitGroups::new(),
            from_start_only: false,
        }
    }

    /// The waiting goroutines of a read taken at `now_ns`: a wait still in progress gains
    /// the time since the last read, one no longer seen has ended. The goroutines the read
    /// `left_out` (changed while read: a busy goroutine, parking and waking all the time,
    /// often is) keep their wait as the last read saw it, for this read's time too: were
    /// they dropped, each such read would take its time from the goroutines that wait
    /// most (a ping-pong's blocked time read a fifth short). `left_out` is sorted.
    /// Returns the new waits, for
    /// [`WaitTracker::start`] once their objects are named.
    fn observe(
        &mut self,
        now_ns: u64,
        goroutines: Vec<Goroutine>,
        left_out: &[u64],
    ) -> Vec<Goroutine> {
        self.interval_ns = match self.last_read_ns {
            Some(last) => now_ns.saturating_sub(last),
            None => self.period_ns,
        };
        self.last_read_ns = Some(now_ns);
        self.first_read_ns.get_or_insert(now_ns);
        let mut previous = std::mem::take(&mut self.current);
        let mut new = Vec::new();
        for goroutine in goroutines {
            match previous.remove(&goroutine.goid) {
                Some(mut wait) if goroutine.same_wait(&wait.goroutine) => {
                    wait.blocked_ns += self.interval_ns;
                    wait.goroutine.wait_since = goroutine.wait_since;
                    self.current.insert(goroutine.goid, wait);
                }
                earlier => {
                    if let Some(earlier) = earlier {
                        self.end(earlier);
                    }
                    new.push(goroutine);
                }
            }
        }
        for (goid, mut wait) in previous {
            if left_out.binary_search(&goid).is_ok() {
                wait.blocked_ns += self.interval_ns;
                self.current.insert(goid, wait);
            } else {
                self.end(wait);
            }
        }
        new
    }

    fn start(&mut self, now_ns: u64, new: Vec<Goroutine>) {
        for goroutine in new {
            let wait = Wait { goroutine, blocked_ns: self.interval_ns, first_seen_ns: now_ns };
            self.current.insert(wait.goroutine.goid, wait);
        }
    }

    fn end(&mut self, wait: Wait) {
        let Goroutine { goid, wait_reason, pcs, truncated, object, .. } = wait.goroutine;
        let group = self
            .ended
            .entry((pcs, wait_reason, object))
            .or_insert_with(|| GroupedWaits { truncated, ..GroupedWaits::default() });
        // Goroutine ids stand in for thread ids: they tell the goroutines apart.
        group.stats.add(goid, wait.blocked_ns);
    }

    /// The ended waits, and the goroutines still waiting, each aged from the first read
    /// that saw it (from the recording's start for the first read, which is taken at once
    /// and so sees the goroutines waiting then), or from the runtime's `waitsince` if that
    /// is older.
    fn finish(self) -> (WaitGroups, Vec<Goroutine>) {
        let Self { current, ended, started_ns, first_read_ns, from_start_only, .. } = self;
        let started = i64::try_from(started_ns).unwrap_or(i64::MAX);
        let still = current
            .into_values()
            .map(|Wait { mut goroutine, first_seen_ns, .. }| {
                let first_seen_ns =
                    if Some(first_seen_ns) == first_read_ns { started_ns } else { first_seen_ns };
                let seen = i64::try_from(first_seen_ns).unwrap_or(i64::MAX);
                if goroutine.wait_since <= 0 || goroutine.wait_since > seen {
                    goroutine.wait_since = seen;
                }
                if from_start_only {
                    goroutine.wait_since = goroutine.wait_since.max(started);
                }
                goroutine
            })
            .collect();
        (ended, still)
    }
}

/// What a sampled recording gathered.
pub struct Sampled {
    /// The waits that ended during the recording.
    pub ended: WaitGroups,
    /// The goroutines still waiting at the last read.
    pub still_waiting: Vec<Goroutine>,
    /// When that read was taken (`CLOCK_MONOTONIC`), if any was: what they are aged at.
    pub last_read_ns: Option<u64>,
    /// The endpoints' states, as their waits were named.
    pub objects: WaitObjects,
    /// What the goroutines were doing at the last read.
    pub last_counts: GoroutineCounts,
    pub reads: u64,
    /// Goroutines left out of a read: changed while read, or unreadable.
    pub skipped: u64,
    /// Goroutines changed while read, read with the stack of their last read wait at the
    /// same place.
    pub read_at_last_place: u64,
    /// New IO waits whose descriptor could not be named, or was not a socket.
    pub io_wait_unresolved: u64,
    pub io_wait_not_socket: u64,
    /// New channel and lock waits whose channel or lock could not be read.
    pub objects_unnamed: u64,
}

/// Reads the goroutines of one Go process at a rate.
pub struct Sampler<'a> {
    target: &'a Target,
    reader: GoroutineReader<'a>,
    waits: WaitNamer<'a>,
    tracker: WaitTracker,
    reads: u64,
    skipped: u64,
    read_at_last_place: u64,
    io_wait_unresolved: u64,
    io_wait_not_socket: u64,
    objects_unnamed: u64,
    last_counts: GoroutineCounts,
}

impl<'a> Sampler<'a> {
    pub fn new(
        target: &'a Target,
        binary: &'a GoBinary<'a>,
        image: &'a ProcessImage,
        bias: u64,
        period: Duration,
    ) -> Self {
        Self {
            target,
            reader: super::reader(binary, target.pid, bias, true),
            waits: WaitNamer::new(target.pid, binary, image),
            tracker: WaitTracker::new(period, crate::threads::blocked_now::monotonic_now_ns()),
            reads: 0,
            skipped: 0,
            read_at_last_place: 0,
            io_wait_unresolved: 0,
            io_wait_not_socket: 0,
            objects_unnamed: 0,
            last_counts: GoroutineCounts::default(),
        }
    }

    /// Reads for a window of a delta profile (serve's `/debug/pprof/block`): the
    /// goroutines still waiting at the end count only their time in the window, so that
    /// an idle goroutine parked for hours is not counted whole in every window.
    pub fn for_a_window(mut self) -> Self {
        self.tracker.from_start_only = true;
        self
    }

    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.tracker.period_ns)
    }

    /// One read of the goroutines.
    pub fn read(&mut self) -> anyhow::Result<()> {
        let now_ns = crate::threads::blocked_now::monotonic_now_ns();
        let (goroutines, mut counts) = super::read_waiting(self.target, &mut self.reader)?;
        self.reads += 1;
        self.skipped += counts.changed_while_read + counts.unreadable;
        self.read_at_last_place += counts.read_at_last_place;
        let mut left_out = std::mem::take(&mut counts.left_out);
        left_out.sort_unstable();
        let mut new = self.tracker.observe(now_ns, goroutines, &left_out);
        // Only the new waits' descriptors are looked up: the others keep their object.
        if !new.is_empty() {
            self.waits.name(&mut new, &mut counts);
            self.reader.note_channels(&new);
        }
        self.tracker.start(now_ns, new);
        self.io_wait_unresolved += counts.io_wait_unresolved;
        self.io_wait_not_socket += counts.io_wait_not_socket;
        self.objects_unnamed += counts.objects_unnamed;
        self.last_counts = counts;
        Ok(())
    }

    pub fn finish(self) -> Sampled {
        let Self {
            waits: WaitNamer { objects, .. },
            tracker,
            reads,
            skipped,
            read_at_last_place,
            io_wait_unresolved,
            io_wait_not_socket,
            objects_unnamed,
            last_counts,
            ..
        } = self;
        let last_read_ns = tracker.last_read_ns;
        let (ended, still_waiting) = tracker.finish();
        Sampled {
            ended,
            still_waiting,
            last_read_ns,
            objects,
            last_counts,
            reads,
            skipped,
            read_at_last_place,
            io_wait_unresolved,
            io_wait_not_socket,
            objects_unnamed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn parked(goid: u64, pcs: &Arc<[u64]>, tracking_seq: u8) -> Goroutine {
        Goroutine {
            goid,
            address: 0xc000_0000 + goid * 0x100,
            sp: 0xc100_0000 + goid * 0x1000,
            tracking_seq: Some(tracking_seq),
            wait_reason: 14,
            wait_since: 0,
            pcs: Arc::clone(pcs),
            truncated: false,
            waiting: 0,
            gopc: 0,
            parent_goid: 0,
            object: None,
            blocked_on: None,
            selects_on: Vec::new(),
            channel_at_place: None,
            bp: 0,
            frameless: 0,
            stack_lo: 0,
            stack_hi: 0,
        }
    }

    #[test]
    fn a_wait_counts_one_period_per_read_that_saw_it() {
        let stack: Arc<[u64]> = vec![0x1000, 0x2000].into();
        let mut tracker = WaitTracker::new(Duration::from_millis(20), 0);
        // Goroutine 1 waits through three reads; goroutine 2 through one.
        for (read, goroutines) in [
            vec![parked(1, &stack, 5), parked(2, &stack, 9)],
            vec![parked(1, &stack, 5)],
            vec![parked(1, &stack, 5)],
            vec![],
        ]
        .into_iter()
        .enumerate()
        {
            let now = read as u64 * 20_000_000;
            let new = tracker.observe(now, goroutines, &[]);
            tracker.start(now, new);
        }
        let (ended, still) = tracker.finish();
        assert!(still.is_empty());
        let group = &ended[&(Arc::clone(&stack), 14, None)];
        assert_eq!(group.stats.waits, 2);
        assert_eq!(group.stats.total_ns, 80_000_000);
        assert_eq!(group.stats.max_ns, 60_000_000);
        assert_eq!(group.stats.threads.len(), 2);
    }

    #[test]
    fn goroutines_whose_ids_differ_past_32_bits_are_counted_apart() {
        let stack: Arc<[u64]> = vec![0x1000].into();
        let mut tracker = WaitTracker::new(Duration::from_millis(20), 0);
        // A service that made 2^32 goroutines since goroutine 7 started.
        let late = 7 + (1u64 << 32);
        for (read, goroutines) in
            [vec![parked(7, &stack, 5), parked(late, &stack, 5)], vec![]].into_iter().enumerate()
        {
            let now = read as u64 * 20_000_000;
            let new = tracker.observe(now, goroutines, &[]);
            tracker.start(now, new);
        }
        let (ended, _) = tracker.finish();
        let group = &ended[&(Arc::clone(&stack), 14, None)];
        assert_eq!(group.stats.threads.iter().copied().collect::<Vec<_>>(), [7, late]);
    }

    #[test]
    fn parking_again_at_the_same_place_is_a_new_wait() {
        let stack: Arc<[u64]> = vec![0x1000].into();
        let mut tracker = WaitTracker::new(Duration::from_millis(10), 0);
        let new = tracker.observe(0, vec![parked(1, &stack, 5)], &[]);
        assert_eq!(new.len(), 1);
        tracker.start(0, new);
        // Switched out again since (trackingSeq moved): the first wait ended.
        // A read that ran late stands for the whole time since the last.
        let new = tracker.observe(25_000_000, vec![parked(1, &stack, 6)], &[]);
        assert_eq!(new.len(), 1);
        tracker.start(25_000_000, new);
        let (ended, still) = tracker.finish();
        let first = &ended[&(Arc::clone(&stack), 14, None)].stats;
        assert_eq!((first.waits, first.total_ns), (1, 10_000_000));
        assert_eq!(still.len(), 1);
        assert_eq!(still[0].wait_since, 25_000_000);
    }

    #[test]
    fn a_goroutine_left_out_of_a_read_keeps_its_wait_for_that_read() {
        let stack: Arc<[u64]> = vec![0x1000].into();
        let mut tracker = WaitTracker::new(Duration::from_millis(10), 0);
        let new = tracker.observe(0, vec![parked(1, &stack, 5), parked(2, &stack, 5)], &[]);
        tracker.start(0, new);
        // Goroutine 1 changed while read: its wait holds for this read's 10 ms; goroutine
        // 2, no longer seen, ended.
        let new = tracker.observe(10_000_000, Vec::new(), &[1]);
        assert!(new.is_empty());
        let new = tracker.observe(20_000_000, vec![parked(1, &stack, 5)], &[]);
        assert!(new.is_empty(), "the same wait goes on");
        let (ended, still) = tracker.finish();
        let ended = &ended[&(Arc::clone(&stack), 14, None)].stats;
        assert_eq!((ended.waits, ended.total_ns), (1, 10_000_000), "goroutine 2's");
        assert_eq!(still.iter().map(|g| g.goid).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_still_waiting_goroutine_keeps_an_older_runtime_age() {
        let stack: Arc<[u64]> = vec![0x1000].into();
        let mut tracker = WaitTracker::new(Duration::from_millis(10), 2_000_000);
        let mut old = parked(1, &stack, 5);
        old.wait_since = 1_000;
        let new = tracker.observe(5_000_000, vec![old], &[]);
        tracker.start(5_000_000, new);
        let (_, still) = tracker.finish();
        assert_eq!(still[0].wait_since, 1_000);
    }

    #[test]
    fn a_goroutine_waiting_at_the_first_read_is_aged_from_the_recordings_start() {
        let stack: Arc<[u64]> = vec![0x1000].into();
        let mut tracker = WaitTracker::new(Duration::from_millis(10), 2_000_000);
        // No runtime age: waiting at the first read (taken at once), and one first seen later.
        let new = tracker.observe(5_000_000, vec![parked(1, &stack, 5)], &[]);
        tracker.start(5_000_000, new);
        let new =
            tracker.observe(15_000_000, vec![parked(1, &stack, 5), parked(2, &stack, 6)], &[]);
        tracker.start(15_000_000, new);
        let (_, still) = tracker.finish();
        let since = |goid| still.iter().find(|g| g.goid == goid).map(|g| g.wait_since);
        assert_eq!((since(1), since(2)), (Some(2_000_000), Some(15_000_000)));
    }

    #[test]
    fn a_window_counts_a_goroutine_parked_long_before_it_from_its_start() {
        let stack: Arc<[u64]> = vec![0x1000].into();
        let mut tracker = WaitTracker::new(Duration::from_millis(10), 2_000_000);
        tracker.from_start_only = true;
        // Parked at 1 µs by the runtime's clock, long before the window opened at 2 ms.
        let mut old = parked(1, &stack, 5);
        old.wait_since = 1_000;
        let new = tracker.observe(5_000_000, vec![old], &[]);
        tracker.start(5_000_000, new);
        let (_, still) = tracker.finish();
        assert_eq!(still[0].wait_since, 2_000_000);
    }
}
