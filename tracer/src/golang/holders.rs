//! Which goroutines hold a channel or lock that others are blocked on: the hop a
//! goroutine snapshot's wait chains take where a thread's take its wakers (nothing is
//! attached to a Go program, so no wake is seen).
//!
//! Senders blocked on a full channel wait for its reader, receivers on an empty one for
//! its writers, lockers of a `sync.Mutex` for the goroutine holding it, and the runtime
//! keeps no record of any of them. But a goroutine that uses a channel in a loop (`for
//! stat := range stats { conn.Write(stat) }`) keeps the channel live across the calls it
//! makes, and one that holds a lock keeps it for its unlock (`mu.Lock(); defer
//! mu.Unlock()` stores `&mu` in its frame), so the address sits in a slot of its frame
//! while it is parked elsewhere or in a system call. A scan of each such goroutine's stack
//! (from its saved sp towards `g.stack.hi`) for the addresses of the objects others are
//! blocked on finds them: of the words its frames hold live at their pcs, as the
//! runtime's collector reads them (`stack_maps.rs`), so that a stale copy in a dead slot
//! names no one; the goroutines blocked on the object itself hold it too and are left
//! out. A lock whose holder keeps no pointer to it (a global locked and unlocked by name)
//! is not found.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{goroutines::Goroutine, stack_maps::StackMaps};
use crate::{
    chains::GoHolders,
    memory::{Memory, word},
};

/// What a goroutine is blocked on that others hold: a channel's `hchan`, or a package
/// sync object (`sync.Mutex`, `RWMutex`, `WaitGroup`), by address, and what the hop calls
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Held {
    pub address: u64,
    pub what: &'static str,
}

impl Held {
    pub const CHANNEL: &'static str = "channel";
    pub const LOCK: &'static str = "lock";
    pub const WAIT_GROUP: &'static str = "WaitGroup";
}

/// The most of one stack scanned, from its sp up: a holder's frame lies above the frames
/// of the calls it is parked in (a few hundred bytes under `net.Conn.Write`), and one
/// further up than this is missed rather than every stack read whole.
const SCAN_WINDOW: u64 = 16 * 1024;
/// Stacks read at once (a batch's bytes at most `SCAN_BATCH × SCAN_WINDOW`).
const SCAN_BATCH: usize = 256;
/// The most goroutines whose stacks are scanned, those blocked on nothing others hold
/// first (the reader behind 600,000 blocked senders is in an IO wait, say); beyond it, a
/// holder is missed, and the log says how many were scanned.
const MAX_SCANNED: usize = 20_000;

/// The goroutines holding what each blocked goroutine of `goroutines` waits on, by the
/// blocked goroutine's id.
pub fn goroutine_holders(
    pid: u32,
    goroutines: &[Goroutine],
    maps: &mut StackMaps<'_>,
) -> BTreeMap<u64, GoHolders> {
    let objects: HashSet<u64> =
        goroutines.iter().filter_map(|goroutine| Some(goroutine.blocked_on?.address)).collect();
    if objects.is_empty() {
        return BTreeMap::new();
    }
    let started = std::time::Instant::now();
    // A goroutine blocked on the one object others are blocked on holds no other. (One in
    // a select is on no object: it may hold one its cases are not on.)
    let mut candidates: Vec<&Goroutine> = goroutines
        .iter()
        .filter(|goroutine| goroutine.blocked_on.is_none() || objects.len() > 1)
        .collect();
    candidates.sort_by_key(|goroutine| goroutine.blocked_on.is_some());
    candidates.truncate(MAX_SCANNED);
    let memory = Memory { pid };
    let mut holders: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut buffer = Vec::new();
    // Stacks scanned whole: no stack maps for their first frame.
    let mut unmapped = 0;
    for batch in candidates.chunks(SCAN_BATCH) {
        let pieces: Vec<(u64, usize)> = batch
            .iter()
            .map(|goroutine| {
                let len = goroutine.stack_hi.saturating_sub(goroutine.sp).min(SCAN_WINDOW);
                (goroutine.sp, len as usize)
            })
            .collect();
        buffer.clear();
        let read = memory.read_pieces(&pieces, &mut buffer);
        for (goroutine, range) in batch.iter().zip(read) {
            let Some(range) = range else { continue };
            let stack = &buffer[range];
            // The frame `bp` belongs to (past the frameless ones a system call may be
            // entered from, which hold no pointers of their own).
            let pc = goroutine.pcs.get(goroutine.frameless).copied();
            let words = pc
                .and_then(|pc| maps.live_words(goroutine.sp, stack, pc, goroutine.bp))
                .unwrap_or_else(|| {
                    unmapped += 1;
                    (0..stack.len() / 8).map(|index| word(stack, index * 8)).collect()
                });
            let own = goroutine.blocked_on.map(|held| held.address);
            for object in objects_in(&words, &objects) {
                // Parked on it itself (in a select too): one of its waiters, not its holder.
                if Some(object) != own && !goroutine.selects_on.contains(&object) {
                    holders.entry(object).or_default().push(goroutine.goid);
                }
            }
        }
    }
    log::info!(
        "goroutine holders: {} of {} goroutines' stacks scanned for {} objects ({unmapped} \
         without stack maps, whole) in {:?}",
        candidates.len(),
        goroutines.len(),
        objects.len(),
        started.elapsed()
    );
    goroutines
        .iter()
        .filter_map(|goroutine| {
            let held = goroutine.blocked_on?;
            let holding = holders.get(&held.address)?;
            let found = GoHolders { held: held.what, goroutines: holding.clone() };
            Some((goroutine.goid, found))
        })
        .collect()
}

/// The objects of `objects` whose address is one of `words`, each once.
fn objects_in(words: &[u64], objects: &HashSet<u64>) -> Vec<u64> {
    let mut found: Vec<u64> =
        words.iter().copied().filter(|value| objects.contains(value)).collect();
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_holds_the_objects_whose_addresses_are_its_words() {
        let objects = HashSet::from([0xc000_0100_0000, 0xc000_0200_0000]);
        let words = [7, 0xc000_0200_0000, 0xc000_0100_0000, 0xc000_0200_0000, 0xc000_0300_0000];
        assert_eq!(objects_in(&words, &objects), [0xc000_0100_0000, 0xc000_0200_0000]);
        assert!(objects_in(&[1, 2, 3], &objects).is_empty());
    }
}
