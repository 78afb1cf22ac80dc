//! A sampled recording's passes made in the kernel (`tracer_sample_pass`): at each
//! period the kernel's timer looks at the threads of the processes it watches (one, or
//! each of a recording of several) and copies the stacks of the newly blocked ones it can
//! reach; the tracer drains the looks a few times a second (`PassSource`), splits them by
//! process, and gives each sampler its process's passes (`PassAssembler`) one by one, as
//! if it had read them itself at their time. Waking the tracer at the rate is what a
//! sampled recording cost the service on this VM (docs/overhead-log.md, session 34); a
//! drain every `DRAIN_INTERVAL` costs it nothing measurable.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tracer_common::{
    Counter, PASS_END, PASS_LOOK, PASS_MAX_THREADS, PASS_STACK, PassEnd, PassLook, PassStack,
    STACK_COPY_BYTES, TaskLook,
};

use crate::pipeline::pace;
use crate::probes::{PassLap, ProbeError, Probes};

/// How often the passes are drained. A wait whose stack no pass could copy (the pass ran
/// outside the process) is copied at the drain if it is still on, so a longer interval
/// loses more stacks of waits that short; a shorter one wakes the tracer more.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(250);

/// A stack a pass copied: of the wait with this switch count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassCopy {
    pub switches: u64,
    /// Bytes from the wait's sp upwards.
    pub stack: Vec<u8>,
}

impl PassCopy {
    /// Whether the copy may stop short of the stack's end (it filled its buffer): an
    /// unwind that runs out of it is worth a fuller copy from userspace.
    pub fn may_be_cut(&self) -> bool {
        self.stack.len() >= STACK_COPY_BYTES
    }
}

/// One pass: when it was made, its look at each thread, and the stacks it copied.
#[derive(Debug, Default)]
pub struct Pass {
    /// `tracer_common::pass_id` of its time.
    pub id: u32,
    pub time_ns: u64,
    pub looks: Vec<TaskLook>,
    pub copies: HashMap<u32, PassCopy>,
}

/// The records of one drain of the passes' ring, by the process they are of.
pub type RecordsByProcess = HashMap<u32, Vec<Vec<u8>>>;

/// One drain of the passes.
#[derive(Debug, Default)]
pub struct Drained {
    pub records: RecordsByProcess,
    /// Processes of more threads than a pass walks (`PASS_MAX_THREADS`), with how many:
    /// the passes no longer watch them; their samplers read them from now on.
    pub unwalkable: Vec<(u32, u32)>,
}

/// The passes the kernel makes (`Probes::attach_sample_passes`), for one sampler or for
/// the samplers of several processes, and what their counters said at the last drain.
pub struct PassSource {
    ring: RingBuf<MapData>,
    /// Whom the passes are for, in messages: `pid 42`, `every user process`.
    label: String,
    /// The last lap over every process at the last drain, and how many passes a lap
    /// takes: processes of more threads in all than a pass walks are walked in turns,
    /// each every `turns` periods.
    lap_mark: PassLap,
    turns: u32,
    /// Whether the turns were said (once).
    turns_said: bool,
    /// The passes made and `Counter::PassesIncomplete` at the last drain, and how many
    /// drains in a row found every pass made since the one before incomplete.
    lost_mark: (u64, u64),
    drains_all_lost: u32,
    /// The period asked for, and the one the passes come at: longer while a pass costs
    /// more than the reads' budget of a CPU allows at the one asked (`--cpu-budget`).
    asked: Duration,
    period: Duration,
    /// The passes made and `Counter::PassNs` when the passes' cost was last looked at.
    cost_mark: (u64, u64),
    /// Whether the passes were ever spaced out (said once).
    spaced: bool,
    /// Records whose process could not be told (never expected).
    malformed: u64,
}

/// Drains in a row whose every pass was incomplete (a ring the passes overflow, not a
/// burst of new waits' copies) that send the reads back to the samplers for good: reads
/// made only when a drain finds no pass would come at the drains' pace, not the rate.
const DRAINS_ALL_LOST: u32 = 2;

