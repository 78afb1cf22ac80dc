//! Goroutine groups: a table like the header lines of pprof's goroutine profile
//! (`10000 @ main.f [chan receive]`, most first, with the frames below) for stdout, and
//! the stacks of the [`Profile`](crate::model::Profile) the report exporters write
//! (one per group, of kind [`WaitKind::Goroutine`], its object the Go wait reason and,
//! for an IO wait, the endpoint: `IO wait 127.0.0.1:5432`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use tracer_common::WaitKind;

use super::binary::GoBinary;
use super::goroutines::{Goroutine, GoroutineCounts};
use super::pclntab::GoLocation;
use crate::model::{ProfileStack, WaitStats, log2_bucket};
use crate::report::summary::{format_age, format_duration};
use crate::stacks::Frame;

/// Go's own system goroutines start in package runtime, except the main goroutine
/// (`runtime.isSystemGoroutine`).
const USER_RUNTIME_ROOTS: &[&str] = &["runtime.main", "runtime.handleAsyncEvent"];

/// One symbolized frame of a goroutine stack.
#[derive(Clone, Debug)]
pub struct GoFrame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The process address looked up.
    pub pc: u64,
    /// An inlined call: the next frame, of the same `pc`, is its caller.
    pub inlined: bool,
}

/// Goroutines with the same stack and wait reason.
#[derive(Debug)]
pub struct GoroutineGroup {
    pub count: u64,
    /// Leaf first.
    pub frames: Vec<GoFrame>,
    pub wait_reason: String,
    /// What the goroutines wait on, where it was named (an IO wait's socket endpoint).
    pub object: Option<String>,
    /// The longest wait the runtime recorded (a lower bound: a GC records it), if any.
    pub longest_wait: Option<Duration>,
    /// The walk stopped before the goroutine's start function.
    pub truncated: bool,
    /// Started in package runtime: the GC workers, sweeper, finalizers, ….
    pub system: bool,
    /// The group's waits. A snapshot's "threads" are the goroutine ids (as u32) and its
    /// durations the known waits (lower bounds); a recording has the kernel's sums.
    pub stats: WaitStats,
}

#[derive(Default)]
pub struct GoSnapshot {
    /// Most goroutines first.
    pub groups: Vec<GoroutineGroup>,
    pub counts: GoroutineCounts,
    /// Why each named endpoint's goroutines wait (`send buffer full (…)`).
    pub endpoint_states: BTreeMap<String, String>,
}

