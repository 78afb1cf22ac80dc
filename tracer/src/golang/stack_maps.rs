//! Which words of a parked goroutine's stack hold live pointers, as the runtime's collector
//! reads them (`runtime.getStackMap`, `scanframeworker`): at each frame's pc, the
//! function's `_PCDATA_StackMapIndex` picks a bitmap of its locals (the words below its
//! frame pointer) and one of its arguments (above its return address); its stack objects
//! (address-taken locals, such as a deferred call's closure) count where a live word points
//! into them. A word left in a slot that is no longer live (an earlier call's argument, a
//! stack reused from a goroutine that exited) is not among them: what the holder scan must
//! not take for a holder (`holders.rs`).

use std::{collections::HashMap, rc::Rc};

use super::pclntab::Pclntab;
use crate::memory::word;

/// `_PCDATA_StackMapIndex`, and the funcdata of the bitmaps and of the stack objects
/// (`internal/abi/symtab.go`).
const PCDATA_STACK_MAP_INDEX: u32 = 1;
const FUNCDATA_ARGS_POINTER_MAPS: u8 = 0;
const FUNCDATA_LOCALS_POINTER_MAPS: u8 = 1;
const FUNCDATA_STACK_OBJECTS: u8 = 2;
/// A `runtime.stackObjectRecord` (Go 1.18–1.27): `off`, `size`, `ptrBytes` (negated when
/// a GC program describes it), `gcdataoff`, each 4 bytes; a count word comes first.
const STACK_OBJECT_RECORD: usize = 16;
/// Frames followed at most per stack.
const MAX_FRAMES: usize = 512;

/// The stack maps of one executable, with each pc's maps kept once read (a few thousand
/// goroutines park at a few dozen pcs).
pub struct StackMaps<'a> {
    pclntab: &'a Pclntab<'a>,
    /// Load bias: process address = link-time address + bias.
    bias: u64,
    frames: HashMap<u64, Option<Rc<FrameMaps>>>,
}

/// What the collector scans of one function's frame at one pc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FrameMaps {
    /// Live words below the frame pointer (`varp`): bit i is the word at
    /// `varp - 8 * locals.len() + 8 * i`.
    locals: Vec<bool>,
    /// Live words from the first argument's slot (`argp`, above the return address) up.
    args: Vec<bool>,
    /// The frame's stack objects: (offset, from `varp` if negative, else from `argp`;
    /// size; bytes that may hold pointers).
    objects: Vec<(i64, u64, u64)>,
}

impl<'a> StackMaps<'a> {
    pub fn new(pclntab: &'a Pclntab<'a>, bias: u64) -> Self {
        Self { pclntab, bias, frames: HashMap::new() }
    }

    /// The live pointer words of the goroutine parked with `pc` and frame pointer `bp`
    /// whose stack from its sp is `stack`, frame by frame up the frame-pointer chain while
    /// it stays in `stack`, with the words of the stack objects they reach. A frame of a
    /// function with no maps (assembly) counts all its words. None if the first frame has
    /// no maps (no `gofunc`: the caller scans the stack whole).
    pub fn live_words(&mut self, sp: u64, stack: &[u8], pc: u64, bp: u64) -> Option<Vec<u64>> {
        live_words(sp, stack, pc, bp, |pc| self.frame_maps(pc))
    }

    /// The maps of the function at the process address `pc` (a return address, or a
    /// parked goroutine's saved pc, also just after a call), read once per pc.
    fn frame_maps(&mut self, pc: u64) -> Option<Rc<FrameMaps>> {
        let (pclntab, bias) = (self.pclntab, self.bias);
        self.frames
            .entry(pc)
            .or_insert_with(|| read_frame_maps(pclntab, pc.wrapping_sub(bias)).map(Rc::new))
            .clone()
    }
}

