//! Rows where a cost shows at full speed (issue 15), each arm against alone, with a
//! second alone arm as the control and a bootstrap interval over rounds:
//!
//! - Redis at full speed: Debian's redis-server on the workload CPU, redis-benchmark (50
//!   clients, GET) on the tool CPU, requests per second. Redis makes a few syscalls per
//!   request, so a per-syscall probe shows here.
//! - Collateral: an untraced futex ping-pong on the workload CPU while each tool traces
//!   another process (a slow ping-pong on the tool CPU): what everyone else on the host
//!   pays for a tool's probes. Empty programs at the exact mode's tracepoints run as one
//!   more arm: the part of that cost that is the kernel's running a program there at all.
//!
//! Every arm runs once per round, in an order that rotates each round, and every tool is
//! started and stopped around its own window, as in the other rows. At the end, with
//! `kernel.bpf_stats_enabled` on, one more window per tool measures its probes' CPU per
//! request (per round trip in the collateral row): a figure this machine's noise does not
//! hide, where the throughput's control says a few percent cannot be resolved.

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use libc::{SIGUSR1, SIGUSR2};

use super::{
    ProbeCost, Proc, SETTLE, Settings, TOOL_CPU, ToolUsage, Variant, WARM_UP, WORKLOAD_CPU, group,
    latency::{MIN_ROUNDS_FOR_INTERVAL, RatioEstimate, median_ratio},
    median, min_max, pinned,
    service::{BpfStats, probe_stats},
    start_tool, stop_tool,
};

/// Budgets from issue 15 (losses against alone, medians).
const SAMPLED_REDIS_MAX_LOSS: f64 = 0.01;
const EXACT_REDIS_MAX_LOSS: f64 = 0.03;
const SAMPLED_COLLATERAL_MAX_LOSS: f64 = 0.01;
const EXACT_COLLATERAL_MAX_LOSS: f64 = 0.05;

/// redis-benchmark's clients, and requests per second of window asked of it (it runs a
/// request count, not a duration: about 110,000 GETs/s here).
const REDIS_CLIENTS: &str = "50";
const REDIS_REQUESTS_PER_SECOND: f64 = 100_000.0;
/// How long the row's processes may live: far beyond any run; the bench stops them.
const PROCESS_SECONDS: u32 = 3600;
/// The traced process of the collateral row: a ping-pong slow enough to be idle, busy
/// enough that every tool has something to report.
const COLLATERAL_TRACED_RATE: &str = "200";

/// One way to run a row's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Alone,
    Tool(Variant),
    /// A second alone arm: how far alone is from itself says what the others can resolve.
    Control,
}

/// The control sits between tools, not next to the first alone arm.
const ARMS: [Arm; 7] = [
    Arm::Alone,
    Arm::Tool(Variant::TracerSampled),
    Arm::Tool(Variant::Tracer),
    Arm::Tool(Variant::TracerNoWakers),
    Arm::Control,
    Arm::Tool(Variant::Offcputime),
    Arm::Tool(Variant::Bpftrace),
];

/// The collateral row's: also empty programs at the exact mode's tracepoints, for the part
/// of what an untraced process pays that is the kernel's running a program there at all.
const COLLATERAL_ARMS: [Arm; 8] = [
    Arm::Alone,
    Arm::Tool(Variant::TracerSampled),
    Arm::Tool(Variant::Tracer),
    Arm::Tool(Variant::TracerNoWakers),
    Arm::Control,
    Arm::Tool(Variant::EmptyPrograms),
    Arm::Tool(Variant::Offcputime),
    Arm::Tool(Variant::Bpftrace),
];

impl Arm {
    fn label(self) -> String {
        match self {
            Arm::Alone => "alone".to_string(),
            Arm::Control => "alone again (control)".to_string(),
            Arm::Tool(variant) => variant.label(),
        }
    }
}

/// Which row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    Redis,
    Collateral,
}

