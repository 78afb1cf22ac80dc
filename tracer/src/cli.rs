//! The command line: clap derive, doc comments are the help text.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::report::{Format, Weight};

/// Which call sites of a live process pile up waiting: its blocked futex and socket
/// waits, unwound and symbolized, as a table, folded stacks and a flamegraph.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about)]
pub struct Cli {
    /// More log output (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record the waits of a running process, then report where they came from.
    Record(RecordArgs),
    /// Show the threads blocked right now, grouped by call stack (nothing is attached to the
    /// process; Go programs: their goroutines).
    // One look: the selection's help in a snapshot's words, not a recording's.
    #[command(
        mut_arg("pid", |arg| arg.help("A process to look at; repeat for several")),
        mut_arg("all", |arg| arg.help("Every user process on the host")),
        mut_arg("cgroup", |arg| arg.help(
            "Every process in this cgroup and the ones below it (a systemd unit, a pod): a \
             path, absolute or under /sys/fs/cgroup"
        ))
    )]
    Snapshot(SnapshotArgs),
    /// Re-render a saved profile (a .json, or a .pb.gz, that tracer wrote) in any
    /// format, or compare it with a baseline (--diff).
    Report(ReportArgs),
    /// Keep tracing a process and serve its waits over HTTP: pprof profiles
    /// (/debug/pprof/block, /debug/pprof/threads) and Prometheus metrics (/metrics).
    Serve(ServeArgs),
    /// Watch pile-ups form, live in the terminal: call sites by threads blocked now, with
    /// their blocked time and the last minutes (the processes are read sampled).
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub processes: ProcessSelection,

    /// Reads per second (default 49).
    #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: Option<u32>,

    /// The most of one CPU the sampled reads may take, in percent (default 5): when reads
    /// would take more (many threads, many new waits), they come less often, each counting
    /// the time since the one before, and the report says at what rate they came.
    #[arg(long, value_name = "PERCENT", value_parser = parse_cpu_budget)]
    pub cpu_budget: Option<f64>,

    /// How to see waits. sampled: every column from the reads of the processes' threads
    /// at --rate, nothing attached. exact (one process, not Go): BLOCKED/s counts every
    /// wait as it ends, from the `sched_switch` probe alone (no wakers: top shows none),
    /// those under --min-wait as a row per kind; THREADS is still read at --rate.
    #[arg(long, value_enum, default_value = "sampled")]
    pub mode: Mode,

    /// In exact mode, waits at least this long are shown by call site; shorter ones,
    /// which carry no stack, as one row per kind.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub min_wait: Duration,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The process to trace; the daemon stops when it exits. Repeat for several (read
    /// sampled; the daemon stops when all have exited).
    #[arg(short, long, required_unless_present_any = ["comm", "cgroup", "all"])]
    pub pid: Vec<u32>,

    /// Trace the process with this name (/proc/PID/comm), and the next one with that
    /// name each time it exits and restarts.
    #[arg(long, value_name = "NAME", value_parser = comm_parser(),
          conflicts_with_all = ["pid", "cgroup", "all"])]
    pub comm: Option<String>,

    /// Every process in this cgroup and below it (a systemd unit, a pod), and those that
    /// start in it later: a path, absolute or under /sys/fs/cgroup. Read sampled; every
    /// series and profile names its process (?pid= and ?comm= pick one).
    #[arg(long, value_name = "PATH", conflicts_with = "all")]
    pub cgroup: Option<PathBuf>,

    /// Every user process on the host, and those that start later: the per-host daemon.
    /// Read sampled; every series and profile names its process (?pid= and ?comm= pick
    /// one).
    #[arg(long, conflicts_with = "pid")]
    pub all: bool,

    /// The address to serve on. Off loopback, the endpoints (which show the target's
    /// call stacks, command line and peers) need --token-file or TLS, or --insecure.
    #[arg(long, default_value = "127.0.0.1:6060", value_name = "ADDR:PORT",
          value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,

    /// A file holding the bearer token every request must carry (`Authorization: Bearer
    /// TOKEN`, as Prometheus's `authorization` sends it); /healthz stays open.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Serve HTTPS with this certificate chain (PEM), with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Ask every client for a certificate signed by these CAs (PEM), and refuse those
    /// without one.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve off loopback without a token or TLS: anyone who reaches the address reads
    /// the target's call stacks.
    #[arg(long)]
    pub insecure: bool,

    /// Waits at least this long carry a stack; shorter ones are only counted per
    /// kind.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub min_wait: Duration,

    /// At most this many (kind, call site, object) series per metric; the rest are
    /// folded into site="other". Default: 200 for one process, 2000 for several (each
    /// process's sites are series of their own).
    #[arg(long, value_name = "N")]
    pub max_series: Option<usize>,

    /// How to see waits. sampled: read the target's threads at --rate, attaching nothing
    /// to it, so the cost stays bounded however often it waits: for always-on use (waits
    /// shorter than the period are statistical; --min-wait does not apply). exact: every
    /// wait as it happens, from the scheduler tracepoints, with its waker.
    #[arg(long, value_enum, default_value = "sampled")]
    pub mode: Mode,

    /// Reads per second in sampled mode (default 49: every wait of 21 ms or more is seen).
    #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: Option<u32>,

    /// The most of one CPU the sampled reads may take, in percent (default 5): when reads
    /// would take more (many threads, many new waits), they come less often, each counting
    /// the time since the one before, and the report says at what rate they came.
    #[arg(long, value_name = "PERCENT", value_parser = parse_cpu_budget)]
    pub cpu_budget: Option<f64>,

    /// Exact mode without the wake tracepoints (`sched_wakeup`, `csd_queue_cpu`): no
    /// wakers, so a long futex wait's chain names no thread that woke it, and every
    /// process on the machine pays one scheduler tracepoint at its switches and none at
    /// its wakes (see README, Overhead).
    #[arg(long)]
    pub no_wakers: bool,

    /// Catch the moment: when CONDITION holds, write the process's snapshot and the last
    /// --trigger-window of its waits (JSON, SVG, .trace.json) to --trigger-dir.
    /// `threads>=N`: N threads of one process blocked at one call site; `wait>=DURATION`:
    /// a thread blocked that long. Repeat for several. The processes are read sampled.
    #[arg(long, value_name = "CONDITION", value_parser = crate::serve::parse_condition,
          requires = "trigger_dir")]
    pub trigger: Vec<crate::serve::Condition>,

    /// Where a trigger writes its files (made if missing).
    #[arg(long, value_name = "DIR", requires = "trigger")]
    pub trigger_dir: Option<PathBuf>,

    /// A trigger fires at most once per this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub trigger_cooldown: Duration,

    /// How much of the time before a firing its recording holds.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub trigger_window: Duration,

    /// The most firings whose files are kept: past it, the oldest that this daemon wrote
    /// are deleted, so that a condition that holds for days does not fill the disk
    /// (0: keep every one).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub trigger_keep: usize,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The saved profile: a .json file tracer wrote (or a .pb.gz / .pprof); `-` (or a
    /// pipe) reads it from standard input.
    #[arg(value_name = "FILE")]
    pub input: PathBuf,

    /// Compare FILE with this baseline: .svg writes a differential flamegraph (red:
    /// more in FILE), .folded differential stacks (`stack before after`), .txt and
    /// stdout the call sites whose blocked time or threads changed most.
    #[arg(long, value_name = "BASE")]
    pub diff: Option<PathBuf>,

    /// Write a report; the extension names the format: .folded, .svg, .pb.gz or
    /// .pprof (pprof), .json, .txt (the table printed to stdout), .chains.svg or
    /// .chains.folded (each wait chain as one tower). Repeat for several.
    #[arg(short, long = "output", value_name = "FILE")]
    pub outputs: Vec<PathBuf>,

    /// What a flamegraph's width (and pprof's default sample type) means. Default:
    /// time for a recording, threads for a snapshot. A recording's pprof counts waits,
    /// not threads (a thread's waits spread over stacks): threads picks its waits.
    #[arg(long, value_enum)]
    pub weight: Option<Weight>,

    /// Write every --output in this format, whatever its extension.
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// Rows in the call-site table printed to stdout.
    #[arg(long, default_value_t = 15, value_parser = parse_top)]
    pub top: usize,
}