/// [`StackMaps::live_words`], each frame's maps from `frame_maps`.
fn live_words(
    sp: u64,
    stack: &[u8],
    pc: u64,
    bp: u64,
    mut frame_maps: impl FnMut(u64) -> Option<Rc<FrameMaps>>,
) -> Option<Vec<u64>> {
    let end = sp + stack.len() as u64;
    let read = |address: u64| {
        let offset = address.checked_sub(sp)?;
        (offset + 8 <= stack.len() as u64).then(|| word(stack, offset as usize))
    };
    let mut live = Vec::new();
    // Stack objects: (start, size, pointer bytes).
    let mut objects: Vec<(u64, u64, u64)> = Vec::new();
    let (mut pc, mut bp, mut frame_sp) = (pc, bp, sp);
    for depth in 0..MAX_FRAMES {
        if bp < frame_sp || bp.saturating_add(16) > end {
            break;
        }
        // Go's frame on amd64: locals up to the saved frame pointer at `bp`, the
        // return address above it, then the arguments' slots (`argp`).
        let (varp, argp) = (bp, bp + 16);
        match frame_maps(pc) {
            Some(maps) => {
                let locals_start = varp.wrapping_sub(8 * maps.locals.len() as u64);
                if varp > frame_sp {
                    let slots = maps.locals.iter().enumerate();
                    live.extend(slots.filter(|(_, live)| **live).filter_map(|(index, _)| {
                        read(locals_start.wrapping_add(8 * index as u64))
                    }));
                }
                let slots = maps.args.iter().enumerate();
                live.extend(
                    slots
                        .filter(|(_, live)| **live)
                        .filter_map(|(index, _)| read(argp + 8 * index as u64)),
                );
                for &(offset, size, pointer_bytes) in &maps.objects {
                    let base = if offset < 0 { varp } else { argp };
                    let start = base.wrapping_add_signed(offset);
                    // Below sp: not allocated in the frame yet.
                    if start >= frame_sp {
                        objects.push((start, size, pointer_bytes));
                    }
                }
            }
            None if depth == 0 => return None,
            None => live.extend((frame_sp..argp).step_by(8).filter_map(read)),
        }
        let (Some(caller_bp), Some(return_address)) = (read(bp), read(bp + 8)) else {
            break;
        };
        if return_address == 0 {
            break;
        }
        pc = return_address;
        frame_sp = argp;
        bp = caller_bp;
    }
    // A stack object is scanned once a live word (or a scanned object) points into it.
    let mut scanned = vec![false; objects.len()];
    let mut from = 0;
    while from < live.len() {
        let reached: Vec<usize> = (0..objects.len())
            .filter(|&index| !scanned[index])
            .filter(|&index| {
                let (start, size, _) = objects[index];
                live[from..].iter().any(|&value| value >= start && value - start < size)
            })
            .collect();
        from = live.len();
        for index in reached {
            scanned[index] = true;
            let (start, _, pointer_bytes) = objects[index];
            let object_end = start.saturating_add(pointer_bytes).min(end);
            live.extend((start..object_end).step_by(8).filter_map(read));
        }
    }
    Some(live)
}

/// `runtime.getStackMap` for the link-time address `pc`, just after a call.
fn read_frame_maps(pclntab: &Pclntab<'_>, pc: u64) -> Option<FrameMaps> {
    // The call is the instruction before the return address.
    let target = pc.checked_sub(1)?;
    let at = pclntab.function_at(target)?;
    // -1 where no map is recorded (a prologue): the runtime takes the first.
    let index = pclntab.pcdata(at, PCDATA_STACK_MAP_INDEX, target).unwrap_or(-1).max(0);
    let index = usize::try_from(index).ok()?;
    let locals = bitmap(pclntab.funcdata(at, FUNCDATA_LOCALS_POINTER_MAPS)?, index)?;
    let args = bitmap(pclntab.funcdata(at, FUNCDATA_ARGS_POINTER_MAPS)?, index)?;
    let objects =
        pclntab.funcdata(at, FUNCDATA_STACK_OBJECTS).map(stack_objects).unwrap_or_default();
    Some(FrameMaps { locals, args, objects })
}

/// Bitmap `index` of a `runtime.stackmap`: `n` and `nbit` (int32 each), then `n` bitmaps
/// of `nbit` bits, each rounded up to whole bytes, low bit first.
fn bitmap(stackmap: &[u8], index: usize) -> Option<Vec<bool>> {
    let field = |at: usize| -> Option<i32> {
        Some(i32::from_le_bytes(stackmap.get(at..at + 4)?.try_into().ok()?))
    };
    let (count, bits) = (usize::try_from(field(0)?).ok()?, usize::try_from(field(4)?).ok()?);
    if bits == 0 {
        return Some(Vec::new());
    }
    if index >= count {
        return None;
    }
    let len = bits.div_ceil(8);
    let bytes = stackmap.get(8 + index * len..8 + (index + 1) * len)?;
    Some((0..bits).map(|bit| bytes[bit / 8] >> (bit % 8) & 1 == 1).collect())
}