impl GoSnapshot {
    pub fn build(
        binary: &GoBinary<'_>,
        bias: u64,
        goroutines: Vec<Goroutine>,
        counts: GoroutineCounts,
        endpoint_states: BTreeMap<String, String>,
    ) -> Self {
        // CLOCK_MONOTONIC: the clock of the runtime's `nanotime()`.
        let now = i64::try_from(crate::threads::blocked_now::monotonic_now_ns()).unwrap_or(i64::MAX);
        type Key = (Vec<u64>, u8, Option<String>);
        let mut by_stack: HashMap<Key, (WaitStats, i64, bool)> = HashMap::new();
        for Goroutine {
            goid,
            address: _,
            sp: _,
            tracking_seq: _,
            wait_reason,
            wait_since,
            pcs,
            truncated,
            object,
        } in goroutines
        {
            let (stats, oldest, _) = by_stack
                .entry((pcs, wait_reason, object))
                .or_insert((WaitStats::default(), i64::MAX, truncated));
            stats.waits += 1;
            // Goroutine ids stand in for thread ids: they tell the goroutines apart.
            stats.threads.insert(goid as u32);
            if wait_since > 0 {
                *oldest = (*oldest).min(wait_since);
                if now > wait_since {
                    add_known_wait(stats, (now - wait_since) as u64);
                }
            }
        }
        let mut names: HashMap<u64, Vec<GoFrame>> = HashMap::new();
        let mut groups: Vec<GoroutineGroup> = by_stack
            .into_iter()
            .map(|((pcs, reason, object), (stats, oldest, truncated))| {
                let frames: Vec<GoFrame> = pcs
                    .iter()
                    .flat_map(|&pc| {
                        names
                            .entry(pc)
                            // Every pc is a return address: look up the call one byte back.
                            .or_insert_with(|| frames_of(binary, pc.wrapping_sub(bias).wrapping_sub(1), pc))
                            .clone()
                    })
                    .collect();
                let root = frames
                    .last()
                    .map(|frame| frame.function.as_str())
                    .unwrap_or_default();
                let system = !truncated
                    && root.starts_with("runtime.")
                    && !USER_RUNTIME_ROOTS.contains(&root);
                let wait_reason = match binary.wait_reasons.get(usize::from(reason)) {
                    Some(name) if !name.is_empty() => name.clone(),
                    _ => format!("wait reason {reason}"),
                };
                let longest_wait = (oldest != i64::MAX && now > oldest)
                    .then(|| Duration::from_nanos((now - oldest) as u64));
                GoroutineGroup {
                    count: stats.waits,
                    frames,
                    wait_reason,
                    object,
                    longest_wait,
                    truncated,
                    system,
                    stats,
                }
            })
            .collect();
        groups.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.headline().cmp(b.headline()))
                .then_with(|| a.object.cmp(&b.object))
        });
        Self { groups, counts, endpoint_states }
    }

    fn shown(&self) -> impl Iterator<Item = &GoroutineGroup> {
        self.groups.iter().filter(|group| !group.system)
    }

    /// Goroutines in the runtime's own system goroutines (not shown).
    pub fn system_goroutines(&self) -> u64 {
        self.groups
            .iter()
            .filter(|group| group.system)
            .map(|group| group.count)
            .sum()
    }

    /// The stdout table: a summary line, then the groups (at most `top`, 0 for all).
    pub fn render_text(
        &self,
        comm: &str,
        pid: u32,
        version: &str,
        top: usize,
        took: Duration,
    ) -> String {
        let GoroutineCounts {
            total,
            waiting,
            running,
            runnable,
            in_syscall,
            changed_while_read,
            unreadable,
            io_wait_named: _,
            io_wait_unresolved: _,
            io_wait_not_socket: _,
        } = self.counts;
        let system = self.system_goroutines();
        let truncated: u64 = self
            .groups
            .iter()
            .filter(|group| group.truncated)
            .map(|group| group.count)
            .sum();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "goroutines of pid {pid} ({comm}, {version}): {total} total, {waiting} waiting, {running} running, \
             {runnable} runnable, {in_syscall} in syscalls; {system} runtime system goroutines hidden; \
             {changed_while_read} skipped (changed while read){}{}; snapshot took {}",
            if unreadable > 0 {
                format!(", {unreadable} unreadable")
            } else {
                String::new()
            },
            if truncated > 0 {
                format!(", {truncated} with truncated stacks")
            } else {
                String::new()
            },
            format_duration(took.as_nanos() as u64),
        );
        self.write_io_wait_counts(&mut out);
        self.write_groups(&mut out, top);
        self.write_endpoints(&mut out);
        out
    }

    /// How many goroutines in IO wait were named by their socket, and why the others were
    /// not (a line only when there were IO waits).
    pub fn write_io_wait_counts(&self, out: &mut String) {
        let GoroutineCounts { io_wait_named, io_wait_unresolved, io_wait_not_socket, .. } =
            self.counts;
        if io_wait_named + io_wait_unresolved + io_wait_not_socket > 0 {
            let _ = writeln!(
                out,
                "IO waits: {io_wait_named} named by their socket, {io_wait_unresolved} unresolved, \
                 {io_wait_not_socket} not on sockets"
            );
        }
    }

    /// The shown groups, most goroutines first (at most `top`, 0 for all), each headed like
    /// pprof's `N @ function [reason]` with the longest wait known, then its frames.
    pub fn write_groups(&self, out: &mut String, top: usize) {
        let shown: Vec<&GoroutineGroup> = self.shown().collect();
        let limit = if top == 0 {
            shown.len()
        } else {
            top.min(shown.len())
        };
        for group in &shown[..limit] {
            let _ = writeln!(out);
            let since = group
                .longest_wait
                .map(|wait| format!(", longest {}", format_age(wait.as_nanos() as u64, true)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{} @ {} [{}{since}]",
                group.count,
                group.headline(),
                group.wait_name()
            );
            group.write_frames(out);
        }
        if limit < shown.len() {
            let _ = writeln!(
                out,
                "\n… {} more stacks (--top 0 shows all)",
                shown.len() - limit
            );
        }
    }

    /// The shown goroutines by endpoint, with why each endpoint's waits wait.
    pub fn write_endpoints(&self, out: &mut String) {
        let mut by_endpoint: BTreeMap<&str, u64> = BTreeMap::new();
        for group in self.shown() {
            if let Some(endpoint) = &group.object {
                *by_endpoint.entry(endpoint).or_default() += group.count;
            }
        }
        if by_endpoint.is_empty() {
            return;
        }
        let _ = writeln!(out, "\n{:<ENDPOINT_WIDTH$} {:>10}  STATE", "BY ENDPOINT", "GOROUTINES");
        for (endpoint, goroutines) in by_endpoint {
            let state = self.endpoint_states.get(endpoint).map_or("", String::as_str);
            let _ = writeln!(out, "{endpoint:<ENDPOINT_WIDTH$} {goroutines:>10}  {state}");
        }
    }

    /// The shown groups (not the runtime's system goroutines) as profile stacks.
    pub fn profile_stacks(&self, module: &str, in_progress: bool) -> Vec<ProfileStack> {
        self.shown()
            .map(|group| group.profile_stack(module, in_progress))
            .collect()
    }
}

