//! `cargo xtask bench`: what tracing costs the traced process, against the peers.
//!
//! Each ping-pong workload runs alone, under `tracer record`, under libbpf-tools'
//! `offcputime` and under a bpftrace latency histogram, alternating (A B C D A B C D …) so
//! that drift in the machine hits every variant alike. The workload is pinned to CPU 0 and
//! the tool (and the load generator) to CPU 1: unpinned, idle-state effects made traced runs
//! *faster* than the baseline here. The workload measures only between two signals the
//! bench sends after the tool has attached and before it is stopped, so the measured window
//! is traced from end to end. Its budgets carry a bootstrap interval over rounds, and one
//! more run per tool under bpf_stats gives its probes' CPU per round trip. The HTTP
//! service (`service.rs`) keeps one service under load while the tools come and go around
//! many short windows, and compares latency distributions (`latency.rs`). The pile-up
//! measures `snapshot` and `record`'s start on 10,000 blocked threads.

mod closed_loop;
mod golang;
mod latency;
mod python;
mod service;
mod steadiness;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use latency::RatioEstimate;
use libc::{SIGINT, SIGKILL, SIGUSR1, SIGUSR2, WNOHANG};
use service::probe_stats;

/// Debian packages of the peers the bench compares against, wrk (the Go service's load),
/// and Redis (the full-speed row).
pub const DEBIAN_PACKAGES: [&str; 7] =
    ["libbpf-tools", "bpftrace", "wrk", "redis-server", "redis-tools", "python3", "python3-venv"];

/// The Go release the Go rows build with (setup installs it).
pub const GO_VERSION: &str = golang::GO_VERSION;

/// Where Debian's libbpf-tools installs offcputime (`dpkg -L libbpf-tools`).
const OFFCPUTIME: &str = "/usr/sbin/offcputime";

/// The workload's CPU, and the CPU of everything else (tool, load generator): this machine
/// has two.
const WORKLOAD_CPU: &str = "0";
const TOOL_CPU: &str = "1";

/// Time for the workload to reach its steady state before a tool attaches.
const WARM_UP: Duration = Duration::from_millis(500);
/// Time between a tool saying it is attached and the window opening: a tool may print its
/// line a little before its last probe is live.
const SETTLE: Duration = Duration::from_millis(300);
/// Loading probes takes well under a second; a tool that takes this long has failed.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// A tool stopped with SIGINT symbolizes and writes its reports; this bounds that.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Starting 10,000 threads and seeing each in its futex wait takes seconds.
const PILEUP_TIMEOUT: Duration = Duration::from_secs(180);
const PILEUP_THREADS: u32 = 10_000;
/// How long each `record` of the pile-up runs (its start is what is measured).
const PILEUP_RECORD: &str = "1s";
/// Handler threads of the HTTP service and connections of the load generator.
const HTTP_CONNECTIONS: &str = "16";

/// Paced ping-pong rates for the wait-rate budgets: measured here, a round trip is 1.8 to
/// 2.4 futex waits (fewer when the woken player preempts its waker).
const WAITS_50K_ROUND_TRIPS: f64 = 30_000.0;
const WAITS_100K_ROUND_TRIPS: f64 = 60_000.0;

/// Budgets from issue 7.
const PING_PONG_LOSS_VS_OFFCPUTIME: f64 = 1.0 / 3.0;
/// Issue 15's tighter budget for the exact mode, once the syscall-exit probe was gone.
const EXACT_PING_PONG_LOSS_VS_OFFCPUTIME: f64 = 1.0 / 5.0;
/// Issue 15: what a sampled recording may cost the ping-pong, which waits far more often
/// than it is read.
const SAMPLED_PING_PONG_MAX_LOSS: f64 = 0.02;
const SERVICE_MAX_LOSS: f64 = 0.03;
const MAX_TRACER_CPU_SHARE: f64 = 0.02;
const MAX_PILEUP_RSS_KIB: u64 = 100 * 1024;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Rounds of alternating runs. Fewer than 5 leave the ping-pong's medians to this
    /// machine's noise (its alone arm alone spans ±10% over a run).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Length of each measured window, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Requests per second the load generator sends to the HTTP service.
    #[arg(long, default_value_t = 20_000.0)]
    http_rate: f64,
    /// Rounds of the HTTP service: one window of each variant, and of a second alone
    /// control, per round. Its latencies vary too much here for fewer to say much; below 5
    /// the comparisons get no interval.
    #[arg(long, default_value_t = 12)]
    http_rounds: u32,
    /// Length of each HTTP service window, in seconds.
    #[arg(long, default_value_t = 2.0)]
    http_seconds: f64,
    /// Run only these workloads (repeatable): futex, tcp, http, waits50k, waits100k, redis,
    /// collateral, pileup, gohttp, goroutines, pypileup, pyservice.
    #[arg(long)]
    only: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Alone,
    Tracer,
    /// `tracer record --mode sampled --rate SAMPLED_RATE_HZ`: the threads read at the
    /// default rate, nothing attached.
    TracerSampled,
    /// `tracer record --no-wakers`: exact, `sched_switch` alone.
    TracerNoWakers,
    Offcputime,
    Bpftrace,
    /// Empty programs (tests' `empty-probes`) at the exact mode's tracepoints: the
    /// kernel's part of its cost, whatever the programs do.
    EmptyPrograms,
    /// A process on the tool's CPU that wakes at the sampled mode's rate and does nothing
    /// (tests' `idle-wakes`): the machine's part of that mode's cost, whatever its reads do.
    IdleWakes,
    /// The same, each wake then busy as long as a sampled read (`READ_BUSY_US`): what this
    /// machine charges for a read's burst, whatever the read does.
    ReadBursts,
}

/// The rate the sampled arm reads at (passed as `--rate`, so the idle wakes and the
/// bursts wake at the same whatever the tracer's default): its default
/// (tracer/src/golang/sampler.rs, `DEFAULT_RATE_HZ`), since the default is what users run.
const SAMPLED_RATE_HZ: u32 = 49;

/// About a sampled read's CPU time on this machine, of a process with a thread or two: 25
/// ms over 245 reads (`perf stat -e task-clock` on `tracer record --mode sampled`).
const READ_BUSY_US: u32 = 100;

/// Where the exact mode with wakers attaches (tracer/src/probes/mod.rs,
/// `attach_wait_probes`), for the empty programs.
const EXACT_MODE_TRACEPOINTS: [&str; 3] = ["sched_switch", "sched_wakeup", "csd_queue_cpu"];

impl Variant {
    fn label(self) -> String {
        let label = match self {
            Variant::Alone => "alone",
            Variant::Tracer => "tracer record",
            Variant::TracerSampled => "tracer record --mode sampled",
            Variant::TracerNoWakers => "tracer record --no-wakers",
            Variant::Offcputime => "offcputime -p",
            Variant::Bpftrace => "bpftrace histogram",
            Variant::EmptyPrograms => "empty programs at exact's tracepoints",
            Variant::IdleWakes => "idle wakes at the sampled rate",
            Variant::ReadBursts => {
                return format!("wakes at the sampled rate, each busy {READ_BUSY_US} µs");
            }
        };
        label.to_string()
    }
}