impl PassSource {
    /// Has the kernel make passes every `period` over the processes `probes` watch
    /// (`Probes::watch_in_passes`), each once the task iterator went over it.
    pub fn attach(
        probes: &mut Probes,
        period: Duration,
        label: String,
    ) -> Result<Self, ProbeError> {
        let (made, lap_mark) = probes.pass_progress().unwrap_or_default();
        let cost_mark = (made, probes.counter(Counter::PassNs).unwrap_or(0));
        let lost_mark = (made, probes.counter(Counter::PassesIncomplete).unwrap_or(0));
        let ring = probes.attach_sample_passes(period)?;
        log::debug!("{label}: the kernel makes the reads' passes");
        Ok(Self {
            ring,
            label,
            lap_mark,
            turns: 1,
            turns_said: false,
            lost_mark,
            drains_all_lost: 0,
            asked: period,
            period,
            cost_mark,
            spaced: false,
            malformed: 0,
        })
    }

    /// The period the passes come at now.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How often a pass walks each process: every period, or every few when the
    /// processes are walked in turns.
    pub fn walk_interval(&self) -> Duration {
        self.period * self.turns
    }

    /// Records of the ring no process could be told of.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Drains the ring of everything the passes wrote since the last drain, by process;
    /// stops watching the processes of more threads than a pass walks. Err, with why,
    /// when the reads must go back to the samplers for good (the passes are stopped):
    /// drains whose every pass was incomplete (`DRAINS_ALL_LOST`).
    pub fn drain(&mut self, probes: &mut Probes) -> Result<Drained, &'static str> {
        let mut drained = Drained::default();
        while let Some(record) = self.ring.next() {
            if let Some(unwalkable) = unwalkable_process(&record) {
                if !drained.unwalkable.iter().any(|&(tgid, _)| tgid == unwalkable.0) {
                    drained.unwalkable.push(unwalkable);
                }
                continue;
            }
            match record_process(&record) {
                Some(tgid) => drained.records.entry(tgid).or_default().push(record.to_vec()),
                None => self.malformed += 1,
            }
        }
        for &(tgid, threads) in &drained.unwalkable {
            log::info!(
                "pid {tgid}: {threads} threads, more than a pass in the kernel walks \
                 ({PASS_MAX_THREADS}); reading it every period"
            );
            probes.unwatch_in_passes(tgid);
        }
        // Read once for the rules below and the pace.
        let progress = probes.pass_progress().ok();
        let passes_made = progress.map(|(passes, _)| passes);
        let (made, incomplete) =
            (passes_made.unwrap_or(0), probes.counter(Counter::PassesIncomplete).unwrap_or(0));
        if let Some((passes, lap)) = progress {
            self.count_turns(passes, lap);
        }
        let (made_before, incomplete_before) =
            std::mem::replace(&mut self.lost_mark, (made, incomplete));
        let (made_since, incomplete_since) =
            (made.saturating_sub(made_before), incomplete.saturating_sub(incomplete_before));
        let walked_per_pass = probes.processes_watched().div_ceil(u64::from(self.turns));
        if every_pass_lost(made_since, walked_per_pass, incomplete_since) {
            self.drains_all_lost += 1;
        } else {
            self.drains_all_lost = 0;
        }
        if self.drains_all_lost >= DRAINS_ALL_LOST {
            probes.stop_sample_passes();
            return Err("the passes in the kernel keep missing threads (their ring is full)");
        }
        self.pace(probes, passes_made);
        Ok(drained)
    }

    /// How many passes a lap over every process takes, from how far the passes got at a
    /// drain (`passes` made, the `lap` that ended last).
    fn count_turns(&mut self, passes: u64, lap: PassLap) {
        let turns =
            passes_per_lap(passes, lap, std::mem::replace(&mut self.lap_mark, lap), self.turns);
        if turns > 1 && !std::mem::replace(&mut self.turns_said, true) {
            log::info!(
                "{}: more threads than a pass in the kernel walks ({PASS_MAX_THREADS}): the \
                 processes are walked in turns, each every {turns} passes",
                self.label
            );
        }
        self.turns = turns;
    }

    /// Spaces the passes out while each costs more than the reads' budget of a CPU allows
    /// at the period asked, as `ReadPace` spaces the reads made by the tracer (a pass over
    /// a thousand threads takes about a millisecond of a timer interrupt), and brings them
    /// back once it does not. `passes_made`: the passes made, as the drain read them.
    fn pace(&mut self, probes: &mut Probes, passes_made: Option<u64>) {
        let (Some(made), Ok(spent_ns)) = (passes_made, probes.counter(Counter::PassNs)) else {
            return;
        };
        let (made_before, spent_before) = self.cost_mark;
        let new_passes = made.saturating_sub(made_before);
        if new_passes == 0 {
            return;
        }
        self.cost_mark = (made, spent_ns);
        let per_pass = Duration::from_nanos(spent_ns.saturating_sub(spent_before) / new_passes);
        let budget = pace::cpu_budget_percent() / 100.0;
        let period = pass_period_within_budget(self.asked, per_pass, budget, self.period);
        if period == self.period {
            return;
        }
        match probes.set_sample_pass_period(period) {
            Ok(()) => {
                if period > self.asked && !self.spaced {
                    self.spaced = true;
                    log::info!(
                        "{}: a pass took {per_pass:?}: passes come every {period:?} instead of \
                         {:?} to stay within {}% of a CPU",
                        self.label,
                        self.asked,
                        pace::cpu_budget_percent()
                    );
                }
                self.period = period;
            }
            Err(err) => log::warn!(
                "{}: cannot space the passes out ({:#})",
                self.label,
                anyhow::Error::from(err)
            ),
        }
    }
}

