//! Reading the goroutines of a live Go process from outside, without stopping it: the
//! runtime's list of all goroutines (`runtime.allgs`), each `g`'s status, wait reason and
//! saved registers, and its stack unwound by frame pointers (which Go keeps on amd64).
//!
//! Memory is read with `process_vm_readv`, up to `IOV_MAX` pieces per call, so 100,000
//! goroutines cost a few hundred system calls. A `g` is read twice, before and after its
//! stack; one whose status, id or saved registers changed in between is skipped and
//! counted, never reported half-read.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;

use super::{binary::GLayout, holders::Held};
pub(super) use crate::memory::{Memory, word};

/// Bytes of stack read at once from the saved stack pointer: a parked goroutine's frames
/// are usually within its first few KiB; deeper frames are read one by one.
const STACK_WINDOW: u64 = 8 * 1024;
/// Frames kept per goroutine (pprof keeps 32 in its goroutine profile, Go's traceback
/// 100); deeper stacks are cut and counted as truncated.
const MAX_FRAMES: usize = 128;
/// More goroutines than any process holds: a larger `allglen` means a torn read.
const MAX_GOROUTINES: u64 = 100_000_000;

/// `_Gidle`, `_Grunnable`, … from `runtime/runtime2.go`; `_Gscan` is or-ed in while the GC
/// scans a goroutine and does not change what it is doing.
const G_IDLE: u32 = 0;
const G_RUNNABLE: u32 = 1;
const G_RUNNING: u32 = 2;
const G_SYSCALL: u32 = 3;
const G_WAITING: u32 = 4;
const G_DEAD: u32 = 6;
const G_SCAN: u32 = 0x1000;

/// One waiting goroutine, as read.
#[derive(Clone, Debug)]
pub struct Goroutine {
    /// The runtime's goroutine id (`goid`).
    pub goid: u64,
    /// Where its `g` is in the process (what the netpoller's `rg`/`wg` point at).
    pub address: u64,
    /// The saved stack pointer, and `g.trackingSeq` where known: with `goid`, `pcs[0]`
    /// and the reason, what tells one wait from the next (see [`Goroutine::same_wait`]).
    pub sp: u64,
    pub tracking_seq: Option<u8>,
    /// The saved frame pointer: where the walk up its frames starts.
    pub bp: u64,
    /// The top of its stack (`g.stack.hi`): its frames are between `sp` and here.
    pub stack_hi: u64,
    /// Index into the runtime's wait-reason table.
    pub wait_reason: u8,
    /// `nanotime()` when the wait began, where a GC recorded it; 0 if not.
    pub wait_since: i64,
    /// Leaf first, process addresses; all are return addresses (a parked goroutine's
    /// saved pc is the return into `runtime.gopark` from `mcall`). Shared by every
    /// goroutine parked on the same stack: 600,000 of them hold a few distinct stacks.
    pub pcs: Arc<[u64]>,
    /// The walk did not reach `runtime.goexit`.
    pub truncated: bool,
    /// `g.waiting`: the sudog of a goroutine blocked on a channel (0 if none, or unknown).
    pub waiting: u64,
    /// What it waits on, where a later stage could name it (`127.0.0.1:5432`).
    pub object: Option<String>,
    /// The channel or package sync object it is blocked on, where a later stage read it:
    /// what tells the goroutines holding it (`holders.rs`).
    pub blocked_on: Option<Held>,
}

impl Goroutine {
    /// The same goroutine still in the same wait as in an earlier read: same id, place
    /// and reason, and not switched out since (`trackingSeq`; where it is unknown, a
    /// goroutine that woke and parked again at the same place looks the same).
    pub fn same_wait(&self, earlier: &Goroutine) -> bool {
        self.goid == earlier.goid
            && self.sp == earlier.sp
            && self.pcs.first() == earlier.pcs.first()
            && self.wait_reason == earlier.wait_reason
            && self.tracking_seq == earlier.tracking_seq
    }
}

