//! The probes' ring buffers, read as they fill: records decoded into waits (unwound, their
//! objects resolved, paired with their wakers) for `record`'s aggregate or `serve`'s windows.

use std::{
    collections::HashMap,
    mem::{offset_of, size_of},
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracer_common::{
    STACK_COPY_BYTES, WAIT_BEGAN_BEFORE, WAIT_SPAN_SAMPLE, WAIT_STACK_FROM_SLEEP_COPY, WaitKind,
    WaitRecord, WakeRecord,
};

use crate::{
    model::{StackKey, WaitAggregate},
    objects::WaitObjects,
    probes::{Probes, stack_spans::StackSpans},
    stacks::{ProcessUnwinder, UnwoundAddresses, UserRegs},
    threads::waits_before::AgesAtStart,
    timer::Ticks,
};

/// How often the buffers are drained when the probes have not woken us. The probes wake
/// userspace only once a buffer is a quarter full: a wake-up per record would put the
/// tracer on a CPU the traced service needs hundreds of times a second. Each drain wakes
/// the tracer's CPU, which a service on the other CPU pays for here (a process waking 49
/// times a second costs a futex ping-pong about 2%, docs/overhead-log.md): 4 a second,
/// as the sampled mode's drains, not 10 (session 37).
const DRAIN_INTERVAL: Duration = Duration::from_millis(250);

/// The drain interval doubles after each drain that found nothing, up to this: a target
/// that does not wait long wakes the tracer's CPU 2.5 times a second, not 4 (each
/// wake-up of an idle CPU costs the service on the next one; docs/overhead-log.md), and
/// the first waits after a quiet spell are read within this.
pub const QUIET_DRAIN_INTERVAL: Duration = Duration::from_millis(400);

/// Records taken from each buffer in one pass while the probes run. A consumer slower than
/// the probes (a busy target, a tracer short of CPU) would otherwise drain for ever and
/// never see its deadline or a signal; what it cannot keep up with fills the buffers, and
/// the probes count what they drop.
const MAX_RECORDS_PER_PASS: usize = 4096;

/// The probes' two ring buffers: long waits, and the wakers of long futex waits.
pub struct RingBuffers {
    waits: AsyncFd<RingBuf<MapData>>,
    wakes: AsyncFd<RingBuf<MapData>>,
    drain_ticks: Ticks,
}

impl RingBuffers {
    /// Takes both ring buffers out of the probes and registers them with the runtime.
    pub fn take(probes: &mut Probes) -> anyhow::Result<Self> {
        Ok(Self {
            waits: poll_readable(probes.take_wait_records()?)
                .context("cannot poll the probes' ring buffer")?,
            wakes: poll_readable(probes.take_wake_records()?)
                .context("cannot poll the probes' ring buffer")?,
            drain_ticks: Ticks::every(DRAIN_INTERVAL).context("cannot make the drain timer")?,
        })
    }

    /// Waits until the probes wake us or the drain timer ticks, then drains both
    /// buffers into `sink` (wakes first). Cancel-safe: records stay in the buffers until
    /// drained.
    pub async fn drain_when_ready(&mut self, sink: &mut impl WaitSink) -> anyhow::Result<()> {
        let Self { waits, wakes, drain_ticks } = self;
        let limit = Some(MAX_RECORDS_PER_PASS);
        // A buffer left with records stays ready: the next pass comes at once.
        let drained = tokio::select! {
            guard = waits.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                let drained = drain(wakes.get_mut(), guard.get_inner_mut(), sink, limit);
                if drained.emptied {
                    guard.clear_ready();
                }
                drained
            }
            guard = wakes.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                let drained = drain(guard.get_inner_mut(), waits.get_mut(), sink, limit);
                if drained.emptied {
                    guard.clear_ready();
                }
                drained
            }
            ticked = drain_ticks.tick() => {
                ticked.context("waiting for the drain timer")?;
                drain(wakes.get_mut(), waits.get_mut(), sink, limit)
            }
        };
        drain_ticks.set_period(next_drain_interval(drain_ticks.period(), drained.records));
        Ok(())
    }

    /// Drains at most a pass of records from each buffer now, without waiting: while the
    /// probes still run.
    pub fn drain_pass(&mut self, sink: &mut impl WaitSink) {
        drain(self.wakes.get_mut(), self.waits.get_mut(), sink, Some(MAX_RECORDS_PER_PASS));
    }

    /// Drains whatever is in both buffers now, without waiting: once the probes are
    /// detached or write no more (the target gone), so that the draining ends.
    pub fn drain_now(&mut self, sink: &mut impl WaitSink) {
        drain(self.wakes.get_mut(), self.waits.get_mut(), sink, None);
    }
}

