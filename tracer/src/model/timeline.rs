//! Time in the data: each long wait of a recording as a span on its thread's track (for
//! `.trace.json`, the timeline Perfetto and speedscope open), and per call site, second by
//! second, the threads blocked and the time blocked (in the JSON, and charted above the
//! flamegraph), so that "when did it start?" has an answer.
//!
//! `TimelineRecorder` takes raw waits as the sources see them (stack keys, `CLOCK_MONOTONIC`
//! times); `Timeline` is the same after symbolization, which names each key once.

use std::collections::{HashMap, VecDeque};

use tracer_common::WaitKind;

use super::{ProcessTag, StackKey, call_site::Language};
use crate::stacks::Frame;

/// Spans kept per recording: about 40 bytes each. Past it, spans are counted, not kept
/// (the per-second counts still take every wait).
pub const MAX_SPANS: usize = 500_000;

/// Seconds of per-second counts kept (an hour); a longer recording's later seconds are
/// left out of the counts (their spans are kept).
pub const MAX_SECONDS: usize = 3600;

const SECOND_NS: u64 = 1_000_000_000;

/// One wait on its thread's track, with a stack key interned by the recorder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSpan {
    pub tid: u32,
    /// Index of its key in the recorder's `keys`.
    pub key: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub flags: SpanFlags,
    /// The thread that woke it, if the probes saw one.
    pub waker_tid: Option<u32>,
}

/// What a span's ends mean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpanFlags {
    /// Still blocked when the recording ended: the span runs to the end.
    pub still_blocked: bool,
    /// It began before the recording: the span starts at the recording's start.
    pub began_before: bool,
}

/// The seconds of one stack: time blocked in each, and the threads blocked at its end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Seconds {
    blocked_ns: Vec<u64>,
    threads_at_end: Vec<u32>,
}

/// Waits with their times, as the sources see them; part of a recording's aggregate.
#[derive(Debug)]
pub struct TimelineRecorder {
    /// `CLOCK_MONOTONIC` of the recording's start: second 0 begins here.
    origin_ns: u64,
    keys: Vec<StackKey>,
    key_index: HashMap<StackKey, u32>,
    seconds: Vec<Seconds>,
    /// In the order they were added: for a rolling recorder, the order they ended.
    spans: VecDeque<RawSpan>,
    pub spans_dropped: u64,
    /// When the recording stopped, once it has: the waits still blocked then are read
    /// after it (the end's read), and end here.
    stop_ns: Option<u64>,
    /// The waits blocked at the stop added since, by thread and start: each counted once.
    at_stop: std::collections::HashSet<(u32, u64)>,
    /// Whether each wait is counted per second as it comes (a recording), or only kept
    /// as a span (a daemon's rolling window: counted when a window is taken).
    counting: bool,
}

impl TimelineRecorder {
    pub fn new(origin_ns: u64) -> Self {
        Self {
            origin_ns,
            keys: Vec::new(),
            key_index: HashMap::new(),
            seconds: Vec::new(),
            spans: VecDeque::new(),
            spans_dropped: 0,
            stop_ns: None,
            at_stop: std::collections::HashSet::new(),
            counting: true,
        }
    }

    /// The recording stopped at `stop_ns`: no span added from now on runs past it.
    pub fn stop(&mut self, stop_ns: u64) {
        self.stop_ns = Some(stop_ns);
    }

    /// For a daemon: the spans only, pruned (`prune_ended_before`), and a window taken
    /// of them when asked (`window_since`).
    pub fn rolling(origin_ns: u64) -> Self {
        Self { counting: false, ..Self::new(origin_ns) }
    }

    /// Drops the spans that ended before `ns` (a rolling recorder's come in the order
    /// they ended), and the stacks no span names any more.
    pub fn prune_ended_before(&mut self, ns: u64) {
        while self.spans.front().is_some_and(|span| span.end_ns < ns) {
            self.spans.pop_front();
        }
        // Objects (sockets, futexes) come and go: the stacks are interned again once most
        // of them are gone, so a long-running daemon's table does not grow for good.
        if self.keys.len() > 1024 && self.keys.len() > 2 * self.spans.len() {
            self.compact_keys();
        }
    }

