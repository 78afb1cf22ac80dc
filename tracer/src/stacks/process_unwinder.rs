//! One process's stacks, from registers and stack bytes to a `StackKey`-ready list of
//! addresses: the memory-map snapshot and the unwinder together, re-reading the map
//! (rate-limited) when code appears that was mapped after the snapshot.

use super::{MapRefresh, ProcessImage, StackUnwinder, UnwindEnd, UserRegs};

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
    map_refresh: MapRefresh,
    /// Walks that stopped before the root.
    pub truncated_unwinds: u64,
}

impl ProcessUnwinder {
    pub fn new(pid: u32, image: ProcessImage) -> Self {
        let unwinder = StackUnwinder::new(&image);
        Self { pid, image, unwinder, map_refresh: MapRefresh::default(), truncated_unwinds: 0 }
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
        let added = self.map_refresh.refresh(self.pid, &mut self.image) > 0;
        if added {
            self.unwinder.sync_modules(&self.image);
        }
        added
    }
}