/// Which processes: one, several, or many (one report of them all, each stack naming
/// its process).
#[derive(Debug, Args)]
pub struct ProcessSelection {
    /// A process to trace (all its threads, including ones it creates later); repeat for
    /// several.
    #[arg(short, long, required_unless_present_any = ["comm", "cgroup", "all"])]
    pub pid: Vec<u32>,

    /// Every process with this name (/proc/PID/comm), with any --pid. `top`, and a
    /// recording of several, let in the ones of the name that start meanwhile (a restart).
    #[arg(long, value_name = "NAME", value_parser = comm_parser())]
    pub comm: Option<String>,

    /// Every process in this cgroup and the ones below it (a systemd unit, a pod): a
    /// path, absolute or under /sys/fs/cgroup. A recording lets in the ones that start
    /// in it while it runs.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Every user process on the host (sampled, so the cost stays bounded); a recording
    /// lets in the ones that start while it runs.
    #[arg(long, conflicts_with_all = ["pid", "comm", "cgroup"])]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub processes: ProcessSelection,

    /// Write a report; the extension names the format: .folded (collapsed stacks,
    /// weighted by threads), .svg (flamegraph), .pb.gz or .pprof (pprof), .json
    /// (tracer's schema, read back by `tracer report`), .txt (the table printed to
    /// stdout), .chains.svg or .chains.folded (each wait chain as one tower). Repeat for
    /// several.
    #[arg(short, long = "output", value_name = "FILE")]
    pub outputs: Vec<PathBuf>,

