//! `cargo xtask`: set-up, build, demo and tests for tracer. Every command that builds
//! runs `setup` first, so a fresh machine needs nothing but cargo.

mod bench;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Parser;
use setup::Need;

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Set-up, build, demo, tests and bench for tracer")]
enum Task {
    /// Install what a fresh machine lacks: Debian packages, the nightly's rust-src,
    /// bpf-linker 0.13 for LLVM 22, and for lint and tests rustfmt and clippy. Idempotent.
    Setup {
        /// The command to set up for (each installs only what it needs).
        #[arg(long = "for", value_enum, default_value = "test")]
        need: setup::Need,
    },
    /// Set up, then build tracer (with its embedded probes) and the test workloads.
    Build,
    /// Check formatting (rustfmt) and lints (clippy -D warnings) of every crate: the
    /// userspace crates on the active toolchain, the eBPF crate on nightly.
    Lint,
    /// Build, then trace the built-in pile-up demo and print and write its reports.
    Demo {
        /// How long to record.
        #[arg(long, default_value = "5s")]
        duration: String,
    },
    /// Build, lint, then run every test: unit tests and the real-kernel integration tests.
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build, then measure what tracing costs against offcputime and bpftrace (also
    /// installed, for the bench only) and write target/bench/results.md. As root.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    match run_task(Task::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> anyhow::Result<()> {
    let root = workspace_root();
    match task {
        Task::Setup { need } => setup::run(need),
        Task::Build => {
            setup::run(Need::Build)?;
            build(&root)
        }
        Task::Lint => {
            setup::run(Need::Lint)?;
            lint(&root)
        }
        Task::Demo { duration } => {
            setup::run(Need::Build)?;
            build(&root)?;
            demo(&root, &duration)
        }
        Task::Test { args } => {
            setup::run(Need::Test)?;
            build(&root)?;
            lint(&root)?;
            test(&root, &args)
        }
        Task::Bench(args) => {
            setup::run(Need::Bench)?;
            build(&root)?;
            bench::run(&root, &target_dir(&root), &args)
        }
    }
}

pub fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn build(root: &Path) -> anyhow::Result<()> {
    println!("xtask: building tracer and the test workloads (release)");
    run_command(cargo().current_dir(root).args([
        "build",
        "--release",
        "--package",
        "tracer",
        "--package",
        "tracer-tests",
    ]))
}

/// The userspace crates, linted together. The eBPF crate cannot join them: it builds
/// only for the BPF target, and its `panic_impl` would clash with std's.
const USERSPACE_PACKAGES: [&str; 4] = ["tracer", "tracer-common", "xtask", "tracer-tests"];

/// rustfmt --check over every crate, clippy -D warnings over the userspace crates, then
/// over the eBPF crate; runs all three and fails naming those that failed.
fn lint(root: &Path) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let mut check = |what: &'static str, command: &mut Command| {
        println!("xtask: lint: {what}");
        if let Err(err) = run_command(command) {
            eprintln!("xtask: lint: {err:#}");
            failed.push(what);
        }
    };
    // `--all` is every member, the eBPF crate too (not only the default members).
    check("rustfmt", cargo().current_dir(root).args(["fmt", "--all", "--", "--check"]));
    check(
        "clippy (userspace)",
        cargo()
            .current_dir(root)
            .arg("clippy")
            .args(USERSPACE_PACKAGES.iter().flat_map(|package| ["--package", package]))
            .args(["--all-targets", "--", "-D", "warnings"]),
    );
    // As tracer's build script (aya-build) builds it: nightly, core built for the target.
    check(
        "clippy (eBPF)",
        nightly_cargo(root)
            .args(["clippy", "--package", "tracer-ebpf", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
    );
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    println!("xtask: lint: clean");
    Ok(())
}

/// `cargo` of the nightly toolchain, whatever toolchain runs xtask.
fn nightly_cargo(root: &Path) -> Command {
    let mut command = Command::new("rustup");
    command.current_dir(root).args(["run", "nightly", "cargo"]);
    // As aya-build does: the outer cargo's rustc would be used otherwise.
    for key in ["CARGO", "RUSTC", "RUSTC_WORKSPACE_WRAPPER"] {
        command.env_remove(key);
    }
    command
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let tracer = target_dir(root).join("release/tracer");
    println!("xtask: running all tests (real-kernel tests trace {})", tracer.display());
    // Tests share kernel state (the probes attach machine-wide) and time: one at a time.
    run_command(
        cargo()
            .current_dir(root)
            .env("TRACER_BIN", &tracer)
            .args(["test", "--release", "--workspace", "--exclude", "tracer-ebpf"])
            .args(["--", "--test-threads=1"])
            .args(args),
    )
}

/// Kills the child when dropped, so the demo never leaves workloads behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pile-up from the story: many handler threads queue stats into a bounded channel
/// drained by one reporter, whose sends to a slow backend block.
fn demo(root: &Path, duration: &str) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};

    const HANDLERS: &str = "64";
    let release = target_dir(root).join("release");
    let out_dir = target_dir(root).join("demo");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;

    let mut backend = KillOnDrop(
        Command::new(release.join("slow-backend"))
            .args(["--seconds", "600"])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start slow-backend")?,
    );
    let backend_out = backend.0.stdout.take().context("slow-backend has no stdout")?;
    let mut port = String::new();
    BufReader::new(backend_out).read_line(&mut port).context("slow-backend printed no port")?;
    let port = port.trim();

    let mut pileup = KillOnDrop(
        Command::new(release.join("rust-pileup"))
            .args(["--backend", &format!("127.0.0.1:{port}")])
            .args(["--handlers", HANDLERS, "--seconds", "600"])
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start rust-pileup")?,
    );
    let pileup_out = pileup.0.stdout.take().context("rust-pileup has no stdout")?;
    let mut ready = String::new();
    BufReader::new(pileup_out).read_line(&mut ready).context("rust-pileup never got ready")?;
    // Let the channel fill and the send buffer clog before recording.
    std::thread::sleep(Duration::from_millis(500));

    let pid = pileup.0.id().to_string();
    println!(
        "xtask: demo: rust-pileup (pid {pid}, {HANDLERS} handlers) behind a backend that \
         drains slowly; recording {duration}"
    );
    let folded = out_dir.join("waits.folded");
    let svg = out_dir.join("waits.svg");
    let towers = out_dir.join("waits.chains.svg");
    run_command(
        Command::new(release.join("tracer"))
            .args(["record", "--pid", &pid, "--duration", duration])
            .arg("--output")
            .arg(&folded)
            .arg("--output")
            .arg(&svg)
            .arg("--output")
            .arg(&towers),
    )?;
    println!(
        "xtask: demo reports: {}, {} and {} (each wait chain as one tower)",
        folded.display(),
        svg.display(),
        towers.display()
    );
    Ok(())
}