const ALL_VARIANTS: [Variant; 8] = [
    Variant::Alone,
    Variant::Tracer,
    Variant::TracerSampled,
    Variant::TracerNoWakers,
    Variant::Offcputime,
    Variant::Bpftrace,
    Variant::IdleWakes,
    Variant::ReadBursts,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Futex,
    Tcp,
    /// Paced futex ping-pong: two waits per round trip.
    Waits50k,
    Waits100k,
}

impl Workload {
    fn key(self) -> &'static str {
        match self {
            Workload::Futex => "futex",
            Workload::Tcp => "tcp",
            Workload::Waits50k => "waits50k",
            Workload::Waits100k => "waits100k",
        }
    }

    fn title(self) -> String {
        match self {
            Workload::Futex => {
                "ping-pong, futex: condition-variable round trips (two handoffs) per second".into()
            }
            Workload::Tcp => "ping-pong, TCP loopback: round trips per second".into(),
            // Two waits per round trip at most: a woken player that preempts its waker spares
            // the waker's wait. The tracer's own count is the "waits/s seen" column.
            Workload::Waits50k => format!(
                "paced futex ping-pong, {} round trips/s (for ≥ 50,000 waits/s)",
                group(WAITS_50K_ROUND_TRIPS)
            ),
            Workload::Waits100k => format!(
                "paced futex ping-pong, {} round trips/s (for ≥ 100,000 waits/s)",
                group(WAITS_100K_ROUND_TRIPS)
            ),
        }
    }

    fn variants(self) -> &'static [Variant] {
        match self {
            Workload::Waits50k | Workload::Waits100k => &ALL_VARIANTS[..2],
            _ => &ALL_VARIANTS,
        }
    }
}

/// One measured run of a throughput workload.
#[derive(Debug, Clone)]
struct Run {
    /// Per second, over the window.
    throughput: f64,
    tool: Option<ToolUsage>,
    /// The tool's programs' run time over the window (only with bpf_stats on).
    probe_cost: Option<ProbeCost>,
}

/// What a tool's probes cost per unit of the workload's work (a round trip, a request),
/// from bpf_stats: their run time, not the kernel's dispatch of each run.
#[derive(Debug, Clone, Copy)]
struct ProbeCost {
    ns_per_unit: f64,
    runs_per_unit: f64,
}

/// What the tool itself cost and saw.
#[derive(Debug, Clone, Default)]
struct ToolUsage {
    /// The tool's CPU time during the window over the window's length (1.0 = one core).
    window_cpu_share: f64,
    /// utime + stime over the tool's whole life, from wait4.
    total_cpu: Duration,
    max_rss_kib: u64,
    /// The tracer's `seen:` and `lost:` lines, when it printed them.
    seen_line: Option<String>,
    lost_line: Option<String>,
    /// Waits (long + short) per second of recording, from `seen:`.
    waits_per_second: Option<f64>,
    /// Events the probes could not send: ring buffer full + in-flight map full + wakers lost.
    events_lost: Option<u64>,
}

pub fn run(root: &Path, target: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let BenchArgs { rounds, seconds, http_rate, http_rounds, http_seconds, only } = args;
    let (rounds, seconds, http_rate) = (*rounds, *seconds, *http_rate);
    if rounds == 0
        || seconds <= 0.0
        || *http_rounds == 0
        || *http_seconds <= 0.0
        || http_rate <= 0.0
    {
        bail!(
            "--rounds, --seconds, --http-rounds, --http-seconds and --http-rate must be positive"
        );
    }
    if let Err(err) = mount_tracefs() {
        // Only bpftrace needs it; its runs will fail and say so.
        println!("bench: {err:#}");
    }
    // Held to the end: the stats go back to what they were.
    let (_stats_off, stats_note) = match service::BpfStats::disable() {
        Ok((guard, was_on)) => (
            Some(guard),
            was_on.then(|| "kernel.bpf_stats_enabled was 1: 0 for the timed runs.".to_string()),
        ),
        Err(err) => (None, Some(format!("{err}: the timed runs may carry its clock reads."))),
    };
    if let Some(note) = &stats_note {
        println!("bench: {note}");
    }
    let release = target.join("release");
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let wanted = |key: &str| only.is_empty() || only.iter().any(|o| o == key);
    let settings = Settings { release: release.clone(), seconds, http_rate };

    let mut md = String::new();
    let _ = writeln!(md, "# tracer overhead bench\n");
    let _ = writeln!(md, "{}\n", machine_description());
    if let Some(note) = &stats_note {
        let _ = writeln!(md, "{note}\n");
    }
    let steadiness: Vec<String> = [WORKLOAD_CPU, TOOL_CPU]
        .iter()
        .filter_map(|cpu| {
            let cpu: usize = cpu.parse().expect("the bench CPUs are numbers");
            println!("bench: how steadily CPU {cpu} runs (a spin loop, 10 s)");
            steadiness::Steadiness::measure(cpu)
                .inspect_err(|err| println!("bench: cannot pin a spin loop to CPU {cpu}: {err}"))
                .ok()
                .map(|steadiness| steadiness.text())
        })
        .collect();
    if !steadiness.is_empty() {
        let _ = writeln!(
            md,
            "How steadily the CPUs run (a spin loop pinned to each, 20 slices of 0.5 s): {}. \
             A cost smaller than this spread is resolved only over many rounds: see each \
             row's control.\n",
            steadiness.join("; ")
        );
    }
    let _ = writeln!(
        md,
        "Workload pinned to CPU {WORKLOAD_CPU}, tool and load generator to CPU {TOOL_CPU}; \
         {rounds} alternating rounds, {seconds} s measured per run, only while the tool is \
         attached; median and min–max over rounds. Tool CPU is its own user+system time (the \
         probes' in-kernel cost lands in the workload's throughput).\n"
    );

    let mut results: Results = BTreeMap::new();
    let workloads = [Workload::Futex, Workload::Tcp, Workload::Waits50k, Workload::Waits100k];
    for workload in workloads.into_iter().filter(|w| wanted(w.key())) {
        let variants = workload.variants();
        let mut runs: Vec<Result<Vec<Run>, String>> = vec![Ok(Vec::new()); variants.len()];
        // Why a variant stopped after rounds that ran: their runs stand (a round's arms are
        // paired by index, and a variant's runs stay a prefix of the rounds).
        let mut stopped: Vec<Option<String>> = vec![None; variants.len()];
        for round in 1..=rounds {
            for (index, &variant) in variants.iter().enumerate() {
                // A variant that failed once (its tool does not run here, or hung) is not
                // retried.
                let Ok(done) = &mut runs[index] else { continue };
                if stopped[index].is_some() {
                    continue;
                }
                match run_throughput(&settings, workload, variant, false) {
                    Ok(run) => {
                        println!(
                            "bench: {} round {round}/{rounds}: {}: {}/s",
                            workload.key(),
                            variant.label(),
                            group(run.throughput),
                        );
                        done.push(run);
                    }
                    Err(err) => {
                        println!(
                            "bench: {} round {round}/{rounds}: {}: failed: {err:#}",
                            workload.key(),
                            variant.label()
                        );
                        if done.is_empty() {
                            runs[index] = Err(format!("{err:#}"));
                        } else {
                            stopped[index] = Some(format!(
                                "stopped after {} of {rounds} rounds: round {round} failed: {}",
                                done.len(),
                                one_line(&format!("{err:#}"))
                            ));
                        }
                    }
                }
            }
        }
        let probe_costs = measure_probe_costs(&settings, workload, variants, &runs);
        let table = throughput_table(workload, variants, &runs, &stopped, &probe_costs);
        md.push_str(&table);
        results.insert(workload.key(), variants.iter().copied().zip(runs).collect());
    }

    let mut closed_loop_budgets = String::new();
    for row in [closed_loop::Row::Redis, closed_loop::Row::Collateral] {
        if !wanted(row.key()) {
            continue;
        }
        match closed_loop::run(&settings, row, rounds.max(5)) {
            Ok(result) => {
                md.push_str(&result.table());
                closed_loop_budgets.push_str(&result.budget_lines());
            }
            Err(err) => {
                println!("bench: {} failed: {err:#}", row.key());
                let _ = writeln!(md, "## {}\n\nfailed: {err:#}\n", row.key());
            }
        }
    }

    let mut service = None;
    if wanted("http") {
        match service::run(&settings, *http_rounds, *http_seconds) {
            Ok(result) => {
                md.push_str(&result.table());
                service = Some(result);
            }
            Err(err) => {
                println!("bench: HTTP service failed: {err:#}");
                let _ = writeln!(md, "## HTTP service\n\nfailed: {err:#}\n");
            }
        }
    }

    let mut pileup = None;
    if wanted("pileup") {
        match run_pileup(root, &settings, &out_dir, rounds) {
            Ok(result) => {
                md.push_str(&pileup_table(&result));
                pileup = Some(result);
            }
            Err(err) => {
                println!("bench: pile-up failed: {err:#}");
                let _ = writeln!(
                    md,
                    "## pile-up of {PILEUP_THREADS} blocked threads\n\nfailed: {err:#}\n"
                );
            }
        }
    }

    let mut go_budgets = String::new();
    if wanted("gohttp") {
        match golang::run_http(root, &settings, &out_dir, rounds.max(5)) {
            Ok(result) => {
                md.push_str(&result.table());
                go_budgets.push_str(&result.budget_line());
            }
            Err(err) => {
                println!("bench: Go HTTP service failed: {err:#}");
                let _ = writeln!(md, "## Go HTTP service\n\nfailed: {err:#}\n");
            }
        }
    }
    if wanted("goroutines") {
        match golang::run_many(root, &settings, &out_dir, rounds) {
            Ok(result) => {
                md.push_str(&result.table());
                go_budgets.push_str(&result.budget_line());
            }
            Err(err) => {
                println!("bench: many goroutines failed: {err:#}");
                let _ = writeln!(md, "## many goroutines\n\nfailed: {err:#}\n");
            }
        }
    }

    if wanted("pypileup") {
        match python::run_pileup(root, &settings, rounds) {
            Ok(table) => md.push_str(&table),
            Err(err) => {
                println!("bench: python pile-up failed: {err:#}");
                let _ = writeln!(md, "## CPython pile-up\n\nfailed: {err:#}\n");
            }
        }
    }
    if wanted("pyservice") {
        match python::run_service(root, &settings, &out_dir, rounds.max(5)) {
            Ok(table) => md.push_str(&table),
            Err(err) => {
                println!("bench: python service failed: {err:#}");
                let _ = writeln!(md, "## CPU-bound Python service\n\nfailed: {err:#}\n");
            }
        }
    }

    md.push_str(&budget_lines(&results, service.as_ref(), pileup.as_ref()));
    if !closed_loop_budgets.is_empty() {
        md.push_str("\n## budgets (issue 15, full speed and collateral)\n\n");
        md.push_str(&closed_loop_budgets);
    }
    if !go_budgets.is_empty() {
        md.push_str("\n## budgets (issue 14, Go)\n\n");
        md.push_str(&go_budgets);
    }
    let path = out_dir.join("results.md");
    std::fs::write(&path, &md).with_context(|| format!("cannot write {}", path.display()))?;
    println!("\n{md}");
    println!("xtask: bench results written to {}", path.display());
    Ok(())
}

