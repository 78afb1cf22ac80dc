//! The Python rows of the bench (issue 20).
//!
//! - A CPython pile-up of 1,000 threads (the tests' `pypileup.py`: handlers blocked on a
//!   full `queue.Queue`): `tracer snapshot`'s time, CPU and peak memory, beside `py-spy
//!   dump` of the same process, which reads the same frames (and no waits).
//! - A CPU-bound Python service at full speed (`pycpu.py`: 4 worker threads handling
//!   requests in pure Python, pinned to one CPU, so any cost shows as fewer requests per
//!   second): alone, under `tracer record` (sampled, the default for a CPython process),
//!   and under `py-spy record --nonblocking` at the same rate; alternating, the order
//!   rotating each round.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use libc::{SIGINT, SIGUSR1, SIGUSR2};

use super::{
    ATTACH_TIMEOUT, PILEUP_TIMEOUT, Proc, STOP_TIMEOUT, Settings, TOOL_CPU, WORKLOAD_CPU,
    exited_ok, group, median, min_max, pinned, ratio_text,
};

/// Debian's CPython 3.11 (`cargo xtask setup --for bench` installs it).
const PYTHON: &str = "/usr/bin/python3.11";
const PILEUP_THREADS: u32 = 1_000;
const SERVICE_WORKERS: &str = "4";
/// The sampled recording's default rate, given to py-spy too.
const RATE_HZ: &str = "49";
const WARM_UP: Duration = Duration::from_secs(1);
/// Quiet time after a tool has exited and before the next window.
const GAP: Duration = Duration::from_millis(300);

/// py-spy, from PyPI (`cargo xtask setup` installs it).
pub fn py_spy() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let py_spy = PathBuf::from(home).join(".local/share/tracer/py-spy/bin/py-spy");
    if !py_spy.is_file() {
        bail!("no {} (cargo xtask setup --for bench installs it)", py_spy.display());
    }
    Ok(py_spy)
}

/// The pile-up row: `tracer snapshot` and `py-spy dump` of 1,000 blocked Python threads.
pub fn run_pileup(root: &Path, settings: &Settings, rounds: u32) -> anyhow::Result<String> {
    let py_spy = py_spy()?;
    let source = root.join("tests/workloads/pypileup.py");
    println!("bench: python pile-up: starting {PILEUP_THREADS} handler threads");
    let mut pileup = Proc::spawn(
        "pypileup",
        pinned(WORKLOAD_CPU, Path::new(PYTHON))
            .arg(&source)
            .arg(PILEUP_THREADS.to_string())
            .arg((PILEUP_TIMEOUT.as_secs() * (2 + u64::from(rounds))).to_string()),
    )?;
    pileup.wait_stdout_line(|line| line.starts_with("ready"), PILEUP_TIMEOUT)?;
    // The handlers fill the queue and block within a second of starting.
    thread::sleep(Duration::from_secs(3));
    let pid = pileup.pid.to_string();
    let tracer = settings.release.join("tracer");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut summary = None;
    for round in 1..=rounds {
        let mut snapshot = pinned(TOOL_CPU, &tracer);
        let (wall, usage, out) =
            timed("tracer snapshot", snapshot.args(["snapshot", "--pid", &pid]))?;
        // The call-site table's row of the handlers.
        summary = out.into_iter().find(|line| {
            line.trim_start().starts_with(|c: char| c.is_ascii_digit())
                && line.contains("report_stat")
        });
        ours.push((wall, usage));
        let mut dump = pinned(TOOL_CPU, &py_spy);
        let (wall, usage, _) = timed("py-spy dump", dump.args(["dump", "--pid", &pid]))?;
        theirs.push((wall, usage));
        println!(
            "bench: python pile-up round {round}/{rounds}: snapshot {:.3} s, py-spy dump {:.3} s",
            ours[ours.len() - 1].0.as_secs_f64(),
            wall.as_secs_f64()
        );
    }
    let mut md = String::new();
    let _ = writeln!(md, "## CPython pile-up of {PILEUP_THREADS} blocked threads\n");
    let _ = writeln!(md, "Debian's CPython 3.11, {rounds} rounds, median (min–max).\n");
    let _ = writeln!(md, "| | wall | CPU | peak RSS |");
    let _ = writeln!(md, "|---|---|---|---|");
    let base = median(theirs.iter().map(|(wall, _)| wall.as_secs_f64()));
    for (label, runs) in [("tracer snapshot", &ours), ("py-spy dump (frames only)", &theirs)] {
        let walls = || runs.iter().map(|(wall, _)| wall.as_secs_f64());
        let (lo, hi) = min_max(walls());
        let cpu = median(runs.iter().map(|(_, usage)| usage.cpu.as_secs_f64()));
        let rss = median(runs.iter().map(|(_, usage)| usage.max_rss_kib as f64)) / 1024.0;
        let _ = writeln!(
            md,
            "| {label} | {:.3} s ({lo:.3}–{hi:.3}), {} of py-spy's | {cpu:.3} s | {rss:.0} MiB |",
            median(walls()),
            ratio_text(median(walls()), base),
        );
    }
    if let Some(summary) = summary {
        let _ = writeln!(md, "\nThe snapshot's row of the handlers: `{}`", summary.trim());
    }
    md.push('\n');
    Ok(md)
}