/// The endpoint column's width (an IPv4 address and port, and then some).
const ENDPOINT_WIDTH: usize = 22;

/// Adds a wait known only from the runtime's `waitsince` (set by a GC, after the wait
/// began): a lower bound.
fn add_known_wait(stats: &mut WaitStats, duration_ns: u64) {
    let known: u64 = stats.log2_histogram.values().sum();
    stats.min_ns = if known == 0 {
        duration_ns
    } else {
        stats.min_ns.min(duration_ns)
    };
    stats.max_ns = stats.max_ns.max(duration_ns);
    stats.total_ns += duration_ns;
    stats.lower_bound = true;
    *stats
        .log2_histogram
        .entry(log2_bucket(duration_ns))
        .or_default() += 1;
}

impl GoroutineGroup {
    /// The group's frames as pprof's goroutine profile prints them (`#\tfunction\tfile:line`).
    pub fn write_frames(&self, out: &mut String) {
        for frame in &self.frames {
            let place = match (&frame.file, frame.line) {
                (Some(file), Some(line)) => format!("{file}:{line}"),
                (Some(file), None) => file.clone(),
                _ => String::new(),
            };
            let _ = writeln!(out, "#\t{}\t{place}", frame.function);
        }
        if self.truncated {
            let _ = writeln!(out, "#\t… (stack truncated)");
        }
    }

    /// The wait reason and what it waits on: `IO wait 127.0.0.1:5432`, `chan receive`.
    pub fn wait_name(&self) -> String {
        match &self.object {
            Some(object) => format!("{} {object}", self.wait_reason),
            None => self.wait_reason.clone(),
        }
    }

    /// One stack of the profile: root first, the program's own functions marked as the
    /// main module's (what `call_site` looks for), the wait reason as the object.
    pub fn profile_stack(&self, module: &str, in_progress: bool) -> ProfileStack {
        let frames = self
            .frames
            .iter()
            .rev()
            .map(|frame| Frame {
                name: frame.function.clone(),
                module: module.to_owned(),
                module_is_main: !is_standard_library(&frame.function),
                file: frame.file.clone(),
                line: frame.line,
                inlined: frame.inlined,
                address: frame.pc,
            })
            .collect();
        ProfileStack {
            frames,
            kind: WaitKind::Goroutine,
            object: Some(self.wait_name()),
            truncated: self.truncated,
            in_progress,
            stats: self.stats.clone(),
        }
    }

    /// The function a reader looks for: the innermost frame outside Go's standard library
    /// (so `main.writeToBackend`, not `internal/poll.runtime_pollWait`), else the innermost
    /// outside package runtime, else the leaf.
    pub fn headline(&self) -> &str {
        let pick = |keep: &dyn Fn(&str) -> bool| {
            self.frames
                .iter()
                .map(|frame| frame.function.as_str())
                .find(|name| keep(name))
        };
        pick(&|name| !is_standard_library(name))
            .or_else(|| pick(&|name| !name.starts_with("runtime.")))
            .or_else(|| self.frames.first().map(|frame| frame.function.as_str()))
            .unwrap_or("[unknown]")
    }
}

/// Standard-library packages have no dot in their first path element ("net/http",
/// "internal/poll", "runtime"); "main" is the program's own.
pub fn is_standard_library(function: &str) -> bool {
    let package_end = function.rfind('/').map_or(0, |slash| slash + 1);
    let package = match function[package_end..].find('.') {
        Some(dot) => &function[..package_end + dot],
        None => function,
    };
    let first = package.split('/').next().unwrap_or_default();
    package != "main" && !first.contains('.')
}

