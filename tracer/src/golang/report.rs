//! Goroutine groups and their reports: a table like the header lines of pprof's goroutine
//! profile (`10000 @ main.f [chan receive]`, most first, with the frames below), folded
//! stacks (`comm;root;…;leaf;[chan receive] N`) and an inferno flamegraph of them.
//!
//! These are written here, not by `report::*`, because `Profile` has no place for a Go
//! wait reason: its wait-kind frame is a `tracer_common::WaitKind`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use super::binary::GoBinary;
use super::goroutines::{Goroutine, GoroutineCounts};
use super::pclntab::GoLocation;
use crate::report::summary::{format_age, format_duration};

/// Go's own system goroutines start in package runtime, except the main goroutine
/// (`runtime.isSystemGoroutine`).
const USER_RUNTIME_ROOTS: &[&str] = &["runtime.main", "runtime.handleAsyncEvent"];

/// The report formats a goroutine snapshot writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoFormat {
    Folded,
    Svg,
    Text,
}

impl GoFormat {
    pub fn from_path(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("folded") => Ok(GoFormat::Folded),
            Some("svg") => Ok(GoFormat::Svg),
            Some("txt") => Ok(GoFormat::Text),
            _ => anyhow::bail!(
                "{}: a goroutine snapshot writes .folded, .svg or .txt (not yet .json or pprof)",
                path.display()
            ),
        }
    }
}

/// One symbolized frame of a goroutine stack.
#[derive(Clone, Debug)]
pub struct GoFrame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Goroutines with the same stack and wait reason.
#[derive(Debug)]
pub struct GoroutineGroup {
    pub count: u64,
    /// Leaf first.
    pub frames: Vec<GoFrame>,
    pub wait_reason: String,
    /// The longest wait the runtime recorded (a lower bound: a GC records it), if any.
    pub longest_wait: Option<Duration>,
    /// The walk stopped before the goroutine's start function.
    pub truncated: bool,
    /// Started in package runtime: the GC workers, sweeper, finalizers, ….
    pub system: bool,
}

pub struct GoSnapshot {
    /// Most goroutines first.
    pub groups: Vec<GoroutineGroup>,
    pub counts: GoroutineCounts,
}

