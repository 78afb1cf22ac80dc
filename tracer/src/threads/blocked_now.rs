//! The threads blocked right now in a watched wait, read from /proc without stopping
//! the process, unwound and aggregated by stack: what `snapshot` shows, and what a
//! recording reports as still blocked at its end.

use std::collections::HashMap;

use tracer_common::{TaskLook, WaitKind, classify_syscall};

use crate::{
    model::{StackKey, ThreadCounts, WaitAggregate, WaitObject},
    objects::WaitObjects,
    stacks::{ProcessUnwinder, UserRegs},
    threads::{SampleError, ThreadReader, ThreadSample},
};

/// When the probes saw a wait begin, by thread: exact ages for the waits that began
/// while recording. Others are aged from the scheduler's accounting, as lower bounds.
pub type KnownWaitStarts = HashMap<u32, KnownStart>;

/// A wait the probes saw begin, and how many times its thread had run when it was read
/// (`BlockedState::runs`): a thread found blocked later with another count ran since, and
/// is in a later wait (which the start would age as the earlier one, and count twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownStart {
    pub start_ns: u64,
    pub runs: Option<u64>,
}

impl KnownStart {
    /// The start of the wait `sample` is in, if it is this one.
    fn of(&self, sample: &ThreadSample) -> Option<u64> {
        let ran_since = matches!((self.runs, sample.runs), (Some(then), Some(now)) if then != now);
        (!ran_since).then_some(self.start_ns)
    }
}

/// The frame pointer (rbp) of each task's saved user registers: /proc shows a blocked
/// thread's sp and ip but not its rbp, which CFI needs to unwind through rbp-based
/// frames. Found by the thread and its sp and ip (the look is of the same wait), else,
/// for a thread no look is of (a tracer whose thread ids are another pid namespace's),
/// by sp and ip alone where no two tasks disagree. Processes forked from one parent
/// (PostgreSQL's backends, a pre-forked server's workers) block at the same sp and ip
/// with their own rbp: keyed by sp and ip alone, their stacks stopped at the first
/// rbp-based frame.
#[derive(Debug, Default)]
pub struct SavedFramePointers {
    by_thread: HashMap<(u32, u64, u64), u64>,
    /// The threads looked at: one found at another sp and ip than its look's moved on,
    /// and a sibling's rbp at that place would walk its stack from the sibling's frames.
    looked_at: std::collections::HashSet<u32>,
    by_sp_ip: HashMap<(u64, u64), Option<u64>>,
}

impl SavedFramePointers {
    pub fn from_tasks(tasks: &[TaskLook]) -> Self {
        let mut saved = Self::default();
        for task in tasks {
            saved.by_thread.insert((task.tid, task.sp, task.ip), task.bp);
            saved.looked_at.insert(task.tid);
            saved
                .by_sp_ip
                .entry((task.sp, task.ip))
                .and_modify(|bp| {
                    if *bp != Some(task.bp) {
                        *bp = None;
                    }
                })
                .or_insert(Some(task.bp));
        }
        saved
    }

    pub fn get(&self, tid: u32, sp: u64, ip: u64) -> Option<u64> {
        match self.by_thread.get(&(tid, sp, ip)) {
            Some(&bp) => Some(bp),
            None if self.looked_at.contains(&tid) => None,
            None => self.by_sp_ip.get(&(sp, ip)).copied().flatten(),
        }
    }
}

