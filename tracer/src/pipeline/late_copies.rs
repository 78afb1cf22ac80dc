//! Late stack copies, for exact recordings without wakers. There every wait ends where its
//! thread is switched back in, most often after the idle task or another process, whose
//! view holds none of the target's memory: so a sleep keeps a copy of its stack, except a
//! thread's sleep right after a run of short waits (`ShortRun`: a ping-pong's handoffs
//! would pay for copies at every sleep). When such a sleep turns out long, its stack was
//! nowhere to read at its end.
//!
//! So this stage looks over the target's wait words (mapped, a load per thread) for waits
//! that have lasted the threshold and kept no copy, and copies their stacks from outside
//! while they still sleep (the saved sp from /proc's syscall file, then
//! `process_vm_readv`), handing each to the probes as if the sleep had kept it. A wait
//! that ends before the look after its threshold still has no stack (counted as
//! unreadable, as before).
//!
//! It looks every `POLL` while such waits come, and every `QUIET_POLL` once none has for
//! `QUIET_AFTER` (nor a stack been lost meanwhile): each look wakes the tracer's CPU,
//! which on this VM the service on the other CPU pays for, whatever the look does (an
//! untraced ping-pong lost 5 points to the looks at 15 a second and more at 100, against
//! half a point to the exact mode's few drains; docs/overhead-log.md, session 33). A
//! quiet target's first copy-less long wait then gets its copy if it lasts past the next
//! look; one that ends before, with no stack, sets the looks back to `POLL`.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use tracer_common::{Counter, STACK_COPY_BYTES, WaitSlot};

use crate::{
    probes::{Probes, wait_words::WaitWords},
    threads::{self, ThreadSyscall, blocked_now::monotonic_now_ns},
    timer::Ticks,
};

/// How often the waits are looked over while long waits come without copies: such a wait
/// gets one once it has lasted the threshold and at most this much more.
pub const POLL: Duration = Duration::from_millis(10);

/// How often the waits are looked over once no long wait has come without a copy for
/// `QUIET_AFTER`: the drain's own quiet interval.
pub const QUIET_POLL: Duration = crate::probes::events::QUIET_DRAIN_INTERVAL;

/// How long the looks keep to `POLL` after a long wait without a copy (or a stack lost).
pub const QUIET_AFTER: Duration = Duration::from_secs(2);

/// The timer an async loop polls the stage on (a late tick delays the next, it does not
/// bunch them up); set its period to [`LateCopies::interval`] after each poll.
pub fn poll_timer() -> std::io::Result<Ticks> {
    Ticks::every(POLL)
}

/// The gap after a look, `since_wanted` after the last that found a long wait without a
/// copy or a stack lost.
fn next_interval(since_wanted: Duration) -> Duration {
    if since_wanted < QUIET_AFTER { POLL } else { QUIET_POLL }
}

/// What a look did with one long wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Its sleep kept a copy: nothing to do.
    HadCopy,
    /// It had none, and now has one.
    Copied,
    /// It had none, and none could be taken (it woke meanwhile, or its memory could not
    /// be read).
    NotCopied,
}

/// How often the target's thread list is read again (new threads wait unseen until then).
const THREADS_REFRESH: Duration = Duration::from_secs(1);

/// The stage's state over one recording.
pub struct LateCopies {
    pid: u32,
    words: WaitWords,
    min_wait_ns: u64,
    tids: Vec<u32>,
    tids_read_at: Option<Instant>,
    /// The long waits in progress already looked at (copied, or with a copy of their
    /// own), by (thread, start): each is copied once.
    looked_at: HashSet<(u32, u64)>,
    /// The last look that found a long wait without a copy or a stack lost (at first, the
    /// start).
    wanted_at: Instant,
    /// The probes' count of long waits sent without a stack, at the last look.
    unreadable_at_look: u64,
}

impl LateCopies {
    /// The stage for process `pid` traced by `probes` (without wakers); None, said in the
    /// log, when the probes' wait words cannot be mapped.
    pub fn start(pid: u32, probes: &Probes, min_wait: Duration) -> Option<Self> {
        match probes.wait_words() {
            Ok(words) => Some(Self::new(pid, words, min_wait, unreadable_stacks(probes))),
            Err(err) => {
                log::warn!("pid {pid}: cannot map the wait words ({err}): no late stack copies");
                None
            }
        }
    }

