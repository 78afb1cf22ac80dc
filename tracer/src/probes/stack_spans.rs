//! How much stack the probes copy as a thread goes to sleep in a socket wait: the walks of
//! its sleep copies tell, per place it sleeps at (see `tracer_common::ThreadSpans`). The
//! decoder learns a thread's spans from each such walk, the record loop hands the changes
//! to the STACK_SPANS map.

use std::collections::HashMap;

use aya::maps::HashMap as BpfHashMap;
use tracer_common::{STACK_COPY_BYTES, StackSpan, ThreadSpans};

use super::Probes;
use crate::stacks::UserRegs;

/// Bytes copied beyond what the last walk read, in case the next one reads a little
/// further (a caller with a slightly larger frame at the same depth); spans are whole
/// multiples of this.
const SPAN_SLACK_BYTES: u64 = 512;

/// Threads remembered here; past it, the table starts over (the kernel's map is bounded on
/// its own, least recently used first out, and spans are sent again as walks renew them).
const MAX_THREADS: usize = 2 * tracer_common::STACK_SPAN_SLOTS as usize;

/// A change for the STACK_SPANS map: the thread's spans, or None to forget them all.
pub type SpanChange = (u32, Option<ThreadSpans>);

/// The spans the probes were given, and the changes not yet handed to them.
#[derive(Default)]
pub struct StackSpans {
    known: HashMap<u32, ThreadSpans>,
    changes: HashMap<u32, Option<ThreadSpans>>,
}

impl StackSpans {
    /// Notes the walk of a sleep copy of thread `tid`'s stack from `regs`: a complete walk
    /// that read `read_bytes` sets the span of that place; any other forgets it, so its next
    /// copies are whole (a shortened copy may be why the walk stopped).
    pub fn learn(&mut self, tid: u32, regs: UserRegs, complete: bool, read_bytes: u64) {
        let spans = self.known.get(&tid).copied().unwrap_or_default();
        let site = spans.site(regs.ip, regs.sp, regs.bp);
        let learned = if complete {
            let len = (read_bytes + SPAN_SLACK_BYTES).next_multiple_of(SPAN_SLACK_BYTES);
            let span = StackSpan {
                ip: regs.ip,
                sp: regs.sp,
                bp: regs.bp,
                len: len.min(STACK_COPY_BYTES as u64) as u32,
                _pad: 0,
            };
            if site.is_some_and(|index| spans.sites[index] == span) {
                return;
            }
            spans.with(span)
        } else {
            let Some(index) = site else { return };
            spans.without(index)
        };
        if learned.is_empty() {
            self.known.remove(&tid);
            self.changes.insert(tid, None);
            return;
        }
        if self.known.len() >= MAX_THREADS && !self.known.contains_key(&tid) {
            self.known.clear();
        }
        self.known.insert(tid, learned);
        self.changes.insert(tid, Some(learned));
    }

    /// The changes since the last call.
    pub fn take_changes(&mut self) -> Vec<SpanChange> {
        self.changes.drain().collect()
    }
}

impl Probes {
    /// Hands the probes the threads' new spans. A span the map cannot take costs only
    /// whole copies of that thread's stack, so failures are logged, not returned.
    pub fn update_stack_spans(&mut self, changes: Vec<SpanChange>) {
        if changes.is_empty() {
            return;
        }
        let Some(map) = self.ebpf.map_mut("STACK_SPANS") else {
            log::debug!("no STACK_SPANS map");
            return;
        };
        let mut spans = match BpfHashMap::<_, u32, ThreadSpans>::try_from(map) {
            Ok(spans) => spans,
            Err(err) => {
                log::debug!("STACK_SPANS: {err}");
                return;
            }
        };
        for (tid, change) in changes {
            let result = match change {
                Some(learned) => spans.insert(tid, learned, 0),
                None => spans.remove(&tid),
            };
            if let Err(err) = result {
                log::debug!("thread {tid}: cannot update its stack spans: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGS: UserRegs = UserRegs { ip: 0x1000, sp: 0x7ff0_0000, bp: 0x7ff0_0100 };

    /// The one change taken.
    fn only_change(spans: &mut StackSpans) -> (u32, Option<ThreadSpans>) {
        let changes = spans.take_changes();
        assert_eq!(changes.len(), 1, "{changes:?}");
        changes[0]
    }

    #[test]
    fn a_complete_walk_sets_a_span_with_slack_once() {
        let mut spans = StackSpans::default();
        spans.learn(7, REGS, true, 1000);
        let (tid, Some(learned)) = only_change(&mut spans) else { panic!("no spans") };
        assert_eq!(tid, 7);
        let span = learned.sites[0];
        assert_eq!((span.ip, span.sp, span.bp), (REGS.ip, REGS.sp, REGS.bp));
        // 1000 bytes read, 512 of slack, whole multiples of 512.
        assert_eq!(span.len, 1536);
        // The same walk again changes nothing.
        spans.learn(7, REGS, true, 1000);
        assert!(spans.take_changes().is_empty());
    }

    #[test]
    fn a_span_never_exceeds_the_whole_copy() {
        let mut spans = StackSpans::default();
        spans.learn(7, REGS, true, STACK_COPY_BYTES as u64);
        let (_, learned) = only_change(&mut spans);
        assert_eq!(learned.map(|l| l.sites[0].len), Some(STACK_COPY_BYTES as u32));
    }

    #[test]
    fn a_truncated_walk_forgets_its_place_and_only_a_known_one() {
        let mut spans = StackSpans::default();
        spans.learn(7, REGS, false, 4096);
        assert!(spans.take_changes().is_empty(), "nothing to forget");
        spans.learn(7, REGS, true, 100);
        spans.learn(7, UserRegs { sp: REGS.sp - 64, ..REGS }, true, 164);
        spans.take_changes();
        // A truncated walk elsewhere forgets nothing.
        spans.learn(7, UserRegs { ip: 0x2000, ..REGS }, false, 512);
        assert!(spans.take_changes().is_empty());
        spans.learn(7, REGS, false, 512);
        let (_, Some(learned)) = only_change(&mut spans) else { panic!("all forgotten") };
        assert_eq!(learned.copy_len(REGS.ip, REGS.sp, REGS.bp), STACK_COPY_BYTES as u32);
        assert_eq!(learned.copy_len(REGS.ip, REGS.sp - 64, REGS.bp), 1024);
        // The last place forgotten: the thread's entry goes.
        spans.learn(7, UserRegs { sp: REGS.sp - 64, ..REGS }, false, 512);
        assert_eq!(spans.take_changes(), vec![(7, None)]);
    }

    #[test]
    fn a_thread_sleeping_at_two_places_keeps_both_spans() {
        let mut spans = StackSpans::default();
        let deeper = UserRegs { sp: REGS.sp - 64, ..REGS };
        spans.learn(7, REGS, true, 100);
        spans.learn(7, deeper, true, 1600);
        let (_, Some(learned)) = only_change(&mut spans) else { panic!("no spans") };
        assert_eq!(learned.copy_len(REGS.ip, REGS.sp, REGS.bp), 1024);
        assert_eq!(learned.copy_len(deeper.ip, deeper.sp, deeper.bp), 2560);
        // Walks that alternate between them change nothing more.
        for _ in 0..3 {
            spans.learn(7, REGS, true, 100);
            spans.learn(7, deeper, true, 1600);
        }
        assert!(spans.take_changes().is_empty());
    }
}
