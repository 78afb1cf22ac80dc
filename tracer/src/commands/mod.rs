//! The commands: each runs the pipeline for its purpose and hands the `Profile` to the
//! exporters (`tracer serve` lives in `serve/`, the daemon).

pub mod record;
pub mod report;
pub mod snapshot;
