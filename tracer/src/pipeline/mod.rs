//! The tracing pipeline that `record`, `snapshot` and `serve` share: the target process →
//! its memory-map image → the sources of waits (probes, /proc, the Go runtime) → the
//! decoder → the `Profile`.

pub mod own_usage;
pub mod target;
