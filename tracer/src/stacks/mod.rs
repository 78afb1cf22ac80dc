//! Stacks: from the registers and stack copy of a blocked thread to named frames.
//!
//! [`ProcessImage`] snapshots the target's executable mappings and keeps each file open, so a
//! target that exits (or a library deleted on disk) still unwinds and symbolizes.
//! [`StackUnwinder`] walks the copied stack with `.eh_frame` CFI (frame pointers where no CFI
//! covers an address), and [`StackSymbolizer`] names the addresses, inlined frames included.
//! x86_64 only.

mod process_image;
mod symbolize;
mod unwind;
mod walker;

pub use process_image::ProcessImage;
pub use symbolize::{Frame, StackSymbolizer};
pub use unwind::{StackUnwinder, UnwindEnd, UserRegs};
pub use walker::StackWalker;

#[cfg(test)]
mod tests;
