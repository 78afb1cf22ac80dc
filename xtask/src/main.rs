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

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "Set-up, build, demo, tests and bench for tracer")]
enum Task {
    /// Install what a fresh machine lacks: Debian packages, the nightly's rust-src,
    /// bpf-linker 0.13 for LLVM 22. Idempotent.
    Setup,
    /// Set up, then build tracer (with its embedded probes) and the test workloads.
    Build,
    /// Build, then trace the built-in pile-up demo and print and write its reports.
    Demo {
        /// How long to record.
        #[arg(long, default_value = "5s")]
        duration: String,
    },
    /// Build, then run every test: unit tests and the real-kernel integration tests.
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
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build(&root)
        }
        Task::Demo { duration } => {
            setup::run()?;
            build(&root)?;
            demo(&root, &duration)
        }
        Task::Test { args } => {
            setup::run()?;
            build(&root)?;
            test(&root, &args)
        }
        Task::Bench(args) => {
            setup::run_with(&bench::DEBIAN_PACKAGES)?;
            build(&root)?;
            bench::run(&root, &target_dir(&root), &args)
        }
    }
}

fn workspace_root() -> PathBuf {
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
    run_command(
        Command::new(release.join("tracer"))
            .args(["record", "--pid", &pid, "--duration", duration])
            .arg("--output")
            .arg(&folded)
            .arg("--output")
            .arg(&svg),
    )?;
    println!("xtask: demo reports: {} and {}", folded.display(), svg.display());
    Ok(())
}