/// How many more times a thread caught running or waking is looked at, and the pause
/// before each look after the first of them (2 ms at most in all).
const AGAIN_LOOKS: usize = 3;
const AGAIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Adds every thread of `pid` blocked now in a watched wait to `aggregate` (as waits in
/// progress, weighted by their age so far) and counts the rest.
pub fn collect_blocked_threads(
    pid: u32,
    unwinder: &mut ProcessUnwinder,
    known_starts: &KnownWaitStarts,
    frame_pointers: &SavedFramePointers,
    objects: &mut WaitObjects,
    aggregate: &mut WaitAggregate,
) -> std::io::Result<ThreadCounts> {
    let mut reader = ThreadReader::new(pid)?;
    let tids = reader.thread_ids()?;
    let monotonic_now = monotonic_now_ns();
    let mut counts = ThreadCounts { threads: tids.len() as u64, ..ThreadCounts::default() };
    // Reads one thread; true when it was caught running or woke while read, to be read
    // again after the others: in a pile-up the waiters take turns waking (the queue
    // moves), and each is back in its wait within microseconds.
    let mut read_thread = |tid: u32, last_try: bool| -> bool {
        let sample = match reader.sample(tid) {
            Ok(Some(sample)) => sample,
            Ok(None) | Err(SampleError::Woke) if !last_try => return true,
            Ok(None) => {
                counts.elsewhere += 1;
                return false;
            }
            Err(SampleError::Exited) => {
                counts.exited_while_read += 1;
                return false;
            }
            Err(SampleError::Woke) => {
                counts.woke_while_read += 1;
                return false;
            }
            Err(SampleError::Unreadable(err)) => {
                log::debug!("thread {tid} of pid {pid} unreadable: {err}");
                counts.unreadable += 1;
                return false;
            }
        };
        let Some((kind, object)) = wait_object(&sample, objects) else {
            counts.elsewhere += 1;
            return false;
        };
        let key = match stack_key(&sample, (kind, object), unwinder, frame_pointers, &mut counts) {
            Ok(key) => key,
            Err(_) if !last_try => return true,
            Err(_) => {
                counts.woke_while_read += 1;
                return false;
            }
        };
        counts.blocked_in_waits += 1;
        aggregate.name_thread(sample.tid, &thread_name(&sample, unwinder));
        let known_start = known_starts.get(&tid).and_then(|known| known.of(&sample));
        let start_ns = match known_start {
            Some(start_ns) => start_ns,
            // Unknown age: shown as "≥ 0".
            None => monotonic_now.saturating_sub(age_unseen(
                sample.blocked_for_at_least_ns,
                known_starts.get(&tid),
                monotonic_now,
            )),
        };
        if let Some(timeline) = &mut aggregate.timeline {
            // A thread that ran since its wait at the stop was read stands for that wait
            // (its stack the later one's): the timeline's count at the stop, unless the
            // wait's end was recorded (see `TimelineRecorder::add`).
            let at_stop = known_starts.get(&tid).map_or(start_ns, |known| known.start_ns);
            timeline.add(tid, &key, at_stop, monotonic_now, true, None);
        }
        let blocked_ns = monotonic_now.saturating_sub(start_ns);
        match known_start {
            Some(_) => aggregate.add(key, tid, blocked_ns),
            None => aggregate.add_lower_bound(key, tid, blocked_ns),
        }
        false
    };
    // A pile-up that moves in bursts (a reporter whose send unblocks every 20 ms wakes
    // its handlers one after another, for a fraction of a millisecond) can find a few
    // running on a second look too: the later looks wait a moment first.
    let mut again: Vec<u32> = tids.into_iter().filter(|&tid| read_thread(tid, false)).collect();
    for look in 1..=AGAIN_LOOKS {
        if again.is_empty() {
            break;
        }
        if look > 1 {
            std::thread::sleep(AGAIN_PAUSE);
        }
        let last_try = look == AGAIN_LOOKS;
        again.retain(|&tid| read_thread(tid, last_try));
    }
    Ok(counts)
}

/// The age of a wait whose start the probes did not see: the scheduler's (`se.exec_start`),
/// but no older than a wait the probes saw the thread begin before this one (it ran
/// since, so its wait now began later). The scheduler's clocks, per CPU and extrapolated,
/// read 2.83 s for a PostgreSQL backend's wait begun 0.34 s before, on a VM under a load
/// of 20 (why is not established).
fn age_unseen(scheduler_age: Option<u64>, earlier: Option<&KnownStart>, now_ns: u64) -> u64 {
    let age = scheduler_age.unwrap_or(0);
    earlier.map_or(age, |earlier| age.min(now_ns.saturating_sub(earlier.start_ns)))
}

/// A thread's name for reports: its own in a CPython program, else its `comm`.
pub(crate) fn thread_name(sample: &ThreadSample, unwinder: &mut ProcessUnwinder) -> String {
    unwinder.thread_name(sample.tid).unwrap_or_else(|| sample.comm.clone())
}

/// The stack of a blocked thread's wait in progress (`counts` notes a missing rbp);
/// Err(Woke) when its Python frames show it ran on since it was read.
pub(crate) fn stack_key(
    sample: &ThreadSample,
    (kind, object): (WaitKind, WaitObject),
    unwinder: &mut ProcessUnwinder,
    frame_pointers: &SavedFramePointers,
    counts: &mut ThreadCounts,
) -> Result<StackKey, SampleError> {
    let (sp, ip) = (sample.syscall.sp, sample.syscall.pc);
    let saved_bp = frame_pointers.get(sample.tid, sp, ip);
    let bp = saved_bp.unwrap_or(UserRegs::UNKNOWN_BP);
    let (walked, python_frames) =
        unwinder.unwind_thread(sample.tid, UserRegs { ip, sp, bp }, &sample.stack);
    if walked.python_frames_gone {
        return Err(SampleError::Woke);
    }
    // Counted once the stack is kept (a thread read again would count twice).
    if saved_bp.is_none() {
        counts.frame_pointer_unknown += 1;
    }
    let object = match (&object, unwinder.python()) {
        // A Python thread waiting for its turn to run Python code.
        (WaitObject::Futex(futex), Some(python)) if python.is_gil(*futex) => {
            WaitObject::Named(GIL.to_owned())
        }
        // A Python thread's lock or queue, named as the program holds it.
        (WaitObject::Futex(futex), Some(python)) if !python_frames.is_empty() => {
            python.waited_object(&python_frames, Some(*futex)).map_or(object, WaitObject::Named)
        }
        _ => object,
    };
    Ok(StackKey {
        addresses: walked.addresses,
        kind,
        object,
        truncated: walked.truncated,
        in_progress: true,
    })
}

/// What a wait for CPython's global interpreter lock is named.
pub const GIL: &str = "GIL";

/// The watched wait a sampled thread is in, and on what, if any.
pub(crate) fn wait_object(
    sample: &ThreadSample,
    objects: &mut WaitObjects,
) -> Option<(WaitKind, WaitObject)> {
    let args = sample.syscall.args;
    let (kind, object) =
        classify_syscall(sample.syscall.nr, |n| Ok::<_, ()>(args[n])).ok().flatten()?;
    objects.resolve(kind, object)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_pointers_are_found_by_thread_then_by_sp_and_ip_unless_ambiguous() {
        let look = |tid, ip, sp, bp| TaskLook { tid, ip, sp, bp, ..TaskLook::default() };
        let tasks = [
            look(1, 0x10, 0x7000, 0x7100),
            look(2, 0x10, 0x8000, 0x8100),
            // Another process (a forked sibling) blocked at the same sp and ip, with
            // another rbp.
            look(3, 0x10, 0x8000, 0x9100),
            // The same registers seen twice agree.
            look(4, 0x20, 0x6000, 0x6100),
            look(5, 0x20, 0x6000, 0x6100),
        ];
        let frame_pointers = SavedFramePointers::from_tasks(&tasks);
        assert_eq!(frame_pointers.get(1, 0x7000, 0x10), Some(0x7100));
        // Each sibling its own.
        assert_eq!(frame_pointers.get(2, 0x8000, 0x10), Some(0x8100));
        assert_eq!(frame_pointers.get(3, 0x8000, 0x10), Some(0x9100));
        // A thread id the looks do not know (another pid namespace's): by sp and ip.
        assert_eq!(frame_pointers.get(99, 0x7000, 0x10), Some(0x7100));
        assert_eq!(frame_pointers.get(99, 0x8000, 0x10), None, "ambiguous");
        assert_eq!(frame_pointers.get(99, 0x6000, 0x20), Some(0x6100));
        // A thread at another wait than its look's: not its look's rbp, nor a
        // sibling's at that place.
        assert_eq!(frame_pointers.get(1, 0x5000, 0x10), None);
        assert_eq!(frame_pointers.get(4, 0x7000, 0x10), None);
    }

    #[test]
    fn an_unseen_wait_is_no_older_than_one_seen_before_it() {
        let earlier = KnownStart { start_ns: 9_000, runs: Some(3) };
        assert_eq!(age_unseen(Some(500), Some(&earlier), 10_000), 500);
        // The scheduler's clocks overshot: the wait began after the earlier one.
        assert_eq!(age_unseen(Some(2_830), Some(&earlier), 10_000), 1_000);
        assert_eq!(age_unseen(Some(2_830), None, 10_000), 2_830);
        assert_eq!(age_unseen(None, Some(&earlier), 10_000), 0);
    }
}
