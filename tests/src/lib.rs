//! Helpers shared by the real-kernel tests, one module per job: child processes under guards
//! ([`processes`]), the workloads the tests trace ([`workloads`]), the programs that drive and
//! read the tracer ([`clients`]), reading what the tracer wrote ([`profiles`]), and the Go
//! program's own goroutine profile as the oracle ([`golang`]).
//!
//! Everything panics with context instead of returning errors: a test failure should say what
//! it was doing.

pub mod clients;
pub mod golang;
pub mod processes;
pub mod profiles;
pub mod workloads;

pub use clients::*;
pub use golang::*;
pub use processes::*;
pub use profiles::*;
pub use workloads::*;
