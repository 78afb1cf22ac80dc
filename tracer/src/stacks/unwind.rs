//! Unwinding a copied user stack with `.eh_frame` CFI (framehop), frame pointers as fallback.

use std::{collections::HashMap, ops::Range};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, Unwinder as _};

use super::process_image::{Module, ProcessImage, SectionBytes, SectionLocation};

/// Longest stack we report; deeper ones are recursion or a corrupt walk.
const MAX_FRAMES: usize = 256;

/// A read this far above the stack copy's start is still plausibly the thread's stack (the
/// default 8 MiB stack limit), so failing it means the copy was too short; beyond, the walk
/// followed a bogus pointer.
const MAX_PLAUSIBLE_STACK: u64 = 8 << 20;

/// The user registers of a thread at the point its stack was copied.
#[derive(Clone, Copy, Debug)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

impl UserRegs {
    /// The rbp of a thread whose saved rbp is unknown: an address no stack is at, so a
    /// walk that needs it fails there and says it stopped early. Zero would read as the
    /// outermost frame (framehop ends a frame-pointer walk at a null rbp): a stack cut
    /// short at the first rbp-based frame looked whole.
    pub const UNKNOWN_BP: u64 = 0x8000_0000_0000_0000;
}

/// The code addresses of one stack, and why the walk stopped.
#[derive(Clone, Debug)]
pub struct UnwoundStack {
    /// Leaf first: `frames[0]` is the ip, then return addresses as found on the stack.
    pub frames: Vec<u64>,
    pub end: UnwindEnd,
    /// How many bytes of the copy, from its start, the walk read.
    pub read_bytes: u64,
}

/// Why an unwind stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindEnd {
    /// Reached the root (the CFI or a null frame pointer says there is no caller).
    Complete,
    /// Needed bytes beyond the stack copy: the stack is truncated.
    StackCopyExhausted,
    /// An address in no known module (JIT code, or a bogus return address); it is the last frame.
    NoModule,
    /// Stopped at `MAX_FRAMES` (256) frames.
    TooManyFrames,
    /// Any other unwinder error (a read outside any plausible stack, no progress, overflow).
    Failed,
}

/// Walks remembered at most; a full table is emptied (pool threads come back to a few
/// places, so it refills at once).
const MAX_REMEMBERED_WALKS: usize = 4096;

/// Unwinds stacks of one process, caching unwind rules across calls, and whole walks by the
/// shape of the stack they walked.
pub struct StackUnwinder {
    unwinder: UnwinderX86_64<SectionBytes>,
    cache: CacheX86_64,
    /// The modules given to framehop, sorted by start address.
    known: Vec<KnownModule>,
    /// Past walks by their start registers (ip, sp, bp).
    walks: HashMap<(u64, u64, u64), RememberedWalk>,
}

/// A walk is a function of its start registers, the modules and the stack words it reads:
/// a stack that starts at the same registers and holds the same word at every address the
/// walk read would be walked the same way again. Threads of a pool wait at the same call
/// sites at the same depth over and over, so most walks repeat one before them.
struct RememberedWalk {
    /// Each address read, with the word found (None: outside the copy), in order.
    reads: Vec<(u64, Option<u64>)>,
    unwound: UnwoundStack,
}

struct KnownModule {
    id: u64,
    avma_range: Range<u64>,
}

impl StackUnwinder {
    pub fn new(image: &ProcessImage) -> Self {
        let mut unwinder = Self {
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            known: Vec::new(),
            walks: HashMap::new(),
        };
        unwinder.sync_modules(image);
        unwinder
    }

    /// Adds modules the image gained after `refresh()`, and drops those it replaced.
    pub fn sync_modules(&mut self, image: &ProcessImage) {
        let Self { unwinder, cache: _, known, walks } = self;
        let in_image = |id: u64| image.modules().iter().any(|module| module.id == id);
        let before = known.len();
        known.retain(|module| {
            let keep = in_image(module.id);
            if !keep {
                unwinder.remove_module(module.avma_range.start);
            }
            keep
        });
        let mut changed = known.len() != before;
        for module in image.modules() {
            if known.iter().all(|known| known.id != module.id) {
                unwinder.add_module(framehop_module(module));
                known.push(KnownModule { id: module.id, avma_range: module.avma_range.clone() });
                changed = true;
            }
        }
        known.sort_by_key(|module| module.avma_range.start);
        // Other modules walk (or stop) differently.
        if changed {
            walks.clear();
        }
    }