/// Every goroutine of the process, by what it was doing.
#[derive(Debug, Default)]
pub struct GoroutineCounts {
    /// Goroutines that exist (not dead or idle).
    pub total: u64,
    pub waiting: u64,
    pub running: u64,
    pub runnable: u64,
    pub in_syscall: u64,
    /// Changed while being read (status, id or saved registers), so not reported.
    pub changed_while_read: u64,
    /// A `g` or stack that could not be read (freed under us).
    pub unreadable: u64,
    /// In IO wait on a socket whose endpoint was named.
    pub io_wait_named: u64,
    /// In IO wait on a descriptor that could not be named: not found in the netpoller
    /// (woke meanwhile), closed, or its socket gone before it was resolved.
    pub io_wait_unresolved: u64,
    /// In IO wait on a descriptor that is not a socket (a pipe, a tty, …).
    pub io_wait_not_socket: u64,
    /// Blocked on a channel or a sync lock that could not be read (or whose layout is
    /// unknown).
    pub objects_unnamed: u64,
}

/// Where the runtime's data is in the process (link-time addresses plus the bias).
pub struct RuntimeAddresses {
    pub allgs: u64,
    /// `runtime.goexit`'s code, in process addresses.
    pub goexit: std::ops::Range<u64>,
}

/// Goroutines read per batch: one `process_vm_readv` for their `g`s, one for their
/// stacks, one to read the `g`s again. Memory stays a few MiB however many there are.
const BATCH: usize = crate::memory::IOV_MAX;

/// Reads the goroutines of one process, again and again if asked: a reader that
/// remembers keeps each waiting goroutine's stack, and a goroutine still in the same
/// wait at the next read is not walked again (what makes sampling cheap).
pub struct GoroutineReader {
    memory: Memory,
    layout: GLayout,
    /// `g.waiting`'s offset, where known.
    waiting: Option<u64>,
    addresses: RuntimeAddresses,
    remember: bool,
    /// The waits of the previous read, by `g` address.
    previous: HashMap<u64, Remembered>,
    /// Each distinct stack once.
    stacks: HashSet<Arc<[u64]>>,
}

/// A wait seen by the previous read, with its walked stack.
struct Remembered {
    fields: GFields,
    pcs: Arc<[u64]>,
    truncated: bool,
}

impl GoroutineReader {
    /// A reader for one read (`remember: false`: a snapshot keeps nothing) or for many.
    pub fn new(
        pid: u32,
        layout: GLayout,
        waiting: Option<u64>,
        addresses: RuntimeAddresses,
        remember: bool,
    ) -> Self {
        Self {
            memory: Memory { pid },
            layout,
            waiting,
            addresses,
            remember,
            previous: HashMap::new(),
            stacks: HashSet::new(),
        }
    }

    /// The waiting goroutines now, and every goroutine counted. Never stops the process:
    /// a `g` that changes while it is read is skipped and counted.
    pub fn read(&mut self) -> io::Result<(Vec<Goroutine>, GoroutineCounts)> {
        let g_addresses = self.all_g_addresses()?;
        let mut counts = GoroutineCounts::default();
        let mut goroutines = Vec::new();
        let mut remembered = HashMap::new();
        let mut buffer = Vec::new();
        for batch in g_addresses.chunks(BATCH) {
            self.read_batch(batch, &mut buffer, &mut counts, &mut goroutines, &mut remembered);
        }
        if self.remember {
            self.previous = remembered;
            // Stacks no wait uses any more.
            self.stacks.retain(|stack| Arc::strong_count(stack) > 1);
        } else {
            self.stacks.clear();
        }
        Ok((goroutines, counts))
    }