/// The drain interval after a drain that handed on `records`: back to the shortest when
/// there were any, twice as long (up to `QUIET_DRAIN_INTERVAL`) when there were none.
fn next_drain_interval(interval: Duration, records: usize) -> Duration {
    if records > 0 { DRAIN_INTERVAL } else { (interval * 2).min(QUIET_DRAIN_INTERVAL) }
}

/// What a drain did: the records it handed on, and whether it emptied both buffers (or
/// stopped at its limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Drained {
    records: usize,
    emptied: bool,
}

/// Registers an owned descriptor with the runtime, for readiness to read.
pub fn poll_readable<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor (a ring-buffer map or a pidfd), which stays
    // open and the same for as long as the AsyncFd holds `inner`.
    Ok(unsafe { AsyncFd::register_with_interest(inner, Interest::READABLE) }?)
}

pub async fn readable(fd: &AsyncFd<OwnedFd>) {
    // A pidfd polls readable once, when the process exits.
    if let Ok(mut guard) = fd.readable().await {
        guard.retain_ready();
    }
}

/// Wakes first, so that each long wait finds its waker: the probes send a waker before
/// its wait's record, and each wait record is handed on only once the wakers sent before
/// it are in (one may reach its buffer after the pass over the wakes, while the record
/// read after that pass is already in its own).
fn drain(
    wakes: &mut impl RecordSource,
    waits: &mut impl RecordSource,
    sink: &mut impl WaitSink,
    limit: Option<usize>,
) -> Drained {
    let limit = limit.unwrap_or(usize::MAX);
    let mut late_wakes = 0;
    let wakes_drained = drain_source(wakes, limit, |bytes| sink.add_wake(bytes));
    let waits_drained = drain_source(waits, limit, |bytes| {
        late_wakes += drain_source(wakes, usize::MAX, |waker| sink.add_wake(waker)).records;
        sink.add_record(bytes)
    });
    Drained {
        records: wakes_drained.records + late_wakes + waits_drained.records,
        emptied: wakes_drained.emptied && waits_drained.emptied,
    }
}

/// Hands at most `limit` records of `source` to `add`; not `emptied` when it took that
/// many (more may be left).
fn drain_source(
    source: &mut impl RecordSource,
    limit: usize,
    mut add: impl FnMut(&[u8]),
) -> Drained {
    let mut records = 0;
    while records < limit {
        if !source.take_one(&mut add) {
            return Drained { records, emptied: true };
        }
        records += 1;
    }
    Drained { records, emptied: false }
}

/// A buffer of records read one at a time: the probes' ring buffers (a unit test's queue).
trait RecordSource {
    /// Hands the oldest record to `add` and consumes it; false when there is none.
    fn take_one(&mut self, add: &mut dyn FnMut(&[u8])) -> bool;
}

impl RecordSource for RingBuf<MapData> {
    fn take_one(&mut self, add: &mut dyn FnMut(&[u8])) -> bool {
        // The item borrows the ring until dropped, which consumes the record.
        match self.next() {
            Some(item) => {
                add(&item);
                true
            }
            None => false,
        }
    }
}

/// Where the ring buffers' records go: `record`'s one aggregate, or `serve`'s windows.
pub trait WaitSink {
    /// A waker record (the stack of a thread that woke a long futex wait).
    fn add_wake(&mut self, bytes: &[u8]);
    /// A long-wait record.
    fn add_record(&mut self, bytes: &[u8]);
}

/// Wakers waiting for their wait's record, by (woken thread, wait start). Bounded: a
/// wake whose wait never ends (or was dropped) must not pile up.
const MAX_PENDING_WAKERS: usize = 65_536;

/// One long wait, unwound and resolved, with its waker when one was seen.
#[derive(Clone, Debug)]
pub struct Wait {
    pub key: StackKey,
    pub tid: u32,
    pub duration_ns: u64,
    /// The thread's name (`comm`) when the wait ended.
    pub thread_name: String,
    /// The waker's thread id and unwound stack.
    pub waker: Option<(u32, Vec<u64>)>,
    /// It began before the recording: `duration_ns` adds its earlier part as the
    /// scheduler knew it, a lower bound.
    pub lower_bound: bool,
    /// When it ended (`CLOCK_MONOTONIC`): it began `duration_ns` before.
    pub end_ns: u64,
}

