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
    holders::Held,
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

/// Package sync's semaphore waits by wait reason (go1.24+ names a `WaitGroup`'s; earlier
/// releases say `semacquire` for it, as for every other semaphore), where the semaphore
/// lies in the object that holds it, so that the object is named rather than its field
/// (`sync.Mutex.sema` at 4, `RWMutex.writerSem` at 8 and `readerSem` at 12,
/// `WaitGroup.sema` at 8), and what a goroutine that the waiter waits for holds (a writer
/// waits for the readers holding the `RWMutex`, a reader for the writer; a `WaitGroup`'s
/// waiter for the goroutines still to call `Done`). A writer queued behind another writer
/// waits in the `RWMutex`'s inner `Mutex` (at 0), as `sync.Mutex.Lock`. `semacquire` may be
/// any of them: see [`SEMACQUIRE_CALLERS`].
const SYNC_WAITS: [(&str, u64, Option<&str>); 5] = [
    ("sync.Mutex.Lock", 4, Some(Held::LOCK)),
    ("sync.RWMutex.RLock", 12, Some(Held::LOCK)),
    ("sync.RWMutex.Lock", 8, Some(Held::LOCK)),
    ("sync.WaitGroup.Wait", 8, Some(Held::WAIT_GROUP)),
    ("semacquire", 0, None),
];

/// Package sync functions a `semacquire` wait is parked under (the one reason releases
/// before go1.24 give a `WaitGroup`'s wait, and go1.19 every sync wait), with the
/// semaphore's offset in its object and what a holder holds: where the reason does not
/// tell the object, the innermost of them in the stack does (a writer queued behind
/// another is in `Mutex.lockSlow` under `RWMutex.Lock`). `RWMutex.RLock` is inlined into
/// its callers: it has no frame to find.
const SEMACQUIRE_CALLERS: [(&str, u64, &str); 3] = [
    ("sync.(*WaitGroup).Wait", 8, Held::WAIT_GROUP),
    ("sync.(*Mutex).lockSlow", 4, Held::LOCK),
    ("sync.(*RWMutex).Lock", 8, Held::LOCK),
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
    // Wait reason index → the semaphore's offset in its object, and what its holders hold.
    let offsets: HashMap<u8, (u64, Option<&'static str>)> = binary
        .wait_reasons
        .iter()
        .enumerate()
        .filter_map(|(index, name)| {
            let (_, offset, held) = SYNC_WAITS.iter().find(|(reason, ..)| reason == name)?;
            Some((u8::try_from(index).ok()?, (*offset, *held)))
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
    // Where the reason is `semacquire`, the package sync function in the stack tells.
    let semacquire = binary
        .wait_reasons
        .iter()
        .position(|reason| reason == "semacquire")
        .and_then(|index| u8::try_from(index).ok());
    let is_semacquire = |goroutine: &Goroutine| Some(goroutine.wait_reason) == semacquire;
    let mut callers = Vec::new();
    if blocked.iter().any(|&index| is_semacquire(&goroutines[index])) {
        callers.extend(SEMACQUIRE_CALLERS.iter().filter_map(|&(function, offset, held)| {
            let range = binary.pclntab.function_range(function)?;
            Some((range.start + bias..range.end + bias, offset, held))
        }));
    }
    for index in blocked {
        let goroutine = &mut goroutines[index];
        let Some(&semaphore) = semaphores.get(&goroutine.address) else {
            counts.objects_unnamed += 1;
            continue;
        };
        // Only a `semacquire` wait is told by its stack (a named reason says its field).
        // Leaf first; a return address is just past its call, inside the function.
        let caller = if is_semacquire(goroutine) {
            goroutine.pcs.iter().find_map(|&pc| {
                callers.iter().find(|(range, ..)| range.contains(&pc.wrapping_sub(1)))
            })
        } else {
            None
        };
        let (offset, held) = match caller {
            Some(&(_, offset, held)) => (offset, Some(held)),
            None => offsets[&goroutine.wait_reason],
        };
        let object = semaphore.wrapping_sub(offset);
        let name = locks.name(image, object);
        goroutine.object = Some(format!("on {}", name.name));
        goroutine.blocked_on = held.map(|what| Held { address: object, what });
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