/// A function's stack object records: (offset, size, bytes that may hold pointers).
fn stack_objects(data: &[u8]) -> Vec<(i64, u64, u64)> {
    let count = data.get(..8).map_or(0, |bytes| word(bytes, 0)) as usize;
    let field = |record: &[u8], at: usize| {
        i32::from_le_bytes(record[at..at + 4].try_into().unwrap_or_default())
    };
    data.get(8..)
        .unwrap_or_default()
        .chunks_exact(STACK_OBJECT_RECORD)
        .take(count)
        .map(|record| {
            let (offset, size, pointer_bytes) =
                (field(record, 0), field(record, 4), field(record, 8));
            let size = u64::from(size.unsigned_abs());
            (i64::from(offset), size, u64::from(pointer_bytes.unsigned_abs()).min(size))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_map_holds_one_bitmap_per_index_each_in_whole_bytes() {
        // Two bitmaps of 10 bits: 2 bytes each.
        let mut stackmap = Vec::new();
        stackmap.extend(2_i32.to_le_bytes());
        stackmap.extend(10_i32.to_le_bytes());
        stackmap.extend([0b0000_0101, 0b0000_0000, 0b0000_0000, 0b0000_0010]);
        let live = |bits: Vec<bool>| -> Vec<usize> {
            bits.iter().enumerate().filter(|(_, live)| **live).map(|(index, _)| index).collect()
        };
        assert_eq!(live(bitmap(&stackmap, 0).expect("map 0")), [0, 2]);
        assert_eq!(live(bitmap(&stackmap, 1).expect("map 1")), [9]);
        assert_eq!(bitmap(&stackmap, 2), None);
        // No pointer words: every index has the empty map.
        let empty = [1_i32.to_le_bytes(), 0_i32.to_le_bytes()].concat();
        assert_eq!(bitmap(&empty, 5), Some(Vec::new()));
    }

    /// A parked goroutine's two frames, from sp 0x1000: the leaf's (pc 0x10) locals at
    /// 0x1000..0x1010 below its saved bp at 0x1010 and return address 0x20 at 0x1018; its
    /// caller's (pc 0x20) from 0x1020: locals 0x1020..0x1040, bp chain ends at 0x1040, and
    /// a stack object (a closure) at 0x1030.
    #[test]
    fn only_live_slots_and_the_stack_objects_they_reach_count() {
        let words: [u64; 10] = [
            0xdead, 0xa11e, // leaf locals: dead, live
            0x1040, 0x20, // leaf's saved bp, return address
            0x1030, 0xdead, // caller locals: live (points at the closure), dead
            0xf00, 0xc10, // caller's closure: its function, its captured pointer
            0, 0, // caller's saved bp (none above), return address (none)
        ];
        let stack: Vec<u8> = words.iter().flat_map(|word| word.to_le_bytes()).collect();
        let maps = |pc: u64| -> Option<Rc<FrameMaps>> {
            Some(Rc::new(match pc {
                0x10 => FrameMaps { locals: vec![false, true], ..FrameMaps::default() },
                0x20 => FrameMaps {
                    locals: vec![true, false, false, false],
                    args: Vec::new(),
                    objects: vec![(-16, 16, 16)],
                },
                _ => return None,
            }))
        };
        let mut live = live_words(0x1000, &stack, 0x10, 0x1010, maps).expect("maps");
        live.sort_unstable();
        assert_eq!(live, [0xc10, 0xf00, 0x1030, 0xa11e]);
        // No maps for the first frame: the caller scans the stack whole.
        assert_eq!(live_words(0x1000, &stack, 0x30, 0x1010, maps), None);
    }

    #[test]
    fn stack_object_records_give_offset_size_and_pointer_bytes() {
        let mut data = 2_u64.to_le_bytes().to_vec();
        for (offset, size, pointer_bytes) in [(-48_i32, 16_i32, 16_i32), (8, 32, -8)] {
            data.extend(offset.to_le_bytes());
            data.extend(size.to_le_bytes());
            data.extend(pointer_bytes.to_le_bytes());
            data.extend(0_u32.to_le_bytes());
        }
        // A GC program's object gives its pointer bytes negated.
        assert_eq!(stack_objects(&data), [(-48, 16, 16), (8, 32, 8)]);
    }
}
