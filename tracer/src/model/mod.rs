//! The data model every source of waits feeds and every exporter reads: waits
//! aggregated by raw stack as they arrive (`aggregate`), named once (`symbolize`), into the
//! `Profile` (`profile`), with the call-site policy per language (`call_site`).

mod aggregate;
pub mod call_site;
mod modules;
mod profile;
mod stats;
mod symbolize;
#[cfg(test)]
pub(crate) mod tests;
pub mod timeline;

pub use aggregate::{StackKey, WaitAggregate, WaitObject, WakerStats};
pub use modules::module_infos;
pub use profile::{
    ModuleInfo, ProcessTag, Profile, ProfileKind, ProfileStack, PythonInfo, Sampling, ThreadCounts,
    TraceCounts, container_id, counted,
};
pub use stats::{WaitStats, log2_bucket};
pub use timeline::{Timeline, TimelineRecorder};

/// The Go wait reason of a goroutine parked on a descriptor; its object is this reason,
/// a space and the endpoint (`IO wait 10.0.0.5:80`).
pub const GO_IO_WAIT: &str = "IO wait";
pub use symbolize::{UNRESOLVED_SOCKET, WakerRow};