    /// Rows in the call-site table printed to stdout.
    #[arg(long, default_value_t = 15, value_parser = parse_top)]
    pub top: usize,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Several processes are recorded sampled, one report of them all.
    #[command(flatten)]
    pub processes: ProcessSelection,

    /// How long to record; Ctrl-C, SIGTERM or the target's exit end it sooner.
    #[arg(short, long, default_value = "10s", value_parser = parse_recording_duration)]
    pub duration: Duration,

    /// Waits at least this long carry a stack; shorter ones are only counted per
    /// kind. 1ms keeps the common short handoff to a few map operations.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub min_wait: Duration,

    /// Write a report; the extension names the format: .folded (collapsed stacks),
    /// .svg (flamegraph), .pb.gz or .pprof (pprof), .json (tracer's schema, read back
    /// by `tracer report`), .txt (the table printed to stdout), .chains.svg or
    /// .chains.folded (each wait chain as one tower on the waiters' stack). Repeat for
    /// several.
    #[arg(short, long = "output", value_name = "FILE")]
    pub outputs: Vec<PathBuf>,

    /// Rows in the call-site table printed to stdout.
    #[arg(long, default_value_t = 15, value_parser = parse_top)]
    pub top: usize,

    /// How to record. sampled: read the target at --rate, attaching nothing to it, so
    /// its cost does not grow with how often it waits (waits shorter than the period
    /// are statistical; --min-wait does not apply). exact: every wait as it happens,
    /// from probes on the wait path (for threads, the scheduler's switch and wake
    /// tracepoints: calls that do not sleep cost nothing; for a Go program, uprobes on
    /// every goroutine switch: about 20 µs each, too much for a busy service). Default:
    /// sampled for a Go program, exact for threads (every wait counted, with its waker).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,

    /// Reads per second in sampled mode (default 49: every wait of 21 ms or more is seen).
    #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: Option<u32>,

    /// The most of one CPU the sampled reads may take, in percent (default 5): when reads
    /// would take more (many threads, many new waits), they come less often, each counting
    /// the time since the one before, and the report says at what rate they came.
    #[arg(long, value_name = "PERCENT", value_parser = parse_cpu_budget)]
    pub cpu_budget: Option<f64>,

    /// Exact mode without the wake tracepoints (`sched_wakeup`, `csd_queue_cpu`): no
    /// wakers, so a long futex wait's chain names no thread that woke it, and every
    /// process on the machine pays one scheduler tracepoint at its switches and none at
    /// its wakes (see README, Overhead).
    #[arg(long)]
    pub no_wakers: bool,

    /// Probe map sizes (for tests that force losses).
    #[command(flatten)]
    pub maps: MapSizes,
}

/// How a recording sees waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Read the target at a rate; nothing attached to it.
    Sampled,
    /// Every wait as it happens, from probes.
    Exact,
}

/// Sizes of the probes' maps. The defaults suit any process; tests shrink them to force
/// the losses every report must count.
#[derive(Clone, Copy, Debug, Default, Args)]
pub struct MapSizes {
    /// Bytes of the ring buffer for long waits (a power of two, at least 4096).
    #[arg(long, hide = true)]
    pub ring_buffer_bytes: Option<u32>,
    /// Bytes of the ring buffer for the wakers of long futex waits (likewise).
    #[arg(long, hide = true)]
    pub wake_ring_buffer_bytes: Option<u32>,
    /// Bytes of the ring buffer for a sampled recording's passes in the kernel
    /// (likewise).
    #[arg(long, hide = true)]
    pub pass_ring_buffer_bytes: Option<u32>,
}

impl ProcessSelection {
    /// The selection, its cgroup checked and made absolute.
    pub fn resolve(&self) -> anyhow::Result<crate::pipeline::members::Selection> {
        let cgroup =
            self.cgroup.as_deref().map(crate::pipeline::target::cgroup_path).transpose()?;
        Ok(crate::pipeline::members::Selection {
            pids: self.pid.clone(),
            comm: self.comm.clone(),
            cgroup,
            all: self.all,
        })
    }
}

/// Rows of a table: at least one (none printed each section's header alone).
fn parse_top(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("give at least 1 row".to_string()),
        Ok(rows) => Ok(rows),
        Err(err) => {
            Err(format!("`{}` is no number of rows ({err})", crate::report::escape_name(text)))
        }
    }
}

