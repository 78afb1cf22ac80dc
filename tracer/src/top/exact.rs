//! `tracer top --mode exact`: an interval's blocked time from the probes, every wait of
//! one process of `--min-wait` or more as it ends (the shorter ones, which carry no stack,
//! as a row per kind), instead of the reads' estimate. Only
//! `sched_switch` is attached (top shows no wakers, so no process pays for the wake
//! probe), and a long wait whose sleep kept no stack copy gets one late
//! (`pipeline::late_copies`). The threads blocked now are still read by the process's
//! sampler: the probes see a wait's stack only when it ends.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracer_common::Counter;

use super::draw::ExactHeader;
use crate::{
    model::{ProfileStack, WaitAggregate, WaitStats},
    pipeline::counts::{below_threshold, short_waits_between},
    pipeline::{Traced, late_copies::LateCopies, target},
    probes::ShortWaitsByKind,
    probes::{
        ProbeConfig, Probes,
        events::{RingBuffers, WaitCollector},
    },
    report::summary::format_duration,
    stacks::Frame,
    stacks::ProcessUnwinder,
    threads::waits_before::adopt_waits_in_progress,
};

/// The probes of an exact view, and what their waits add up to between two refreshes.
pub struct ExactWaits {
    probes: Probes,
    rings: RingBuffers,
    collector: WaitCollector,
    late_copier: Option<LateCopies>,
    next_late_copies: Instant,
    /// When the interval began: its waits' blocked time is per second of it.
    interval_started: Instant,
    min_wait: Duration,
    /// The probes' totals of the waits under --min-wait when the interval began.
    short_waits_before: ShortWaitsByKind,
}

impl ExactWaits {
    /// Attaches the probes to process `pid` (its threads, not a Go program's goroutines).
    pub fn attach(pid: u32, min_wait: Duration) -> anyhow::Result<Self> {
        let Traced { image, .. } = Traced::open(pid, &[])?;
        let btf_path = target::btf_path()?;
        let config = ProbeConfig { tgid: pid, min_wait, wakers: false, maps: Default::default() };
        let mut probes = Probes::open(config, &btf_path)?;
        probes.attach_wait_probes()?;
        let rings = RingBuffers::take(&mut probes)?;
        let mut collector = WaitCollector::new(pid, ProcessUnwinder::new(pid, image));
        // Threads asleep since before the attach: their waits count when they end.
        let (ages, _) = adopt_waits_in_progress(pid, &mut probes)
            .with_context(|| format!("cannot read the waits in progress of pid {pid}"))?;
        collector.decoder.ages_at_start = ages;
        let late_copier = LateCopies::start(pid, &probes, min_wait);
        let short_waits_before = probes.short_waits()?;
        Ok(Self {
            probes,
            rings,
            collector,
            late_copier,
            next_late_copies: Instant::now(),
            interval_started: Instant::now(),
            min_wait,
            short_waits_before,
        })
    }

    /// Takes what the probes sent, and copies late the stacks of long waits that kept
    /// none when due.
    pub fn drain(&mut self) {
        self.rings.drain_pass(&mut self.collector);
        if let Some(late_copier) = &mut self.late_copier
            && Instant::now() >= self.next_late_copies
        {
            self.collector.decoder.late_copies += late_copier.poll(&mut self.probes);
            self.next_late_copies = Instant::now() + late_copier.interval();
        }
        self.probes.update_stack_spans(self.collector.decoder.stack_spans.take_changes());
    }

    /// When [`drain`](Self::drain) next has a late-copy look to make: the view's loop
    /// wakes for it, so that the look keeps its interval (10 ms while long waits come
    /// without a copy) and not the reads' period.
    pub fn next_look(&self) -> Option<Instant> {
        self.late_copier.as_ref().map(|_| self.next_late_copies)
    }

    /// The waits that ended since the last call: those of --min-wait or more by stack,
    /// the shorter ones (which carry none) as one row per kind, each row's blocked time
    /// per second of the interval; and the time they stand for.
    pub fn take_interval(&mut self) -> (WaitAggregate, Vec<ProfileStack>, Duration) {
        self.drain();
        let covered = self.interval_started.elapsed();
        self.interval_started = Instant::now();
        let short_waits = self.probes.short_waits().unwrap_or(self.short_waits_before);
        let grown = short_waits_between(&short_waits, &self.short_waits_before);
        self.short_waits_before = short_waits;
        let min_wait = format_duration(self.min_wait.as_nanos() as u64);
        let site = format!("(waits under {min_wait}: no stack)");
        let per_second = covered.as_secs_f64().max(1e-3);
        let short_rows = below_threshold(&grown)
            .into_iter()
            .filter(|(_, totals)| totals.count > 0)
            .map(|(kind, totals)| ProfileStack {
                // A row of its own, named for what it is: no place in the program.
                frames: vec![Frame {
                    name: site.clone(),
                    module: String::new(),
                    module_is_main: true,
                    file: None,
                    line: None,
                    inlined: false,
                    address: 0,
                }],
                kind,
                object: None,
                truncated: false,
                in_progress: false,
                stats: WaitStats {
                    waits: totals.count,
                    total_ns: (totals.total_ns as f64 / per_second) as u64,
                    ..WaitStats::default()
                },
                process: None,
            })
            .collect();
        (std::mem::take(&mut self.collector.aggregate), short_rows, covered)
    }

    /// What the header says: the threshold, and the waits lost so far (not reported:
    /// ring buffer full, task storage full, their end unseen; or reported without their
    /// stack).
    pub fn header(&self) -> ExactHeader {
        let lost = self.probes.counters().map_or(0, |counters| {
            [
                Counter::RingBufferFull,
                Counter::InFlightMapFull,
                Counter::WaitsDiscarded,
                Counter::StackUnreadable,
            ]
            .into_iter()
            .map(|counter| counters.get(counter))
            .sum()
        });
        ExactHeader { min_wait: self.min_wait, lost }
    }
}
