//! What a goroutine blocked in package sync waits on: the semaphore of its `sync.Mutex`,
//! `RWMutex` or `WaitGroup`. The runtime queues such waits in `runtime.semtable`: 251
//! roots, each a treap of sudogs keyed by semaphore address (`elem`), the goroutines on one
//! address chained by `waitlink` (`runtime/sema.go`). Walking it from outside gives each
//! waiting goroutine its semaphore, named by the object that holds it as a futex is: a
//! global by its symbol (`main.statsMu`), else its region and address (`anon 0xc000012340`).

use std::collections::{HashMap, HashSet};

use super::{
    binary::{ChanLayout, GoBinary},
    goroutines::{Goroutine, GoroutineCounts, Memory, word},
};
use crate::{objects::locks::LockNamer, stacks::ProcessImage};

/// `semTabSize` roots, each padded to a cache line (`cpu.CacheLinePadSize`, 64 on amd64);
/// a root's `treap` pointer follows its 8-byte lock.
const SEM_TABLE_SIZE: usize = 251;
const SEM_ROOT_STRIDE: usize = 64;
const SEM_ROOT_TREAP: usize = 8;
/// A sudog's `g`, its treap children (`next`, `prev`) and `elem` (the semaphore's address).
const SUDOG_G: usize = 0;
const SUDOG_NEXT: usize = 8;
const SUDOG_PREV: usize = 16;
const SUDOG_ELEM: usize = 24;
/// Sudogs read at most per walk: a chain of waiters is read one link at a time, so a
/// million goroutines on one lock would cost a million reads. Those past it are counted
/// as unnamed.
const MAX_SUDOGS: usize = 100_000;

/// Package sync's semaphore waits by wait reason (go1.24+ names each; earlier releases
/// say `semacquire` for all), and where the semaphore lies in the object that holds it, so
/// that the object is named rather than its field (`sync.Mutex.sema` at 4,
/// `RWMutex.readerSem` at 12, `WaitGroup.sema` at 8). A writer's `RWMutex.Lock` waits on
/// either of two fields, and `semacquire` on any: their semaphore is named as it is.
const SYNC_WAITS: [(&str, u64); 5] = [
    ("sync.Mutex.Lock", 4),
    ("sync.RWMutex.RLock", 12),
    ("sync.WaitGroup.Wait", 8),
    ("sync.RWMutex.Lock", 0),
    ("semacquire", 0),
];

/// Names the lock of each goroutine in `goroutines` blocked on a sync semaphore
/// (`on main.statsMu` in its object); those whose semaphore cannot be found are counted.
pub fn name_semaphore_waits(
    pid: u32,
    binary: &GoBinary<'_>,
    bias: u64,
    image: &ProcessImage,
    locks: &mut LockNamer,
    goroutines: &mut [Goroutine],
    counts: &mut GoroutineCounts,
) {
    // Wait reason index → the semaphore's offset in its object.
    let offsets: HashMap<u8, u64> = binary
        .wait_reasons
        .iter()
        .enumerate()
        .filter_map(|(index, name)| {
            let (_, offset) = SYNC_WAITS.iter().find(|(reason, _)| reason == name)?;
            Some((u8::try_from(index).ok()?, *offset))
        })
        .collect();
    let blocked: Vec<usize> = goroutines
        .iter()
        .enumerate()
        .filter(|(_, goroutine)| offsets.contains_key(&goroutine.wait_reason))
        .map(|(index, _)| index)
        .collect();
    if blocked.is_empty() {
        return;
    }
    let (Some(semtable), Some(layout)) = (binary.semtable, binary.channels) else {
        counts.objects_unnamed += blocked.len() as u64;
        return;
    };
    let memory = Memory { pid };
    let semaphores = semaphores_by_goroutine(&memory, &layout, semtable.wrapping_add(bias));
    for index in blocked {
        let goroutine = &mut goroutines[index];
        let Some(&semaphore) = semaphores.get(&goroutine.address) else {
            counts.objects_unnamed += 1;
            continue;
        };
        let offset = offsets[&goroutine.wait_reason];
        let name = locks.name(image, semaphore.wrapping_sub(offset));
        goroutine.object = Some(format!("on {}", name.name));
    }
}

/// The semaphore address each goroutine waiting in the table waits on, by `g` address:
/// the treaps walked a level at a time (one read per level), each node's chain a link at
/// a time.
fn semaphores_by_goroutine(
    memory: &Memory,
    layout: &ChanLayout,
    semtable: u64,
) -> HashMap<u64, u64> {
    let mut found = HashMap::new();
    let mut table = vec![0u8; SEM_TABLE_SIZE * SEM_ROOT_STRIDE];
    if memory.read_exact(semtable, &mut table).is_err() {
        return found;
    }
    let mut frontier: Vec<u64> = (0..SEM_TABLE_SIZE)
        .map(|root| word(&table, root * SEM_ROOT_STRIDE + SEM_ROOT_TREAP))
        .filter(|&sudog| sudog != 0)
        .collect();
    let len = layout.sudog_waitlink as usize + 8;
    let mut seen = HashSet::new();
    let mut buffer = Vec::new();
    while !frontier.is_empty() && seen.len() < MAX_SUDOGS {
        frontier.retain(|sudog| seen.insert(*sudog));
        let pieces: Vec<(u64, usize)> = frontier.iter().map(|&sudog| (sudog, len)).collect();
        let read = memory.read_pieces(&pieces, &mut buffer);
        let mut next = Vec::new();
        for range in read.into_iter().flatten() {
            let sudog = &buffer[range];
            let (g, elem) = (word(sudog, SUDOG_G), word(sudog, SUDOG_ELEM));
            if g != 0 && elem != 0 {
                found.insert(g, elem);
            }
            for link in [SUDOG_NEXT, SUDOG_PREV, layout.sudog_waitlink as usize] {
                let child = word(sudog, link);
                if child != 0 {
                    next.push(child);
                }
            }
        }
        frontier = next;
    }
    found
}