    /// The addresses in `runtime.allgs`.
    fn all_g_addresses(&self) -> io::Result<Vec<u64>> {
        let mut header = [0u8; 16];
        self.memory.read_exact(self.addresses.allgs, &mut header)?;
        let array = word(&header, 0);
        let len = word(&header, 8);
        if len > MAX_GOROUTINES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "runtime.allgs length is implausible",
            ));
        }
        let mut pointers = vec![0u8; len as usize * 8];
        self.memory.read_exact(array, &mut pointers)?;
        Ok(pointers.chunks_exact(8).map(|chunk| word(chunk, 0)).collect())
    }

    /// One batch of `g`s: status counted; the waiting ones in the same wait as at the
    /// previous read keep their stack, the others are walked and read again.
    fn read_batch(
        &mut self,
        g_addresses: &[u64],
        buffer: &mut Vec<u8>,
        counts: &mut GoroutineCounts,
        goroutines: &mut Vec<Goroutine>,
        remembered: &mut HashMap<u64, Remembered>,
    ) {
        let layout = self.layout;
        // g.waiting lies past the fields a wait needs, in bytes read anyway: `g`s sit side
        // by side and are read as spans.
        let g_len = layout.read_len().max(self.waiting.map_or(0, |offset| offset as usize + 8));
        let pieces: Vec<(u64, usize)> =
            g_addresses.iter().map(|&address| (address, g_len)).collect();
        let first: Vec<Option<GFields>> = self
            .memory
            .read_pieces(&pieces, buffer)
            .into_iter()
            .map(|range| {
                range.map(|range| {
                    let bytes = &buffer[range];
                    let mut fields = GFields::parse(bytes, &layout);
                    fields.waiting = self.waiting.map_or(0, |offset| word(bytes, offset as usize));
                    fields
                })
            })
            .collect();
        // (g address, fields) of the waits whose stack must be walked.
        let mut to_walk = Vec::new();
        for (&address, fields) in g_addresses.iter().zip(first) {
            let Some(fields) = fields else {
                counts.unreadable += 1;
                continue;
            };
            match fields.status & !G_SCAN {
                G_IDLE | G_DEAD => continue,
                G_RUNNABLE => counts.runnable += 1,
                G_RUNNING => counts.running += 1,
                G_SYSCALL => counts.in_syscall += 1,
                G_WAITING => {
                    counts.waiting += 1;
                    match self.previous.remove(&address) {
                        Some(earlier) if earlier.fields.same_wait(&fields) => {
                            self.keep(
                                address,
                                fields,
                                earlier.pcs,
                                earlier.truncated,
                                goroutines,
                                remembered,
                            );
                        }
                        _ => to_walk.push((address, fields)),
                    }
                }
                // _Gcopystack, _Gpreempted and the rest: between states.
                _ => counts.runnable += 1,
            }
            counts.total += 1;
        }
        if to_walk.is_empty() {
            return;
        }

        // Each stack from its saved stack pointer up to its top (a window at most).
        let stack_pieces: Vec<(u64, usize)> = to_walk
            .iter()
            .map(|(_, fields)| {
                let len = fields.stack_hi.saturating_sub(fields.sp).min(STACK_WINDOW);
                (fields.sp, len as usize)
            })
            .collect();
        let stacks = self.memory.read_pieces_spanning(&stack_pieces, buffer, STACK_SPAN_GAP);
        let mut walked = Vec::with_capacity(to_walk.len());
        for ((address, fields), stack) in to_walk.iter().zip(stacks) {
            let Some(stack) = stack else {
                counts.unreadable += 1;
                continue;
            };
            let (pcs, truncated) =
                walk(&self.memory, fields, &buffer[stack], &self.addresses.goexit);
            walked.push((*address, *fields, pcs, truncated));
        }

        // Read each g again: what changed while its stack was read is not reported.
        let again_pieces: Vec<(u64, usize)> =
            walked.iter().map(|(address, ..)| (*address, g_len)).collect();
        let again = self.memory.read_pieces(&again_pieces, buffer);
        for ((address, fields, pcs, truncated), after) in walked.into_iter().zip(again) {
            let unchanged = after
                .is_some_and(|range| fields.same_wait(&GFields::parse(&buffer[range], &layout)));
            if unchanged {
                let pcs = self.intern(pcs);
                self.keep(address, fields, pcs, truncated, goroutines, remembered);
            } else {
                counts.changed_while_read += 1;
            }
        }
    }

    fn keep(
        &self,
        address: u64,
        fields: GFields,
        pcs: Arc<[u64]>,
        truncated: bool,
        goroutines: &mut Vec<Goroutine>,
        remembered: &mut HashMap<u64, Remembered>,
    ) {
        if self.remember {
            remembered.insert(address, Remembered { fields, pcs: Arc::clone(&pcs), truncated });
        }
        goroutines.push(Goroutine {
            goid: fields.goid,
            address,
            sp: fields.sp,
            tracking_seq: fields.tracking_seq,
            bp: fields.bp,
            stack_hi: fields.stack_hi,
            wait_reason: fields.wait_reason,
            wait_since: fields.wait_since,
            pcs,
            truncated,
            waiting: fields.waiting,
            object: None,
            blocked_on: None,
        });
    }

    /// The one shared copy of the stack `pcs`.
    fn intern(&mut self, pcs: Vec<u64>) -> Arc<[u64]> {
        if let Some(stack) = self.stacks.get(pcs.as_slice()) {
            return Arc::clone(stack);
        }
        let stack: Arc<[u64]> = pcs.into();
        self.stacks.insert(Arc::clone(&stack));
        stack
    }
}