/// Where bpftrace looks for tracepoints. The tracer needs no tracefs, and this machine
/// boots without it; without it bpftrace attaches nothing and still runs, at no cost.
const TRACEFS: &str = "/sys/kernel/tracing";

fn mount_tracefs() -> anyhow::Result<()> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    crate::run_command(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))
        .with_context(|| format!("bpftrace needs tracefs at {TRACEFS}"))
}

struct Settings {
    release: PathBuf,
    seconds: f64,
    http_rate: f64,
}

fn machine_description() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    format!("Machine: Linux {}, {cpus} × {model}; {date}.", kernel.trim())
}

// ---------------------------------------------------------------------------------------
// Throughput runs

/// One run: start the workload, attach the variant's tool, measure a window, stop all.
fn run_throughput(
    settings: &Settings,
    workload: Workload,
    variant: Variant,
    measure_probes: bool,
) -> anyhow::Result<Run> {
    let release = &settings.release;
    let cap = format!("{}", settings.seconds + 300.0);
    // `target` is the traced process; `window` the one that measures between the signals.
    let mut command = pinned(WORKLOAD_CPU, &release.join("ping-pong"));
    match workload {
        Workload::Tcp => command.arg("tcp"),
        Workload::Waits50k => command.args(["futex", "--rate", &WAITS_50K_ROUND_TRIPS.to_string()]),
        Workload::Waits100k => {
            command.args(["futex", "--rate", &WAITS_100K_ROUND_TRIPS.to_string()])
        }
        Workload::Futex => command.arg("futex"),
    };
    // The ping-pong is both the traced process and the one that measures between the signals.
    let mut window = Proc::spawn("ping-pong", command.args(["--window", "--seconds", &cap]))?;
    let target = window.pid;
    window.wait_stdout_line(|l| l == "ready", Duration::from_secs(10))?;
    thread::sleep(WARM_UP);

    let mut tool = match variant {
        Variant::Alone => None,
        _ => Some(start_tool(settings, variant, target)?),
    };
    let attached_at = Instant::now();
    thread::sleep(SETTLE);
    let cpu_before = tool.as_ref().map_or(0, |t| t.cpu_ns());
    let probes_before = tool.as_ref().filter(|_| measure_probes).map(|t| probe_stats(t.pid));
    window.signal(SIGUSR1);
    let opened = Instant::now();
    thread::sleep(Duration::from_secs_f64(settings.seconds));
    window.signal(SIGUSR2);
    let window_ns = opened.elapsed().as_nanos() as f64;
    let probes_after = tool.as_ref().filter(|_| measure_probes).map(|t| probe_stats(t.pid));
    let cpu_after = tool.as_ref().map_or(0, |t| t.cpu_ns());
    let result = window.wait_stdout_line(
        |l| l.starts_with("futex ") || l.starts_with("tcp "),
        Duration::from_secs(30),
    )?;
    let fields: Vec<&str> = result.split_whitespace().collect();
    let throughput: f64 = fields
        .get(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("cannot read the workload's result {result:?}"))?;

    let units = throughput * window_ns / 1e9;
    let probe_cost = match (probes_before, probes_after) {
        (Some((ns_before, runs_before)), Some((ns, runs))) if units > 0.0 => Some(ProbeCost {
            ns_per_unit: ns.saturating_sub(ns_before) as f64 / units,
            runs_per_unit: runs.saturating_sub(runs_before) as f64 / units,
        }),
        _ => None,
    };
    let usage = match tool.as_mut() {
        None => None,
        Some(tool) => {
            let window_cpu_share = cpu_after.saturating_sub(cpu_before) as f64 / window_ns;
            Some(stop_tool(tool, attached_at.elapsed(), window_cpu_share)?)
        }
    };
    Ok(Run { throughput, tool: usage, probe_cost })
}