/// Passes per lap over every process, from the passes made and the `lap` that ended
/// last, the lap `mark` seen at the drain before, and the figure `before`. The passes
/// between the ends of laps, over the laps: exact however the drains fall. While no lap
/// ends, at least the passes since the last did (the pass that ends the next is numbered
/// a lap's passes after the one that ended the last).
fn passes_per_lap(passes: u64, lap: PassLap, mark: PassLap, before: u32) -> u32 {
    let turns = match lap.laps.wrapping_sub(mark.laps) {
        0 => (passes as u32).wrapping_sub(lap.ended_by_pass).max(before),
        laps => lap.ended_by_pass.wrapping_sub(mark.ended_by_pass).div_ceil(laps),
    };
    turns.max(1)
}

/// The process and its threads when the record is the end of a pass that could not walk
/// it: more threads than any pass walks.
fn unwalkable_process(record: &[u8]) -> Option<(u32, u32)> {
    let end = pass_end_of(record)?;
    (end.unwalkable_threads > 0).then_some((end.tgid, end.unwalkable_threads))
}

/// The record as a pass's end; None for another record, or one too short.
fn pass_end_of(record: &[u8]) -> Option<PassEnd> {
    let tag = record.get(..4)?;
    if u32::from_ne_bytes(tag.try_into().expect("4 bytes")) != PASS_END
        || record.len() < size_of::<PassEnd>()
    {
        return None;
    }
    // SAFETY: a whole PassEnd (its tag and length say so), read unaligned, as ring records
    // are 8-aligned at best.
    Some(unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) })
}

/// The process a record of the passes' ring is of; None for one too short to tell.
fn record_process(record: &[u8]) -> Option<u32> {
    let u32_at = |at: usize| {
        record.get(at..at + 4).map(|bytes| u32::from_ne_bytes(bytes.try_into().expect("4 bytes")))
    };
    let tgid_at = match u32_at(0)? {
        PASS_LOOK => std::mem::offset_of!(PassLook, look) + std::mem::offset_of!(TaskLook, tgid),
        PASS_STACK => std::mem::offset_of!(PassStack, tgid),
        PASS_END => std::mem::offset_of!(PassEnd, tgid),
        _ => return None,
    };
    u32_at(tgid_at)
}

/// Whether a drain found every pass made since the one before lost: `made` passes over
/// `processes` processes each (those a pass walks), of which `incomplete` could not be
/// read whole, counted once per process (a process not found, gone, is not lost: the
/// reads by the tracer will see it gone). One process of several whose passes keep
/// failing is not every pass lost.
fn every_pass_lost(made: u64, processes: u64, incomplete: u64) -> bool {
    let process_passes = made.saturating_mul(processes.max(1));
    process_passes > 0 && incomplete >= process_passes
}

