//! Objects on the heap named by the globals that point to them. A long-lived lock is often
//! the first field of an object that a global points to (Go's `log.std`, whose mutex
//! leads the `Logger`; a C program's `static struct queue *jobs` whose first field is its
//! lock): a futex or semaphore address in anonymous memory is named by the main
//! executable's global holding that very address (`*log.std`), read from the process's
//! memory, rather than by its bare address. A lock further into its object is not named
//! so: without the object's size, the nearest pointer below may be another object's.

use std::collections::HashMap;

use object::{Object as _, ObjectSection as _, SectionKind};

use crate::{memory::Memory, stacks::ProcessImage};

/// The globals read at most: a C program's .bss may be large, and its locks' pointers are
/// rarely past its first megabytes.
const MAX_GLOBALS_BYTES: u64 = 4 << 20;

/// Where the main executable's globals point into anonymous memory and the heap.
#[derive(Debug, Default)]
pub struct GlobalPointers {
    /// Each address pointed to, with the address in the file (svma) of the lowest global
    /// holding it.
    targets: HashMap<u64, u64>,
}

impl GlobalPointers {
    /// The pointers held now by the globals (`.data`, `.bss`) of `image`'s main executable.
    pub fn read(image: &ProcessImage) -> Self {
        let mut pointers = Self::default();
        let Some(main) = image.main_module() else {
            return pointers;
        };
        let Ok(file) = object::File::parse(main.file_bytes()) else { return pointers };
        let memory = Memory { pid: image.pid() };
        let mut budget = MAX_GLOBALS_BYTES;
        for section in file.sections() {
            let holds_pointers = matches!(section.kind(), SectionKind::Data | SectionKind::UninitializedData)
                    // Go keeps its pointer-free globals apart.
                    && !section.name().is_ok_and(|name| name.starts_with(".noptr"));
            if !holds_pointers || budget == 0 {
                continue;
            }
            // The file's headers: a section at the top of the address space is skipped.
            let Some(start) = section.address().checked_next_multiple_of(8) else { continue };
            let len = section.size().saturating_sub(start - section.address()).min(budget) & !7;
            budget -= len;
            let mut bytes = vec![0u8; len as usize];
            if memory.read_exact(start.wrapping_add(main.bias), &mut bytes).is_err() {
                continue;
            }
            for (index, word) in bytes.chunks_exact(8).enumerate() {
                let value = u64::from_le_bytes(word.try_into().unwrap());
                if value != 0 && in_anonymous_memory(image, value) {
                    pointers.targets.entry(value).or_insert(start.wrapping_add(8 * index as u64));
                }
            }
        }
        pointers
    }

    /// The global (svma in the main executable) holding `address`.
    pub fn pointing_to(&self, address: u64) -> Option<u64> {
        self.targets.get(&address).copied()
    }
}

/// Whether `address` lies in the heap or an anonymous mapping (Go's heap, mmap'd memory).
pub fn in_anonymous_memory(image: &ProcessImage, address: u64) -> bool {
    image.mapping_for(address).is_some_and(|(mapping, _)| mapping.is_anonymous())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicPtr;

    use super::*;

    /// A global of this test binary pointing to a heap object, as a program's queue would.
    static JOBS: AtomicPtr<[u64; 8]> = AtomicPtr::new(std::ptr::null_mut());

    #[test]
    fn a_heap_object_is_found_through_the_global_that_points_to_it() {
        let jobs = Box::into_raw(Box::new([0u64; 8]));
        JOBS.store(jobs, std::sync::atomic::Ordering::SeqCst);
        let image = ProcessImage::snapshot(std::process::id()).unwrap();
        let pointers = GlobalPointers::read(&image);
        let main = image.main_module().unwrap();
        let global = std::ptr::from_ref(&JOBS) as u64 - main.bias;
        let address = jobs as u64;
        assert_eq!(pointers.pointing_to(address), Some(global));
        // A field further in is not named by it.
        assert_eq!(pointers.pointing_to(address + 0x28), None);
        // SAFETY: allocated above, no longer pointed to once the global is cleared.
        JOBS.store(std::ptr::null_mut(), std::sync::atomic::Ordering::SeqCst);
        drop(unsafe { Box::from_raw(jobs) });
    }
}
