//! A sampled recording's passes made in the kernel (`tracer_sample_pass`): at each
//! period the kernel's timer looks at the target's threads and copies the stacks of the
//! newly blocked ones it can reach; the tracer drains the looks a few times a second and
//! gives them to the sampler pass by pass, as if it had read them itself at their time.
//! Waking the tracer at the rate is what a sampled recording cost the service on this VM
//! (docs/overhead-log.md, session 34); a drain every `DRAIN_INTERVAL` costs it nothing
//! measurable.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tracer_common::{
    PASS_END, PASS_LOOK, PASS_STACK, PassEnd, PassLook, PassStack, STACK_COPY_BYTES, TaskLook,
};

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
    /// Drains the ring of everything the passes wrote since the last drain, and returns
    /// the passes now whole, in time order.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Vec<Pass> {
        self.drains += 1;
        while let Some(record) = ring.next() {
            self.add_record(&record);
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
            Some(PASS_END) if record.len() >= size_of::<PassEnd>() => {
                // SAFETY: as above, a whole PassEnd.
                let end: PassEnd = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
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

    fn look_record(pass: u32, time_ns: u64, tid: u32) -> Vec<u8> {
        let record = PassLook {
            tag: PASS_LOOK,
            pass,
            time_ns,
            look: TaskLook { tid, switches: 7, ..TaskLook::default() },
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
        record[16..24].copy_from_slice(&7u64.to_ne_bytes());
        let at = std::mem::offset_of!(PassStack, stack);
        record[at..at + len as usize].fill(0xab);
        record
    }

    fn end_record(pass: u32, looks: u32, missed: u32) -> Vec<u8> {
        let end = PassEnd { tag: PASS_END, pass, looks, missed };
        // SAFETY: as in `look_record`.
        unsafe { std::slice::from_raw_parts((&raw const end).cast::<u8>(), size_of::<PassEnd>()) }
            .to_vec()
    }

    /// Adds `records` as one drain would have found them, and returns the passes it read.
    fn passes_drained(assembler: &mut PassAssembler, records: &[Vec<u8>]) -> Vec<Pass> {
        assembler.drains += 1;
        for record in records {
            assembler.add_record(record);
        }
        assembler.take_whole()
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
    fn a_full_copy_may_be_cut() {
        let copy = PassCopy { switches: 1, stack: vec![0; STACK_COPY_BYTES] };
        assert!(copy.may_be_cut());
    }
}
