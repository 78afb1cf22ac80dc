//! Installs, idempotently, what a fresh machine lacks to build and test tracer.
//! Each step says what it checks, what it does, and why it failed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::run_command;

/// Debian packages the build and the tests need: gcc and libc headers for the C
/// workload, zlib/zstd for linking bpf-linker against LLVM, `go tool pprof` and
/// `xmllint` to check that the pprof and SVG reports open in the tools people use,
/// `prometheus` to check that a real server scrapes `tracer serve`.
const DEBIAN_PACKAGES: [&str; 7] =
    ["gcc", "libc6-dev", "zlib1g-dev", "libzstd-dev", "golang-go", "libxml2-utils", "prometheus"];

/// The bpf-linker release that works with LLVM 22 (the nightly's LLVM).
const BPF_LINKER_VERSION: &str = "0.13.0";

fn run_setup_step(name: &str, step: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    step().with_context(|| format!("setup step `{name}` failed"))
}

/// Sets up what building and testing need.
pub fn run() -> anyhow::Result<()> {
    run_with(&[])
}

/// Sets up what building and testing need, plus `extra` Debian packages (the bench's peers).
pub fn run_with(extra: &[&str]) -> anyhow::Result<()> {
    run_setup_step("debian packages", || debian_packages(extra))?;
    run_setup_step("nightly toolchain", nightly_toolchain)?;
    run_setup_step("rust-src", rust_src)?;
    run_setup_step("bpf-linker", bpf_linker)?;
    Ok(())
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn debian_packages(extra: &[&str]) -> anyhow::Result<()> {
    let wanted: Vec<&str> = DEBIAN_PACKAGES.iter().chain(extra).copied().collect();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|package| {
            let query = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .stderr(Stdio::null())
                .output();
            !query.is_ok_and(|out| {
                String::from_utf8_lossy(&out.stdout).contains("install ok installed")
            })
        })
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages present ({})", wanted.join(", "));
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    run_command(Command::new("apt-get").arg("update").arg("-q"))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly_toolchain() -> anyhow::Result<()> {
    if succeeds(Command::new("rustc").args(["+nightly", "--version"])) {
        println!("setup: nightly toolchain present");
        return Ok(());
    }
    println!("setup: installing the nightly toolchain (the eBPF probes build with it)");
    run_command(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
    .context("the probes need a nightly Rust toolchain (for -Z build-std)")
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        println!("setup: nightly rust-src present");
        return Ok(());
    }
    println!("setup: adding rust-src to the nightly toolchain (needed by -Z build-std=core)");
    run_command(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("cannot add rust-src to nightly; the eBPF crate cannot build without it")
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        println!("setup: {} present", version.trim());
        return Ok(());
    }
    let llvm_prefix = nightly_llvm_prefix()?;
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM 22 ({}) — about a minute",
        llvm_prefix.display()
    );
    // bpf-linker's default feature wants LLVM 23; ours is 22.
    run_command(
        Command::new("cargo")
            .args(["install", "--force"])
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", &llvm_prefix),
    )?;
    let version = output(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)")?;
    println!("setup: {} installed", version.trim());
    Ok(())
}

/// A folder `P/lib` holding `libLLVM.so` links to the nightly's own libLLVM, the shape
/// bpf-linker's build expects of an LLVM prefix. It must stay: the installed linker
/// finds libLLVM through an rpath into it.
fn nightly_llvm_prefix() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&sysroot_lib)
        .with_context(|| format!("cannot list {}", sysroot_lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".local/share/tracer/llvm-22");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    for link_name in ["libLLVM.so", libllvm.as_str()] {
        let link = lib.join(link_name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&libllvm), &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok(prefix)
}
