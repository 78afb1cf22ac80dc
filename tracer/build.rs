//! Builds the eBPF probes (`tracer-ebpf`) with the nightly toolchain and bpf-linker,
//! so that `include_bytes_aligned!` can embed them in the `tracer` binary; and
//! compiles pprof's `profile.proto` to Rust (protox parses it, so no `protoc`).

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    compile_pprof_proto()?;
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("tracer crate has no parent directory"))?
        .join("tracer-ebpf");
    // The probes are built from the shared types too (sizes of per-kind maps): rebuild
    // them when those change, not only when tracer-ebpf does.
    let common_dir = ebpf_dir.with_file_name("tracer-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir =
        ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package { name: "tracer-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF probes (run `cargo xtask setup` if bpf-linker or rust-src is missing)",
    )
}

/// `proto/profile.proto` → `$OUT_DIR/perftools.profiles.rs`.
fn compile_pprof_proto() -> anyhow::Result<()> {
    const PROTO: &str = "proto/profile.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"]).context("parsing proto/profile.proto")?;
    prost_build::Config::new().compile_fds(descriptors).context("generating the pprof types")
}
