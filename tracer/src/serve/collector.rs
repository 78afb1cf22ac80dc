//! The ring buffers' waits, aggregated per window: each `/debug/pprof/block` request
//! opens a window that gathers the waits ending while it is open, and the metrics
//! window gathers the waits since they were last folded into the Prometheus series.
//! Nothing accumulates beyond the open windows, so memory does not grow with uptime.

use std::collections::BTreeMap;

use crate::{
    model::{ProfileStack, WaitAggregate},
    probes::events::{Wait, WaitDecoder, WaitSink},
};

/// Distinct raw stacks one window keeps; waits on further new stacks are counted as
/// lost. Far above what a program's wait sites produce, far below what would hurt.
pub const MAX_WINDOW_STACKS: usize = 20_000;

/// Endpoint states (`send buffer full ...`) and sockets remembered for the profiles; a
/// service talking to many peers would otherwise grow these maps for as long as it runs.
pub const MAX_ENDPOINT_STATES: usize = 1_024;

/// One open window.
#[derive(Default)]
pub struct Window {
    /// Waits of the current attachment.
    pub aggregate: WaitAggregate,
    /// Waits of earlier attachments (the target restarted while the window was open),
    /// symbolized when they detached.
    pub earlier: Vec<ProfileStack>,
    /// Waits of earlier attachments that could not be symbolized when they detached.
    pub lost_waits: u64,
}

/// How many waits `aggregate` holds.
pub fn waits_in(aggregate: &WaitAggregate) -> u64 {
    aggregate.stacks.values().map(|stats| stats.waits).sum()
}

/// The drain task's sink: decodes records of the attached process into every window.
#[derive(Default)]
pub struct Collector {
    /// The attached process's decoder; None while nothing is attached.
    pub decoder: Option<WaitDecoder>,
    /// Attachment generation of `decoder`.
    pub generation: u64,
    pub windows: BTreeMap<u64, Window>,
    next_window: u64,
    /// Waits since the last fold into the Prometheus series.
    pub metrics_window: WaitAggregate,
    /// Records read from the ring buffers, over every attachment.
    pub records_read: u64,
    /// Waits left out of a window because it had too many distinct stacks.
    pub stacks_dropped: u64,
    /// Malformed records of earlier attachments (the decoder counts the current one's).
    pub earlier_malformed: u64,
    /// Unwinds truncated and wakers unmatched of earlier attachments, likewise.
    pub earlier_unwinds_truncated: u64,
    pub earlier_wakers_unmatched: u64,
    /// Waits of the metrics window that could not be symbolized (the target restarted
    /// meanwhile, or the symbolizer stopped).
    pub metrics_window_lost: u64,
    /// Waits of /debug/pprof/block windows that could not be symbolized when their
    /// process detached.
    pub block_window_lost: u64,
}

impl Collector {
    pub fn open_window(&mut self) -> u64 {
        let id = self.next_window;
        self.next_window += 1;
        self.windows.insert(id, Window::default());
        id
    }

    pub fn close_window(&mut self, id: u64) -> Option<Window> {
        self.windows.remove(&id)
    }

    pub fn malformed_records(&self) -> u64 {
        self.earlier_malformed
            + self.decoder.as_ref().map_or(0, |decoder| decoder.malformed_records)
    }

    /// Long waits whose unwinding stopped short, over every attachment (exact mode).
    pub fn unwinds_truncated(&self) -> u64 {
        self.earlier_unwinds_truncated
            + self.decoder.as_ref().map_or(0, |decoder| decoder.unwinder.truncated_unwinds)
    }

    /// Wakers whose wait's record never came, over every attachment (exact mode).
    pub fn wakers_unmatched(&self) -> u64 {
        self.earlier_wakers_unmatched
            + self.decoder.as_ref().map_or(0, |decoder| decoder.wakers_evicted)
    }

    /// Ends the attachment's decoder, its losses kept in the totals.
    pub fn end_decoder(&mut self) {
        if let Some(decoder) = self.decoder.take() {
            self.earlier_malformed += decoder.malformed_records;
            self.earlier_unwinds_truncated += decoder.unwinder.truncated_unwinds;
            self.earlier_wakers_unmatched += decoder.wakers_evicted;
        }
    }

    /// Adds the waits a sampled read saw end to every window, each stack unless that
    /// would take the window past its stack cap.
    pub fn add_ended(&mut self, ended: WaitAggregate) {
        self.records_read += waits_in(&ended);
        let Self { windows, metrics_window, stacks_dropped, .. } = self;
        for aggregate in
            std::iter::once(metrics_window).chain(windows.values_mut().map(|w| &mut w.aggregate))
        {
            for (key, stats) in &ended.stacks {
                if aggregate.stacks.len() >= MAX_WINDOW_STACKS
                    && !aggregate.stacks.contains_key(key)
                {
                    *stacks_dropped += stats.waits;
                    continue;
                }
                aggregate.stacks.entry(key.clone()).or_default().merge(stats);
            }
            aggregate
                .thread_names
                .extend(ended.thread_names.iter().map(|(tid, name)| (*tid, name.clone())));
        }
    }

    /// Adds `wait` to `aggregate` unless that would take it past its stack cap.
    fn add_capped(aggregate: &mut WaitAggregate, wait: Wait, dropped: &mut u64) {
        if aggregate.stacks.len() >= MAX_WINDOW_STACKS && !aggregate.stacks.contains_key(&wait.key)
        {
            *dropped += 1;
            return;
        }
        wait.add_to(aggregate);
    }
}

impl WaitSink for Collector {
    fn add_wake(&mut self, bytes: &[u8]) {
        self.records_read += 1;
        if let Some(decoder) = self.decoder.as_mut() {
            decoder.add_wake(bytes);
        }
    }

    fn add_record(&mut self, bytes: &[u8]) {
        self.records_read += 1;
        let Some(decoder) = self.decoder.as_mut() else {
            return;
        };
        let Some(wait) = decoder.decode(bytes) else {
            return;
        };
        decoder.objects.forget_endpoints_beyond(MAX_ENDPOINT_STATES);
        let Self { windows, metrics_window, stacks_dropped, .. } = self;
        // The metrics only need kind, site and object: no wakers.
        let for_metrics = Wait { waker: None, ..wait.clone() };
        Self::add_capped(metrics_window, for_metrics, stacks_dropped);
        for window in windows.values_mut() {
            Self::add_capped(&mut window.aggregate, wait.clone(), stacks_dropped);
        }
    }
}

/// Locks the collector for each record, so requests are never held up for longer
/// than one record's unwinding.
pub struct LockedCollector<'a>(pub &'a std::sync::Mutex<Collector>);

impl WaitSink for LockedCollector<'_> {
    fn add_wake(&mut self, bytes: &[u8]) {
        super::lock(self.0).add_wake(bytes);
    }

    fn add_record(&mut self, bytes: &[u8]) {
        super::lock(self.0).add_record(bytes);
    }
}
