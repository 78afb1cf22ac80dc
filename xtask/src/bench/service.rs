//! The realistic service of the bench: a thread-pool HTTP server with a blocking backend
//! call per request, under a load generator at a fixed rate, and what each tool does to its
//! throughput and latency.
//!
//! One service and one load generator run for the whole measurement, as a live service
//! would; the tools attach and detach in turn around short windows, in a rotating order
//! (round 1: A B C D E, round 2: B C D E A, …), so that the machine's drift lands on every
//! variant alike. Each window's latencies are pooled per variant (see `latency.rs`). One
//! variant is a second set of alone windows: comparing it with the first shows how far
//! two runs of the same thing differ here, the noise floor of every comparison.
//!
//! At the end, with `kernel.bpf_stats_enabled` on (it adds two clock reads per program run,
//! so it stays off for the windows above), one more window per tool measures the CPU time
//! its probes spend per request: the in-kernel cost, which the tool's own CPU time omits.

use std::{
    fmt::Write as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use libc::{SIGUSR1, SIGUSR2};

use super::{
    HTTP_CONNECTIONS, Proc, SERVICE_MAX_LOSS, SETTLE, Settings, TOOL_CPU, ToolUsage, Variant,
    Verdict, WORKLOAD_CPU, group, median, min_max, pinned, start_tool, stop_tool,
};
use crate::bench::latency::{Histogram, RatioEstimate, percentile_ratio, pooled};

/// Time for the service to reach its steady state before the first window.
const WARM_UP: Duration = Duration::from_secs(1);
/// Quiet time after a tool has exited and before the next one attaches.
const GAP: Duration = Duration::from_millis(300);
/// Bootstrap resamples behind each confidence interval.
const RESAMPLES: u32 = 1000;
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` set for as long as this lives, then back to what it was: on,
/// it adds two clock reads to every program run, so only the probe-cost windows have it.
pub(super) struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub(super) fn enable() -> Result<Self, String> {
        Self::set("1")
    }

    /// Off for the timed windows, however the machine was left (a run stopped inside its
    /// probe-cost windows leaves it on, and every later run would time the clock reads).
    /// Says whether it was on.
    pub(super) fn disable() -> Result<(Self, bool), String> {
        let guard = Self::set("0")?;
        let was_on = guard.previous.trim() == "1";
        Ok((guard, was_on))
    }

    fn set(value: &str) -> Result<Self, String> {
        let previous = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
        std::fs::write(BPF_STATS, value)
            .map_err(|err| format!("cannot write {value} to {BPF_STATS}: {err}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let previous = self.previous.trim();
        let _ = std::fs::write(BPF_STATS, if previous.is_empty() { "0" } else { previous });
    }
}

/// One arm of the comparison: a variant, or the second set of alone windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Run(Variant),
    Control,
}

impl Arm {
    fn label(self) -> String {
        match self {
            Arm::Run(variant) => variant.label(),
            Arm::Control => "alone again (control)".to_string(),
        }
    }

    fn variant(self) -> Variant {
        match self {
            Arm::Run(variant) => variant,
            Arm::Control => Variant::Alone,
        }
    }
}

/// The control sits between tools, not next to the first alone arm.
const ARMS: [Arm; 5] = [
    Arm::Run(Variant::Alone),
    Arm::Run(Variant::Tracer),
    Arm::Run(Variant::Offcputime),
    Arm::Control,
    Arm::Run(Variant::Bpftrace),
];

/// One measured window.
struct Window {
    /// Responses per second.
    throughput: f64,
    /// Requests due in the window and still unanswered when it was read.
    unanswered: u64,
    latencies: Histogram,
    tool: Option<ToolUsage>,
}

impl Window {
    /// The window's own p99, from its histogram.
    fn p99_us(&self) -> f64 {
        self.latencies.percentile(0.99).unwrap_or(f64::NAN)
    }
}

/// What the probes of one tool cost per request (from bpf_stats).
struct ProbeCost {
    ns_per_request: f64,
    runs_per_request: f64,
}

pub struct ServiceResult {
    arms: Vec<(Arm, Result<Vec<Window>, String>)>,
    probe_costs: Vec<(Variant, Result<ProbeCost, String>)>,
    window_seconds: f64,
    rounds: u32,
    rate: f64,
}

/// The live service and its load generator.
struct Service {
    server: Proc,
    load: Proc,
}

impl Service {
    fn start(settings: &Settings, cap_seconds: f64) -> anyhow::Result<Self> {
        let cap = format!("{cap_seconds:.0}");
        let mut server = Proc::spawn(
            "http-service",
            pinned(WORKLOAD_CPU, &settings.release.join("http-service")).args([
                "--workers",
                HTTP_CONNECTIONS,
                "--seconds",
                &cap,
            ]),
        )?;
        let line = server.wait_stdout_line(|l| l.starts_with("port "), Duration::from_secs(10))?;
        let port = line.trim_start_matches("port ").trim().to_string();
        let mut load = Proc::spawn(
            "http-load",
            pinned(TOOL_CPU, &settings.release.join("http-load"))
                .args(["--port", &port, "--rate", &settings.http_rate.to_string()])
                .args(["--connections", HTTP_CONNECTIONS, "--seconds", &cap]),
        )?;
        load.wait_stdout_line(|l| l == "ready", Duration::from_secs(10))?;
        Ok(Self { server, load })
    }

    /// Attaches the variant's tool, measures one window, detaches. Also reads the run time
    /// of the tool's programs around the window, which counts only while bpf_stats is on.
    fn window(
        &mut self,
        settings: &Settings,
        variant: Variant,
        seconds: f64,
    ) -> anyhow::Result<(Window, Option<ProbeCost>)> {
        let mut tool = match variant {
            Variant::Alone => None,
            _ => Some(start_tool(settings, variant, self.server.pid)?),
        };
        let attached_at = Instant::now();
        thread::sleep(SETTLE);
        let cpu_before = tool.as_ref().map_or(0, |t| t.cpu_ns());
        let probes_before = tool.as_ref().map(|t| probe_stats(t.pid));
        self.load.signal(SIGUSR1);
        let opened = Instant::now();
        thread::sleep(Duration::from_secs_f64(seconds));
        self.load.signal(SIGUSR2);
        let window_ns = opened.elapsed().as_nanos() as f64;
        let probes_after = tool.as_ref().map(|t| probe_stats(t.pid));
        let cpu_after = tool.as_ref().map_or(0, |t| t.cpu_ns());

        let result =
            self.load.wait_stdout_line(|l| l.starts_with("http "), Duration::from_secs(30))?;
        let latencies = Histogram::parse(
            &self
                .load
                .wait_stdout_line(|l| l.starts_with("latencies_us"), Duration::from_secs(30))?,
        )?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let fields: Vec<&str> = result.split_whitespace().collect();
            fields
                .iter()
                .position(|f| *f == name)
                .and_then(|i| fields.get(i + 1))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in the load generator's line {result:?}"))
        };
        let tool_usage = match tool.as_mut() {
            None => None,
            Some(tool) => {
                let share = cpu_after.saturating_sub(cpu_before) as f64 / window_ns;
                Some(stop_tool(tool, attached_at.elapsed(), share)?)
            }
        };
        let requests = latencies.count() as f64;
        let probe_cost = match (probes_before, probes_after) {
            (Some((ns0, runs0)), Some((ns1, runs1))) if requests > 0.0 && ns1 > ns0 => {
                Some(ProbeCost {
                    ns_per_request: (ns1 - ns0) as f64 / requests,
                    runs_per_request: runs1.saturating_sub(runs0) as f64 / requests,
                })
            }
            _ => None,
        };
        thread::sleep(GAP);
        let window = Window {
            throughput: field("http")?,
            unanswered: field("unanswered")? as u64,
            latencies,
            tool: tool_usage,
        };
        Ok((window, probe_cost))
    }
}

/// The summed run time (ns) and run count of the BPF programs a process holds, from
/// /proc/PID/fdinfo (counted only while `kernel.bpf_stats_enabled` is 1).
pub(super) fn probe_stats(pid: i32) -> (u64, u64) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let mut totals = (0, 0);
    for fd in fds.filter_map(Result::ok) {
        let is_program =
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("bpf-prog"));
        if !is_program {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let value = |key: &str| -> u64 {
            info.lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.trim_start_matches(':').trim().parse().ok())
                .unwrap_or(0)
        };
        totals.0 += value("run_time_ns");
        totals.1 += value("run_cnt");
    }
    totals
}

pub fn run(settings: &Settings, rounds: u32, window_seconds: f64) -> anyhow::Result<ServiceResult> {
    // Every window: attach (≤ a few s for bpftrace), settle, measure, stop, gap.
    let cap_seconds =
        (ARMS.len() as f64 + 1.0) * (f64::from(rounds) + 1.0) * (window_seconds + 20.0);
    let mut service = Service::start(settings, cap_seconds)?;
    thread::sleep(WARM_UP);

    let mut arms: Vec<(Arm, Result<Vec<Window>, String>)> =
        ARMS.iter().map(|&arm| (arm, Ok(Vec::new()))).collect();
    for round in 0..rounds {
        for offset in 0..arms.len() {
            let index = (round as usize + offset) % arms.len();
            let arm = arms[index].0;
            // A tool that failed once (it does not run here) is not retried.
            let Ok(windows) = &mut arms[index].1 else {
                continue;
            };
            match service.window(settings, arm.variant(), window_seconds) {
                Ok((window, _)) => {
                    println!(
                        "bench: http round {}/{rounds}: {}: {}/s, p99 {:.0} µs",
                        round + 1,
                        arm.label(),
                        group(window.throughput),
                        window.p99_us()
                    );
                    windows.push(window);
                }
                Err(err) => {
                    println!(
                        "bench: http round {}/{rounds}: {}: failed: {err:#}",
                        round + 1,
                        arm.label()
                    );
                    arms[index].1 = Err(format!("{err:#}"));
                }
            }
        }
    }

    let mut probe_costs = Vec::new();
    let stats = BpfStats::enable();
    for (arm, windows) in &arms {
        let Arm::Run(variant) = *arm else { continue };
        if variant == Variant::Alone || windows.is_err() {
            continue;
        }
        let cost = match &stats {
            Err(err) => Err(err.clone()),
            Ok(_) => match service.window(settings, variant, window_seconds) {
                Ok((_, Some(cost))) => Ok(cost),
                Ok((_, None)) => {
                    Err("it holds no program descriptors to read run times from".into())
                }
                Err(err) => Err(format!("{err:#}")),
            },
        };
        if let Ok(cost) = &cost {
            println!(
                "bench: http probe cost: {}: {:.2} µs per request",
                variant.label(),
                cost.ns_per_request / 1e3
            );
        }
        probe_costs.push((variant, cost));
    }
    drop(stats);
    Ok(ServiceResult { arms, probe_costs, window_seconds, rounds, rate: settings.http_rate })
}

impl ServiceResult {
    fn windows(&self, arm: Arm) -> Option<&[Window]> {
        self.arms
            .iter()
            .find(|(a, _)| *a == arm)
            .and_then(|(_, windows)| windows.as_ref().ok())
            .map(Vec::as_slice)
            .filter(|windows| !windows.is_empty())
    }

    /// Percentile `q` of an arm against the alone arm, paired by round.
    fn against_alone(&self, arm: Arm, q: f64) -> Option<RatioEstimate> {
        let histograms =
            |windows: &[Window]| windows.iter().map(|w| w.latencies.clone()).collect::<Vec<_>>();
        let alone = histograms(self.windows(Arm::Run(Variant::Alone))?);
        percentile_ratio(&alone, &histograms(self.windows(arm)?), q, RESAMPLES)
    }

    /// Responses per second over the arm's windows (all of one length).
    fn throughput(&self, arm: Arm) -> Option<f64> {
        let windows = self.windows(arm)?;
        Some(windows.iter().map(|w| w.throughput).sum::<f64>() / windows.len() as f64)
    }

    pub fn table(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## HTTP service: thread pool ({HTTP_CONNECTIONS} workers) with a blocking backend call per \
             request, {} req/s offered on {HTTP_CONNECTIONS} keep-alive connections\n",
            group(self.rate)
        );
        let _ = writeln!(
            md,
            "One service under load throughout; {} rounds of {} s windows, the tools attached and \
             detached around each, in rotating order. Latency runs from when a request was due; \
             percentiles are of all of a variant's windows pooled, with a 95% interval from \
             resampling rounds. The control is a second set of alone windows: its distance from \
             the first is this machine's noise.\n",
            self.rounds, self.window_seconds
        );
        let _ = writeln!(
            md,
            "| variant | windows | responses/s | vs alone | p50 | p50 vs alone (95% interval) | p99 | p99.9 \
             | p99 vs alone (95% interval) | p99 per window, min–max | tool CPU (window) | probe CPU per request | waits/s seen | events lost | unanswered |"
        );
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let alone_throughput = self.throughput(Arm::Run(Variant::Alone));
        for (arm, windows) in &self.arms {
            let windows = match windows {
                Ok(windows) if !windows.is_empty() => windows,
                Ok(_) => continue,
                Err(err) => {
                    let _ = writeln!(
                        md,
                        "| {} | did not run here: {} |",
                        arm.label(),
                        super::one_line(err)
                    );
                    continue;
                }
            };
            let all = pooled(windows.iter().map(|w| &w.latencies));
            let micros = |q: f64| all.percentile(q).map_or("–".into(), |v| format!("{v:.0} µs"));
            let throughput = self.throughput(*arm).unwrap_or(f64::NAN);
            let vs_alone =
                alone_throughput.map_or("–".into(), |base| super::ratio_text(throughput, base));
            let vs_alone_at = |q: f64| match arm {
                Arm::Run(Variant::Alone) => "–".to_string(),
                _ => self.against_alone(*arm, q).map_or("–".into(), |e| interval_text(&e)),
            };
            let (p50_vs, p99_vs) = (vs_alone_at(0.50), vs_alone_at(0.99));
            let (lo, hi) = min_max(windows.iter().map(Window::p99_us));
            let tools: Vec<&ToolUsage> = windows.iter().filter_map(|w| w.tool.as_ref()).collect();
            let cpu = if tools.is_empty() {
                "–".into()
            } else {
                format!(
                    "{:.2}% of a core",
                    100.0 * median(tools.iter().map(|t| t.window_cpu_share))
                )
            };
            let probe_cost = self.probe_costs.iter().find(|(v, _)| Arm::Run(*v) == *arm).map_or(
                "–".into(),
                |(_, cost)| match cost {
                    Ok(cost) => format!(
                        "{:.2} µs ({:.1} program runs)",
                        cost.ns_per_request / 1e3,
                        cost.runs_per_request
                    ),
                    Err(err) => format!("not measured: {}", super::one_line(err)),
                },
            );
            let waits: Vec<f64> = tools.iter().filter_map(|t| t.waits_per_second).collect();
            let lost: Vec<u64> = tools.iter().filter_map(|t| t.events_lost).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {vs_alone} | {} | {p50_vs} | {} | {} | {p99_vs} | {lo:.0}–{hi:.0} µs | {cpu} | {probe_cost} | {} | {} | {} |",
                arm.label(),
                windows.len(),
                group(throughput),
                micros(0.50),
                micros(0.99),
                micros(0.999),
                if waits.is_empty() { "–".into() } else { group(median(waits.iter().copied())) },
                if lost.is_empty() { "–".into() } else { group(lost.iter().sum::<u64>() as f64) },
                windows.iter().map(|w| w.unanswered).sum::<u64>(),
            );
        }
        let _ = writeln!(md);
        md
    }

    /// The service budget of issue 7: at most 3% loss of throughput and of p99.
    pub fn budget_lines(&self) -> Vec<(Verdict, String)> {
        let tracer = Arm::Run(Variant::Tracer);
        let (Some(alone), Some(traced)) =
            (self.throughput(Arm::Run(Variant::Alone)), self.throughput(tracer))
        else {
            return vec![(
                Verdict::Skip,
                "HTTP service: the alone or the tracer windows did not run".into(),
            )];
        };
        let loss = 1.0 - traced / alone;
        let mut lines = vec![(
            if loss <= SERVICE_MAX_LOSS { Verdict::Pass } else { Verdict::Fail },
            format!("HTTP service: tracer loses {:.1}% of throughput (budget 3%)", 100.0 * loss),
        )];
        let (Some(p99), Some(control)) =
            (self.against_alone(tracer, 0.99), self.against_alone(Arm::Control, 0.99))
        else {
            lines.push((Verdict::Skip, "HTTP service p99: no latencies to compare".into()));
            return lines;
        };
        let verdict = p99_verdict(&p99, &control, SERVICE_MAX_LOSS);
        lines.push((
            verdict,
            format!(
                "HTTP service: p99 traced vs alone {} (budget +3%); alone vs alone in the same run: {} \
                 (to judge a 3% budget that must lie within ±3%)",
                interval_text(&p99),
                interval_text(&control)
            ),
        ));
        lines
    }
}

/// The p99 budget's verdict from the tracer's comparison with alone and the control's (alone
/// with alone). A run that cannot tell alone from alone within the budget cannot judge the
/// tracer against it. Otherwise the budget is shown to hold only when the tracer's whole
/// interval is within it, and shown broken only when the whole interval is beyond it.
fn p99_verdict(tracer: &RatioEstimate, control: &RatioEstimate, budget: f64) -> Verdict {
    let (low_limit, high_limit) = (1.0 - budget, 1.0 + budget);
    if control.low < low_limit || control.high > high_limit {
        Verdict::Unresolved
    } else {
        super::at_most(tracer, high_limit)
    }
}

fn interval_text(estimate: &RatioEstimate) -> String {
    let interval = estimate.interval_text();
    format!(
        "{} ({})",
        estimate.change_text(),
        interval.as_deref().unwrap_or("too few rounds for an interval")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_run_judges_the_tracer_by_its_whole_interval() {
        let quiet = RatioEstimate::new(1.0, 0.99, 1.01);
        assert_eq!(p99_verdict(&RatioEstimate::new(1.01, 1.0, 1.02), &quiet, 0.03), Verdict::Pass);
        assert_eq!(p99_verdict(&RatioEstimate::new(1.10, 1.05, 1.15), &quiet, 0.03), Verdict::Fail);
        assert_eq!(
            p99_verdict(&RatioEstimate::new(1.03, 1.01, 1.05), &quiet, 0.03),
            Verdict::Unresolved
        );
    }

    #[test]
    fn too_few_rounds_judge_nothing() {
        let unknown = RatioEstimate::new(1.0, 0.0, f64::INFINITY);
        assert_eq!(
            p99_verdict(&RatioEstimate::new(1.0, 0.0, f64::INFINITY), &unknown, 0.03),
            Verdict::Unresolved
        );
        assert!(interval_text(&unknown).contains("too few rounds"));
    }

    #[test]
    fn a_run_that_cannot_tell_alone_from_alone_judges_nothing() {
        let noisy = RatioEstimate::new(1.2, 0.9, 1.5);
        assert_eq!(
            p99_verdict(&RatioEstimate::new(1.0, 0.99, 1.01), &noisy, 0.03),
            Verdict::Unresolved
        );
        assert_eq!(
            p99_verdict(&RatioEstimate::new(1.8, 1.5, 2.0), &noisy, 0.03),
            Verdict::Unresolved
        );
        // Noise that happens to favour one side is noise all the same.
        let shifted = RatioEstimate::new(0.9, 0.85, 0.95);
        assert_eq!(
            p99_verdict(&RatioEstimate::new(1.0, 0.99, 1.01), &shifted, 0.03),
            Verdict::Unresolved
        );
    }
}
