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

pub use aggregate::{StackKey, WaitAggregate, WaitObject, WakerStats};
pub use modules::module_infos;
pub use profile::{ModuleInfo, Profile, ProfileKind, ProfileStack, ThreadCounts, TraceCounts};
pub use stats::{WaitStats, log2_bucket};
pub use symbolize::{UNRESOLVED_SOCKET, WakerRow};