/// The period passes that each cost `per_pass` of a CPU should come at to take at most
/// `budget` (a fraction) of it, asked to come every `asked`, now every `current`: within
/// a quarter of the current one it stays, so that a cost that wobbles does not move it
/// at every drain.
fn pass_period_within_budget(
    asked: Duration,
    per_pass: Duration,
    budget: f64,
    current: Duration,
) -> Duration {
    let wanted = pace::gap_within_budget(asked, per_pass, budget);
    if wanted == asked || wanted > current.mul_f64(1.25) || wanted < current.mul_f64(0.8) {
        wanted
    } else {
        current
    }
}

/// Puts the ring's records together into whole passes, drain after drain. A drain may
/// land while a pass is still writing on another CPU: a pass is read once its end came
/// with all its looks and no thread missed (one missing a thread would end that thread's
/// wait), and not before an older pass still being written (passes are read in time
/// order).
#[derive(Debug, Default)]
pub struct PassAssembler {
    /// Passes begun and not yet read, oldest first.
    open: Vec<OpenPass>,
    /// The ids of the passes given up lately: their late records are not malformed.
    given_up_ids: VecDeque<u32>,
    /// Drains so far.
    drains: u64,
    /// Records no pass could be made of (never expected).
    malformed: u64,
    /// Passes given up: their end says they missed a thread (a full ring lost its look,
    /// or the thread list could not be read on), or it did not come by the drain after
    /// the one that saw them begin (a full ring lost it, or the pass's CPU was held up).
    /// The kernel counted those it could not finish (`Counter::PassesIncomplete`).
    given_up: u64,
    /// Passes given up whose end then came, whole: reads lost that the kernel did not
    /// count (their CPU was held up past a drain).
    late: u64,
}

/// How many given-up passes' ids are kept: more than a drain's worth of passes.
const GIVEN_UP_IDS: usize = 64;

#[derive(Debug)]
struct OpenPass {
    pass: Pass,
    /// The drain that saw it begin.
    first_drain: u64,
    end: Option<PassEnd>,
}

impl PassAssembler {
    /// Takes one drain's records of its process, and returns the passes now whole, in
    /// time order.
    pub fn take(&mut self, records: &[Vec<u8>]) -> Vec<Pass> {
        self.drains += 1;
        for record in records {
            self.add_record(record);
        }
        self.take_whole()
    }

    /// Records of the ring no pass could be made of.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Passes given up that the kernel finished, late: reads lost that its
    /// `Counter::PassesIncomplete` does not count.
    pub fn late(&self) -> u64 {
        self.late
    }

    fn open_pass(&mut self, id: u32) -> Option<&mut OpenPass> {
        self.open.iter_mut().rev().find(|open| open.pass.id == id)
    }

    /// A record of no open pass: one given up already is expected, anything else not.
    fn stray_record(&mut self, id: u32) {
        if !self.given_up_ids.contains(&id) {
            self.malformed += 1;
        }
    }

    fn give_up(&mut self, id: u32) {
        self.given_up += 1;
        if self.given_up_ids.len() == GIVEN_UP_IDS {
            self.given_up_ids.pop_front();
        }
        self.given_up_ids.push_back(id);
    }

