//! The one mapping from what the probes and the decoder counted to the profile's
//! `TraceCounts`: every loss reaches every report under one name.

use tracer_common::{Counter, GoCounter, ShortWaitTotals, WAIT_KIND_COUNT, WaitKind};

use crate::{
    model::TraceCounts,
    objects::WaitObjects,
    probes::{ProbeCounters, ShortWaitsByKind, golang::GoProbeCounters},
};

/// What the probes and the collector saw and lost (`unknown_symbols` is filled in by
/// symbolization).
pub fn trace_counts(
    counters: &ProbeCounters,
    unwind_truncated: u64,
    objects: &WaitObjects,
    malformed_records: u64,
    wakers_unmatched: u64,
) -> TraceCounts {
    TraceCounts {
        waits_started: counters.get(Counter::WaitsStarted),
        waits_discarded: counters.get(Counter::WaitsDiscarded),
        short_waits: counters.get(Counter::ShortWaits),
        long_waits: counters.get(Counter::LongWaits),
        // A sampled recording's passes in the kernel lose to a full ring of their own.
        ring_buffer_full: counters.get(Counter::RingBufferFull)
            + counters.get(Counter::PassRingFull),
        stack_unreadable: counters.get(Counter::StackUnreadable),
        stack_shortened: counters.get(Counter::StackShortened),
        stack_partial: counters.get(Counter::StackPartial),
        span_samples: counters.get(Counter::SpanSamples),
        span_samples_dropped: counters.get(Counter::SpanSamplesDropped),
        sleep_copies_whole: counters.get(Counter::SleepCopiesWhole),
        sleep_copies: counters.get(Counter::SleepCopies),
        in_flight_map_full: counters.get(Counter::InFlightMapFull),
        wakes_seen: counters.get(Counter::WakesSent),
        wake_ring_buffer_full: counters.get(Counter::WakeRingBufferFull),
        unwind_truncated,
        unknown_symbols: 0,
        non_socket_io: objects.non_socket_io,
        unresolved_descriptors: objects.unresolved_sockets,
        malformed_records,
        // A sampled recording's passes in the kernel that could not be read whole.
        reads_lost: counters.get(Counter::PassesIncomplete),
        wakers_unmatched,
        ..TraceCounts::default()
    }
}

/// The waits under the threshold, per kind. read/write under the threshold are not
/// resolved to sockets (no record reaches userspace), so they stay `read`/`write`: any
/// descriptor. Goroutine and task waits are not syscalls: the probes never count them.
pub fn below_threshold(short_waits: &ShortWaitsByKind) -> Vec<(WaitKind, ShortWaitTotals)> {
    WaitKind::ALL
        .iter()
        .filter(|&&kind| !matches!(kind, WaitKind::Goroutine | WaitKind::Task))
        .map(|&kind| (kind, short_waits[kind as usize]))
        .collect()
}

/// What the per-kind totals under the threshold grew by from `then` to `now`.
pub fn short_waits_between(now: &ShortWaitsByKind, then: &ShortWaitsByKind) -> ShortWaitsByKind {
    let mut grown = [ShortWaitTotals::default(); WAIT_KIND_COUNT];
    for ((slot, now), then) in grown.iter_mut().zip(now).zip(then) {
        let ShortWaitTotals { count, total_ns } = now;
        slot.count = count.saturating_sub(then.count);
        slot.total_ns = total_ns.saturating_sub(then.total_ns);
    }
    grown
}

/// What the Go probes saw and lost: parks are the waits begun, ended waits the waits
/// reported; each loss has its own counter.
pub fn go_trace_counts(counters: &GoProbeCounters) -> TraceCounts {
    TraceCounts {
        waits_started: counters.get(GoCounter::Parks),
        long_waits: counters.get(GoCounter::WaitsEnded),
        go_parks_lost: counters.get(GoCounter::ParksLost),
        go_stacks_lost: counters.get(GoCounter::StacksLost),
        go_waits_lost: counters.get(GoCounter::WaitsLost),
        ..TraceCounts::default()
    }
}