/// A process name to wait for, of any bytes (a name that is not UTF-8 is taken as the
/// reports show it, its odd bytes U+FFFD: `is_named` finds it so).
fn comm_parser() -> impl clap::builder::TypedValueParser<Value = String> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().try_map(|name| parse_comm(&name))
}

/// An empty name names no process, and the wait would never end.
fn parse_comm(name: &std::ffi::OsStr) -> Result<String, String> {
    if name.is_empty() {
        return Err("give the name of a process (/proc/PID/comm), not an empty one".to_string());
    }
    Ok(name.to_string_lossy().into_owned())
}

/// Why `--no-wakers` is refused outside an exact recording of threads.
pub const NO_WAKERS_EXACT_ONLY: &str = "--no-wakers is for an exact recording of threads (--mode \
     exact): a sampled recording, and a Go program's goroutines, attach no wake probe";

/// The option given that only a sampled recording takes (`--rate`, `--cpu-budget`), to
/// refuse it in exact mode.
pub fn sampled_only_option(rate: Option<u32>, cpu_budget: Option<f64>) -> Option<&'static str> {
    match (rate, cpu_budget) {
        (Some(_), _) => Some("--rate"),
        (None, Some(_)) => Some("--cpu-budget"),
        (None, None) => None,
    }
}

/// Parses a share of one CPU in percent, from 0.01 to 100 (a read of a millisecond then
/// comes every 10 s at most; a budget near 0 would space the reads out past any clock).
fn parse_cpu_budget(text: &str) -> Result<f64, String> {
    match text.trim().trim_end_matches('%').parse::<f64>() {
        Ok(percent) if (0.01..=100.0).contains(&percent) => Ok(percent),
        _ => Err(format!("give a percentage of one CPU from 0.01 to 100, not {text:?}")),
    }
}

/// An address to listen on: `127.0.0.1:6060`, `[::1]:6060`, or a host name
/// (`localhost:6060`, as Go's pprof servers are given) resolved to its first IPv4
/// address, as Go listens (`::1` often comes first, and a scraper of 127.0.0.1 would
/// find nothing), else its first.
pub fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let shown = crate::report::escape_name(text);
    let addresses: Vec<std::net::SocketAddr> = text
        .to_socket_addrs()
        .map_err(|err| format!("`{shown}` is no ADDR:PORT ({err})"))?
        .collect();
    let ipv4 = addresses.iter().find(|address| address.is_ipv4());
    ipv4.or(addresses.first()).copied().ok_or_else(|| format!("`{shown}` resolves to no address"))
}

/// A recording's length: a duration, not zero (a recording of nothing was written as
/// one of a few microseconds).
pub fn parse_recording_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("`{text}` records nothing (try 500ms, 10s, 1m)")),
        duration => Ok(duration),
    }
}

/// Parses `250us`, `500ms`, `5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration (try 500ms, 5s, 1m)"))?;
    let seconds_per_unit = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown duration unit `{other}` (use ns, us, ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("`{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_takes_no_zero_duration() {
        assert!(parse_recording_duration("0").unwrap_err().contains("records nothing"));
        assert!(parse_recording_duration("0ms").is_err());
        assert_eq!(parse_recording_duration("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn a_table_has_at_least_one_row() {
        assert_eq!(parse_top("3"), Ok(3));
        assert!(parse_top("0").unwrap_err().contains("at least 1"));
        assert!(parse_top("x").unwrap_err().contains("no number of rows"));
    }

    #[test]
    fn listen_takes_an_address_or_a_host_name() {
        assert_eq!(parse_listen("127.0.0.1:6060").unwrap().to_string(), "127.0.0.1:6060");
        assert_eq!(parse_listen("[::1]:6060").unwrap().to_string(), "[::1]:6060");
        assert_eq!(parse_listen("localhost:6060").unwrap().to_string(), "127.0.0.1:6060");
        assert!(parse_listen("localhost").unwrap_err().contains("no ADDR:PORT"));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn an_empty_comm_is_refused() {
        let err = Cli::try_parse_from(["tracer", "serve", "--comm", ""]).unwrap_err();
        assert!(err.to_string().contains("not an empty one"), "{err}");
        assert!(Cli::try_parse_from(["tracer", "serve", "--comm", "nginx"]).is_ok());
    }

    #[test]
    fn bad_durations_say_why() {
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unknown duration unit"));
    }

    #[test]
    fn help_is_stable() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        // The help of every command, pinned: a change to the interface shows in review.
        let mut command = Cli::command();
        let mut help = command.render_long_help().to_string();
        for subcommand in command.get_subcommands_mut() {
            help.push_str(&format!("\n==== tracer {} ====\n", subcommand.get_name()));
            help.push_str(&subcommand.render_long_help().to_string());
        }
        crate::report::golden_tests::check_golden("help.txt", help.as_bytes());
    }
}