/// One more run per tool that ran, with bpf_stats on (it adds two clock reads to every
/// program run, so it stays off for the measured rounds): its probes' CPU per round trip,
/// which the machine's swings in speed between rounds leave readable. `None` for variants
/// without a tool or whose rounds failed.
fn measure_probe_costs(
    settings: &Settings,
    workload: Workload,
    variants: &[Variant],
    runs: &[Result<Vec<Run>, String>],
) -> Vec<Option<Result<ProbeCost, String>>> {
    let stats = service::BpfStats::enable();
    variants
        .iter()
        .zip(runs)
        .map(|(&variant, runs)| {
            // Idle wakes run no program.
            if matches!(variant, Variant::Alone | Variant::IdleWakes | Variant::ReadBursts)
                || runs.is_err()
            {
                return None;
            }
            if let Err(err) = &stats {
                return Some(Err(err.clone()));
            }
            let cost = match run_throughput(settings, workload, variant, true) {
                Ok(Run { probe_cost: Some(cost), .. }) => Ok(cost),
                Ok(_) => Err("no program run times to read, or no work done".to_string()),
                Err(err) => Err(format!("{err:#}")),
            };
            if let Ok(cost) = &cost {
                println!(
                    "bench: {} probe cost: {}: {:.0} ns per round trip",
                    workload.key(),
                    variant.label(),
                    cost.ns_per_unit
                );
            }
            Some(cost)
        })
        .collect()
}