/// The fields of one `g` that a snapshot uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GFields {
    status: u32,
    goid: u64,
    stack_hi: u64,
    sp: u64,
    pc: u64,
    bp: u64,
    wait_reason: u8,
    wait_since: i64,
    tracking_seq: Option<u8>,
    /// `g.waiting`, where its offset is known (not part of what tells one wait from the
    /// next: see `same_wait`).
    waiting: u64,
}

impl GFields {
    fn parse(bytes: &[u8], layout: &GLayout) -> Self {
        let at = |offset: u64| offset as usize;
        let sched = layout.sched;
        Self {
            status: u32::from_le_bytes(
                bytes[at(layout.atomicstatus)..at(layout.atomicstatus) + 4]
                    .try_into()
                    .unwrap_or_default(),
            ),
            goid: word(bytes, at(layout.goid)),
            stack_hi: word(bytes, at(layout.stack_hi)),
            sp: word(bytes, at(sched + layout.gobuf_sp)),
            pc: word(bytes, at(sched + layout.gobuf_pc)),
            bp: word(bytes, at(sched + layout.gobuf_bp)),
            wait_reason: bytes[at(layout.waitreason)],
            wait_since: word(bytes, at(layout.waitsince)) as i64,
            tracking_seq: layout.tracking_seq.and_then(|offset| bytes.get(at(offset)).copied()),
            waiting: 0,
        }
    }

    /// Still the same goroutine in the same wait (the GC's scan bit aside).
    fn same_wait(&self, after: &GFields) -> bool {
        let Self {
            status,
            goid,
            stack_hi,
            sp,
            pc,
            bp,
            wait_reason,
            wait_since: _,
            tracking_seq,
            waiting: _,
        } = *self;
        status & !G_SCAN == after.status & !G_SCAN
            && goid == after.goid
            && stack_hi == after.stack_hi
            && sp == after.sp
            && pc == after.pc
            && bp == after.bp
            && wait_reason == after.wait_reason
            && tracking_seq == after.tracking_seq
    }
}