impl Wait {
    pub fn add_to(self, aggregate: &mut WaitAggregate) {
        let Self { key, tid, duration_ns, thread_name, waker, lower_bound, end_ns } = self;
        if let Some(timeline) = &mut aggregate.timeline {
            let waker_tid = waker.as_ref().map(|(waker_tid, _)| *waker_tid);
            let start_ns = end_ns.saturating_sub(duration_ns);
            timeline.add(tid, &key, start_ns, end_ns, false, waker_tid);
        }
        if let Some((waker_tid, waker_stack)) = waker {
            aggregate.add_waker(&key, waker_tid, waker_stack);
        }
        if lower_bound {
            aggregate.add_lower_bound(key, tid, duration_ns);
        } else {
            aggregate.add(key, tid, duration_ns);
        }
        aggregate.name_thread(tid, &thread_name);
    }
}

/// Turns ring-buffer records into `Wait`s: unwinds stacks, resolves what each wait
/// waits on, and pairs each wait with its waker.
pub struct WaitDecoder {
    pub unwinder: ProcessUnwinder,
    pub objects: WaitObjects,
    /// Waker (tid, unwound stack) of a long wait, until the wait's own record arrives.
    pub pending_wakers: HashMap<(u32, u64), (u32, Vec<u64>)>,
    pub malformed_records: u64,
    /// Pending wakers dropped because the table was full.
    pub wakers_evicted: u64,
    /// How long the waits handed to the probes at the attach had lasted by then, by
    /// thread (`threads::waits_before`).
    pub ages_at_start: AgesAtStart,
    /// How much of each thread's stack its walks read, for the probes' sleep copies.
    pub stack_spans: StackSpans,
    /// Long waits' stacks copied from outside while they slept (`pipeline::late_copies`).
    pub late_copies: u64,
}

/// One field of a record in ring-buffer bytes, read in place: copying a whole record would
/// copy its 16 KiB stack, which was a fifth of the tracer's CPU on a busy service.
/// The caller has checked that `bytes` holds a whole record.
macro_rules! field {
    ($bytes:expr, $record:ty, $field:ident) => {{
        let bytes: &[u8] = $bytes;
        assert!(bytes.len() >= size_of::<$record>());
        // SAFETY: the field lies inside `bytes` (asserted above); the records' fields are
        // integers and byte arrays, valid for every bit pattern; read_unaligned needs no
        // alignment. The type is the field's own: `$record` names it at `offset_of!`, and
        // `field_type` ties the read to it.
        unsafe {
            field_type(|r: &$record| &r.$field, bytes.as_ptr().add(offset_of!($record, $field)))
        }
    }};
}

/// The user registers and the stack copy (borrowed) of a record; wait and waker records
/// name these fields alike.
macro_rules! regs_and_stack {
    ($bytes:expr, $record:ty) => {
        (
            UserRegs {
                ip: field!($bytes, $record, ip),
                sp: field!($bytes, $record, sp),
                bp: field!($bytes, $record, bp),
            },
            stack_of($bytes, offset_of!($record, stack), field!($bytes, $record, stack_len)),
        )
    };
}

/// Reads a `T` at `at`, with `T` inferred from `_field`, a projection to the field.
///
/// # Safety
/// `at` must point to `size_of::<T>()` readable bytes holding a valid `T`.
unsafe fn field_type<R, T: Copy>(_field: impl Fn(&R) -> &T, at: *const u8) -> T {
    // SAFETY: as the caller promises.
    unsafe { std::ptr::read_unaligned(at.cast()) }
}

/// The stack copy of a record, borrowed from the ring buffer: `len` bytes (as the probe
/// wrote them, at most the copy's size) from `offset`.
fn stack_of(bytes: &[u8], offset: usize, len: u32) -> &[u8] {
    let stack = &bytes[offset..];
    &stack[..(len as usize).min(STACK_COPY_BYTES).min(stack.len())]
}

impl WaitDecoder {
    pub fn new(pid: u32, unwinder: ProcessUnwinder) -> Self {
        Self {
            unwinder,
            objects: WaitObjects::new(pid),
            pending_wakers: HashMap::new(),
            malformed_records: 0,
            wakers_evicted: 0,
            ages_at_start: AgesAtStart::new(),
            stack_spans: StackSpans::default(),
            late_copies: 0,
        }
    }