/// The frames of the link-time address `link_pc` (found at the process address `pc`),
/// innermost inlined call first and the function the code was compiled into last; one
/// `[unknown 0x…]` frame if no function contains it.
pub fn frames_of(binary: &GoBinary<'_>, link_pc: u64, pc: u64) -> Vec<GoFrame> {
    let frames: Vec<GoFrame> = binary
        .pclntab
        .frames(link_pc)
        .into_iter()
        .map(|GoLocation { function, entry: _, file, line, inlined }| GoFrame {
            function,
            file,
            line,
            pc,
            inlined,
        })
        .collect();
    if frames.is_empty() {
        return vec![GoFrame {
            function: format!("[unknown {pc:#x}]"),
            file: None,
            line: None,
            pc,
            inlined: false,
        }];
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str) -> GoFrame {
        GoFrame {
            function: name.to_owned(),
            file: None,
            line: None,
            pc: 0,
            inlined: false,
        }
    }

    #[test]
    fn headline_is_the_innermost_non_standard_frame() {
        let group = |names: &[&str]| GoroutineGroup {
            count: 1,
            frames: names.iter().copied().map(frame).collect(),
            wait_reason: "IO wait".into(),
            object: None,
            longest_wait: None,
            truncated: false,
            system: false,
            stats: WaitStats::default(),
        };
        let io = group(&[
            "runtime.gopark",
            "internal/poll.runtime_pollWait",
            "net.(*conn).Write",
            "main.writeToBackend",
        ]);
        assert_eq!(io.headline(), "main.writeToBackend");
        let lib = group(&["runtime.gopark", "github.com/x/y.(*T).Run", "main.main"]);
        assert_eq!(lib.headline(), "github.com/x/y.(*T).Run");
        let std_only = group(&["runtime.gopark", "net/http.(*Server).Serve", "runtime.main"]);
        assert_eq!(std_only.headline(), "net/http.(*Server).Serve");
        let runtime_only = group(&["runtime.gopark", "runtime.bgsweep"]);
        assert_eq!(runtime_only.headline(), "runtime.gopark");
    }

    #[test]
    fn groups_become_goroutine_stacks_whose_call_site_is_the_program() {
        let mut stats = WaitStats { waits: 2, threads: [17, 18].into(), ..WaitStats::default() };
        add_known_wait(&mut stats, 3_000);
        let group = GoroutineGroup {
            count: 2,
            frames: ["runtime.gopark", "runtime.chanrecv1", "main.receiver", "runtime.goexit"]
                .into_iter()
                .map(frame)
                .collect(),
            wait_reason: "chan receive".into(),
            object: None,
            longest_wait: None,
            truncated: false,
            system: false,
            stats,
        };
        let stack = group.profile_stack("goroutines", true);
        assert_eq!(stack.kind, WaitKind::Goroutine);
        assert_eq!(stack.object.as_deref(), Some("chan receive"));
        let names: Vec<&str> = stack.frames.iter().map(|frame| frame.name.as_str()).collect();
        assert_eq!(
            names,
            ["runtime.goexit", "main.receiver", "runtime.chanrecv1", "runtime.gopark"]
        );
        assert!(stack.frames.iter().all(|frame| frame.module == "goroutines"));
        assert_eq!(stack.call_site(), "main.receiver");
        let WaitStats { waits, min_ns, max_ns, lower_bound, ref threads, .. } = stack.stats;
        assert_eq!((waits, min_ns, max_ns, lower_bound), (2, 3_000, 3_000, true));
        assert_eq!(threads.len(), 2, "the goroutines, by id");

        let writer = GoroutineGroup {
            wait_reason: "IO wait".into(),
            object: Some("127.0.0.1:5432".into()),
            ..group
        };
        let stack = writer.profile_stack("goroutines", true);
        assert_eq!(stack.object.as_deref(), Some("IO wait 127.0.0.1:5432"));
    }

    #[test]
    fn standard_library_packages() {
        assert!(is_standard_library("runtime.gopark"));
        assert!(is_standard_library("net/http.(*conn).serve"));
        assert!(!is_standard_library("main.receiver"));
        assert!(!is_standard_library("example.com/a/b.f"));
    }
}