    fn compact_keys(&mut self) {
        let old_keys = std::mem::take(&mut self.keys);
        self.key_index.clear();
        self.seconds.clear();
        let mut spans = std::mem::take(&mut self.spans);
        for span in &mut spans {
            span.key = self.intern(&old_keys[span.key as usize]);
        }
        self.spans = spans;
    }

    /// When the recorder began: its spans start no earlier.
    pub fn origin_ns(&self) -> u64 {
        self.origin_ns
    }

    /// The spans that reach past `origin_ns` (cut to it), counted per second from it,
    /// and as an aggregate of their parts in the window: a recording of the last window.
    pub fn window_since(&self, origin_ns: u64) -> (TimelineRecorder, super::WaitAggregate) {
        let mut window = TimelineRecorder::new(origin_ns);
        window.spans_dropped = self.spans_dropped;
        let mut aggregate = super::WaitAggregate::default();
        for span in self.spans.iter().filter(|span| span.end_ns > origin_ns) {
            let mut key = self.keys[span.key as usize].clone();
            window.add(
                span.tid,
                &key,
                span.start_ns,
                span.end_ns,
                span.flags.still_blocked,
                span.waker_tid,
            );
            // Cut at the daemon's own start, it began before too.
            if span.flags.began_before
                && let Some(added) = window.spans.back_mut()
            {
                added.flags.began_before = true;
            }
            key.in_progress = span.flags.still_blocked;
            let part_ns = span.end_ns - span.start_ns.max(origin_ns);
            let cut = span.start_ns < origin_ns || span.flags.began_before;
            if span.flags.still_blocked || cut {
                aggregate.add_lower_bound(key, span.tid, part_ns);
            } else {
                aggregate.add(key, span.tid, part_ns);
            }
        }
        (window, aggregate)
    }

    /// A wait of thread `tid` at `key` from `start_ns` to `end_ns` (`CLOCK_MONOTONIC`);
    /// one that began before the recording is cut at its start.
    pub fn add(
        &mut self,
        tid: u32,
        key: &StackKey,
        start_ns: u64,
        end_ns: u64,
        still_blocked: bool,
        waker_tid: Option<u32>,
    ) {
        if let Some(stop_ns) = self.stop_ns
            && start_ns >= stop_ns
        {
            // Begun after the recording stopped (the probes run on until the detach, and
            // the threads blocked at the end are read after it).
            return;
        }
        let began_before = start_ns < self.origin_ns;
        // A wait that ended after the stop (drained after it) was blocked at the stop: it
        // counts there as a still-blocked one does, once: its thread, read at the end,
        // may stand for it again (see `collect_blocked_threads`).
        let blocked_at_stop = still_blocked || self.stop_ns.is_some_and(|stop| end_ns > stop);
        if blocked_at_stop && self.stop_ns.is_some() && !self.at_stop.insert((tid, start_ns)) {
            return;
        }
        // A wait that ended between the attach and second 0 (drained after it) is cut to
        // nothing at second 0: no time before the origin is ever counted.
        let end_ns = self.stop_ns.map_or(end_ns, |stop| end_ns.min(stop)).max(self.origin_ns);
        let start_ns = start_ns.clamp(self.origin_ns, end_ns);
        let key = self.intern(key);
        if self.counting {
            self.count_seconds(key, start_ns, end_ns, blocked_at_stop);
        }
        if self.spans.len() >= MAX_SPANS {
            self.spans_dropped += 1;
            if self.counting {
                return; // a recording keeps its first spans
            }
            self.spans.pop_front(); // a rolling window keeps its latest
        }
        let flags = SpanFlags { still_blocked, began_before };
        self.spans.push_back(RawSpan { tid, key, start_ns, end_ns, flags, waker_tid });
    }