impl Row {
    pub fn key(self) -> &'static str {
        match self {
            Row::Redis => "redis",
            Row::Collateral => "collateral",
        }
    }

    fn arms(self) -> &'static [Arm] {
        match self {
            Row::Redis => &ARMS,
            Row::Collateral => &COLLATERAL_ARMS,
        }
    }

    /// What one unit of the row's work is.
    fn unit(self) -> &'static str {
        match self {
            Row::Redis => "request",
            Row::Collateral => "round trip",
        }
    }

    fn title(self) -> String {
        match self {
            Row::Redis => format!(
                "Redis at full speed (redis-server pinned, redis-benchmark -c {REDIS_CLIENTS} GET): requests per second"
            ),
            Row::Collateral => format!(
                "collateral: an untraced futex ping-pong while the tool traces another process (a ping-pong at {COLLATERAL_TRACED_RATE}/s): round trips per second"
            ),
        }
    }
}

/// One arm's throughput per round and its tool's usage per window; once it failed, why
/// (it is not run again).
struct ArmRuns {
    arm: Arm,
    rates: Vec<f64>,
    /// Redis: the server's own CPU per request, in nanoseconds, per round. redis-benchmark
    /// is the bottleneck here (94% of its CPU against the server's 69%), so throughput
    /// shows what the client loses; this is what the server pays.
    server_ns_per_request: Vec<f64>,
    usages: Vec<ToolUsage>,
    /// Why the arm ran no round (its tool does not run here).
    failure: Option<String>,
    /// Why it stopped after rounds that ran (they stand: its rates stay a prefix of the
    /// rounds, paired with alone's by index).
    stopped: Option<String>,
    /// The probes' CPU per unit of work, from the bpf_stats window (tools only).
    probe_cost: Option<Result<ProbeCost, String>>,
}

/// One window's results.
struct Window {
    rate: f64,
    /// Redis: the server's CPU per request.
    server_ns: Option<f64>,
    usage: Option<ToolUsage>,
    /// With `measure_probes`: the probes' run time (ns) and runs in the window, and the
    /// requests or round trips it held.
    probes: Option<(u64, u64, f64)>,
}

/// Every arm's runs.
pub struct RowResult {
    row: Row,
    runs: Vec<ArmRuns>,
}

pub fn run(settings: &Settings, row: Row, rounds: u32) -> anyhow::Result<RowResult> {
    let mut fixture = Fixture::start(settings, row)?;
    let arms = row.arms();
    let mut runs: Vec<ArmRuns> = arms
        .iter()
        .map(|&arm| ArmRuns {
            arm,
            rates: Vec::new(),
            server_ns_per_request: Vec::new(),
            usages: Vec::new(),
            failure: None,
            stopped: None,
            probe_cost: None,
        })
        .collect();
    for round in 0..rounds as usize {
        for offset in 0..arms.len() {
            let index = (round + offset) % arms.len();
            let ArmRuns { arm, rates, server_ns_per_request, usages, failure, stopped, .. } =
                &mut runs[index];
            // An arm whose tool does not run here, or hung, is not retried.
            if failure.is_some() || stopped.is_some() {
                continue;
            }
            match fixture.window(settings, *arm, false) {
                Ok(Window { rate, server_ns, usage, .. }) => {
                    server_ns_per_request.extend(server_ns);
                    println!(
                        "bench: {} round {}/{rounds}: {}: {}/s",
                        row.key(),
                        round + 1,
                        arm.label(),
                        group(rate)
                    );
                    rates.push(rate);
                    usages.extend(usage);
                }
                Err(err) => {
                    println!(
                        "bench: {} round {}/{rounds}: {}: failed: {err:#}",
                        row.key(),
                        round + 1,
                        arm.label()
                    );
                    if rates.is_empty() {
                        *failure = Some(format!("{err:#}"));
                    } else {
                        *stopped = Some(format!(
                            "stopped after {} of {rounds} rounds: round {} failed: {}",
                            rates.len(),
                            round + 1,
                            super::one_line(&format!("{err:#}"))
                        ));
                    }
                }
            }
        }
    }
    measure_probe_costs(settings, &mut fixture, &mut runs);
    Ok(RowResult { row, runs })
}

