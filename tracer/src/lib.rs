//! `tracer`: which call sites of a live process pile up waiting.
//!
//! Data flow, one stage per module: `pipeline` (the target, its memory map, the stages
//! every command runs) → `probes` (kernel programs, ring-buffer records), `threads`
//! (threads blocked now, from /proc), `golang` (goroutines from the Go runtime's memory)
//! → `stacks` (unwinding, symbols) → `objects` (what each wait waits on: sockets, locks) →
//! `model` (aggregate, symbolize, call sites: the `Profile`) → `chains` (from the piled-up
//! sites through their wakers to what holds them up) → `report` (exporters and readers). `commands` run it for `record`, `snapshot` and `report`; `serve` keeps it
//! running behind HTTP endpoints.
//!
//! The binary is a thin shell over this library; the integration tests use it to read the
//! profiles the binary writes back into the data model and assert on what they mean.

// Syscall numbers, saved registers and /proc/PID/task/TID/syscall are read as x86_64's.
#[cfg(not(target_arch = "x86_64"))]
compile_error!("tracer supports x86_64 only");

pub mod chains;
pub mod cli;
pub mod commands;
pub mod golang;
pub mod memory;
pub mod model;
pub mod objects;
pub mod pipeline;
pub mod probes;
pub mod python;
pub mod report;
pub mod serve;
pub mod stacks;
pub mod threads;
pub mod timer;
pub mod top;

pub use model::{Profile, ProfileKind, ProfileStack, ThreadCounts, TraceCounts, WaitStats};
pub use tracer_common::WaitKind;

/// Reads a profile `tracer` wrote (`.json`, `.pb.gz`/`.pprof`) back into the data model.
pub fn read_profile(path: &std::path::Path) -> Result<Profile, report::ReadError> {
    report::read_saved(path).map(|saved| saved.profile)
}