/// Walks the frame-pointer chain from the saved `bp`: each frame holds the caller's `bp` at
/// `[bp]` and the return address at `[bp+8]`. Stops at `runtime.goexit` (not reported,
/// like pprof) or where the chain leaves the stack or stops growing upward.
fn walk(
    memory: &Memory,
    fields: &GFields,
    window: &[u8],
    goexit: &std::ops::Range<u64>,
) -> (Vec<u64>, bool) {
    let read = |address: u64| -> Option<u64> {
        let offset = address.checked_sub(fields.sp)?;
        if offset + 8 <= window.len() as u64 {
            return Some(word(window, offset as usize));
        }
        let mut bytes = [0u8; 8];
        memory.read_exact(address, &mut bytes).ok()?;
        Some(u64::from_le_bytes(bytes))
    };
    let mut pcs = vec![fields.pc];
    let mut bp = fields.bp;
    let mut low = fields.sp;
    while pcs.len() < MAX_FRAMES {
        if bp < low || bp.saturating_add(16) > fields.stack_hi {
            return (pcs, true);
        }
        let (Some(caller_bp), Some(return_address)) = (read(bp), read(bp + 8)) else {
            return (pcs, true);
        };
        if goexit.contains(&return_address.wrapping_sub(1)) {
            return (pcs, false);
        }
        if return_address == 0 {
            return (pcs, true);
        }
        pcs.push(return_address);
        low = bp + 16;
        bp = caller_bp;
    }
    (pcs, true)
}

/// Goroutine stacks sit side by side in the runtime's stack spans, a few KiB each, with
/// only their top few hundred bytes in use: reading the unused parts between them costs
/// less than a piece per stack (measured: 600,000 stacks, 2% less CPU).
const STACK_SPAN_GAP: u64 = 4096;
#[cfg(test)]
mod tests {
    use super::*;

    fn fields(sp: u64, bp: u64) -> GFields {
        GFields {
            status: G_WAITING,
            goid: 7,
            stack_hi: sp + 64,
            sp,
            pc: 0x1000,
            bp,
            wait_reason: 14,
            wait_since: 0,
            tracking_seq: Some(3),
            waiting: 0,
        }
    }

    #[test]
    fn walks_frame_pointers_to_goexit() {
        let sp: u64 = 0x10_000;
        // Frames at sp+16 and sp+32: [bp]=caller bp, [bp+8]=return address.
        let mut stack = vec![0u8; 64];
        let mut put =
            |at: usize, value: u64| stack[at..at + 8].copy_from_slice(&value.to_le_bytes());
        put(16, sp + 32);
        put(24, 0x2000);
        put(32, 0);
        put(40, 0x3001); // goexit + 1
        let memory = Memory { pid: 0 };
        let (pcs, truncated) = walk(&memory, &fields(sp, sp + 16), &stack, &(0x3000..0x3010));
        assert_eq!(pcs, vec![0x1000, 0x2000]);
        assert!(!truncated);
    }

    #[test]
    fn a_chain_that_goes_down_is_truncated() {
        let sp: u64 = 0x10_000;
        let mut stack = vec![0u8; 64];
        stack[16..24].copy_from_slice(&(sp + 8).to_le_bytes());
        stack[24..32].copy_from_slice(&0x2000u64.to_le_bytes());
        let memory = Memory { pid: 0 };
        let (pcs, truncated) = walk(&memory, &fields(sp, sp + 16), &stack, &(0x3000..0x3010));
        assert_eq!(pcs, vec![0x1000, 0x2000]);
        assert!(truncated);
    }

    #[test]
    fn a_rescheduled_goroutine_is_not_the_same_wait() {
        let before = fields(0x10_000, 0x10_010);
        assert!(before.same_wait(&GFields { status: G_WAITING | G_SCAN, wait_since: 5, ..before }));
        assert!(!before.same_wait(&GFields { status: G_RUNNABLE, ..before }));
        assert!(!before.same_wait(&GFields { sp: 0x10_008, ..before }));
        assert!(!before.same_wait(&GFields { tracking_seq: Some(4), ..before }));
    }
}