/// Runs `command` to its end: its wall time, resource use and stdout.
fn timed(
    what: &str,
    command: &mut std::process::Command,
) -> anyhow::Result<(Duration, super::Usage, Vec<String>)> {
    let started = Instant::now();
    let mut run = Proc::spawn(what, command)?;
    let (status, usage) = run.wait(PILEUP_TIMEOUT)?;
    let wall = started.elapsed();
    if !exited_ok(status) {
        bail!("{what} ended with wait status {status:#x}: {}", run.stderr_tail());
    }
    Ok((wall, usage, run.stdout_lines()))
}

/// One way to run the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Alone,
    Tracer,
    PySpy,
}

impl Arm {
    const ALL: [Arm; 3] = [Arm::Alone, Arm::Tracer, Arm::PySpy];

    fn label(self) -> &'static str {
        match self {
            Arm::Alone => "alone",
            Arm::Tracer => "tracer record (sampled, default)",
            Arm::PySpy => "py-spy record --nonblocking",
        }
    }
}

/// The service row: requests per second of a CPU-bound Python service, alone and under
/// each tool, `rounds` alternating rounds.
pub fn run_service(
    root: &Path,
    settings: &Settings,
    out_dir: &Path,
    rounds: u32,
) -> anyhow::Result<String> {
    let py_spy = py_spy()?;
    let source = root.join("tests/workloads/pycpu.py");
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); Arm::ALL.len()];
    let mut tool_cpu: Vec<Vec<f64>> = vec![Vec::new(); Arm::ALL.len()];
    for round in 0..rounds {
        for offset in 0..Arm::ALL.len() {
            let index = (round as usize + offset) % Arm::ALL.len();
            let arm = Arm::ALL[index];
            let (rate, cpu_share) = service_window(settings, &source, &py_spy, out_dir, arm)?;
            println!(
                "bench: python service round {}/{rounds}: {}: {}/s",
                round + 1,
                arm.label(),
                group(rate)
            );
            rates[index].push(rate);
            if let Some(share) = cpu_share {
                tool_cpu[index].push(share);
            }
            thread::sleep(GAP);
        }
    }
    let mut md = String::new();
    let _ = writeln!(md, "## CPU-bound Python service at full speed\n");
    let _ = writeln!(
        md,
        "Debian's CPython 3.11, {SERVICE_WORKERS} worker threads handling requests in pure \
         Python on CPU {WORKLOAD_CPU}, tools on CPU {TOOL_CPU}, both tools at {RATE_HZ} Hz; \
         {rounds} alternating rounds of {} s, median (min–max).\n",
        settings.seconds
    );
    let _ = writeln!(md, "| | requests/s | vs alone | tool CPU |");
    let _ = writeln!(md, "|---|---|---|---|");
    let alone = median(rates[0].iter().copied());
    for (index, arm) in Arm::ALL.iter().enumerate() {
        let rate = median(rates[index].iter().copied());
        let (lo, hi) = min_max(rates[index].iter().copied());
        let cpu = if tool_cpu[index].is_empty() {
            "–".to_owned()
        } else {
            format!("{:.1}%", 100.0 * median(tool_cpu[index].iter().copied()))
        };
        let _ = writeln!(
            md,
            "| {} | {} ({}–{}) | {} | {cpu} |",
            arm.label(),
            group(rate),
            group(lo),
            group(hi),
            ratio_text(rate, alone),
        );
    }
    md.push('\n');
    Ok(md)
}