/// One more window per tool that ran, with bpf_stats on (it adds two clock reads to every
/// program run, so it stays off for the measured rounds).
fn measure_probe_costs(settings: &Settings, fixture: &mut Fixture, runs: &mut [ArmRuns]) {
    let stats = BpfStats::enable();
    for run in runs.iter_mut() {
        let Arm::Tool(variant) = run.arm else { continue };
        if run.failure.is_some() {
            continue;
        }
        let cost = match &stats {
            Err(err) => Err(err.clone()),
            Ok(_) => match fixture.window(settings, run.arm, true) {
                Ok(Window { probes: Some((run_ns, program_runs, units)), .. }) if units > 0.0 => {
                    Ok(ProbeCost {
                        ns_per_unit: run_ns as f64 / units,
                        runs_per_unit: program_runs as f64 / units,
                    })
                }
                Ok(_) => Err("no program run times to read, or no work done".into()),
                Err(err) => Err(format!("{err:#}")),
            },
        };
        if let Ok(cost) = &cost {
            println!(
                "bench: {} probe cost: {}: {:.0} ns per {}",
                fixture.row.key(),
                variant.label(),
                cost.ns_per_unit,
                fixture.row.unit()
            );
        }
        run.probe_cost = Some(cost);
    }
}

/// The processes a row keeps across its windows.
struct Fixture {
    row: Row,
    /// The process every tool traces: redis-server, or the slow ping-pong.
    traced: Proc,
    redis_port: u16,
}

impl Fixture {
    fn start(settings: &Settings, row: Row) -> anyhow::Result<Self> {
        let cap = PROCESS_SECONDS.to_string();
        let (traced, redis_port) = match row {
            Row::Redis => {
                let port = free_port()?;
                let server = Proc::spawn(
                    "redis-server",
                    pinned(WORKLOAD_CPU, Path::new("redis-server")).args([
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ]),
                )
                .context("cannot start redis-server (Debian package redis-server)")?;
                wait_for_redis(port)?;
                // A key to GET, so that each request reads a value.
                run_quiet(Command::new("redis-cli").args([
                    "-p",
                    &port.to_string(),
                    "set",
                    "key:__rand_int__",
                    "x",
                ]))?;
                (server, port)
            }
            Row::Collateral => {
                let mut traced = Proc::spawn(
                    "slow ping-pong",
                    pinned(TOOL_CPU, &settings.release.join("ping-pong")).args([
                        "futex",
                        "--rate",
                        COLLATERAL_TRACED_RATE,
                        "--seconds",
                        &cap,
                    ]),
                )?;
                // It says nothing until it ends; give its players time to start.
                thread::sleep(WARM_UP);
                if let Some((status, _)) = traced.try_wait()? {
                    bail!("the slow ping-pong exited ({status:#x}): {}", traced.stderr_tail());
                }
                (traced, 0)
            }
        };
        thread::sleep(WARM_UP);
        Ok(Self { row, traced, redis_port })
    }