    /// Adds one record to its pass: a look of a pass not yet open opens it (the kernel
    /// writes a pass's looks, and the stacks it copies, before its end).
    fn add_record(&mut self, record: &[u8]) {
        let tag = record.get(..4).map(|tag| u32::from_ne_bytes(tag.try_into().expect("4 bytes")));
        match tag {
            Some(PASS_LOOK) if record.len() >= size_of::<PassLook>() => {
                // SAFETY: the ring holds a whole PassLook here (its tag and length say
                // so); read unaligned, as ring records are 8-aligned at best.
                let look: PassLook = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
                let given_up = self.given_up_ids.contains(&look.pass);
                match self.open_pass(look.pass) {
                    Some(open) if open.end.is_none() => open.pass.looks.push(look.look),
                    Some(_) => self.malformed += 1,
                    None if given_up => {}
                    None => {
                        let pass = Pass {
                            id: look.pass,
                            time_ns: look.time_ns,
                            looks: vec![look.look],
                            copies: HashMap::new(),
                        };
                        self.open.push(OpenPass { pass, first_drain: self.drains, end: None });
                    }
                }
            }
            Some(PASS_STACK) if record.len() >= size_of::<PassStack>() => {
                // SAFETY: as above, a whole PassStack; only its header is read by value.
                let stack = record.as_ptr().cast::<PassStack>();
                let (tid, pass, switches, len) = unsafe {
                    (
                        std::ptr::read_unaligned(&raw const (*stack).tid),
                        std::ptr::read_unaligned(&raw const (*stack).pass),
                        std::ptr::read_unaligned(&raw const (*stack).switches),
                        std::ptr::read_unaligned(&raw const (*stack).len) as usize,
                    )
                };
                let bytes_at = std::mem::offset_of!(PassStack, stack);
                let bytes = &record[bytes_at..bytes_at + len.min(STACK_COPY_BYTES)];
                match self.open_pass(pass) {
                    Some(open) if open.end.is_none() => {
                        open.pass.copies.insert(tid, PassCopy { switches, stack: bytes.to_vec() });
                    }
                    Some(_) => self.malformed += 1,
                    None => self.stray_record(pass),
                }
            }
            Some(PASS_END) => {
                let Some(end) = pass_end_of(record) else {
                    self.malformed += 1;
                    return;
                };
                let given_up = self.given_up_ids.contains(&end.pass);
                match self.open_pass(end.pass) {
                    Some(open) if open.end.is_none() => open.end = Some(end),
                    Some(_) => self.malformed += 1,
                    // A pass that wrote no look: of an empty thread list (nothing to
                    // read), or whose every look the ring lost.
                    None if end.looks == 0 => {
                        if end.missed > 0 {
                            self.give_up(end.pass);
                        }
                    }
                    None if given_up => {
                        if end.missed == 0 {
                            self.late += 1;
                        }
                    }
                    None => self.stray_record(end.pass),
                }
            }
            _ => self.malformed += 1,
        }
    }