    fn intern(&mut self, key: &StackKey) -> u32 {
        // One key whether the wait ended or not: both are the same call site's.
        let mut key = key.clone();
        key.in_progress = false;
        if let Some(&index) = self.key_index.get(&key) {
            return index;
        }
        let index = self.keys.len() as u32;
        self.keys.push(key.clone());
        self.key_index.insert(key, index);
        self.seconds.push(Seconds::default());
        index
    }

    /// Adds the span's time to each second it overlaps, and counts its thread at the end
    /// of each second it spans (a still-blocked span also at the recording's end).
    fn count_seconds(&mut self, key: u32, start_ns: u64, end_ns: u64, still_blocked: bool) {
        let seconds = &mut self.seconds[key as usize];
        let from = start_ns.saturating_sub(self.origin_ns);
        let to = end_ns.saturating_sub(self.origin_ns);
        let first = (from / SECOND_NS) as usize;
        let last = (to.saturating_sub(1) / SECOND_NS) as usize;
        for second in first..=last.max(first) {
            if second >= MAX_SECONDS {
                break;
            }
            if seconds.blocked_ns.len() <= second {
                seconds.blocked_ns.resize(second + 1, 0);
                seconds.threads_at_end.resize(second + 1, 0);
            }
            let (begin, end) = (second as u64 * SECOND_NS, (second as u64 + 1) * SECOND_NS);
            seconds.blocked_ns[second] += to.min(end).saturating_sub(from.max(begin));
            // Blocked at the second's end: the span goes on past it (a still-blocked span
            // counts in its last, partial second too).
            if to > end || (still_blocked && second == last) {
                seconds.threads_at_end[second] += 1;
            }
        }
    }

    /// The interned keys, for naming: `Timeline::from_recorder` takes their names in the
    /// same order.
    pub fn keys(&self) -> &[StackKey] {
        &self.keys
    }

    /// The symbolized timeline: `names[i]` is the site of `keys()[i]`; `origin_unix_ns`
    /// the wall time of the recording's start.
    pub fn into_timeline(self, names: Vec<TimelineStack>, origin_unix_ns: Option<u64>) -> Timeline {
        let Self { origin_ns, seconds, spans, spans_dropped, .. } = self;
        let spans = spans
            .into_iter()
            .map(|span| TimelineSpan {
                pid: None,
                tid: span.tid,
                stack: span.key,
                start_ns: span.start_ns.saturating_sub(origin_ns),
                duration_ns: span.end_ns.saturating_sub(span.start_ns),
                flags: span.flags,
                waker_tid: span.waker_tid,
            })
            .collect();
        // Per call site (and kind), the seconds of every stack at it, summed.
        let mut by_site: Vec<SiteSeconds> = Vec::new();
        for (stack, seconds) in names.iter().zip(seconds) {
            let position = by_site.iter().position(|site| {
                site.site == stack.site && site.kind == stack.kind && site.process.is_none()
            });
            let site = match position {
                Some(index) => &mut by_site[index],
                None => {
                    by_site.push(SiteSeconds {
                        site: stack.site.clone(),
                        kind: stack.kind,
                        process: None,
                        threads: Vec::new(),
                        blocked_ns: Vec::new(),
                    });
                    by_site.last_mut().expect("just pushed")
                }
            };
            add_seconds(&mut site.blocked_ns, &seconds.blocked_ns);
            add_seconds(&mut site.threads, &seconds.threads_at_end);
        }
        by_site.sort_by_key(|site| std::cmp::Reverse(site.blocked_ns.iter().sum::<u64>()));
        Timeline { origin_unix_ns, stacks: names, spans, spans_dropped, seconds: by_site }
    }
}

fn add_seconds<T: Copy + Default + std::ops::AddAssign>(sum: &mut Vec<T>, add: &[T]) {
    if sum.len() < add.len() {
        sum.resize(add.len(), T::default());
    }
    for (sum, add) in sum.iter_mut().zip(add) {
        *sum += *add;
    }
}

