//! What a futex wait waits on: the futex address is the lock's identity. A glibc FILE's
//! lock is named by its FILE (`stdout`); an address inside a data symbol of the program or
//! a library (a static mutex, a global queue) by that symbol; one in an object a global
//! points to by that global (`*log.std`); any other by the mapping it lies in (heap, a
//! thread's stack, anonymous memory) and its address.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use object::{Object as _, ObjectSymbol as _, SymbolKind};

use super::{global_pointers::GlobalPointers, stdio::StdioLocks};
use crate::stacks::{Module, ProcessImage};

/// How long the FILEs, and the globals' pointers, read from a process stand before they
/// are read again (FILEs open and close, pointers change; a profile names its locks within
/// a moment).
const READ_FRESH_FOR: Duration = Duration::from_secs(1);

/// One data symbol of a module: [start, start + size) in the file's addresses (svma).
#[derive(Clone, Debug, PartialEq, Eq)]
struct DataSymbol {
    start: u64,
    size: u64,
    name: String,
}

/// A lock's name, and whether a symbol gave it (a region and address otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockName {
    pub name: String,
    pub from_symbol: bool,
}

/// How many shared futexes a namer keeps (see `LockNamer::note_shared`).
const SHARED_FUTEXES_KEPT: usize = 1 << 16;

/// Names futex addresses; data symbols are read once per file.
#[derive(Default)]
pub struct LockNamer {
    /// Sorted by start, per module file path.
    symbols_by_file: HashMap<String, Vec<DataSymbol>>,
    /// The FILE locks last read.
    stdio: Option<ReadOf<Option<StdioLocks>>>,
    /// The main executable's pointers into the heap last read.
    pointers: Option<ReadOf<GlobalPointers>>,
    /// Futexes (by process) more than one thread has waited on in the profiles named so
    /// far. A lock stays shared from one profile to the next: `top` names its threads
    /// blocked now and its last second's waits apart, and a moment may find one waiter
    /// where the second found two (a row each otherwise).
    shared_futexes: HashSet<(u32, u64)>,
}

/// What was read of one process, and when.
struct ReadOf<T> {
    pid: u32,
    at: Instant,
    value: T,
}

/// What `slot` holds of process `pid`: `read` when it holds another process's (or
/// nothing), put through `refresh` once `READ_FRESH_FOR` old.
fn fresh<T>(
    slot: &mut Option<ReadOf<T>>,
    pid: u32,
    read: impl FnOnce() -> T,
    refresh: impl FnOnce(&mut T),
) -> &T {
    match slot {
        Some(last) if last.pid == pid => {
            if last.at.elapsed() >= READ_FRESH_FOR {
                last.at = Instant::now();
                refresh(&mut last.value);
            }
        }
        _ => *slot = None,
    }
    &slot.get_or_insert_with(|| ReadOf { pid, at: Instant::now(), value: read() }).value
}

impl LockNamer {
    pub fn new() -> Self {
        Self::default()
    }

    /// `stdout`, `STATS_QUEUE`, `queue+0x28 (libfoo.so)`, or `heap 0x55d0c2a4b188`.
    pub fn name(&mut self, image: &ProcessImage, address: u64) -> LockName {
        if let Some(file) = self.stdio_locks(image).and_then(|locks| locks.file_of(address)) {
            return LockName { name: file.to_owned(), from_symbol: true };
        }
        let unnamed = |name| LockName { name, from_symbol: false };
        let Some((mapping, previous)) = image.mapping_for(address) else {
            return unnamed(format!("{address:#x}"));
        };
        // A file's .bss is often the anonymous mapping right after its data.
        let file_path = if !mapping.path.is_empty() {
            Some(mapping.path.as_str())
        } else {
            previous
                .filter(|previous| previous.end == mapping.start && previous.path.starts_with('/'))
                .map(|previous| previous.path.as_str())
        };
        if let Some(path) = file_path.filter(|path| path.starts_with('/'))
            && let Some(module) = image.module_of_file(path)
        {
            let svma = address.wrapping_sub(module.bias);
            if let Some(name) = symbol_at(self.symbols_of(module), svma) {
                let name = if module.is_main_executable {
                    name
                } else {
                    format!("{name} ({})", module.name())
                };
                return LockName { name, from_symbol: true };
            }
        }
        if mapping.is_anonymous()
            && let Some(name) = self.pointed_from_a_global(image, address)
        {
            return LockName { name, from_symbol: true };
        }
        let region = match mapping.path.as_str() {
            "" => "anon",
            "[heap]" => "heap",
            path if path.starts_with("[stack") => "stack",
            path => path.rsplit('/').next().unwrap_or(path),
        };
        unnamed(format!("{region} {address:#x}"))
    }

    /// Notes that more than one thread of process `pid` waited on each of `addresses`.
    pub fn note_shared(&mut self, pid: u32, addresses: impl IntoIterator<Item = u64>) {
        // `serve` names a process's profiles for as long as it runs, and a program may
        // share a new heap futex per request: past the bound the set starts over (a lock
        // then counts as shared again once two threads wait on it in one profile).
        if self.shared_futexes.len() >= SHARED_FUTEXES_KEPT {
            self.shared_futexes.clear();
        }
        self.shared_futexes.extend(addresses.into_iter().map(|address| (pid, address)));
    }

    /// Whether more than one thread of process `pid` waited on the futex at `address`, in
    /// any profile named so far.
    pub fn is_shared(&self, pid: u32, address: u64) -> bool {
        self.shared_futexes.contains(&(pid, address))
    }