impl GoSnapshot {
    pub fn build(
        binary: &GoBinary<'_>,
        bias: u64,
        goroutines: Vec<Goroutine>,
        counts: GoroutineCounts,
    ) -> Self {
        // CLOCK_MONOTONIC: the clock of the runtime's `nanotime()`.
        let now = i64::try_from(crate::blocked_now::monotonic_now_ns()).unwrap_or(i64::MAX);
        let mut by_stack: HashMap<(Vec<u64>, u8), (u64, i64, bool)> = HashMap::new();
        for Goroutine {
            wait_reason,
            wait_since,
            pcs,
            truncated,
        } in goroutines
        {
            let entry = by_stack
                .entry((pcs, wait_reason))
                .or_insert((0, i64::MAX, truncated));
            entry.0 += 1;
            if wait_since > 0 {
                entry.1 = entry.1.min(wait_since);
            }
        }
        let mut names: HashMap<u64, GoFrame> = HashMap::new();
        let mut groups: Vec<GoroutineGroup> = by_stack
            .into_iter()
            .map(|((pcs, reason), (count, oldest, truncated))| {
                let frames: Vec<GoFrame> = pcs
                    .iter()
                    .map(|&pc| {
                        names
                            .entry(pc)
                            .or_insert_with(|| {
                                // Every pc is a return address: look up the call one byte back.
                                let location =
                                    binary.pclntab.locate(pc.wrapping_sub(bias).wrapping_sub(1));
                                frame_of(location, pc)
                            })
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
                    count,
                    frames,
                    wait_reason,
                    longest_wait,
                    truncated,
                    system,
                }
            })
            .collect();
        groups.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.headline().cmp(b.headline()))
        });
        Self { groups, counts }
    }

    fn shown(&self) -> impl Iterator<Item = &GoroutineGroup> {
        self.groups.iter().filter(|group| !group.system)
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
        } = self.counts;
        let system: u64 = self
            .groups
            .iter()
            .filter(|group| group.system)
            .map(|group| group.count)
            .sum();
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
                group.wait_reason
            );
            for frame in &group.frames {
                let place = match (&frame.file, frame.line) {
                    (Some(file), Some(line)) => format!("{file}:{line}"),
                    (Some(file), None) => file.clone(),
                    _ => String::new(),
                };
                let _ = writeln!(out, "#\t{}\t{place}", frame.function);
            }
            if group.truncated {
                let _ = writeln!(out, "#\t… (stack truncated)");
            }
        }
        if limit < shown.len() {
            let _ = writeln!(
                out,
                "\n… {} more stacks (--top 0 shows all)",
                shown.len() - limit
            );
        }
        out
    }

    /// `comm;root;…;leaf;[wait reason] count` per shown group.
    pub fn folded_lines(&self, comm: &str) -> Vec<String> {
        self.shown()
            .map(|group| {
                let mut line = folded_frame(comm);
                for frame in group.frames.iter().rev() {
                    line.push(';');
                    line.push_str(&folded_frame(&frame.function));
                }
                format!(
                    "{line};[{}] {}",
                    folded_frame(&group.wait_reason),
                    group.count
                )
            })
            .collect()
    }

    /// Writes one report; `text` is the table as printed to stdout (the `.txt` format).
    pub fn write(
        &self,
        path: &Path,
        format: GoFormat,
        comm: &str,
        text: &str,
    ) -> anyhow::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        match format {
            GoFormat::Folded => {
                for line in self.folded_lines(comm) {
                    writeln!(out, "{line}")?;
                }
            }
            GoFormat::Text => write!(out, "{text}")?,
            GoFormat::Svg => {
                let lines = self.folded_lines(comm);
                let mut options = inferno::flamegraph::Options::default();
                options.title = format!("goroutines of {comm}");
                options.subtitle =
                    Some("snapshot; width = goroutines; top frame = Go wait reason".to_owned());
                options.count_name = "goroutines".to_owned();
                options.hash = true;
                if lines.is_empty() {
                    let empty = [format!("{comm};[no waiting goroutines] 1")];
                    inferno::flamegraph::from_lines(
                        &mut options,
                        empty.iter().map(String::as_str),
                        &mut out,
                    )?;
                } else {
                    inferno::flamegraph::from_lines(
                        &mut options,
                        lines.iter().map(String::as_str),
                        &mut out,
                    )?;
                }
            }
        }
        out.flush()?;
        Ok(())
    }
}

impl GoroutineGroup {
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
fn is_standard_library(function: &str) -> bool {
    let package_end = function.rfind('/').map_or(0, |slash| slash + 1);
    let package = match function[package_end..].find('.') {
        Some(dot) => &function[..package_end + dot],
        None => function,
    };
    let first = package.split('/').next().unwrap_or_default();
    package != "main" && !first.contains('.')
}

/// Folded stacks separate frames with ';' and end with " count".
fn folded_frame(name: &str) -> String {
    name.replace(';', ":").replace('\n', " ")
}

fn frame_of(location: Option<GoLocation>, pc: u64) -> GoFrame {
    match location {
        Some(GoLocation {
            function,
            entry: _,
            file,
            line,
        }) => GoFrame {
            function,
            file,
            line,
        },
        None => GoFrame {
            function: format!("[unknown {pc:#x}]"),
            file: None,
            line: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str) -> GoFrame {
        GoFrame {
            function: name.to_owned(),
            file: None,
            line: None,
        }
    }

    #[test]
    fn headline_is_the_innermost_non_standard_frame() {
        let group = |names: &[&str]| GoroutineGroup {
            count: 1,
            frames: names.iter().copied().map(frame).collect(),
            wait_reason: "IO wait".into(),
            longest_wait: None,
            truncated: false,
            system: false,
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
    fn standard_library_packages() {
        assert!(is_standard_library("runtime.gopark"));
        assert!(is_standard_library("net/http.(*conn).serve"));
        assert!(!is_standard_library("main.receiver"));
        assert!(!is_standard_library("example.com/a/b.f"));
    }
}