    /// Unwinds from `regs`; `stack` holds the bytes at [regs.sp, regs.sp + stack.len()).
    /// Stops at `MAX_FRAMES` frames.
    pub fn unwind(&mut self, regs: UserRegs, stack: &[u8]) -> UnwoundStack {
        let start = (regs.ip, regs.sp, regs.bp);
        if let Some(walk) = self.walks.get(&start) {
            let same_words = walk
                .reads
                .iter()
                .all(|&(addr, word)| read_stack_word(stack, regs.sp, addr).ok() == word);
            if same_words {
                return walk.unwound.clone();
            }
        }
        let mut reads = Vec::new();
        let unwound = self.unwind_uncached(regs, stack, &mut reads);
        if self.walks.len() >= MAX_REMEMBERED_WALKS {
            self.walks.clear();
        }
        self.walks.insert(start, RememberedWalk { reads, unwound: unwound.clone() });
        unwound
    }

    /// The walk itself, noting every stack word it reads in `reads`.
    fn unwind_uncached(
        &mut self,
        regs: UserRegs,
        stack: &[u8],
        reads: &mut Vec<(u64, Option<u64>)>,
    ) -> UnwoundStack {
        let Self { unwinder, cache, known, walks: _ } = self;
        let mut read_stack = |addr: u64| {
            let word = read_stack_word(stack, regs.sp, addr);
            reads.push((addr, word.ok()));
            word
        };
        let mut frames_iter = unwinder.iter_frames(
            regs.ip,
            UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp),
            cache,
            &mut read_stack,
        );
        let mut frames = Vec::new();
        let end = loop {
            match frames_iter.next() {
                Ok(None) => break UnwindEnd::Complete,
                Ok(Some(address)) => {
                    frames.push(address.address());
                    if !is_known_address(known, address.address_for_lookup()) {
                        break UnwindEnd::NoModule;
                    }
                    if frames.len() >= MAX_FRAMES {
                        break UnwindEnd::TooManyFrames;
                    }
                }
                Err(error) => break classify_unwind_error(error, regs.sp, stack.len()),
            }
        };
        let read_bytes = reads
            .iter()
            .filter(|(_, word)| word.is_some())
            .map(|&(addr, _)| addr - regs.sp + 8)
            .max()
            .unwrap_or(0);
        UnwoundStack { frames, end, read_bytes }
    }
}

/// The little-endian u64 at `addr`, if all 8 bytes lie inside the copy of [sp, sp + len).
fn read_stack_word(stack: &[u8], sp: u64, addr: u64) -> Result<u64, ()> {
    let offset = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
    let bytes = stack.get(offset..offset.checked_add(8).ok_or(())?).ok_or(())?;
    let word: [u8; 8] = bytes.try_into().map_err(|_| ())?;
    Ok(u64::from_le_bytes(word))
}

/// Tells a truncated copy (a read just past its end) from a broken walk.
fn classify_unwind_error(error: framehop::Error, sp: u64, copy_len: usize) -> UnwindEnd {
    match error {
        framehop::Error::CouldNotReadStack(addr) => {
            let copy_end = sp.saturating_add(copy_len as u64);
            let needs_bytes_past_copy = addr.saturating_add(8) > copy_end;
            let plausibly_stack = addr >= sp && addr < sp.saturating_add(MAX_PLAUSIBLE_STACK);
            if needs_bytes_past_copy && plausibly_stack {
                UnwindEnd::StackCopyExhausted
            } else {
                UnwindEnd::Failed
            }
        }
        // A zero return address is how runtimes without CFI for their entry mark the root.
        framehop::Error::ReturnAddressIsNull => UnwindEnd::Complete,
        framehop::Error::FramepointerUnwindingMovedBackwards
        | framehop::Error::DidNotAdvance
        | framehop::Error::IntegerOverflow => UnwindEnd::Failed,
    }
}