    /// One window of `arm`: its throughput, the Redis server's CPU per request, the tool's
    /// usage when a tool ran, and with `measure_probes` its programs' run times.
    fn window(
        &mut self,
        settings: &Settings,
        arm: Arm,
        measure_probes: bool,
    ) -> anyhow::Result<Window> {
        // The collateral row's measured ping-pong is fresh each window, as in the
        // ping-pong rows; it is never traced.
        let mut measured = match self.row {
            Row::Redis => None,
            Row::Collateral => {
                let mut command = pinned(WORKLOAD_CPU, &settings.release.join("ping-pong"));
                let cap = PROCESS_SECONDS.to_string();
                let command = command.args(["futex", "--window", "--seconds", &cap]);
                let mut measured = Proc::spawn("ping-pong", command)?;
                measured.wait_stdout_line(|l| l == "ready", Duration::from_secs(10))?;
                thread::sleep(WARM_UP);
                Some(measured)
            }
        };
        let mut tool = match arm {
            Arm::Tool(variant) => Some(start_tool(settings, variant, self.traced.pid)?),
            Arm::Alone | Arm::Control => None,
        };
        let attached_at = Instant::now();
        thread::sleep(SETTLE);
        let cpu_before = tool.as_ref().map_or(0, |t| t.cpu_ns());
        let probes_before = tool.as_ref().filter(|_| measure_probes).map(|t| probe_stats(t.pid));
        let opened = Instant::now();
        let server_cpu_before = self.traced.cpu_ns();
        let mut server_ns = None;
        let mut units = 0.0;
        let rate = match &mut measured {
            None => {
                let (rate, requests) = redis_benchmark(self.redis_port, settings.seconds)?;
                let server_cpu = self.traced.cpu_ns().saturating_sub(server_cpu_before);
                server_ns = Some(server_cpu as f64 / requests as f64);
                units = requests as f64;
                rate
            }
            Some(measured) => {
                measured.signal(SIGUSR1);
                thread::sleep(Duration::from_secs_f64(settings.seconds));
                measured.signal(SIGUSR2);
                let line = measured
                    .wait_stdout_line(|l| l.starts_with("futex "), Duration::from_secs(30))?;
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("cannot read the ping-pong's result {line:?}"))?
            }
        };
        let window_ns = opened.elapsed().as_nanos() as f64;
        if measured.is_some() {
            units = rate * window_ns / 1e9;
        }
        let probes = match (&tool, probes_before) {
            (Some(tool), Some((ns_before, runs_before))) => {
                let (ns, runs) = probe_stats(tool.pid);
                Some((ns.saturating_sub(ns_before), runs.saturating_sub(runs_before), units))
            }
            _ => None,
        };
        let usage = match &mut tool {
            None => None,
            Some(tool) => {
                let share = tool.cpu_ns().saturating_sub(cpu_before) as f64 / window_ns;
                Some(stop_tool(tool, attached_at.elapsed(), share)?)
            }
        };
        Ok(Window { rate, server_ns, usage, probes })
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.row == Row::Redis {
            let _ = run_quiet(Command::new("redis-cli").args([
                "-p",
                &self.redis_port.to_string(),
                "shutdown",
                "nosave",
            ]));
        }
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("no free port")?;
    Ok(listener.local_addr()?.port())
}

fn wait_for_redis(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!("redis-server did not listen on port {port} within 10 s")
}