/// Starts the variant's tool on the tool CPU and waits until its probes are attached.
fn start_tool(settings: &Settings, variant: Variant, pid: i32) -> anyhow::Result<Proc> {
    let pid_arg = pid.to_string();
    let mut tool = match variant {
        Variant::Tracer | Variant::TracerSampled | Variant::TracerNoWakers => {
            let duration = format!("{}s", (settings.seconds + 300.0).ceil());
            let mode = if variant == Variant::TracerSampled { "sampled" } else { "exact" };
            let mut command = pinned(TOOL_CPU, &settings.release.join("tracer"));
            command.args(["record", "--pid", &pid_arg, "--duration", &duration, "--mode", mode]);
            match variant {
                Variant::TracerNoWakers => _ = command.arg("--no-wakers"),
                Variant::TracerSampled => {
                    _ = command.args(["--rate", &SAMPLED_RATE_HZ.to_string()])
                }
                _ => {}
            }
            Proc::spawn("tracer", &mut command)?
        }
        Variant::Offcputime => {
            if !Path::new(OFFCPUTIME).exists() {
                bail!("{OFFCPUTIME} is missing (Debian package libbpf-tools)");
            }
            Proc::spawn(
                "offcputime",
                pinned(TOOL_CPU, Path::new(OFFCPUTIME)).args(["-p", &pid_arg]),
            )?
        }
        Variant::Bpftrace => Proc::spawn(
            "bpftrace",
            pinned(TOOL_CPU, Path::new("bpftrace")).args([
                "-B",
                "line",
                "-e",
                &bpftrace_program(pid),
            ]),
        )?,
        Variant::EmptyPrograms => Proc::spawn(
            "empty-probes",
            pinned(TOOL_CPU, &settings.release.join("empty-probes")).args(EXACT_MODE_TRACEPOINTS),
        )?,
        Variant::IdleWakes | Variant::ReadBursts => {
            let busy_us = if variant == Variant::ReadBursts { READ_BUSY_US } else { 0 };
            Proc::spawn(
                "idle-wakes",
                pinned(TOOL_CPU, &settings.release.join("idle-wakes"))
                    .args([SAMPLED_RATE_HZ.to_string(), busy_us.to_string()]),
            )?
        }
        Variant::Alone => unreachable!("no tool runs alone"),
    };
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    loop {
        tool.collect_output();
        let attached = match variant {
            Variant::Tracer | Variant::TracerSampled | Variant::TracerNoWakers => {
                tool.stderr.iter().any(|l| l.starts_with("tracer: recording"))
            }
            Variant::Bpftrace | Variant::EmptyPrograms => {
                tool.stdout.iter().any(|l| l == "attached")
            }
            Variant::IdleWakes | Variant::ReadBursts => tool.stdout.iter().any(|l| l == "started"),
            // offcputime prints nothing until it ends: its attached program is a bpf_link fd.
            _ => has_bpf_link(tool.pid),
        };
        if attached {
            return Ok(tool);
        }
        if let Some((status, _)) = tool.try_wait()? {
            bail!(
                "{} exited before attaching (wait status {status:#x}): {}",
                tool.name.clone(),
                tool.stderr_tail()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not attach within {ATTACH_TIMEOUT:?}: {}",
                tool.name.clone(),
                tool.stderr_tail()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Stops a tool with SIGINT and reads what it cost and saw; `recorded` is how long it
/// was attached.
fn stop_tool(
    tool: &mut Proc,
    recorded: Duration,
    window_cpu_share: f64,
) -> anyhow::Result<ToolUsage> {
    tool.signal(SIGINT);
    let (status, rusage) = tool.wait(STOP_TIMEOUT)?;
    if !exited_ok(status) {
        bail!("{} ended with wait status {status:#x}: {}", tool.name.clone(), tool.stderr_tail());
    }
    let stdout = tool.stdout_lines();
    // A peer that attached nothing runs at no cost: such a run must fail, not flatter it.
    let traced_something = match tool.name.as_str() {
        "bpftrace" => stdout.iter().any(|l| l.starts_with("@usecs")),
        "offcputime" => stdout.iter().any(|l| l.trim_start().starts_with('-')),
        // Its programs trace nothing by design: attached is all it can show.
        "empty-probes" => stdout.iter().any(|l| l == "attached"),
        // Nor do idle wakes: that they woke is what they show.
        "idle-wakes" => stdout.iter().any(|l| l.starts_with("woke ") && l != "woke 0 times"),
        _ => stdout.iter().any(|l| l.starts_with("seen: ")),
    };
    if !traced_something {
        bail!("{} reported nothing it traced: {}", tool.name.clone(), tool.stderr_tail());
    }
    let seen_line = stdout.iter().find(|l| l.starts_with("seen: ")).cloned();
    let lost_line = stdout.iter().find(|l| l.starts_with("lost: ")).cloned();
    let waits_per_second = seen_line.as_deref().map(|line| {
        let numbers = numbers_in(line);
        let waits = numbers.get(1).copied().unwrap_or(0) + numbers.get(2).copied().unwrap_or(0);
        waits as f64 / recorded.as_secs_f64()
    });
    let events_lost = lost_line.as_deref().map(|line| {
        let numbers = numbers_in(line);
        // "N ring buffer full, N in-flight map full, N wakers lost, ..."
        // (report/summary.rs): the events the probes could not send.
        numbers.iter().take(3).sum::<u64>()
    });
    Ok(ToolUsage {
        window_cpu_share,
        total_cpu: rusage.cpu,
        max_rss_kib: rusage.max_rss_kib,
        seen_line,
        lost_line,
        waits_per_second,
        events_lost,
    })
}

/// The peer a careful engineer would write by hand: latency of futex and socket reads per
/// thread, as a histogram, filtered by pid in the kernel. `BEGIN` fires once every probe is
/// attached.
fn bpftrace_program(pid: i32) -> String {
    format!(
        "BEGIN {{ printf(\"attached\\n\"); }}\n\
         tracepoint:syscalls:sys_enter_futex, tracepoint:syscalls:sys_enter_read, \
         tracepoint:syscalls:sys_enter_recvfrom /pid == {pid}/ {{ @start[tid] = nsecs; }}\n\
         tracepoint:syscalls:sys_exit_futex, tracepoint:syscalls:sys_exit_read, \
         tracepoint:syscalls:sys_exit_recvfrom /pid == {pid} && @start[tid]/ \
         {{ @usecs = hist((nsecs - @start[tid]) / 1000); delete(@start[tid]); }}\n"
    )
}

fn has_bpf_link(pid: i32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy().contains("bpf_link"))
    })
}

fn pinned(cpu: &str, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", cpu]).arg(program);
    command
}

fn numbers_in(line: &str) -> Vec<u64> {
    line.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Pile-up

struct PileupResult {
    snapshot_wall: Vec<Duration>,
    snapshot_rss_kib: Vec<u64>,
    snapshot_cpu: Vec<Duration>,
    record_start: Vec<Duration>,
    record_rss_kib: Vec<u64>,
    record_cpu: Vec<Duration>,
    record_wall: Vec<Duration>,
    snapshot_summary: Option<String>,
}

fn run_pileup(
    root: &Path,
    settings: &Settings,
    out_dir: &Path,
    rounds: u32,
) -> anyhow::Result<PileupResult> {
    let source = root.join("tests/workloads/many_waiters.c");
    let binary = out_dir.join("many-waiters");
    crate::run_command(
        Command::new("gcc")
            .args(["-O2", "-g", "-pthread", "-Wall", "-Werror", "-o"])
            .arg(&binary)
            .arg(&source),
    )?;
    println!("bench: pile-up: starting {PILEUP_THREADS} blocked threads");
    let mut waiters = Proc::spawn(
        "many-waiters",
        pinned(WORKLOAD_CPU, &binary)
            .arg(PILEUP_THREADS.to_string())
            .arg((PILEUP_TIMEOUT.as_secs() * (2 + u64::from(rounds))).to_string()),
    )?;
    waiters.wait_stdout_line(|l| l == "ready", PILEUP_TIMEOUT)?;
    let pid = waiters.pid.to_string();
    let tracer = settings.release.join("tracer");
    let mut result = PileupResult {
        snapshot_wall: Vec::new(),
        snapshot_rss_kib: Vec::new(),
        snapshot_cpu: Vec::new(),
        record_start: Vec::new(),
        record_rss_kib: Vec::new(),
        record_cpu: Vec::new(),
        record_wall: Vec::new(),
        snapshot_summary: None,
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
        result.snapshot_summary =
            snapshot.stdout_lines().into_iter().find(|l| l.contains("blocked in futex"));
        result.snapshot_wall.push(wall);
        result.snapshot_rss_kib.push(usage.max_rss_kib);
        result.snapshot_cpu.push(usage.cpu);

        let started = Instant::now();
        let mut record = Proc::spawn(
            "tracer record",
            pinned(TOOL_CPU, &tracer).args(["record", "--pid", &pid, "--duration", PILEUP_RECORD]),
        )?;
        let start = loop {
            record.collect_output();
            if record.stderr.iter().any(|l| l.starts_with("tracer: recording")) {
                break started.elapsed();
            }
            if let Some((status, _)) = record.try_wait()? {
                bail!(
                    "tracer record exited before recording (wait status {status:#x}): {}",
                    record.stderr_tail()
                );
            }
            if started.elapsed() > PILEUP_TIMEOUT {
                bail!("tracer record did not start within {PILEUP_TIMEOUT:?}");
            }
            thread::sleep(Duration::from_millis(2));
        };
        let (status, usage) = record.wait(PILEUP_TIMEOUT)?;
        let wall = started.elapsed();
        if !exited_ok(status) {
            bail!("tracer record ended with wait status {status:#x}: {}", record.stderr_tail());
        }
        result.record_start.push(start);
        result.record_rss_kib.push(usage.max_rss_kib);
        result.record_cpu.push(usage.cpu);
        result.record_wall.push(wall);
        println!(
            "bench: pileup round {round}/{rounds}: snapshot {:.2} s, {} MiB; record started in {:.2} s, {} MiB",
            result.snapshot_wall[result.snapshot_wall.len() - 1].as_secs_f64(),
            result.snapshot_rss_kib[result.snapshot_rss_kib.len() - 1] / 1024,
            start.as_secs_f64(),
            usage.max_rss_kib / 1024,
        );
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// Tables and budgets

fn throughput_table(
    workload: Workload,
    variants: &[Variant],
    runs: &[Result<Vec<Run>, String>],
    stopped: &[Option<String>],
    probe_costs: &[Option<Result<ProbeCost, String>>],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## {}\n", workload.title());
    let _ = writeln!(
        md,
        "| variant | median /s | min–max /s | vs alone (95% interval) | probe CPU per round trip (bpf_stats) | tool CPU (window) | tool CPU total | tool peak RSS | waits/s seen | events lost |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let baseline: Option<Vec<f64>> = runs
        .first()
        .and_then(|r| r.as_ref().ok())
        .map(|runs| runs.iter().map(|r| r.throughput).collect());
    let mut details = String::new();
    for (((variant, runs), stopped), probe_cost) in
        variants.iter().zip(runs).zip(stopped).zip(probe_costs)
    {
        let probe_cost = match probe_cost {
            None => "–".to_string(),
            Some(Ok(cost)) => {
                format!("{:.0} ns ({:.1} program runs)", cost.ns_per_unit, cost.runs_per_unit)
            }
            Some(Err(err)) => format!("not measured: {}", one_line(err)),
        };
        let runs = match runs {
            Ok(runs) if !runs.is_empty() => runs,
            Ok(_) => continue,
            Err(err) => {
                let _ =
                    writeln!(md, "| {} | did not run here: {} |", variant.label(), one_line(err));
                continue;
            }
        };
        let med = median(runs.iter().map(|r| r.throughput));
        let (lo, hi) = min_max(runs.iter().map(|r| r.throughput));
        // Against alone, resampled by round: a round's arms ran close in time.
        let rates: Vec<f64> = runs.iter().map(|r| r.throughput).collect();
        let estimate = baseline.as_deref().and_then(|base| latency::median_ratio(base, &rates));
        let ratio = match estimate {
            _ if *variant == Variant::Alone => String::from("1.000"),
            None => String::from("–"),
            Some(estimate) => match estimate.interval_text() {
                Some(interval) => {
                    format!("{:.3} ({}; {interval})", estimate.ratio, estimate.change_text())
                }
                None => format!("{:.3} ({})", estimate.ratio, estimate.change_text()),
            },
        };
        let tools: Vec<&ToolUsage> = runs.iter().filter_map(|r| r.tool.as_ref()).collect();
        let (cpu_window, cpu_total, rss, waits, lost) = if tools.is_empty() {
            ("–".to_string(), "–".to_string(), "–".to_string(), "–".to_string(), "–".to_string())
        } else {
            let waits: Vec<f64> = tools.iter().filter_map(|t| t.waits_per_second).collect();
            let lost: Vec<u64> = tools.iter().filter_map(|t| t.events_lost).collect();
            (
                format!(
                    "{:.2}% of a core",
                    100.0 * median(tools.iter().map(|t| t.window_cpu_share))
                ),
                format!("{:.2} s", median(tools.iter().map(|t| t.total_cpu.as_secs_f64()))),
                format!("{} MiB", tools.iter().map(|t| t.max_rss_kib).max().unwrap_or(0) / 1024),
                if waits.is_empty() { "–".into() } else { group(median(waits.iter().copied())) },
                if lost.is_empty() { "–".into() } else { group(lost.iter().sum::<u64>() as f64) },
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | {}–{} | {} | {probe_cost} | {cpu_window} | {cpu_total} | {rss} | {waits} | {lost} |",
            variant.label(),
            group(med),
            group(lo),
            group(hi),
            ratio,
        );
        if let Some(stopped) = stopped {
            let _ = writeln!(details, "- {}: {stopped}", variant.label());
        }
        if let Some(last) = tools.last() {
            for line in [&last.seen_line, &last.lost_line].into_iter().flatten() {
                let _ = writeln!(details, "- {} (last round): `{line}`", variant.label());
            }
        }
    }
    let _ = writeln!(md);
    if !details.is_empty() {
        let _ = writeln!(md, "{details}");
    }
    md
}

fn pileup_table(result: &PileupResult) -> String {
    let mut md = String::new();
    let _ =
        writeln!(md, "## pile-up: {PILEUP_THREADS} threads blocked on one condition variable\n");
    let _ = writeln!(md, "| measurement | median | min–max | peak RSS (max) | CPU (median) |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let secs = |d: &Vec<Duration>| d.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
    type Row<'a> = (&'a str, Vec<f64>, &'a Vec<u64>, &'a Vec<Duration>);
    let rows: [Row; 3] = [
        (
            "`tracer snapshot` wall time",
            secs(&result.snapshot_wall),
            &result.snapshot_rss_kib,
            &result.snapshot_cpu,
        ),
        (
            "`tracer record` start (launch → \"tracer: recording\")",
            secs(&result.record_start),
            &result.record_rss_kib,
            &result.record_cpu,
        ),
        (
            "`tracer record --duration 1s` wall time",
            secs(&result.record_wall),
            &result.record_rss_kib,
            &result.record_cpu,
        ),
    ];
    for (what, times, rss, cpu) in rows {
        let (lo, hi) = min_max(times.iter().copied());
        let _ = writeln!(
            md,
            "| {what} | {:.2} s | {lo:.2}–{hi:.2} s | {:.1} MiB | {:.2} s |",
            median(times.iter().copied()),
            rss.iter().copied().max().unwrap_or(0) as f64 / 1024.0,
            median(cpu.iter().map(Duration::as_secs_f64)),
        );
    }
    if let Some(summary) = &result.snapshot_summary {
        let _ = writeln!(md, "\nsnapshot said: `{summary}`");
    }
    let _ = writeln!(md);
    md
}

type Results = BTreeMap<&'static str, Vec<(Variant, Result<Vec<Run>, String>)>>;

/// How a budget came out. `Unresolved`: the measurement's own uncertainty straddles the
/// budget, so this run can neither show it held nor that it broke. `NoBudget`: a
/// measurement shown beside a budget's, which has none of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    Unresolved,
    Skip,
    NoBudget,
}

impl Verdict {
    fn of(holds: bool) -> Self {
        if holds { Verdict::Pass } else { Verdict::Fail }
    }
}

fn budget_lines(
    results: &Results,
    service: Option<&service::ServiceResult>,
    pileup: Option<&PileupResult>,
) -> String {
    const HEADER: &str = "## budgets (issues 7 and 15)\n\n";
    let mut md = String::from(HEADER);
    let runs_of = |workload: &str, variant: Variant| -> Option<&Vec<Run>> {
        results
            .get(workload)?
            .iter()
            .find(|(v, _)| *v == variant)
            .and_then(|(_, runs)| runs.as_ref().ok())
            .filter(|runs| !runs.is_empty())
    };
    let rates = |runs: &Vec<Run>| -> Vec<f64> { runs.iter().map(|r| r.throughput).collect() };
    let mut line = |verdict: Verdict, text: String| {
        let verdict = match verdict {
            Verdict::Pass => "PASS: ",
            Verdict::Fail => "FAIL: ",
            Verdict::Unresolved => "UNRESOLVED: ",
            Verdict::Skip => "SKIP: ",
            Verdict::NoBudget => "",
        };
        let _ = writeln!(md, "- {verdict}{text}");
    };
    for workload in ["futex", "tcp"] {
        if !results.contains_key(workload) {
            continue;
        }
        let alone = runs_of(workload, Variant::Alone).map(rates);
        let offcpu = runs_of(workload, Variant::Offcputime).map(rates);
        for (variant, tool) in
            [(Variant::Tracer, "tracer"), (Variant::TracerNoWakers, "tracer --no-wakers")]
        {
            let tracer = runs_of(workload, variant).map(rates);
            let (Some(alone), Some(tracer), Some(offcpu)) = (&alone, &tracer, &offcpu) else {
                line(
                    Verdict::Skip,
                    format!("ping-pong {workload}: {tool} vs offcputime: a variant did not run"),
                );
                continue;
            };
            // The tracer's loss as a share of offcputime's: both from the same rounds' alone
            // arm, so a round's speed cancels; resampled by round.
            let share = latency::of_round_medians(&[alone, tracer, offcpu], |m| {
                let offcpu_loss = 1.0 - m[2] / m[0];
                (offcpu_loss > 0.0).then(|| (1.0 - m[1] / m[0]) / offcpu_loss)
            });
            let tracer_loss = 1.0 - median(tracer.iter().copied()) / median(alone.iter().copied());
            let offcpu_loss = 1.0 - median(offcpu.iter().copied()) / median(alone.iter().copied());
            let mut budgets = Vec::new();
            if variant == Variant::Tracer {
                budgets.push(("a third", PING_PONG_LOSS_VS_OFFCPUTIME, "issue 7"));
            }
            if workload == "futex" {
                budgets.push(("a fifth", EXACT_PING_PONG_LOSS_VS_OFFCPUTIME, "issue 15, exact"));
            }
            for (what, limit, issue) in budgets {
                let (verdict, share_text, by_medians) = match &share {
                    Some(share) => (
                        at_most(share, limit),
                        share_text(share),
                        medians_verdict(Verdict::of(share.ratio <= limit)),
                    ),
                    None => (Verdict::Skip, "no share: offcputime cost nothing".into(), ""),
                };
                line(
                    verdict,
                    format!(
                        "ping-pong {workload}: {tool} loses {:.1}% of throughput, offcputime \
                         {:.1}%: {share_text}, at most {what} ({issue}){by_medians}",
                        100.0 * tracer_loss,
                        100.0 * offcpu_loss,
                    ),
                );
            }
        }
        let sampled = runs_of(workload, Variant::TracerSampled).map(rates);
        let (Some(alone), Some(sampled)) = (&alone, &sampled) else {
            line(
                Verdict::Skip,
                format!("ping-pong {workload}: tracer --mode sampled: a variant did not run"),
            );
            continue;
        };
        let Some(loss) = loss_against(alone, sampled) else { continue };
        line(
            at_most(&loss, SAMPLED_PING_PONG_MAX_LOSS),
            format!(
                "ping-pong {workload}: tracer --mode sampled loses {:.1}% of throughput ({}), \
                 at most {:.0}% (issue 15){}",
                100.0 * loss.ratio,
                loss_interval_text(&loss),
                100.0 * SAMPLED_PING_PONG_MAX_LOSS,
                medians_verdict(Verdict::of(loss.ratio <= SAMPLED_PING_PONG_MAX_LOSS))
            ),
        );
        // The machine's part of that loss: no verdict, beside it.
        let machine_arms = [
            (
                Variant::IdleWakes,
                format!(
                    "a process waking {SAMPLED_RATE_HZ} times a second on the tool's CPU, doing \
                     nothing (no budget: what this machine charges for waking its other CPU at \
                     the sampled mode's rate, whatever the reads do)"
                ),
            ),
            (
                Variant::ReadBursts,
                format!(
                    "the same, each wake then busy {READ_BUSY_US} µs, about a sampled read's CPU \
                     time (no budget: what this machine charges for the reads' bursts on its \
                     other CPU, whatever they do)"
                ),
            ),
        ];
        for (variant, what) in machine_arms {
            let runs = runs_of(workload, variant).map(rates);
            let Some(arm) = runs.as_ref().and_then(|runs| loss_against(alone, runs)) else {
                continue;
            };
            line(
                Verdict::NoBudget,
                format!(
                    "ping-pong {workload}: {what}: {:.1}% lost ({}); sampled {:.1}%",
                    100.0 * arm.ratio,
                    loss_interval_text(&arm),
                    100.0 * loss.ratio,
                ),
            );
        }
    }
    for (verdict, text) in service.map(service::ServiceResult::budget_lines).unwrap_or_default() {
        line(verdict, text);
    }
    if results.contains_key("waits50k") {
        match runs_of("waits50k", Variant::Tracer) {
            Some(runs) => {
                let tools: Vec<&ToolUsage> = runs.iter().filter_map(|r| r.tool.as_ref()).collect();
                let share = median(tools.iter().map(|t| t.window_cpu_share));
                let waits = median(tools.iter().filter_map(|t| t.waits_per_second));
                line(
                    Verdict::of(share < MAX_TRACER_CPU_SHARE && waits >= 50_000.0),
                    format!(
                        "tracer CPU at 50,000 waits/s: {:.2}% of one core while recording ({} waits/s \
                         seen, must be ≥ 50,000; budget < 2%)",
                        100.0 * share,
                        group(waits)
                    ),
                );
            }
            None => line(Verdict::Skip, "tracer CPU at 50,000 waits/s: the run failed".into()),
        }
    }
    if results.contains_key("waits100k") {
        match runs_of("waits100k", Variant::Tracer) {
            Some(runs) => {
                let tools: Vec<&ToolUsage> = runs.iter().filter_map(|r| r.tool.as_ref()).collect();
                let lost: u64 = tools.iter().filter_map(|t| t.events_lost).sum();
                let waits = median(tools.iter().filter_map(|t| t.waits_per_second));
                line(
                    Verdict::of(lost == 0 && tools.iter().all(|t| t.events_lost.is_some())),
                    format!(
                        "no lost events at 100,000 waits/s: {lost} lost (ring buffer full, in-flight \
                         map full, wakers lost) over all rounds, {} waits/s seen",
                        group(waits)
                    ),
                );
            }
            None => line(Verdict::Skip, "lost events at 100,000 waits/s: the run failed".into()),
        }
    }
    if let Some(pileup) = pileup {
        let rss = pileup
            .snapshot_rss_kib
            .iter()
            .chain(&pileup.record_rss_kib)
            .copied()
            .max()
            .unwrap_or(0);
        line(
            Verdict::of(rss < MAX_PILEUP_RSS_KIB),
            format!(
                "peak memory on the {PILEUP_THREADS}-thread pile-up: {:.1} MiB (snapshot and record; budget < 100 MiB)",
                rss as f64 / 1024.0
            ),
        );
    }
    // Rows with budgets of their own (Redis, collateral) leave this section empty.
    if md == HEADER {
        return String::new();
    }
    let _ = writeln!(md);
    md
}

/// What an arm that ran `rates` lost against `alone`'s, round by round: 1 − their ratio,
/// whose interval's ends swap.
fn loss_against(alone: &[f64], rates: &[f64]) -> Option<RatioEstimate> {
    let ratio = latency::median_ratio(alone, rates)?;
    Some(RatioEstimate {
        ratio: 1.0 - ratio.ratio,
        low: if ratio.high.is_infinite() { 0.0 } else { 1.0 - ratio.high },
        high: if ratio.high.is_infinite() { f64::INFINITY } else { 1.0 - ratio.low },
    })
}

/// A loss's interval, as the budget lines give it.
fn loss_interval_text(loss: &RatioEstimate) -> String {
    loss.interval_of(|v| format!("{:.1}%", 100.0 * v))
        .map_or("too few rounds for an interval".into(), |(low, high)| {
            format!("95% interval {low} to {high}")
        })
}

/// A budget on an estimate with an interval: PASS when the whole interval is within it,
/// FAIL when the whole interval is beyond it, else UNRESOLVED. Without an interval (too few
/// rounds) the estimate alone decides.
fn at_most(estimate: &RatioEstimate, limit: f64) -> Verdict {
    if estimate.high.is_infinite() {
        Verdict::of(estimate.ratio <= limit)
    } else if estimate.high <= limit {
        Verdict::Pass
    } else if estimate.low > limit {
        Verdict::Fail
    } else {
        Verdict::Unresolved
    }
}

/// The verdict of the medians alone, which is what the issues' acceptance reads ("medians
/// from the same run"), beside the interval's, which says whether this machine resolves it.
fn medians_verdict(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "; by the medians: PASS",
        Verdict::Fail => "; by the medians: FAIL",
        Verdict::Unresolved | Verdict::Skip | Verdict::NoBudget => "",
    }
}

/// A share of offcputime's loss with its interval: `0.21 of offcputime's loss (95% interval
/// 0.15–0.27)`.
fn share_text(share: &RatioEstimate) -> String {
    let interval = share
        .interval_of(|v| format!("{v:.2}"))
        .map_or("too few rounds for an interval".into(), |(low, high)| {
            format!("95% interval {low}–{high}")
        });
    format!("{:.2} of offcputime's loss ({interval})", share.ratio)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 }
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

fn ratio_text(value: f64, base: f64) -> String {
    let ratio = value / base;
    format!("{ratio:.3} ({:+.1}%)", 100.0 * (ratio - 1.0))
}

/// 1234567.8 → "1,234,568".
fn group(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

fn one_line(text: &str) -> String {
    text.lines().next().unwrap_or("").replace('|', "/")
}

// ---------------------------------------------------------------------------------------
// Processes: spawn with captured output, signal, reap with resource usage.

struct Usage {
    cpu: Duration,
    max_rss_kib: u64,
}

fn exited_ok(status: i32) -> bool {
    // A tool stopped by SIGINT that handles it exits 0.
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// A child with its output read by threads (so it never blocks on a full pipe); killed and
/// reaped on drop if still running.
struct Proc {
    name: String,
    pid: i32,
    _child: Child,
    stdout_rx: mpsc::Receiver<String>,
    stderr_rx: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Vec<String>,
    reaped: bool,
}

impl Proc {
    fn spawn(name: &str, command: &mut Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {command:?}"))?;
        let stdout_rx = read_lines(child.stdout.take().context("no stdout pipe")?);
        let stderr_rx = read_lines(child.stderr.take().context("no stderr pipe")?);
        Ok(Self {
            name: name.to_string(),
            pid: child.id() as i32,
            _child: child,
            stdout_rx,
            stderr_rx,
            stdout: Vec::new(),
            stderr: Vec::new(),
            reaped: false,
        })
    }

    fn collect_output(&mut self) {
        self.stdout.extend(self.stdout_rx.try_iter());
        self.stderr.extend(self.stderr_rx.try_iter());
    }

    /// Waits for a stdout line matching `wanted`; returns it.
    fn wait_stdout_line(
        &mut self,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if wanted(&line) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if left > Duration::ZERO => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.collect_output();
                    bail!(
                        "{} printed no expected line within {timeout:?}: {}",
                        self.name.clone(),
                        self.stderr_tail()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(50));
                    self.collect_output();
                    bail!("{} ended early: {}", self.name.clone(), self.stderr_tail())
                }
            }
        }
    }

    fn signal(&self, signal: i32) {
        if !self.reaped {
            // SAFETY: kill has no memory effects; the pid is our unreaped child, so it cannot
            // have been reused.
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    /// The summed CPU time of the child's threads so far, in nanoseconds (schedstat).
    fn cpu_ns(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else { return 0 };
        tasks
            .filter_map(Result::ok)
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|stat| stat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()))
            .sum()
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<(i32, Usage)>> {
        self.wait4(WNOHANG)
    }

    /// Reaps the child within `timeout`, else kills it and fails.
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<(i32, Usage)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(done) = self.wait4(WNOHANG)? {
                return Ok(done);
            }
            if Instant::now() > deadline {
                self.signal(SIGKILL);
                bail!("{} did not end within {timeout:?}; killed it", self.name);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait4(&mut self, options: i32) -> anyhow::Result<Option<(i32, Usage)>> {
        if self.reaped {
            bail!("{} was already reaped", self.name);
        }
        let mut status = 0;
        let mut rusage = zeroed_rusage();
        // SAFETY: status and rusage are valid for writes.
        let reaped = unsafe { libc::wait4(self.pid, &mut status, options, &mut rusage) };
        if reaped < 0 {
            bail!(
                "wait4 on {} ({}) failed: {}",
                self.name,
                self.pid,
                std::io::Error::last_os_error()
            );
        }
        if reaped == 0 {
            return Ok(None);
        }
        self.reaped = true;
        // Let the reader threads drain what the child wrote last.
        thread::sleep(Duration::from_millis(20));
        self.collect_output();
        let micros = |time: libc::timeval| {
            Duration::from_micros((time.tv_sec * 1_000_000 + time.tv_usec).max(0) as u64)
        };
        let usage = Usage {
            cpu: micros(rusage.ru_utime) + micros(rusage.ru_stime),
            // Linux reports ru_maxrss in KiB.
            max_rss_kib: rusage.ru_maxrss.max(0) as u64,
        };
        Ok(Some((status, usage)))
    }

    fn stdout_lines(&mut self) -> Vec<String> {
        self.collect_output();
        self.stdout.clone()
    }

    fn stderr_tail(&mut self) -> String {
        self.collect_output();
        let tail: Vec<&str> = self.stderr.iter().rev().take(3).rev().map(String::as_str).collect();
        if tail.is_empty() { "(nothing on stderr)".into() } else { tail.join(" / ") }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(SIGKILL);
            let mut status = 0;
            // SAFETY: status is valid for writes, and wait4 takes a null rusage; blocking is
            // fine after SIGKILL.
            unsafe { libc::wait4(self.pid, &mut status, 0, std::ptr::null_mut()) };
            self.reaped = true;
        }
    }
}

fn zeroed_rusage() -> libc::rusage {
    // SAFETY: `rusage` is plain integers, for which all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

fn read_lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_holds_or_breaks_only_by_the_whole_interval() {
        assert_eq!(at_most(&RatioEstimate::new(0.15, 0.10, 0.19), 0.2), Verdict::Pass);
        assert_eq!(at_most(&RatioEstimate::new(0.15, 0.10, 0.27), 0.2), Verdict::Unresolved);
        assert_eq!(at_most(&RatioEstimate::new(0.30, 0.21, 0.40), 0.2), Verdict::Fail);
        // Too few rounds for an interval: the estimate decides.
        assert_eq!(at_most(&RatioEstimate::new(0.15, 0.0, f64::INFINITY), 0.2), Verdict::Pass);
        assert_eq!(at_most(&RatioEstimate::new(0.25, 0.0, f64::INFINITY), 0.2), Verdict::Fail);
    }

    #[test]
    fn a_loss_is_one_minus_the_ratio_with_its_interval_turned_round() {
        let alone = [100.0, 102.0, 98.0, 101.0, 99.0];
        let slower = [97.0, 99.0, 95.0, 98.0, 96.0];
        let loss = loss_against(&alone, &slower).expect("rounds");
        let ratio = latency::median_ratio(&alone, &slower).expect("rounds");
        assert!((loss.ratio - (1.0 - ratio.ratio)).abs() < 1e-12, "{loss:?}");
        assert!((loss.low - (1.0 - ratio.high)).abs() < 1e-12, "{loss:?} {ratio:?}");
        assert!((loss.high - (1.0 - ratio.low)).abs() < 1e-12, "{loss:?} {ratio:?}");
        assert!(loss.low <= loss.ratio && loss.ratio <= loss.high, "{loss:?}");
        assert!(loss_interval_text(&loss).starts_with("95% interval "), "{loss:?}");
        // Too few rounds: no interval to turn.
        let loss = loss_against(&alone[..2], &slower[..2]).expect("rounds");
        assert_eq!((loss.low, loss.high), (0.0, f64::INFINITY));
        assert_eq!(loss_interval_text(&loss), "too few rounds for an interval");
    }

    #[test]
    fn a_share_shows_its_interval() {
        assert_eq!(
            share_text(&RatioEstimate::new(0.213, 0.151, 0.268)),
            "0.21 of offcputime's loss (95% interval 0.15–0.27)"
        );
        assert_eq!(
            share_text(&RatioEstimate::new(0.2, 0.0, f64::INFINITY)),
            "0.20 of offcputime's loss (too few rounds for an interval)"
        );
    }
}
