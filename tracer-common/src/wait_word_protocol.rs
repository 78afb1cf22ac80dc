//! The scheduler probes' use of WAIT_STARTS words and task storage, played out at random
//! for two threads that share one word's slot (as threads whose ids differ by a multiple
//! of `WAIT_START_SLOTS` do): every wait is ended once, with its true length, and nothing
//! else is ended. `Probes` mirrors tracer-ebpf's `note_sleep`, `end_at_switch_in` and
//! the wake probes (`tracer_wakeup`, `tracer_queued_wake`), step for step, on a model of the kernel's side (one step at a time: the
//! compare-and-swap that takes a word always finds it as read).

extern crate std;

use super::*;
use std::vec::Vec;

const MIN_WAIT_NS: u64 = 1_000_000;

/// One thread, as the kernel and the probes' maps hold it.
struct Thread {
    tid: u32,
    /// Its IN_FLIGHT entry (task storage), created at its first watched sleep that finds
    /// the word held by the other thread's wait.
    entry: Option<InFlightWait>,
    /// nvcsw + nivcsw, counted at each switch out before the tracepoint runs.
    switches: u64,
    on_cpu: bool,
    /// The wait the thread is truly in (start, kind), and whether a probe has ended it.
    true_wait: Option<(u64, u32, bool)>,
}

/// What the probes sent or counted.
#[derive(Default)]
struct Ends {
    /// (tid, duration) of waits added to the short totals.
    short: Vec<(u32, u64)>,
    /// (tid, start, duration) of waits sent with a stack.
    long: Vec<(u32, u64, u64)>,
    discarded: u64,
}

struct Probes {
    now: u64,
    /// The one WAIT_STARTS word both threads' ids map to.
    word: u64,
    threads: [Thread; 2],
    ends: Ends,
}

impl Probes {
    fn new() -> Self {
        let thread = |tid| Thread { tid, entry: None, switches: 0, on_cpu: true, true_wait: None };
        Probes {
            now: 1 << 40,
            word: 0,
            threads: [thread(4242), thread(4242 + WAIT_START_SLOTS)],
            ends: Ends::default(),
        }
    }

    /// Thread `i` switches out asleep in a watched call: `note_sleep`.
    fn sleep_in_watched_call(&mut self, i: usize, kind: u32) {
        let now = self.now;
        let t = &mut self.threads[i];
        t.switches += 1;
        t.on_cpu = false;
        t.true_wait = Some((now, kind, false));
        if WaitSlot::held_by_another(self.word, t.tid) {
            t.entry = Some(InFlightWait {
                start_ns: now,
                object: 0,
                switches: t.switches,
                kind,
                tid: t.tid,
                flags: 0,
                _pad: 0,
            });
            return;
        }
        if matches!(WaitSlot::read(self.word, t.tid), WaitSlot::InProgress { .. }) {
            self.ends.discarded += 1;
        }
        // Half the waits ask for a span sample: the bit must not disturb the rest.
        self.word = WaitSlot::in_progress_word(t.tid, kind, now, now & 1 == 1);
    }

    /// Thread `i` switches out, preempted or asleep outside any watched call: no probe
    /// notes anything.
    fn switch_out_unwatched(&mut self, i: usize) {
        let t = &mut self.threads[i];
        t.switches += 1;
        t.on_cpu = false;
    }

    /// A probe ends thread `i`'s wait: it must be the one the thread is truly in, not yet
    /// ended, with its true start.
    fn ended(&mut self, i: usize, start: u64, duration: u64) {
        let now = self.now;
        let t = &mut self.threads[i];
        let Some((true_start, _, done)) = t.true_wait.as_mut() else {
            panic!("thread {} ended a wait it is not in", t.tid);
        };
        assert!(!*done, "thread {}: a wait ended twice", t.tid);
        assert_eq!(duration, now - *true_start, "thread {}", t.tid);
        assert_eq!(start, *true_start, "thread {}", t.tid);
        *done = true;
        if duration < MIN_WAIT_NS {
            self.ends.short.push((t.tid, duration));
        } else {
            self.ends.long.push((t.tid, *true_start, duration));
        }
    }

    /// Thread `i` is switched in: `end_at_switch_in`.
    fn switch_in(&mut self, i: usize) {
        let now = self.now;
        let tid = self.threads[i].tid;
        match WaitSlot::verdict(self.word, tid, MIN_WAIT_NS, || now) {
            WordVerdict::NoWait => {}
            WordVerdict::Short { start_ns, elapsed_ns, .. }
            | WordVerdict::Long { start_ns, elapsed_ns, .. } => {
                self.word = WaitSlot::ended_word(tid);
                self.ended(i, start_ns, elapsed_ns);
            }
            WordVerdict::AskTaskStorage => {
                let t = &mut self.threads[i];
                if let Some(entry) = t.entry.as_mut()
                    && entry.in_progress(t.switches)
                {
                    let wait = *entry;
                    entry.start_ns = 0;
                    self.ended(i, wait.start_ns, now - wait.start_ns);
                }
            }
        }
        let t = &mut self.threads[i];
        if let Some((start, _, done)) = t.true_wait.take() {
            assert!(done, "thread {}: its wait begun at {start} was never ended", t.tid);
        }
        t.on_cpu = true;
    }

