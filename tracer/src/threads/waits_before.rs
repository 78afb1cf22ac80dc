//! Waits already in progress when an exact recording attaches. The probes note a wait when
//! its thread goes to sleep, so a thread asleep since before the attach has no wait to end:
//! a pile-up that drains while it is recorded would vanish from the report. Each such
//! thread is read from /proc (its call, arguments and stack, as `snapshot` reads it) and
//! its wait handed to the probes as if they had seen it begin at the attach, marked so; the
//! part before is known from the scheduler's accounting, a lower bound.

use std::collections::HashMap;

use tracer_common::{InFlightWait, STACK_COPY_BYTES, WAIT_BEGAN_BEFORE, classify_syscall};

use crate::{
    probes::{AdoptError, Probes},
    threads::{BlockedState, SampleError, ThreadReader, blocked_now::monotonic_now_ns},
};

/// How long each adopted wait had lasted when the recording began (a lower bound, from
/// the scheduler; 0 when unknown), by thread.
pub type AgesAtStart = HashMap<u32, u64>;

/// What adopting found, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Adopted {
    /// Waits handed to the probes.
    pub waits: u64,
    /// Threads that woke while read or before their wait was handed over (left to the
    /// probes, which see their next wait).
    pub woke: u64,
    /// Threads the probes had already seen go to sleep since the attach.
    pub already_seen: u64,
}

/// Hands the probes of `pid` (attached) the waits its threads are in now.
pub fn adopt_waits_in_progress(
    pid: u32,
    probes: &mut Probes,
) -> std::io::Result<(AgesAtStart, Adopted)> {
    let mut reader = ThreadReader::new(pid)?;
    let mut ages = AgesAtStart::new();
    let mut adopted = Adopted::default();
    for tid in reader.thread_ids()? {
        let sample = match reader.sample(tid) {
            Ok(Some(sample)) => sample,
            Ok(None) | Err(SampleError::Exited) => continue,
            Err(SampleError::Woke) => {
                adopted.woke += 1;
                continue;
            }
            Err(SampleError::Unreadable(err)) => {
                log::debug!("thread {tid} of pid {pid}: {err}");
                continue;
            }
        };
        let args = sample.syscall.args;
        let Ok(Some((kind, object))) =
            classify_syscall(sample.syscall.nr, |n| Ok::<_, ()>(args[n]))
        else {
            continue;
        };
        let state = BlockedState { syscall: sample.syscall, runs: sample.runs };
        // bpf_ktime_get_ns is CLOCK_MONOTONIC.
        let start_ns = monotonic_now_ns();
        let wait = InFlightWait {
            start_ns,
            object,
            // Not compared: an adopted wait is told by its flag (InFlightWait::in_progress).
            switches: 0,
            kind: kind as u32,
            tid,
            flags: WAIT_BEGAN_BEFORE,
            _pad: 0,
        };
        let stack = &sample.stack[..sample.stack.len().min(STACK_COPY_BYTES)];
        match probes.adopt_wait(tid, wait, stack) {
            Ok(()) => {}
            Err(AdoptError::AlreadyNoted) => {
                adopted.already_seen += 1;
                continue;
            }
            Err(AdoptError::Gone) => continue,
            Err(err) => {
                log::warn!("cannot hand thread {tid}'s wait in progress to the probes: {err}");
                continue;
            }
        }
        // Woken between the read and the hand-over, it is not in that wait any more: take
        // the wait back, unless the probes have already ended it (then it was real).
        if reader.peek(tid).ok().flatten() != Some(state) {
            probes.withdraw_wait(tid, start_ns);
            adopted.woke += 1;
            continue;
        }
        ages.insert(tid, sample.blocked_for_at_least_ns.unwrap_or(0));
        adopted.waits += 1;
    }
    Ok((ages, adopted))
}