/// A named stack of the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineStack {
    pub site: String,
    pub kind: WaitKind,
    pub object: Option<String>,
    /// Root first.
    pub frames: Vec<String>,
}

impl TimelineStack {
    pub fn new(frames: &[Frame], kind: WaitKind, object: Option<String>) -> Self {
        let language = Language::of(kind);
        Self {
            site: super::call_site::call_site(frames, language).to_string(),
            kind,
            object,
            frames: frames.iter().map(|frame| frame.name.clone()).collect(),
        }
    }
}

/// A wait on its thread's track; times from the recording's start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineSpan {
    /// Its process, in a timeline of several (else the profile's).
    pub pid: Option<u32>,
    pub tid: u32,
    /// Index into `Timeline::stacks`.
    pub stack: u32,
    pub start_ns: u64,
    pub duration_ns: u64,
    pub flags: SpanFlags,
    pub waker_tid: Option<u32>,
}

/// One call site's seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteSeconds {
    pub site: String,
    pub kind: WaitKind,
    /// Its process, in a profile of several.
    pub process: Option<ProcessTag>,
    /// Threads blocked at the end of each second.
    pub threads: Vec<u32>,
    /// Time blocked within each second.
    pub blocked_ns: Vec<u64>,
}

/// A recording's waits in time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Wall time of second 0, nanoseconds since the Unix epoch.
    pub origin_unix_ns: Option<u64>,
    pub stacks: Vec<TimelineStack>,
    /// Empty when read back from a saved profile (the JSON keeps the seconds only).
    pub spans: Vec<TimelineSpan>,
    pub spans_dropped: u64,
    /// Heaviest site first.
    pub seconds: Vec<SiteSeconds>,
}