fn is_known_address(known: &[KnownModule], addr: u64) -> bool {
    let after = known.partition_point(|module| module.avma_range.start <= addr);
    after
        .checked_sub(1)
        .and_then(|index| known.get(index))
        .is_some_and(|module| module.avma_range.contains(&addr))
}

fn framehop_module(module: &Module) -> framehop::Module<SectionBytes> {
    let sections = module.unwind_sections();
    let bytes = |section: &Option<SectionLocation>| {
        section.as_ref().map(|section| module.section_bytes(section))
    };
    let svma_range = |section: &Option<SectionLocation>| {
        section.as_ref().map(|section| section.svma_range.clone())
    };
    let section_info = ExplicitModuleSectionInfo {
        // ELF addresses are stated from zero; framehop's relative address is then the svma.
        base_svma: 0,
        text_svma: svma_range(&sections.text),
        text: bytes(&sections.text),
        stubs_svma: None,
        stub_helper_svma: None,
        got_svma: svma_range(&sections.got),
        unwind_info: None,
        eh_frame_svma: svma_range(&sections.eh_frame),
        eh_frame: bytes(&sections.eh_frame),
        eh_frame_hdr_svma: svma_range(&sections.eh_frame_hdr),
        eh_frame_hdr: bytes(&sections.eh_frame_hdr),
        debug_frame: bytes(&sections.debug_frame),
        text_segment_svma: None,
        text_segment: None,
    };
    framehop::Module::new(
        module.path.display().to_string(),
        module.avma_range.clone(),
        module.bias,
        section_info,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: u64 = 0x7ffd_0000_1000;

    #[test]
    fn reads_words_only_inside_the_copy() {
        let mut stack = vec![0u8; 32];
        stack[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(read_stack_word(&stack, SP, SP + 8), Ok(0x1122_3344_5566_7788));
        assert_eq!(read_stack_word(&stack, SP, SP + 24), Ok(0));
        assert_eq!(read_stack_word(&stack, SP, SP + 25), Err(()));
        assert_eq!(read_stack_word(&stack, SP, SP - 8), Err(()));
        assert_eq!(read_stack_word(&stack, SP, u64::MAX), Err(()));
    }

    #[test]
    fn a_read_just_past_the_copy_means_truncated() {
        let read = |addr| framehop::Error::CouldNotReadStack(addr);
        assert_eq!(classify_unwind_error(read(SP + 64), SP, 64), UnwindEnd::StackCopyExhausted);
        // Straddling the end: 4 bytes inside, 4 past.
        assert_eq!(classify_unwind_error(read(SP + 60), SP, 64), UnwindEnd::StackCopyExhausted);
        assert_eq!(
            classify_unwind_error(read(SP + 64 * 1024), SP, 16 * 1024),
            UnwindEnd::StackCopyExhausted
        );
    }

    #[test]
    fn a_read_outside_any_plausible_stack_means_failed() {
        let read = |addr| framehop::Error::CouldNotReadStack(addr);
        // Below sp: a bogus frame pointer.
        assert_eq!(classify_unwind_error(read(SP - 16), SP, 64), UnwindEnd::Failed);
        // Far above: a heap or null-ish pointer, not the stack.
        assert_eq!(classify_unwind_error(read(SP + (1 << 30)), SP, 64), UnwindEnd::Failed);
        assert_eq!(classify_unwind_error(read(8), SP, 64), UnwindEnd::Failed);
        assert_eq!(
            classify_unwind_error(framehop::Error::DidNotAdvance, SP, 64),
            UnwindEnd::Failed
        );
        assert_eq!(
            classify_unwind_error(framehop::Error::ReturnAddressIsNull, SP, 64),
            UnwindEnd::Complete
        );
    }

    #[test]
    fn known_addresses_are_inside_a_module_range() {
        let known = [
            KnownModule { id: 1, avma_range: 0x1000..0x2000 },
            KnownModule { id: 2, avma_range: 0x5000..0x6000 },
        ];
        assert!(is_known_address(&known, 0x1000));
        assert!(is_known_address(&known, 0x5fff));
        assert!(!is_known_address(&known, 0x2000));
        assert!(!is_known_address(&known, 0xfff));
        assert!(!is_known_address(&known, 0x7000));
    }
}
