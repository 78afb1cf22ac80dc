//! Which goroutines hold a channel that others are blocked on: the hop a goroutine
//! snapshot's wait chains take where a thread's take its wakers (nothing is attached to a
//! Go program, so no wake is seen).
//!
//! Senders blocked on a full channel wait for its reader, receivers on an empty one for
//! its writers, and the runtime keeps no record of either. But a goroutine that uses a
//! channel in a loop (`for stat := range stats { conn.Write(stat) }`) keeps the channel
//! live across the calls it makes, so the `hchan` pointer sits in a slot of its frame while
//! it is parked elsewhere. A word-aligned scan of each parked goroutine's stack (from its
//! saved sp to `g.stack.hi`) for the addresses of the channels others are blocked on finds
//! them, as a conservative collector would; the goroutines blocked on the channel itself
//! hold it too and are left out.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::goroutines::Goroutine;
use crate::memory::{Memory, word};

/// The most of one stack scanned, from its sp up: a holder's frame lies above the frames
/// of the calls it is parked in (a few hundred bytes under `net.Conn.Write`), and one
/// further up than this is missed rather than every stack read whole.
const SCAN_WINDOW: u64 = 16 * 1024;
/// Stacks read at once (a batch's bytes at most `SCAN_BATCH × SCAN_WINDOW`).
const SCAN_BATCH: usize = 256;
/// The most goroutines whose stacks are scanned, those blocked on no channel first (the
/// reader behind 600,000 blocked senders is in an IO wait, say); beyond it, a holder is
/// missed, and the log says how many were scanned.
const MAX_SCANNED: usize = 20_000;

/// The goroutines holding the channel each blocked goroutine of `goroutines` waits on, by
/// the blocked goroutine's id (as the profile's stacks count goroutines: `goid as u32`).
pub fn channel_holders(pid: u32, goroutines: &[Goroutine]) -> BTreeMap<u32, Vec<u32>> {
    let channels: HashSet<u64> =
        goroutines.iter().map(|goroutine| goroutine.channel).filter(|&c| c != 0).collect();
    if channels.is_empty() {
        return BTreeMap::new();
    }
    let started = std::time::Instant::now();
    // A goroutine blocked on the one channel others are blocked on holds no other.
    let mut candidates: Vec<&Goroutine> = goroutines
        .iter()
        .filter(|goroutine| goroutine.channel == 0 || channels.len() > 1)
        .collect();
    candidates.sort_by_key(|goroutine| goroutine.channel != 0);
    candidates.truncate(MAX_SCANNED);
    let memory = Memory { pid };
    let mut holders: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut buffer = Vec::new();
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
            for channel in channels_in(&buffer[range], &channels) {
                if channel != goroutine.channel {
                    holders.entry(channel).or_default().push(goroutine.goid as u32);
                }
            }
        }
    }
    log::info!(
        "channel holders: {} of {} goroutines' stacks scanned for {} channels in {:?}",
        candidates.len(),
        goroutines.len(),
        channels.len(),
        started.elapsed()
    );
    goroutines
        .iter()
        .filter_map(|goroutine| {
            let holding = holders.get(&goroutine.channel)?;
            Some((goroutine.goid as u32, holding.clone()))
        })
        .collect()
}

/// The channels of `channels` whose address is a word of `stack` (read from an aligned
/// sp), each once.
fn channels_in(stack: &[u8], channels: &HashSet<u64>) -> Vec<u64> {
    let mut found: Vec<u64> = (0..stack.len() / 8)
        .map(|index| word(stack, index * 8))
        .filter(|value| channels.contains(value))
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_holds_the_channels_whose_addresses_are_its_aligned_words() {
        let channels = HashSet::from([0xc000_0100_0000, 0xc000_0200_0000]);
        let mut stack = Vec::new();
        for value in [7_u64, 0xc000_0200_0000, 0xc000_0100_0000, 0xc000_0200_0000, 0xc000_0300_0000]
        {
            stack.extend(value.to_le_bytes());
        }
        assert_eq!(channels_in(&stack, &channels), [0xc000_0100_0000, 0xc000_0200_0000]);
        // An address split across two words is not a pointer slot.
        let mut unaligned = vec![0_u8; 4];
        unaligned.extend(0xc000_0100_0000_u64.to_le_bytes());
        unaligned.extend([0; 4]);
        assert!(channels_in(&unaligned, &channels).is_empty());
    }
}