impl Timeline {
    /// Several processes' timelines as one: each span and site names its process.
    pub fn of_processes(timelines: Vec<(ProcessTag, Timeline)>) -> Timeline {
        let mut merged = Timeline::default();
        for (process, timeline) in timelines {
            let offset = merged.stacks.len() as u32;
            merged.origin_unix_ns = match (merged.origin_unix_ns, timeline.origin_unix_ns) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            merged.stacks.extend(timeline.stacks);
            merged.spans.extend(timeline.spans.into_iter().map(|mut span| {
                span.pid = Some(process.pid);
                span.stack += offset;
                span
            }));
            merged.spans_dropped += timeline.spans_dropped;
            merged.seconds.extend(timeline.seconds.into_iter().map(|mut site| {
                site.process = Some(process.clone());
                site
            }));
        }
        merged.seconds.sort_by_key(|site| std::cmp::Reverse(site.blocked_ns.iter().sum::<u64>()));
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WaitObject;

    const S: u64 = SECOND_NS;
    const MS: u64 = 1_000_000;

    fn key(address: u64) -> StackKey {
        StackKey {
            addresses: vec![address],
            kind: WaitKind::Futex,
            object: WaitObject::None,
            truncated: false,
            in_progress: false,
        }
    }

    fn stack(site: &str) -> TimelineStack {
        TimelineStack { site: site.into(), kind: WaitKind::Futex, object: None, frames: vec![] }
    }

    #[test]
    fn seconds_take_each_span_s_overlap_and_the_threads_blocked_at_their_ends() {
        let origin = 100 * S;
        let mut recorder = TimelineRecorder::new(origin);
        // Thread 1: 0.5 s to 2.5 s. Thread 2: from before the start to 0.25 s.
        recorder.add(1, &key(1), origin + S / 2, origin + 5 * S / 2, false, Some(9));
        recorder.add(2, &key(1), origin - S, origin + S / 4, false, None);
        // Thread 3, at another stack of the same site: from 2.2 s, still blocked at 3 s.
        let mut still = key(2);
        still.in_progress = true;
        recorder.add(3, &still, origin + 2200 * MS, origin + 3 * S, true, None);
        let timeline = recorder.into_timeline(vec![stack("send"), stack("send")], Some(7));
        assert_eq!(timeline.seconds.len(), 1, "one site");
        let site = &timeline.seconds[0];
        assert_eq!(site.blocked_ns, [S / 2 + S / 4, S, S / 2 + 800 * MS]);
        // At 1 s and 2 s thread 1 is blocked; at 3 s (the end) thread 3 still is.
        assert_eq!(site.threads, [1, 1, 1]);
        let spans = &timeline.spans;
        assert_eq!(spans.len(), 3);
        assert_eq!((spans[1].start_ns, spans[1].duration_ns), (0, S / 4), "cut at the start");
        assert!(spans[1].flags.began_before && !spans[1].flags.still_blocked);
        assert!(spans[2].flags.still_blocked);
        assert_eq!(spans[0].waker_tid, Some(9));
        assert_eq!((spans[2].stack, spans[0].stack), (1, 0), "keys interned apart");
    }

    #[test]
    fn a_pileup_that_builds_up_shows_in_the_threads_per_second() {
        let mut recorder = TimelineRecorder::new(0);
        // Thread n blocks from second n on, to the end at 4 s.
        for tid in 0..4u32 {
            let start = u64::from(tid) * S + S / 10;
            recorder.add(tid, &key(1), start, 4 * S, true, None);
        }
        let timeline = recorder.into_timeline(vec![stack("enqueue")], None);
        assert_eq!(timeline.seconds[0].threads, [1, 2, 3, 4]);
    }

    #[test]
    fn spans_past_the_cap_are_counted_and_still_counted_per_second() {
        let mut recorder = TimelineRecorder::new(0);
        let filler = RawSpan {
            tid: 0,
            key: 0,
            start_ns: 0,
            end_ns: 0,
            flags: SpanFlags::default(),
            waker_tid: None,
        };
        recorder.spans = std::iter::repeat_n(filler, MAX_SPANS).collect();
        recorder.intern(&key(1));
        recorder.add(1, &key(1), 0, S / 2, false, None);
        assert_eq!(recorder.spans_dropped, 1);
        assert_eq!(recorder.seconds[0].blocked_ns, [S / 2]);
    }

    #[test]
    fn waits_that_ended_before_second_0_or_blocked_after_the_stop_count_nothing() {
        let origin = 100 * S;
        let mut recorder = TimelineRecorder::new(origin);
        // Ended in the attach's gap, drained after second 0.
        recorder.add(1, &key(1), origin - S, origin - S / 2, false, None);
        recorder.stop(origin + 2 * S);
        // Blocked only after the stop, read at the end.
        recorder.add(2, &key(1), origin + 3 * S, origin + 3 * S, true, None);
        // Still blocked at the end: cut at the stop.
        recorder.add(3, &key(1), origin + S, origin + 5 * S, true, None);
        let timeline = recorder.into_timeline(vec![stack("x")], None);
        let spans = &timeline.spans;
        assert_eq!(spans.len(), 2);
        assert_eq!((spans[0].start_ns, spans[0].duration_ns), (0, 0));
        assert_eq!((spans[1].start_ns, spans[1].duration_ns), (S, S));
        assert_eq!(timeline.seconds[0].blocked_ns, [0, S]);
        assert_eq!(timeline.seconds[0].threads, [0, 1]);
    }

    /// A wait in progress at the stop that ended before the final drain is counted at
    /// each second's end it spans, the stop's included, once: its thread, blocked again
    /// by the time the threads are read, is in a later wait (it was counted twice, a
    /// last whole second of 16 handlers reading 29).
    #[test]
    fn a_wait_that_ended_after_the_stop_counts_as_blocked_at_the_stop_once() {
        let origin = 100 * S;
        let mut recorder = TimelineRecorder::new(origin);
        recorder.stop(origin + 2 * S + S / 2);
        recorder.add(1, &key(1), origin + S + S / 2, origin + 2 * S + S * 6 / 10, false, None);
        // The same thread read at the end, standing for the same wait (in a later one by
        // then), and one begun after the stop.
        recorder.add(1, &key(1), origin + S + S / 2, origin + 3 * S, true, None);
        recorder.add(1, &key(1), origin + 2 * S + S * 7 / 10, origin + 3 * S, true, None);
        // Another thread's wait, blocked at the stop and read at the end: counted.
        recorder.add(2, &key(1), origin + 2 * S, origin + 3 * S, true, None);
        // A wait begun and ended after the stop (drained before the detach): nothing.
        recorder.add(
            3,
            &key(1),
            origin + 2 * S + S * 6 / 10,
            origin + 2 * S + S * 7 / 10,
            false,
            None,
        );
        let timeline = recorder.into_timeline(vec![stack("x")], None);
        assert_eq!(timeline.seconds[0].threads, [0, 1, 2]);
        assert_eq!(timeline.seconds[0].blocked_ns, [0, S / 2, S]);
        assert_eq!(timeline.spans.len(), 2);
    }

    #[test]
    fn a_rolling_recorder_keeps_its_latest_spans_and_forgets_old_stacks() {
        let mut rolling = TimelineRecorder::rolling(0);
        for n in 0..3000u64 {
            rolling.add(1, &key(n), n * 10, n * 10 + 5, false, None);
        }
        rolling.prune_ended_before(29_000);
        assert_eq!(rolling.spans.len(), 100);
        assert_eq!(rolling.keys.len(), 100, "the stacks of pruned spans are forgotten");
        let (window, _) = rolling.window_since(29_500);
        assert_eq!(window.spans.len(), 50);
    }

    #[test]
    fn a_rolling_window_is_a_recording_of_its_last_seconds() {
        let mut rolling = TimelineRecorder::rolling(0);
        rolling.add(1, &key(1), 0, 2 * S, false, None);
        rolling.add(2, &key(1), 5 * S, 9 * S, false, Some(1));
        rolling.add(3, &key(2), 7 * S, 10 * S, true, None);
        assert!(rolling.seconds.iter().all(|seconds| seconds.blocked_ns.is_empty()));
        rolling.prune_ended_before(3 * S);
        assert_eq!(rolling.spans.len(), 2, "the first span ended before");
        let (window, aggregate) = rolling.window_since(6 * S);
        // Thread 2 from 6 s (cut), thread 3 from 7 s, still blocked at 10 s.
        assert_eq!(window.seconds[0].blocked_ns, [S, S, S]);
        assert_eq!(window.seconds[1].blocked_ns, [0, S, S, S]);
        assert_eq!(window.seconds[1].threads_at_end, [0, 1, 1, 1]);
        assert!(window.spans[0].flags.began_before);
        let total: u64 = aggregate.stacks.values().map(|stats| stats.total_ns).sum();
        assert_eq!(total, 3 * S + 3 * S);
        let mut still = key(2);
        still.in_progress = true;
        assert!(aggregate.stacks[&still].lower_bound);
    }

    #[test]
    fn processes_keep_their_spans_and_sites_apart() {
        let timeline = |site: &str| Timeline {
            stacks: vec![stack(site)],
            spans: vec![TimelineSpan {
                pid: None,
                tid: 5,
                stack: 0,
                start_ns: 0,
                duration_ns: 1,
                flags: SpanFlags::default(),
                waker_tid: None,
            }],
            seconds: vec![SiteSeconds {
                site: site.into(),
                kind: WaitKind::Futex,
                process: None,
                threads: vec![1],
                blocked_ns: vec![1],
            }],
            ..Timeline::default()
        };
        let tag = |pid| ProcessTag { pid, comm: "app".into(), cgroup: None };
        let merged = Timeline::of_processes(vec![(tag(1), timeline("a")), (tag(2), timeline("b"))]);
        assert_eq!(merged.spans[1].pid, Some(2));
        assert_eq!(merged.stacks[merged.spans[1].stack as usize].site, "b");
        assert_eq!(merged.seconds.len(), 2);
    }
}