/// One measured window of the service under `arm`: its requests per second and the
/// tool's CPU share over the window.
fn service_window(
    settings: &Settings,
    source: &Path,
    py_spy: &Path,
    out_dir: &Path,
    arm: Arm,
) -> anyhow::Result<(f64, Option<f64>)> {
    let cap = format!("{}", settings.seconds + 300.0);
    let mut service = Proc::spawn(
        "pycpu",
        pinned(WORKLOAD_CPU, Path::new(PYTHON)).arg(source).args([SERVICE_WORKERS, &cap]),
    )?;
    service.wait_stdout_line(|line| line == "ready", Duration::from_secs(10))?;
    thread::sleep(WARM_UP);
    let pid = service.pid.to_string();
    let duration = format!("{}", (settings.seconds + 300.0).ceil() as u64);
    let mut tool = match arm {
        Arm::Alone => None,
        Arm::Tracer => {
            let mut tool = Proc::spawn(
                "tracer record",
                pinned(TOOL_CPU, &settings.release.join("tracer"))
                    .args(["record", "--pid", &pid, "--rate", RATE_HZ])
                    .args(["--duration", &format!("{duration}s"), "--output"])
                    .arg(out_dir.join("python-service.json")),
            )?;
            let started = Instant::now();
            while !tool.stderr.iter().any(|line| line.starts_with("tracer: recording")) {
                tool.collect_output();
                if started.elapsed() > ATTACH_TIMEOUT {
                    bail!("tracer record did not start: {}", tool.stderr_tail());
                }
                thread::sleep(Duration::from_millis(5));
            }
            Some(tool)
        }
        Arm::PySpy => {
            let tool = Proc::spawn(
                "py-spy record",
                pinned(TOOL_CPU, py_spy)
                    .args(["record", "--nonblocking", "--rate", RATE_HZ, "--pid", &pid])
                    .args(["--duration", &duration, "--output"])
                    .arg(out_dir.join("python-service.py-spy.svg")),
            )?;
            // py-spy says nothing when it starts sampling: give it a moment to attach.
            thread::sleep(Duration::from_millis(500));
            Some(tool)
        }
    };
    thread::sleep(Duration::from_millis(300));
    let cpu_before = tool.as_ref().map_or(0, |tool| tool.cpu_ns());
    service.signal(SIGUSR1);
    let opened = Instant::now();
    thread::sleep(Duration::from_secs_f64(settings.seconds));
    service.signal(SIGUSR2);
    let window_ns = opened.elapsed().as_nanos() as f64;
    let cpu_share =
        tool.as_ref().map(|tool| tool.cpu_ns().saturating_sub(cpu_before) as f64 / window_ns);
    let line =
        service.wait_stdout_line(|line| line.starts_with("python "), Duration::from_secs(30))?;
    let rate: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|rate| rate.parse().ok())
        .with_context(|| format!("cannot read the service's result {line:?}"))?;
    if let Some(tool) = tool.as_mut() {
        tool.signal(SIGINT);
        let (status, _) = tool.wait(STOP_TIMEOUT)?;
        if !exited_ok(status) {
            bail!("{} ended with wait status {status:#x}: {}", arm.label(), tool.stderr_tail());
        }
    }
    service.signal(libc::SIGKILL);
    let _ = service.wait(Duration::from_secs(10));
    Ok((rate, cpu_share))
}