    /// Thread `i` is woken (on a CPU or not), by another thread of the target or from
    /// outside the process: `tracer_wakeup`, or `tracer_queued_wake` for a wake `queued`
    /// to the wakee's CPU, which cannot reach task storage (it leaves such a wait to its
    /// switch in; the waker it sends, keyed by the sleep copy's start, is not played here).
    fn wake(&mut self, i: usize, by_a_target_thread: bool, queued: bool) {
        let now = self.now;
        let tid = self.threads[i].tid;
        let slot = WaitSlot::read(self.word, tid);
        // A wait other than a futex wait is left to its switch in.
        if let WaitSlot::InProgress { kind, .. } = slot
            && kind != WaitKind::Futex as u32
        {
            return;
        }
        let verdict = slot.judge(MIN_WAIT_NS, || now);
        match verdict {
            WordVerdict::NoWait => return,
            WordVerdict::Short { start_ns, elapsed_ns, .. } => {
                self.word = WaitSlot::ended_word(tid);
                self.ended(i, start_ns, elapsed_ns);
                return;
            }
            WordVerdict::Long { .. } | WordVerdict::AskTaskStorage => {}
        }
        let t = &mut self.threads[i];
        if t.on_cpu || !by_a_target_thread {
            return;
        }
        if let WordVerdict::Long { start_ns, elapsed_ns, .. } = verdict {
            self.word = WaitSlot::ended_word(tid);
            self.ended(i, start_ns, elapsed_ns);
            return;
        }
        if queued {
            return;
        }
        let Some(entry) = t.entry.as_mut() else { return };
        if entry.kind != WaitKind::Futex as u32 {
            return;
        }
        if !entry.in_progress(t.switches) || now - entry.start_ns < MIN_WAIT_NS {
            return;
        }
        let wait = *entry;
        entry.start_ns = 0;
        self.ended(i, wait.start_ns, now - wait.start_ns);
    }
}

/// A small xorshift generator: the same sequence at every run.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

#[test]
fn threads_sharing_a_word_have_each_wait_ended_once_with_its_true_length() {
    let mut probes = Probes::new();
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    // Steps short and long against the threshold, and each thread's life one step at a time.
    const STEPS_NS: [u64; 5] = [1_000, 200_000, 999_999, 1_000_000, 30_000_000];
    for _ in 0..200_000 {
        probes.now += STEPS_NS[dice.roll(STEPS_NS.len() as u64) as usize];
        let i = dice.roll(2) as usize;
        if probes.threads[i].on_cpu {
            match dice.roll(4) {
                0 | 1 => probes.sleep_in_watched_call(i, dice.roll(WAIT_KIND_COUNT as u64) as u32),
                2 => probes.switch_out_unwatched(i),
                // Woken while still on its CPU: on its way to sleep, before schedule().
                _ => probes.wake(i, dice.roll(2) == 0, dice.roll(2) == 0),
            }
        } else {
            if dice.roll(2) == 0 {
                probes.wake(i, dice.roll(2) == 0, dice.roll(2) == 0);
            }
            probes.switch_in(i);
        }
    }
    let ends = &probes.ends;
    assert_eq!(ends.discarded, 0);
    // Both ways of ending, for both threads, were played.
    for tid in [4242, 4242 + WAIT_START_SLOTS] {
        assert!(ends.short.iter().filter(|(t, _)| *t == tid).count() > 1000, "tid {tid}");
        assert!(ends.long.iter().filter(|(t, _, _)| *t == tid).count() > 1000, "tid {tid}");
    }
}

#[test]
fn a_thread_with_a_word_of_its_own_never_asks_task_storage() {
    let mut probes = Probes::new();
    // Thread 0 alone: its word is never held by the other thread's wait, so its waits,
    // short or long, are noted and ended in the word alone.
    probes.sleep_in_watched_call(0, WaitKind::Futex as u32);
    probes.now += 5_000;
    probes.switch_in(0);
    probes.sleep_in_watched_call(0, WaitKind::Recv as u32);
    probes.now += 3 * MIN_WAIT_NS;
    probes.switch_in(0);
    assert_eq!(probes.ends.short, [(4242, 5_000)]);
    assert_eq!(probes.ends.long, [(4242, (1 << 40) + 5_000, 3 * MIN_WAIT_NS)]);
    assert!(probes.threads[0].entry.is_none());
    assert_eq!(WaitSlot::read(probes.word, 4242), WaitSlot::Ended);
    // Woken, a short wait ends at its wake, and its switch in finds the word ended.
    probes.sleep_in_watched_call(0, WaitKind::Futex as u32);
    probes.now += 7_000;
    probes.wake(0, true, false);
    probes.now += 50_000;
    probes.switch_in(0);
    assert_eq!(probes.ends.short[1..], [(4242, 7_000)]);
    // While its wait holds the word, the other thread's wait goes to task storage; once it
    // has ended, the other thread takes the word.
    probes.sleep_in_watched_call(0, WaitKind::Futex as u32);
    probes.sleep_in_watched_call(1, WaitKind::Send as u32);
    assert_eq!(probes.threads[1].entry.map(|e| e.kind), Some(WaitKind::Send as u32));
    probes.now += 2_000;
    probes.switch_in(0);
    probes.switch_in(1);
    probes.sleep_in_watched_call(1, WaitKind::Futex as u32);
    assert!(matches!(
        WaitSlot::read(probes.word, 4242 + WAIT_START_SLOTS),
        WaitSlot::InProgress { .. }
    ));
    // Its entry, left from the wait before, is over: the thread has switched since.
    let t = &probes.threads[1];
    assert!(!t.entry.unwrap().in_progress(t.switches));
    assert!(probes.threads[0].entry.is_none());
}