    /// Takes the passes that are whole and have no older pass still open before them;
    /// gives up those that cannot become whole.
    fn take_whole(&mut self) -> Vec<Pass> {
        self.open.sort_by_key(|open| open.pass.time_ns);
        let mut whole = Vec::new();
        let mut older_still_open = false;
        let given_up_before = self.given_up;
        for open in std::mem::take(&mut self.open) {
            match open.end {
                Some(end) if end.missed == 0 && end.looks as usize == open.pass.looks.len() => {
                    if older_still_open {
                        self.open.push(open);
                    } else {
                        whole.push(open.pass);
                    }
                }
                Some(end) if end.missed > 0 => self.give_up(open.pass.id),
                // Looks of another pass under its id: never expected.
                Some(_) => self.malformed += 1,
                None if open.first_drain < self.drains => self.give_up(open.pass.id),
                None => {
                    older_still_open = true;
                    self.open.push(open);
                }
            }
        }
        if self.given_up > given_up_before {
            log::debug!("{} passes in the kernel given up so far", self.given_up);
        }
        whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process the records below are of.
    const TGID: u32 = 4242;

    fn look_record(pass: u32, time_ns: u64, tid: u32) -> Vec<u8> {
        let record = PassLook {
            tag: PASS_LOOK,
            pass,
            time_ns,
            look: TaskLook { tid, tgid: TGID, switches: 7, ..TaskLook::default() },
        };
        // SAFETY: a plain repr(C) value without padding, viewed as its bytes.
        unsafe {
            std::slice::from_raw_parts((&raw const record).cast::<u8>(), size_of::<PassLook>())
        }
        .to_vec()
    }

    fn stack_record(pass: u32, tid: u32, len: u32) -> Vec<u8> {
        let mut record = vec![0u8; size_of::<PassStack>()];
        record[..4].copy_from_slice(&PASS_STACK.to_ne_bytes());
        record[4..8].copy_from_slice(&len.to_ne_bytes());
        record[8..12].copy_from_slice(&tid.to_ne_bytes());
        record[12..16].copy_from_slice(&pass.to_ne_bytes());
        record[16..20].copy_from_slice(&TGID.to_ne_bytes());
        record[24..32].copy_from_slice(&7u64.to_ne_bytes());
        let at = std::mem::offset_of!(PassStack, stack);
        record[at..at + len as usize].fill(0xab);
        record
    }

    fn end_record(pass: u32, looks: u32, missed: u32) -> Vec<u8> {
        end_bytes(PassEnd { tag: PASS_END, pass, tgid: TGID, looks, missed, unwalkable_threads: 0 })
    }

    fn end_bytes(end: PassEnd) -> Vec<u8> {
        // SAFETY: as in `look_record`.
        unsafe { std::slice::from_raw_parts((&raw const end).cast::<u8>(), size_of::<PassEnd>()) }
            .to_vec()
    }

    /// Adds `records` as one drain would have found them, and returns the passes it read.
    fn passes_drained(assembler: &mut PassAssembler, records: &[Vec<u8>]) -> Vec<Pass> {
        assembler.take(records)
    }

    #[test]
    fn each_record_names_its_process() {
        for record in [look_record(1, 1_000, 7), stack_record(1, 7, 64), end_record(1, 1, 0)] {
            assert_eq!(record_process(&record), Some(TGID));
        }
        // Too short to say, or of no kind: no process.
        assert_eq!(record_process(&look_record(1, 1_000, 7)[..20]), None);
        assert_eq!(record_process(&[9, 0, 0, 0, 1, 0, 0, 0]), None);
        assert_eq!(record_process(&[]), None);
    }

    /// The same, each pass read as (id, time, looks).
    fn drain_of(assembler: &mut PassAssembler, records: &[Vec<u8>]) -> Vec<(u32, u64, usize)> {
        let passes = passes_drained(assembler, records);
        passes.iter().map(|pass| (pass.id, pass.time_ns, pass.looks.len())).collect()
    }

    #[test]
    fn records_group_into_passes_with_their_copies() {
        let mut assembler = PassAssembler::default();
        let records = [
            look_record(10, 1_000, 1),
            look_record(10, 1_000, 2),
            stack_record(10, 2, 64),
            end_record(10, 2, 0),
            look_record(11, 21_000, 1),
            look_record(11, 21_000, 2),
            end_record(11, 2, 0),
        ];
        let passes = passes_drained(&mut assembler, &records);
        assert_eq!(assembler.malformed, 0);
        let read: Vec<(u32, usize)> =
            passes.iter().map(|pass| (pass.id, pass.looks.len())).collect();
        assert_eq!(read, [(10, 2), (11, 2)]);
        let copy = &passes[0].copies[&2];
        assert_eq!((copy.switches, copy.stack.len()), (7, 64));
        assert!(copy.stack.iter().all(|&byte| byte == 0xab));
        assert!(!copy.may_be_cut());
        assert!(passes[1].copies.is_empty());
    }

    #[test]
    fn a_pass_still_being_written_waits_for_its_end_and_holds_back_the_later_ones() {
        let mut assembler = PassAssembler::default();
        // The drain lands after two of pass 10's three looks; pass 11, on the other CPU,
        // is whole already.
        let first = drain_of(
            &mut assembler,
            &[
                look_record(10, 1_000, 1),
                look_record(10, 1_000, 2),
                look_record(11, 1_050, 1),
                look_record(11, 1_050, 2),
                look_record(11, 1_050, 3),
                end_record(11, 3, 0),
            ],
        );
        assert_eq!(first, [], "no pass may be read while an older one is unfinished");
        let second = drain_of(
            &mut assembler,
            &[look_record(10, 1_000, 3), end_record(10, 3, 0), look_record(12, 21_000, 1)],
        );
        assert_eq!(second, [(10, 1_000, 3), (11, 1_050, 3)]);
        assert_eq!((assembler.malformed, assembler.given_up), (0, 0));
    }

    #[test]
    fn interleaved_passes_are_told_apart_by_id() {
        let mut assembler = PassAssembler::default();
        let read = drain_of(
            &mut assembler,
            &[
                look_record(10, 1_000, 1),
                look_record(11, 1_030, 1),
                look_record(10, 1_000, 2),
                stack_record(11, 1, 64),
                look_record(11, 1_030, 2),
                end_record(10, 2, 0),
                end_record(11, 2, 0),
            ],
        );
        assert_eq!(read, [(10, 1_000, 2), (11, 1_030, 2)]);
        assert_eq!(assembler.malformed, 0);
    }

    #[test]
    fn a_pass_missing_a_look_is_never_read() {
        let mut assembler = PassAssembler::default();
        // The ring lost a look of pass 10, and pass 11's end.
        let first = drain_of(
            &mut assembler,
            &[
                look_record(10, 1_000, 1),
                end_record(10, 1, 1),
                look_record(11, 21_000, 1),
                look_record(11, 21_000, 2),
            ],
        );
        assert_eq!(first, []);
        assert_eq!(assembler.given_up, 1);
        // Pass 11's end never comes: it is given up at the next drain, and pass 12 read.
        let second = drain_of(
            &mut assembler,
            &[look_record(12, 41_000, 1), look_record(12, 41_000, 2), end_record(12, 2, 0)],
        );
        assert_eq!(second, [(12, 41_000, 2)]);
        assert_eq!((assembler.given_up, assembler.malformed), (2, 0));
        // A pass whose every look was lost leaves only its end.
        assert_eq!(drain_of(&mut assembler, &[end_record(13, 0, 2)]), []);
        assert_eq!((assembler.given_up, assembler.malformed), (3, 0));
        // Each missed a thread, which the kernel counted: none is a late pass of its own.
        assert_eq!(assembler.late(), 0);
    }

    #[test]
    fn a_given_up_passs_late_records_and_an_empty_pass_are_not_malformed_and_it_counts_late() {
        let mut assembler = PassAssembler::default();
        // Pass 10's CPU is held up past the next drain: given up there.
        assert_eq!(drain_of(&mut assembler, &[look_record(10, 1_000, 1)]), []);
        assert_eq!(drain_of(&mut assembler, &[]), []);
        assert_eq!(assembler.given_up, 1);
        // Its last look, a stack and its end come later, with a pass over an empty list
        // (a process exiting) and a whole one.
        let read = drain_of(
            &mut assembler,
            &[
                look_record(10, 1_000, 2),
                stack_record(10, 2, 64),
                end_record(10, 2, 0),
                end_record(11, 0, 0),
                look_record(12, 41_000, 1),
                end_record(12, 1, 0),
            ],
        );
        assert_eq!(read, [(12, 41_000, 1)]);
        assert_eq!((assembler.given_up, assembler.malformed), (1, 0));
        // Its end came whole: a read lost that the kernel did not count.
        assert_eq!(assembler.late(), 1);
        assert!(assembler.open.is_empty());
    }

    #[test]
    fn a_look_after_its_passs_end_is_malformed() {
        let mut assembler = PassAssembler::default();
        let records = [look_record(10, 1_000, 1), end_record(10, 1, 0), look_record(10, 1_000, 2)];
        assert_eq!(drain_of(&mut assembler, &records), [(10, 1_000, 1)]);
        assert_eq!(assembler.malformed, 1);
    }

    #[test]
    fn a_stack_without_its_pass_or_a_short_record_is_counted_not_used() {
        let mut assembler = PassAssembler::default();
        let records = [
            stack_record(3, 1, 64),
            look_record(4, 1, 1)[..20].to_vec(),
            vec![9, 0, 0, 0],
            look_record(4, 1, 1),
            stack_record(3, 1, 64),
            end_record(4, 2, 0),
        ];
        assert_eq!(drain_of(&mut assembler, &records), []);
        // Three records of no pass, a short one, and an end that counts a look never seen.
        assert_eq!(assembler.malformed, 5);
        assert!(assembler.open.is_empty());
    }

    #[test]
    fn passes_that_cost_more_than_the_budget_are_spaced_out_and_come_back() {
        let asked = Duration::from_millis(20);
        let period = |per_pass_us, current_ms| {
            let per_pass = Duration::from_micros(per_pass_us);
            super::pass_period_within_budget(
                asked,
                per_pass,
                0.05,
                Duration::from_millis(current_ms),
            )
        };
        // 300 threads, about 330 µs a pass: 1.7% of a CPU at 49 Hz, within 5%.
        assert_eq!(period(330, 20), asked);
        // 2 ms a pass (a thousand threads on a slower machine): every 40 ms.
        assert_eq!(period(2_000, 20), Duration::from_millis(40));
        // A cost that wobbles by less than a quarter leaves the period where it is.
        assert_eq!(period(2_200, 40), Duration::from_millis(40));
        assert_eq!(period(3_000, 40), Duration::from_millis(60));
        // Cheap again: back to the asked period at once.
        assert_eq!(period(500, 60), asked);
    }

    #[test]
    fn a_drain_whose_every_pass_was_lost_is_told_from_one_that_lost_some() {
        use super::every_pass_lost;
        assert!(!every_pass_lost(0, 1, 0), "no pass made (the period spaced out)");
        assert!(!every_pass_lost(12, 1, 0));
        assert!(!every_pass_lost(12, 1, 3), "a burst of new waits' copies filled the ring");
        assert!(every_pass_lost(12, 1, 12), "a ring the passes overflow");
        // A pass counted incomplete at the drain before may end up in this drain's count.
        assert!(every_pass_lost(12, 1, 13));
        // Several processes: each pass counts once per process it lost.
        assert!(!every_pass_lost(12, 3, 12), "one process of three lost at every pass");
        assert!(every_pass_lost(12, 3, 36), "all three lost at every pass");
        // None watched yet (counted as one, as before a process joins).
        assert!(every_pass_lost(12, 0, 12));
    }

    #[test]
    fn passes_per_lap_say_how_often_each_process_is_walked() {
        use super::passes_per_lap;
        use crate::probes::PassLap;
        let lap = |laps, ended_by_pass| PassLap { laps, ended_by_pass };
        // Every process fits in a pass: a lap each, whether or not a pass was under way
        // when the drain looked.
        assert_eq!(passes_per_lap(112, lap(112, 112), lap(100, 100), 1), 1);
        assert_eq!(passes_per_lap(113, lap(112, 112), lap(100, 100), 1), 1);
        // Three processes of 400 threads, two a pass: two laps every three passes, so a
        // process waits up to two periods for its next pass.
        assert_eq!(passes_per_lap(112, lap(74, 111), lap(66, 99), 1), 2);
        // 24 processes of 500 threads, two a pass: a lap every 12 passes. A drain that
        // came 11 passes after a lap ended, and 13 passes later, sees two laps end 24
        // passes apart (counted from the drains, 13 passes held two laps: 6).
        assert_eq!(passes_per_lap(124, lap(10, 120), lap(8, 96), 1), 12);
        // The count of passes wraps at 32 bits.
        assert_eq!(passes_per_lap(1 << 32, lap(3, 2), lap(2, u32::MAX), 1), 3);
        // Laps longer than a drain: the passes since the last lap ended, at least.
        assert_eq!(passes_per_lap(130, lap(10, 120), lap(10, 120), 2), 10);
        assert_eq!(passes_per_lap(130, lap(10, 120), lap(10, 120), 30), 30);
        // No pass made yet, or none since (spaced out): the figure before stands.
        assert_eq!(passes_per_lap(0, lap(0, 0), lap(0, 0), 3), 3);
        assert_eq!(passes_per_lap(0, lap(0, 0), lap(0, 0), 0), 1);
    }

    #[test]
    fn an_end_without_looks_names_a_process_of_more_threads_than_a_pass_walks() {
        use super::unwalkable_process;
        let end = |looks, missed, unwalkable_threads| {
            end_bytes(PassEnd {
                tag: PASS_END,
                pass: 7,
                tgid: TGID,
                looks,
                missed,
                unwalkable_threads,
            })
        };
        assert_eq!(unwalkable_process(&end(0, 0, 1500)), Some((TGID, 1500)));
        assert_eq!(unwalkable_process(&end(3, 0, 0)), None);
        assert_eq!(unwalkable_process(&end(0, 1, 0)), None);
        assert_eq!(unwalkable_process(&end(0, 0, 1500)[..20]), None, "a short record");
        assert_eq!(unwalkable_process(&look_record(7, 1, 1)), None);
        // The assembler, handed one, reads nothing of it and counts nothing.
        let mut assembler = PassAssembler::default();
        assert_eq!(drain_of(&mut assembler, &[end(0, 0, 1500)]), []);
        assert_eq!((assembler.malformed, assembler.given_up), (0, 0));
    }

    #[test]
    fn a_full_copy_may_be_cut() {
        let copy = PassCopy { switches: 1, stack: vec![0; STACK_COPY_BYTES] };
        assert!(copy.may_be_cut());
    }
}
