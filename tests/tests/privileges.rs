//! Real-kernel tests of least privilege: the tracer runs as a non-root uid given only the
//! capabilities it names (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, as
//! ambient capabilities through `setpriv`) and traces a root process; without any one of
//! them it refuses in one line naming what is missing.
//!
//! They need root (to hand out the capabilities) and run one at a time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tracer_tests::{
    C_STUCK_SOURCE, RunOutput, TempDir, build_c, read_profile, run_with_timeout, set_mode,
    start_c_stuck, tracer_bin,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");

/// The set the tracer asks for, as setpriv names them.
const CAPABILITIES: [(&str, &str); 4] = [
    ("bpf", "CAP_BPF"),
    ("perfmon", "CAP_PERFMON"),
    ("sys_ptrace", "CAP_SYS_PTRACE"),
    ("dac_read_search", "CAP_DAC_READ_SEARCH"),
];
/// nobody: a uid with no rights of its own.
const NOBODY: &str = "65534";
const HANDLERS: usize = 8;
const WORKLOAD_SECONDS: f64 = 120.0;
const TIMEOUT: Duration = Duration::from_secs(60);

/// A copy of the tracer that uid nobody can run (the build tree may sit in a directory
/// only root can enter, as a CI's temporary clone does), in a directory nobody can write
/// its reports to.
fn tracer_for_nobody(dir: &TempDir) -> PathBuf {
    set_mode(dir.path(), 0o777);
    let copy = dir.join("tracer");
    std::fs::copy(tracer_bin(), &copy).expect("copy the tracer");
    set_mode(&copy, 0o755);
    copy
}

/// `tracer ARGS...` as uid nobody with the capabilities `caps` (setpriv names) only.
fn as_nobody_with(tracer: &Path, caps: &[&str], args: &[&str]) -> RunOutput {
    let caps: Vec<String> = caps.iter().map(|cap| format!("+{cap}")).collect();
    let caps = caps.join(",");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"]);
    if !caps.is_empty() {
        cmd.arg(format!("--inh-caps={caps}")).arg(format!("--ambient-caps={caps}"));
    }
    cmd.arg(tracer).args(args);
    run_with_timeout("setpriv tracer", cmd, TIMEOUT)
}

#[test]
fn the_named_capabilities_are_enough_to_trace_a_root_process() {
    // Stuck for good: a snapshot of a live pile-up can catch a handler between two waits.
    let build = TempDir::new("privileges-build");
    let bin = build_c(build.path(), C_STUCK_SOURCE, "c-stuck");
    let stuck = start_c_stuck(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    let pid = stuck.workload.pid().to_string();
    let dir = TempDir::new("privileges");
    let tracer = tracer_for_nobody(&dir);
    let all: Vec<&str> = CAPABILITIES.iter().map(|(cap, _)| *cap).collect();
    for (command, extra) in [("record", &["--duration", "2s"][..]), ("snapshot", &[][..])] {
        let json = dir.join(&format!("{command}.json"));
        let mut args = vec![command, "--pid", &pid, "--output", json.to_str().expect("utf-8")];
        args.extend(extra);
        let out = as_nobody_with(&tracer, &all, &args);
        assert!(
            out.status.success(),
            "{command} as nobody failed ({}):\n{}",
            out.status,
            out.stderr
        );
        let profile = read_profile(&json);
        let at_site = profile
            .stacks
            .iter()
            .filter(|stack| stack.call_site() == "enqueue_stat")
            .flat_map(|stack| &stack.stats.threads)
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(at_site.len(), HANDLERS, "{command}: every handler at enqueue_stat");
        // /proc and the threads' memory were readable: nothing was refused.
        assert_eq!(profile.thread_counts.unreadable, 0, "{command}: threads unreadable");
    }
}

#[test]
fn each_missing_capability_is_named_in_one_line() {
    let dir = TempDir::new("privileges-missing");
    let tracer = tracer_for_nobody(&dir);
    // Any process will do: the tracer refuses before it looks.
    let pid = std::process::id().to_string();
    for (left_out, name) in CAPABILITIES {
        let caps: Vec<&str> =
            CAPABILITIES.iter().map(|(cap, _)| *cap).filter(|cap| *cap != left_out).collect();
        let out = as_nobody_with(&tracer, &caps, &["snapshot", "--pid", &pid]);
        assert!(!out.status.success(), "snapshot without {name} succeeded");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line without {name}:\n{}", out.stderr);
        assert!(
            lines[0].starts_with(&format!("tracer: missing capability {name} (")),
            "without {name}: {}",
            lines[0]
        );
    }
    let none = as_nobody_with(&tracer, &[], &["snapshot", "--pid", &pid]);
    let names: Vec<&str> = CAPABILITIES.iter().map(|(_, name)| *name).collect();
    for name in names {
        assert!(none.stderr.contains(name), "{name} not named:\n{}", none.stderr);
    }
}
