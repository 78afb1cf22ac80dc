//! The probes' WAIT_STARTS array mapped into the tracer's memory (the map is created
//! `BPF_F_MMAPABLE`): a look over every thread's wait word is then a load per thread, not
//! a system call per thread.

use std::{io, os::fd::BorrowedFd, ptr::NonNull};

use tracer_common::WAIT_START_SLOTS;

/// A read-only view of WAIT_STARTS. The mapping holds the map alive: it outlives the
/// probes' detach.
pub struct WaitWords {
    words: NonNull<u64>,
}

// SAFETY: a read-only shared mapping of kernel memory; the view only loads from it.
unsafe impl Send for WaitWords {}

const MAPPED_BYTES: usize = WAIT_START_SLOTS as usize * size_of::<u64>();

impl WaitWords {
    /// Maps the array behind `map_fd` (WAIT_STARTS).
    pub fn map(map_fd: BorrowedFd<'_>) -> io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: a fresh shared read-only mapping of the map's values, whose size is the
        // map's (WAIT_START_SLOTS words, a whole number of pages); the kernel checks both.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAPPED_BYTES,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map_fd.as_raw_fd(),
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let words =
            NonNull::new(mapped.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { words })
    }

    /// Thread `tid`'s word, as the probes last wrote it (whole: they store aligned words).
    pub fn word(&self, tid: u32) -> u64 {
        let slot = (tid % WAIT_START_SLOTS) as usize;
        // SAFETY: `slot` is inside the mapping (WAIT_START_SLOTS words, aligned); the
        // probes rewrite words whole, and a volatile load reads one whole.
        unsafe { self.words.as_ptr().add(slot).read_volatile() }
    }
}

impl Drop for WaitWords {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.words.as_ptr().cast(), MAPPED_BYTES) };
    }
}