fn run_quiet(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("cannot run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// GETs per second redis-benchmark reaches in about `seconds`, on the tool CPU, and the
/// requests it made.
fn redis_benchmark(port: u16, seconds: f64) -> anyhow::Result<(f64, u64)> {
    let requests = (REDIS_REQUESTS_PER_SECOND * seconds).ceil() as u64;
    let output = pinned(TOOL_CPU, Path::new("redis-benchmark"))
        .args(["-p", &port.to_string(), "-c", REDIS_CLIENTS, "-n", &requests.to_string()])
        .args(["-t", "get", "--csv"])
        .output()
        .context("cannot run redis-benchmark (Debian package redis-tools)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // `"GET","108499.09","0.257",...` after a header line.
    let rate = text
        .lines()
        .find_map(|line| {
            let mut fields = line.split(',').map(|f| f.trim_matches('"'));
            (fields.next()? == "GET").then(|| fields.next()?.parse().ok())?
        })
        .with_context(|| format!("no GET rate in redis-benchmark's output: {text}"))?;
    Ok((rate, requests))
}

impl RowResult {
    fn rates(&self, arm: Arm) -> &[f64] {
        self.runs.iter().find(|run| run.arm == arm).map_or(&[], |run| &run.rates)
    }

    /// The arm's median against alone's, with its interval.
    fn against_alone(&self, arm: Arm) -> Option<RatioEstimate> {
        median_ratio(self.rates(Arm::Alone), self.rates(arm))
    }

    fn server_cost(&self, arm: Arm) -> &[f64] {
        self.runs.iter().find(|run| run.arm == arm).map_or(&[], |run| &run.server_ns_per_request)
    }

    /// The Redis server's CPU per request against alone's, with its interval.
    fn server_cost_against_alone(&self, arm: Arm) -> Option<RatioEstimate> {
        median_ratio(self.server_cost(Arm::Alone), self.server_cost(arm))
    }

    pub fn table(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## {}\n", self.row.title());
        let _ = writeln!(
            md,
            "Medians over rounds; the interval is a 95% bootstrap over rounds (paired by round) \
             of the median against alone's, given from {MIN_ROUNDS_FOR_INTERVAL} rounds. The \
             control's distance from 1 is what this machine can resolve.\n"
        );
        let _ = writeln!(
            md,
            "| variant | median /s | min–max /s | vs alone (95% interval) | server CPU per request (vs alone, 95% interval) | tool CPU (window) | waits/s seen |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        for ArmRuns { arm, rates, server_ns_per_request, usages, failure, .. } in &self.runs {
            if let Some(failure) = failure {
                let _ = writeln!(
                    md,
                    "| {} | failed: {} | | | | | |",
                    arm.label(),
                    super::one_line(failure)
                );
                continue;
            }
            if rates.is_empty() {
                continue;
            }
            let rate = median(rates.iter().copied());
            let (low, high) = min_max(rates.iter().copied());
            let versus = match arm {
                Arm::Alone => "1.000".to_string(),
                _ => self.against_alone(*arm).map_or("–".into(), |e| estimate_text(&e)),
            };
            let cpu = if usages.is_empty() {
                "–".to_string()
            } else {
                format!(
                    "{:.2}% of a core",
                    100.0 * median(usages.iter().map(|u| u.window_cpu_share))
                )
            };
            let server = if server_ns_per_request.is_empty() {
                "–".to_string()
            } else {
                let ns = median(server_ns_per_request.iter().copied());
                match arm {
                    Arm::Alone => format!("{:.2} µs", ns / 1000.0),
                    _ => self.server_cost_against_alone(*arm).map_or("–".into(), |e| {
                        format!("{:.2} µs ({})", ns / 1000.0, estimate_text(&e))
                    }),
                }
            };
            let seen: Vec<f64> = usages.iter().filter_map(|u| u.waits_per_second).collect();
            let seen = if seen.is_empty() { "–".into() } else { group(median(seen.into_iter())) };
            let _ = writeln!(
                md,
                "| {} | {} | {}–{} | {versus} | {server} | {cpu} | {seen} |",
                arm.label(),
                group(rate),
                group(low),
                group(high)
            );
        }
        md.push('\n');
        let stopped: Vec<String> = (self.runs.iter())
            .filter_map(|run| Some(format!("- {}: {}\n", run.arm.label(), run.stopped.as_ref()?)))
            .collect();
        if !stopped.is_empty() {
            md += &stopped.concat();
            md.push('\n');
        }
        md += &self.probe_cost_lines();
        md
    }

    /// The probes' CPU per unit of work, one line per tool, and for Redis as a share of
    /// the server's own CPU per request alone.
    fn probe_cost_lines(&self) -> String {
        let unit = self.row.unit();
        let mut md = format!(
            "The probes' CPU per {unit} (bpf_stats, one more window per tool; its own clock \
             reads add to every program run, about 57 ns each on this machine's VM):\n\n"
        );
        let alone_server_ns = (!self.server_cost(Arm::Alone).is_empty())
            .then(|| median(self.server_cost(Arm::Alone).iter().copied()));
        for run in &self.runs {
            let Some(cost) = &run.probe_cost else { continue };
            let text = match cost {
                Err(err) => format!("not measured: {}", super::one_line(err)),
                Ok(cost) => {
                    let share = alone_server_ns.map_or(String::new(), |server| {
                        format!(
                            ", {:.1}% of the server's own CPU per request alone",
                            100.0 * cost.ns_per_unit / server
                        )
                    });
                    format!(
                        "{:.0} ns ({:.1} program runs){share}",
                        cost.ns_per_unit, cost.runs_per_unit
                    )
                }
            };
            let _ = writeln!(md, "- {}: {text}", run.arm.label());
        }
        md.push('\n');
        md
    }

    /// The budgets for this row, one line each.
    pub fn budget_lines(&self) -> String {
        let loss = |arm| self.against_alone(arm).map(|e| 1.0 - e.ratio);
        let control =
            loss(Arm::Control).map_or(String::new(), |l| format!("; control {:+.1}%", -l * 100.0));
        // A verdict needs this machine to resolve the budget (the control, alone against
        // alone, within it on both sides) and the arm's interval on one side of it:
        // within when even its worst loss is inside, OVER when even its best is past.
        // Without intervals (too few rounds), the medians decide.
        let control_spread = self.against_alone(Arm::Control).map(|control| {
            if control.high.is_infinite() {
                (control.ratio - 1.0).abs()
            } else {
                (1.0 - control.low).max(control.high - 1.0)
            }
        });
        let line = |what: &str, arm: Arm, budget: f64, extra: Option<(f64, &str)>| {
            let Some(estimate) = self.against_alone(arm) else {
                return format!("- {what}: no result\n");
            };
            let loss = 1.0 - estimate.ratio;
            let (best, worst) = if estimate.high.is_infinite() {
                (loss, loss)
            } else {
                (1.0 - estimate.high, 1.0 - estimate.low)
            };
            let mut against = String::new();
            let mut peer_ok = true;
            if let Some((peer_loss, peer)) = extra {
                peer_ok = loss <= peer_loss;
                let _ = write!(against, ", and no more than {peer}'s {:.1}%", peer_loss * 100.0);
            }
            let verdict = match control_spread {
                Some(spread) if spread > budget => {
                    "UNRESOLVED (alone against alone differs by more than the budget here)"
                }
                _ if !peer_ok || best > budget => "OVER",
                _ if worst <= budget => "within",
                _ => "UNRESOLVED (the interval spans the budget)",
            };
            // What the acceptance reads: the medians alone.
            let by_medians = if peer_ok && loss <= budget { "within" } else { "OVER" };
            format!(
                "- {what}: {:.1}% lost (budget {:.0}%{against}{control}): {verdict}; by the \
                 medians: {by_medians}\n",
                loss * 100.0,
                budget * 100.0,
            )
        };
        let sampled = Arm::Tool(Variant::TracerSampled);
        let exact = Arm::Tool(Variant::Tracer);
        let no_wakers = Arm::Tool(Variant::TracerNoWakers);
        match self.row {
            Row::Redis => {
                let cost = |what: &str, arm: Arm| match self.server_cost_against_alone(arm) {
                    None => String::new(),
                    Some(e) => {
                        format!("- {what}: the server's CPU per request {}\n", estimate_text(&e))
                    }
                };
                line("Redis, sampled", sampled, SAMPLED_REDIS_MAX_LOSS, None)
                    + &line("Redis, exact", exact, EXACT_REDIS_MAX_LOSS, None)
                    + &line("Redis, exact --no-wakers", no_wakers, EXACT_REDIS_MAX_LOSS, None)
                    + &cost("Redis, sampled", sampled)
                    + &cost("Redis, exact", exact)
                    + &cost("Redis, exact --no-wakers", no_wakers)
                    + &cost("Redis, offcputime", Arm::Tool(Variant::Offcputime))
                    + &cost("Redis, control", Arm::Control)
            }
            Row::Collateral => {
                let offcputime = loss(Arm::Tool(Variant::Offcputime)).map(|l| (l, "offcputime"));
                line("untraced ping-pong, sampled", sampled, SAMPLED_COLLATERAL_MAX_LOSS, None)
                    + &line(
                        "untraced ping-pong, exact",
                        exact,
                        EXACT_COLLATERAL_MAX_LOSS,
                        offcputime,
                    )
                    + &line(
                        "untraced ping-pong, exact --no-wakers",
                        no_wakers,
                        EXACT_COLLATERAL_MAX_LOSS,
                        offcputime,
                    )
                    + &self.kernel_part_line()
            }
        }
    }
}

impl RowResult {
    /// What the empty programs at the exact mode's tracepoints cost the untraced ping-pong,
    /// beside the exact mode: how much of its cost is the kernel's, not its code's.
    fn kernel_part_line(&self) -> String {
        let Some(empty) = self.against_alone(Arm::Tool(Variant::EmptyPrograms)) else {
            return String::new();
        };
        let exact = self
            .against_alone(Arm::Tool(Variant::Tracer))
            .map_or(String::new(), |e| format!("; exact {:.1}%", (1.0 - e.ratio) * 100.0));
        format!(
            "- untraced ping-pong, empty programs at {} (no budget: the kernel's part of \
             exact's cost, whatever its programs do): {:.1}% lost ({}){exact}\n",
            super::EXACT_MODE_TRACEPOINTS.join(", "),
            (1.0 - empty.ratio) * 100.0,
            empty.interval_text().as_deref().unwrap_or("too few rounds for an interval"),
        )
    }
}

fn estimate_text(estimate: &RatioEstimate) -> String {
    let interval = estimate.interval_text();
    format!(
        "{:.3} ({}; {})",
        estimate.ratio,
        estimate.change_text(),
        interval.as_deref().unwrap_or("too few rounds for an interval")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arm that ran `rates`, round by round.
    fn arm(arm: Arm, rates: &[f64]) -> ArmRuns {
        ArmRuns {
            arm,
            rates: rates.to_vec(),
            server_ns_per_request: Vec::new(),
            usages: Vec::new(),
            failure: None,
            stopped: None,
            probe_cost: None,
        }
    }

    #[test]
    fn a_budget_line_gives_the_medians_verdict_beside_the_intervals() {
        let alone = [100.0, 101.0, 99.0, 100.0, 102.0, 98.0];
        // Alone against alone within 1%: the 5% budget resolves here.
        let control = [100.5, 100.0, 99.5, 100.0, 101.0, 99.0];
        let result = RowResult {
            row: Row::Collateral,
            runs: vec![
                arm(Arm::Alone, &alone),
                arm(Arm::Control, &control),
                arm(Arm::Tool(Variant::Offcputime), &[97.0, 98.0, 96.0, 97.0, 99.0, 95.0]),
                // 2% lost, under offcputime's 3%: within by the intervals and the medians.
                arm(Arm::Tool(Variant::TracerNoWakers), &[98.0, 99.0, 97.0, 98.0, 100.0, 96.0]),
                // 6% lost: over 5% and over offcputime's, both ways.
                arm(Arm::Tool(Variant::Tracer), &[94.0, 95.0, 93.0, 94.0, 96.0, 92.0]),
                // 5% lost by empty programs: no verdict, only the figure beside exact's.
                arm(Arm::Tool(Variant::EmptyPrograms), &[95.0, 96.0, 94.0, 95.0, 97.0, 93.0]),
            ],
        };
        let lines = result.budget_lines();
        let line = |what: &str| {
            lines.lines().find(|line| line.starts_with(&format!("- {what}:"))).unwrap().to_owned()
        };
        let no_wakers = line("untraced ping-pong, exact --no-wakers");
        assert!(no_wakers.ends_with(": within; by the medians: within"), "{no_wakers}");
        let exact = line("untraced ping-pong, exact");
        assert!(exact.ends_with(": OVER; by the medians: OVER"), "{exact}");
        let kernel_part = lines
            .lines()
            .find(|line| line.starts_with("- untraced ping-pong, empty programs at sched_switch"))
            .unwrap();
        assert!(kernel_part.contains("): 5.0% lost ("), "{kernel_part}");
        assert!(kernel_part.ends_with("; exact 6.0%"), "{kernel_part}");
        // The sampled arm did not run: said so, with no verdict.
        assert_eq!(line("untraced ping-pong, sampled"), "- untraced ping-pong, sampled: no result");
    }
}
