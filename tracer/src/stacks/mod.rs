//! Stacks: from the registers and stack copy of a blocked thread to named frames.
//!
//! [`ProcessImage`] snapshots the target's executable mappings and keeps each file open, so a
//! target that exits (or a library deleted on disk) still unwinds and symbolizes.
//! [`StackUnwinder`] unwinds the copied stack with `.eh_frame` CFI (frame pointers where no CFI
//! covers an address), [`ProcessUnwinder`] does so for one process (re-reading its map
//! when new code appears), and [`StackSymbolizer`] names the addresses, inlined frames included.
//! x86_64 only.

mod process_image;
mod process_unwinder;
mod symbolize;
mod unwind;

pub use process_image::{MapRefresh, Module, ProcessImage};
pub use process_unwinder::{ProcessUnwinder, UnwoundAddresses};
pub(crate) use symbolize::demangle;
pub(crate) use symbolize::lookup_address;
pub use symbolize::{
    Frame, PYTHON_MODULE, RenewedSymbolFiles, SharedSymbolFiles, StackSymbolizer,
    UNKNOWN as UNKNOWN_FRAME,
};
pub use unwind::{StackUnwinder, UnwindEnd, UserRegs};

#[cfg(test)]
mod tests;