    fn new(pid: u32, words: WaitWords, min_wait: Duration, unreadable: Option<u64>) -> Self {
        Self {
            pid,
            words,
            min_wait_ns: u64::try_from(min_wait.as_nanos()).unwrap_or(u64::MAX),
            tids: Vec::new(),
            tids_read_at: None,
            looked_at: HashSet::new(),
            wanted_at: Instant::now(),
            unreadable_at_look: unreadable.unwrap_or(0),
        }
    }

    /// The gap to the next look (see `next_interval`).
    pub fn interval(&self) -> Duration {
        next_interval(self.wanted_at.elapsed())
    }

    /// Copies the stack of every wait of the target that has lasted the threshold with no
    /// copy kept, once; returns how many it copied.
    pub fn poll(&mut self, probes: &mut Probes) -> u64 {
        if self.tids_read_at.is_none_or(|at| at.elapsed() >= THREADS_REFRESH) {
            // A process gone leaves the list as it was: its words end nothing any more.
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) {
                self.tids = tasks
                    .filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok())
                    .collect();
            }
            self.tids_read_at = Some(Instant::now());
        }
        let now = monotonic_now_ns();
        let mut still = HashSet::with_capacity(self.looked_at.len());
        let mut copies = 0;
        let mut wanted = false;
        for &tid in &self.tids {
            let WaitSlot::InProgress { start, .. } = WaitSlot::read(self.words.word(tid), tid)
            else {
                continue;
            };
            let elapsed = WaitSlot::elapsed_ns(start, now);
            if elapsed < self.min_wait_ns {
                continue;
            }
            // The word keeps the start's low bits; the probes end the wait with the same
            // full start, rebuilt alike.
            let start_ns = WaitSlot::start_ns(start, now);
            still.insert((tid, start_ns));
            if !self.looked_at.contains(&(tid, start_ns)) {
                let look = self.copy_if_missing(probes, tid, start, start_ns);
                copies += u64::from(look == Look::Copied);
                wanted |= look != Look::HadCopy;
            }
        }
        self.looked_at = still;
        // A stack lost since the last look: a copy-less wait ended long between looks.
        if let Some(unreadable) = unreadable_stacks(probes) {
            wanted |= unreadable > self.unreadable_at_look;
            self.unreadable_at_look = unreadable;
        }
        if wanted {
            self.wanted_at = Instant::now();
        }
        copies
    }

    /// Copies the stack of thread `tid`'s wait begun at `start_ns` (its word's `start`)
    /// unless its sleep kept one.
    fn copy_if_missing(&self, probes: &mut Probes, tid: u32, start: u64, start_ns: u64) -> Look {
        let whole_copies = match probes.sleep_copy_of(tid) {
            Some((copy_start, _)) if copy_start == start_ns => return Look::HadCopy,
            Some((_, whole_copies)) => whole_copies,
            None => 0,
        };
        let Some(ThreadSyscall::Blocked(call)) = threads::read_syscall(self.pid, tid) else {
            return Look::NotCopied;
        };
        let mut stack = vec![0u8; STACK_COPY_BYTES];
        let Ok(len) = threads::read_memory(self.pid, call.sp, &mut stack) else {
            return Look::NotCopied;
        };
        stack.truncate(len);
        // Still the same wait after the copy: the thread has not run, so the copy is whole.
        let still_asleep = matches!(
            WaitSlot::read(self.words.word(tid), tid),
            WaitSlot::InProgress { start: now, .. } if now == start
        );
        if len == 0 || !still_asleep {
            return Look::NotCopied;
        }
        // A wait that ends between that look and this hand-over leaves a copy no wait
        // matches; only a sleep of the thread's within those microseconds could lose its
        // own copy to it.
        match probes.keep_sleep_copy(tid, start_ns, &stack, whole_copies) {
            Ok(()) => Look::Copied,
            Err(err) => {
                log::warn!("thread {tid}: cannot keep a late copy of its stack: {err}");
                Look::NotCopied
            }
        }
    }
}

/// The probes' count of long waits sent without a stack (None if it cannot be read).
fn unreadable_stacks(probes: &Probes) -> Option<u64> {
    probes.counter(Counter::StackUnreadable).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_come_seldom_only_after_a_quiet_while() {
        assert_eq!(next_interval(Duration::ZERO), POLL);
        assert_eq!(next_interval(QUIET_AFTER - Duration::from_millis(1)), POLL);
        assert_eq!(next_interval(QUIET_AFTER), QUIET_POLL);
        assert!(QUIET_POLL > POLL);
    }
}