    pub fn add_wake(&mut self, bytes: &[u8]) {
        if bytes.len() < size_of::<WakeRecord>() {
            self.malformed_records += 1;
            return;
        }
        let (regs, stack) = regs_and_stack!(bytes, WakeRecord);
        let walked = self.unwinder.unwind_uncounted(regs, stack);
        if self.pending_wakers.len() >= MAX_PENDING_WAKERS {
            self.wakers_evicted += self.pending_wakers.len() as u64;
            self.pending_wakers.clear();
        }
        let wakee: u32 = field!(bytes, WakeRecord, wakee_tid);
        let wait_start_ns: u64 = field!(bytes, WakeRecord, wait_start_ns);
        self.pending_wakers.insert(
            (wakee, wait_start_ns),
            (field!(bytes, WakeRecord, waker_tid), walked.addresses),
        );
    }

    /// Unwinds the stack of a wait record (of thread `tid`, with `flags`); when it is a
    /// sleep copy, learns from the walk how much of the thread's stack its next sleep
    /// copies at the same registers need.
    fn walk(&mut self, bytes: &[u8], tid: u32, flags: u32) -> UnwoundAddresses {
        let (regs, stack) = regs_and_stack!(bytes, WaitRecord);
        // A span sample is no wait: its walk stopping short loses nothing reported.
        let walked = match flags & WAIT_SPAN_SAMPLE {
            0 => self.unwinder.unwind(regs, stack),
            _ => self.unwinder.unwind_uncounted(regs, stack),
        };
        if flags & WAIT_STACK_FROM_SLEEP_COPY != 0 {
            self.stack_spans.learn(tid, regs, !walked.truncated, walked.read_bytes);
        }
        walked
    }

    /// The wait of one record; None for a malformed record, a wait not reported
    /// (read/write off sockets), or a span sample (a short wait's copy, only walked).
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Wait> {
        if bytes.len() < size_of::<WaitRecord>() {
            self.malformed_records += 1;
            return None;
        }
        let Some(kind) = WaitKind::from_u32(field!(bytes, WaitRecord, kind)) else {
            self.malformed_records += 1;
            return None;
        };
        let tid: u32 = field!(bytes, WaitRecord, tid);
        let flags: u32 = field!(bytes, WaitRecord, flags);
        if flags & WAIT_SPAN_SAMPLE != 0 {
            self.walk(bytes, tid, flags);
            return None;
        }
        let object: u64 = field!(bytes, WaitRecord, object);
        let opened_on: u32 = field!(bytes, WaitRecord, object_inode);
        let (kind, object) = self.objects.resolve_opened(kind, object, u64::from(opened_on))?;
        let walked = self.walk(bytes, tid, flags);
        let key = StackKey {
            addresses: walked.addresses,
            kind,
            object,
            truncated: walked.truncated,
            in_progress: false,
        };
        let start_ns: u64 = field!(bytes, WaitRecord, start_ns);
        let waker = self.pending_wakers.remove(&(tid, start_ns));
        let comm: [u8; 16] = field!(bytes, WaitRecord, comm);
        let mut duration_ns: u64 = field!(bytes, WaitRecord, duration_ns);
        let end_ns = start_ns.saturating_add(duration_ns);
        let lower_bound = flags & WAIT_BEGAN_BEFORE != 0;
        if lower_bound {
            duration_ns += self.ages_at_start.remove(&tid).unwrap_or(0);
        }
        let thread_name = self.unwinder.thread_name(tid).unwrap_or_else(|| super::comm_text(&comm));
        Some(Wait { key, tid, duration_ns, thread_name, waker, lower_bound, end_ns })
    }
}

/// Turns wait records into unwound stacks and aggregates them as they arrive.
pub struct WaitCollector {
    pub decoder: WaitDecoder,
    pub aggregate: WaitAggregate,
}

impl WaitCollector {
    pub fn new(pid: u32, unwinder: ProcessUnwinder) -> Self {
        Self { decoder: WaitDecoder::new(pid, unwinder), aggregate: WaitAggregate::default() }
    }
}

impl WaitSink for WaitCollector {
    fn add_wake(&mut self, bytes: &[u8]) {
        self.decoder.add_wake(bytes);
    }

