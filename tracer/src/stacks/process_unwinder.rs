//! One process's stacks, from registers and stack bytes to a `StackKey`-ready list of
//! addresses: the memory-map snapshot and the unwinder together, re-reading the map
//! (rate-limited) when code appears that was mapped after the snapshot.

use std::time::{Duration, Instant};

use super::{ProcessImage, StackUnwinder, UnwindEnd, UserRegs};

/// Re-read the target's memory map at most this often when an address falls outside
/// every known module (a library loaded after tracing began).
const MAP_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// An unwound stack: addresses leaf first, and whether the walk stopped before the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnwoundAddresses {
    pub addresses: Vec<u64>,
    pub truncated: bool,
}

pub struct ProcessUnwinder {
    pid: u32,
    image: ProcessImage,
    unwinder: StackUnwinder,
    last_map_refresh: Option<Instant>,
    /// Walks that stopped before the root.
    pub truncated_unwinds: u64,
}

impl ProcessUnwinder {
    pub fn new(pid: u32, image: ProcessImage) -> Self {
        let unwinder = StackUnwinder::new(&image);
        Self { pid, image, unwinder, last_map_refresh: None, truncated_unwinds: 0 }
    }

    pub fn image(&self) -> &ProcessImage {
        &self.image
    }

    /// `stack` holds the bytes at [regs.sp, regs.sp + stack.len()).
    pub fn unwind(&mut self, regs: UserRegs, stack: &[u8]) -> UnwoundAddresses {
        let mut unwound = self.unwinder.unwind(regs, stack);
        if unwound.end == UnwindEnd::NoModule && self.refresh_map() {
            unwound = self.unwinder.unwind(regs, stack);
        }
        let truncated = unwound.end != UnwindEnd::Complete;
        if truncated {
            self.truncated_unwinds += 1;
        }
        UnwoundAddresses { addresses: unwound.frames, truncated }
    }

    /// Picks up libraries mapped since the snapshot; returns whether any were added.
    fn refresh_map(&mut self) -> bool {
        let now = Instant::now();
        if self.last_map_refresh.is_some_and(|last| now.duration_since(last) < MAP_REFRESH_INTERVAL)
        {
            return false;
        }
        self.last_map_refresh = Some(now);
        match self.image.refresh() {
            Ok(0) => false,
            Ok(added) => {
                log::info!("{added} new modules mapped in pid {}", self.pid);
                self.unwinder.sync_modules(&self.image);
                true
            }
            Err(err) => {
                log::warn!("cannot refresh the memory map of pid {}: {err}", self.pid);
                false
            }
        }
    }
}