    /// The data symbols of `module`'s file, read once.
    fn symbols_of(&mut self, module: &Module) -> &[DataSymbol] {
        let path = module.path.to_string_lossy().into_owned();
        self.symbols_by_file.entry(path).or_insert_with(|| data_symbols(module.file_bytes()))
    }

    /// `address` (in anonymous memory) named by the global of the main executable that
    /// points to it (`*log.std`), when one does.
    fn pointed_from_a_global(&mut self, image: &ProcessImage, address: u64) -> Option<String> {
        let read = || GlobalPointers::read(image);
        let pointers = fresh(&mut self.pointers, image.pid(), read, |p| *p = read());
        let global = pointers.pointing_to(address)?;
        let main = image.main_module()?;
        Some(format!("*{}", symbol_at(self.symbols_of(main), global)?))
    }

    /// The FILE locks of `image`'s process, its list of FILEs read again once stale.
    fn stdio_locks(&mut self, image: &ProcessImage) -> Option<&StdioLocks> {
        let read = || StdioLocks::read(image);
        let refresh = |locks: &mut Option<StdioLocks>| locks.iter_mut().for_each(|l| l.refresh());
        fresh(&mut self.stdio, image.pid(), read, refresh).as_ref()
    }
}

/// The data (object) symbols of an ELF file, sorted by address, names demangled.
fn data_symbols(elf: &[u8]) -> Vec<DataSymbol> {
    let Ok(file) = object::File::parse(elf) else {
        return Vec::new();
    };
    let mut symbols: Vec<DataSymbol> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|symbol| symbol.kind() == SymbolKind::Data && symbol.size() > 0)
        .filter_map(|symbol| {
            Some(DataSymbol {
                start: symbol.address(),
                size: symbol.size(),
                name: demangle(symbol.name().ok()?),
            })
        })
        .collect();
    symbols.sort_by_key(|symbol| symbol.start);
    symbols.dedup_by_key(|symbol| symbol.start);
    symbols
}

/// The symbol holding `svma`, with the offset into it when not at its start.
fn symbol_at(symbols: &[DataSymbol], svma: u64) -> Option<String> {
    let after = symbols.partition_point(|symbol| symbol.start <= svma);
    let symbol = symbols.get(after.checked_sub(1)?)?;
    let offset = svma - symbol.start;
    (offset < symbol.size).then(|| {
        if offset == 0 { symbol.name.clone() } else { format!("{}+{offset:#x}", symbol.name) }
    })
}

/// Rust and C++ names demangled (Rust's without the hash); anything else as it is.
fn demangle(name: &str) -> String {
    crate::stacks::demangle(name).into_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn symbols() -> Vec<DataSymbol> {
        vec![
            DataSymbol { start: 0x1000, size: 0x40, name: "queue".into() },
            DataSymbol { start: 0x2000, size: 8, name: "app::STATS_QUEUE".into() },
        ]
    }

    #[test]
    fn addresses_inside_a_symbol_are_named_with_their_offset() {
        assert_eq!(symbol_at(&symbols(), 0x1000).as_deref(), Some("queue"));
        assert_eq!(symbol_at(&symbols(), 0x1028).as_deref(), Some("queue+0x28"));
        assert_eq!(symbol_at(&symbols(), 0x2000).as_deref(), Some("app::STATS_QUEUE"));
        assert_eq!(symbol_at(&symbols(), 0x1040), None);
        assert_eq!(symbol_at(&symbols(), 0x0fff), None);
        assert_eq!(symbol_at(&symbols(), 0x2008), None);
    }

    #[test]
    fn rust_names_lose_their_hash() {
        assert_eq!(demangle("_ZN3app11STATS_QUEUE17h0123456789abcdefE"), "app::STATS_QUEUE");
        assert_eq!(demangle("queue"), "queue");
    }

    #[test]
    fn the_shared_futexes_kept_are_bounded() {
        let mut namer = LockNamer::new();
        namer.note_shared(1, 0..SHARED_FUTEXES_KEPT as u64);
        assert!(namer.is_shared(1, 0) && !namer.is_shared(2, 0));
        // Full, the set starts over with the next profile's.
        namer.note_shared(1, [u64::MAX]);
        assert!(namer.is_shared(1, u64::MAX) && !namer.is_shared(1, 0));
        assert_eq!(namer.shared_futexes.len(), 1);
    }

    /// A static of this test binary: its futex word is named by its symbol.
    static NAMED_LOCK: Mutex<u64> = Mutex::new(0);

    #[test]
    fn a_static_mutex_of_a_live_process_is_named_and_the_heap_is_not() {
        let image = ProcessImage::snapshot(std::process::id()).unwrap();
        let mut namer = LockNamer::new();
        let address = std::ptr::from_ref(&NAMED_LOCK) as u64;
        let name = namer.name(&image, address);
        assert!(name.from_symbol && name.name.ends_with("NAMED_LOCK"), "{name:?}");
        let on_heap = Box::new(0u64);
        let heap = namer.name(&image, std::ptr::from_ref(&*on_heap) as u64);
        assert!(!heap.from_symbol);
        let heap_name = heap.name;
        assert!(
            heap_name.starts_with("heap 0x") || heap_name.starts_with("anon 0x"),
            "{heap_name}"
        );
        let on_stack = 0u64;
        let stack_name = namer.name(&image, std::ptr::from_ref(&on_stack) as u64).name;
        assert!(
            stack_name.starts_with("stack 0x") || stack_name.starts_with("anon 0x"),
            "{stack_name}"
        );
    }
}