    fn add_record(&mut self, bytes: &[u8]) {
        if let Some(wait) = self.decoder.decode(bytes) {
            wait.add_to(&mut self.aggregate);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    impl RecordSource for VecDeque<Vec<u8>> {
        fn take_one(&mut self, add: &mut dyn FnMut(&[u8])) -> bool {
            self.pop_front().map(|record| add(&record)).is_some()
        }
    }

    /// Records in the order the sink saw them: wakes as `w`, waits as `r`.
    #[derive(Default)]
    struct Seen(Vec<(char, u8)>);

    impl WaitSink for Seen {
        fn add_wake(&mut self, bytes: &[u8]) {
            self.0.push(('w', bytes[0]));
        }
        fn add_record(&mut self, bytes: &[u8]) {
            self.0.push(('r', bytes[0]));
        }
    }

    fn queue(records: std::ops::Range<u8>) -> VecDeque<Vec<u8>> {
        records.map(|n| vec![n]).collect()
    }

    #[test]
    fn a_pass_takes_at_most_its_limit_from_each_buffer_wakes_first() {
        let (mut wakes, mut waits) = (queue(0..5), queue(10..13));
        let mut seen = Seen::default();
        // 3 wakes, the 2 over the limit with the first record, and 3 records.
        let drained = drain(&mut wakes, &mut waits, &mut seen, Some(3));
        assert_eq!(drained, Drained { records: 8, emptied: false });
        // The wakes over the limit still come before the first wait record: one of them
        // may be its waker.
        let expected = [('w', 0), ('w', 1), ('w', 2), ('w', 3), ('w', 4), ('r', 10)];
        assert_eq!(seen.0[..6], expected);
        assert_eq!(seen.0[6..], [('r', 11), ('r', 12)]);
        assert_eq!((wakes.len(), waits.len()), (0, 0));
        // The next pass finds the buffers empty, and says so.
        let mut seen = Seen::default();
        let drained = drain(&mut wakes, &mut waits, &mut seen, Some(3));
        assert_eq!(drained, Drained { records: 0, emptied: true });
        assert!(seen.0.is_empty());
    }

    /// The wakes buffer, shared with a waits buffer that fills it as the probes do.
    #[derive(Default, Clone)]
    struct SharedWakes(std::rc::Rc<std::cell::RefCell<VecDeque<Vec<u8>>>>);

    impl RecordSource for SharedWakes {
        fn take_one(&mut self, add: &mut dyn FnMut(&[u8])) -> bool {
            let record = self.0.borrow_mut().pop_front();
            record.map(|record| add(&record)).is_some()
        }
    }

    /// Wait records whose wakers the probes sent just before them, but which reach the
    /// wakes buffer only as the record is read: after the pass over the wakes.
    struct WaitsWithLateWakers {
        waits: VecDeque<Vec<u8>>,
        wakes: SharedWakes,
    }

    impl RecordSource for WaitsWithLateWakers {
        fn take_one(&mut self, add: &mut dyn FnMut(&[u8])) -> bool {
            let Some(record) = self.waits.pop_front() else { return false };
            self.wakes.0.borrow_mut().push_back(vec![record[0] + 100]);
            add(&record);
            true
        }
    }

    #[test]
    fn a_waker_that_arrives_after_the_pass_over_the_wakes_still_comes_before_its_wait() {
        let mut wakes = SharedWakes::default();
        let mut waits = WaitsWithLateWakers { waits: queue(1..3), wakes: wakes.clone() };
        let mut seen = Seen::default();
        let drained = drain(&mut wakes, &mut waits, &mut seen, None);
        assert_eq!(drained, Drained { records: 4, emptied: true });
        assert_eq!(seen.0, [('w', 101), ('r', 1), ('w', 102), ('r', 2)]);
    }

    #[test]
    fn a_pass_that_fills_its_limit_says_so_even_if_nothing_is_left() {
        let (mut wakes, mut waits) = (queue(0..0), queue(0..4));
        let drained = drain(&mut wakes, &mut waits, &mut Seen::default(), Some(4));
        assert_eq!(drained, Drained { records: 4, emptied: false });
        let drained = drain(&mut wakes, &mut waits, &mut Seen::default(), Some(4));
        assert_eq!(drained, Drained { records: 0, emptied: true });
    }

    #[test]
    fn an_unbounded_drain_empties_both_buffers() {
        let (mut wakes, mut waits) = (queue(0..200), queue(0..255));
        let mut seen = Seen::default();
        let drained = drain(&mut wakes, &mut waits, &mut seen, None);
        assert_eq!(drained, Drained { records: 455, emptied: true });
        assert_eq!(seen.0.len(), 455);
        assert!(wakes.is_empty() && waits.is_empty());
    }

    #[test]
    fn the_drain_interval_stretches_while_nothing_comes_and_snaps_back_when_records_do() {
        let mut interval = DRAIN_INTERVAL;
        let mut quiet = vec![];
        for _ in 0..4 {
            interval = next_drain_interval(interval, 0);
            quiet.push(interval.as_millis());
        }
        assert_eq!(quiet, [400, 400, 400, 400]);
        assert_eq!(next_drain_interval(interval, 1), DRAIN_INTERVAL);
    }
}
