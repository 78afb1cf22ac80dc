//! A sampled recording's passes made in the kernel (`tracer_sample_pass`): at each
//! period the kernel's timer looks at the target's threads and copies the stacks of the
//! newly blocked ones it can reach; the tracer drains the looks a few times a second and
//! gives them to the sampler pass by pass, as if it had read them itself at their time.
//! Waking the tracer at the rate is what a sampled recording cost the service on this VM
//! (docs/overhead-log.md, session 34); a drain every `DRAIN_INTERVAL` costs it nothing
//! measurable.

use std::collections::HashMap;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tracer_common::{PASS_LOOK, PASS_STACK, PassLook, PassStack, STACK_COPY_BYTES, TaskLook};

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
    pub number: u32,
    pub time_ns: u64,
    pub looks: Vec<TaskLook>,
    pub copies: HashMap<u32, PassCopy>,
}

/// What a drain found in the ring: its passes in order, and the records it could not
/// read (malformed: counted, never expected).
#[derive(Debug, Default)]
pub struct Drained {
    pub passes: Vec<Pass>,
    pub malformed: u64,
}

/// Drains the ring of everything the passes wrote since the last drain.
pub fn drain(ring: &mut RingBuf<MapData>) -> Drained {
    let mut drained = Drained::default();
    while let Some(record) = ring.next() {
        add_record(&mut drained, &record);
    }
    drained
}

/// Adds one record to the passes: a look starts a pass when its number differs from the
/// last one's (the kernel makes one pass at a time, each writing its looks, and its
/// stacks, in a row).
fn add_record(drained: &mut Drained, record: &[u8]) {
    let tag = record.get(..4).map(|tag| u32::from_ne_bytes(tag.try_into().expect("4 bytes")));
    match tag {
        Some(PASS_LOOK) if record.len() >= size_of::<PassLook>() => {
            // SAFETY: the ring holds a whole PassLook here (its tag and length say so);
            // read unaligned, as ring records are 8-aligned at best.
            let look: PassLook = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
            match drained.passes.last_mut() {
                Some(pass) if pass.number == look.pass => pass.looks.push(look.look),
                _ => drained.passes.push(Pass {
                    number: look.pass,
                    time_ns: look.time_ns,
                    looks: vec![look.look],
                    copies: HashMap::new(),
                }),
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
            match drained.passes.last_mut() {
                Some(last) if last.number == pass => {
                    last.copies.insert(tid, PassCopy { switches, stack: bytes.to_vec() });
                }
                _ => drained.malformed += 1,
            }
        }
        _ => drained.malformed += 1,
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

    #[test]
    fn records_group_into_passes_with_their_copies() {
        let mut drained = Drained::default();
        for record in [
            look_record(10, 1_000, 1),
            look_record(10, 1_000, 2),
            stack_record(10, 2, 64),
            look_record(11, 21_000, 1),
            look_record(11, 21_000, 2),
        ] {
            add_record(&mut drained, &record);
        }
        assert_eq!(drained.malformed, 0);
        let passes: Vec<(u32, u64, usize)> = drained
            .passes
            .iter()
            .map(|pass| (pass.number, pass.time_ns, pass.looks.len()))
            .collect();
        assert_eq!(passes, [(10, 1_000, 2), (11, 21_000, 2)]);
        let copy = &drained.passes[0].copies[&2];
        assert_eq!((copy.switches, copy.stack.len()), (7, 64));
        assert!(copy.stack.iter().all(|&byte| byte == 0xab));
        assert!(!copy.may_be_cut());
        assert!(drained.passes[1].copies.is_empty());
    }

    #[test]
    fn a_stack_without_its_pass_or_a_short_record_is_counted_not_used() {
        let mut drained = Drained::default();
        add_record(&mut drained, &stack_record(3, 1, 64));
        add_record(&mut drained, &look_record(4, 1, 1)[..20]);
        add_record(&mut drained, &[9, 0, 0, 0]);
        add_record(&mut drained, &look_record(4, 1, 1));
        add_record(&mut drained, &stack_record(3, 1, 64));
        assert_eq!(drained.malformed, 4);
        assert_eq!(drained.passes.len(), 1);
        assert!(drained.passes[0].copies.is_empty());
    }

    #[test]
    fn a_full_copy_may_be_cut() {
        let copy = PassCopy { switches: 1, stack: vec![0; STACK_COPY_BYTES] };
        assert!(copy.may_be_cut());
    }
}
