//! Reading what the tracer wrote: its profiles, read back into the data model with the
//! `tracer` library (what the tests assert on), and checks of the formats for other tools.

use std::collections::BTreeSet;
use std::path::Path;

pub use tracer::{Profile, ProfileKind, ProfileStack, WaitKind};

/// Reads a profile the tracer wrote (`.json`, `.pb.gz`) into the data model.
pub fn read_profile(path: &Path) -> Profile {
    tracer::read_profile(path).unwrap_or_else(|e| panic!("read profile {}: {e}", path.display()))
}

/// The names of a stack's frames, root first.
pub fn function_names(stack: &ProfileStack) -> Vec<&str> {
    stack.frames.iter().map(|frame| frame.name.as_str()).collect()
}

/// Whether some frame of `stack` names the function `name` (see [`frame_is`]).
pub fn has_function(stack: &ProfileStack, name: &str) -> bool {
    stack.frames.iter().any(|frame| frame_is(&frame.name, name))
}

/// Whether `stack` is a wait of `kind`.
pub fn is_kind(stack: &ProfileStack, kind: WaitKind) -> bool {
    stack.kind == kind
}

/// The stacks of `profile` that satisfy `pred`.
pub fn stacks_where<'a>(
    profile: &'a Profile,
    pred: impl Fn(&ProfileStack) -> bool,
) -> Vec<&'a ProfileStack> {
    profile.stacks.iter().filter(|stack| pred(stack)).collect()
}

/// The waits (in a snapshot: the threads, or goroutines) on the stacks that satisfy `pred`.
pub fn total_waits(profile: &Profile, pred: impl Fn(&ProfileStack) -> bool) -> u64 {
    profile.stacks.iter().filter(|stack| pred(stack)).map(|stack| stack.stats.waits).sum()
}

/// The blocked nanoseconds (of waits in progress: blocked so far) on the stacks that
/// satisfy `pred`.
pub fn total_ns(profile: &Profile, pred: impl Fn(&ProfileStack) -> bool) -> u64 {
    profile.stacks.iter().filter(|stack| pred(stack)).map(|stack| stack.stats.total_ns).sum()
}

/// The distinct thread ids (goroutine ids in a Go snapshot) on the stacks that satisfy
/// `pred`.
pub fn thread_ids(profile: &Profile, pred: impl Fn(&ProfileStack) -> bool) -> BTreeSet<u32> {
    profile
        .stacks
        .iter()
        .filter(|stack| pred(stack))
        .flat_map(|stack| stack.stats.threads.iter().copied())
        .collect()
}

/// Asserts that the stacks satisfying `pred` hold exactly `want` threads: as many distinct
/// thread ids as waits (a snapshot counts each blocked thread once), and `want` of them.
pub fn assert_threads(
    profile: &Profile,
    pred: impl Fn(&ProfileStack) -> bool,
    want: u64,
    what: &str,
) {
    let waits = total_waits(profile, &pred);
    let ids = thread_ids(profile, &pred).len() as u64;
    assert_eq!(
        (waits, ids),
        (want, want),
        "{what}: (waits, distinct threads) on the matching stacks, want {want} of each; \
         stacks:\n{}",
        top_stacks(profile, |_| true, 20)
    );
}

/// One line describing a stack, for failure messages: kind, object, state, weight, and the
/// frames root first.
pub fn describe(stack: &ProfileStack) -> String {
    let stats = &stack.stats;
    format!(
        "{} [{}]{}{} waits {} total {} ns ({}..{} ns{}) at {}: {}",
        stack.kind.name(),
        stack.object.as_deref().unwrap_or("-"),
        if stack.in_progress { " in-progress" } else { "" },
        if stack.truncated { " truncated" } else { "" },
        stats.waits,
        stats.total_ns,
        stats.min_ns,
        stats.max_ns,
        if stats.lower_bound { ", lower bounds" } else { "" },
        stack.call_site(),
        function_names(stack).join(";"),
    )
}

/// The first `n` stacks (heaviest first) that satisfy `pred`, one per line, for failure
/// messages.
pub fn top_stacks(profile: &Profile, pred: impl Fn(&ProfileStack) -> bool, n: usize) -> String {
    profile
        .stacks
        .iter()
        .filter(|stack| pred(stack))
        .take(n)
        .map(|stack| format!("  {}\n", describe(stack)))
        .collect()
}

/// One line of a folded file: all frames as written (process name first, wait kind last) and
/// the blocked microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedStack {
    pub frames: Vec<String>,
    pub micros: u64,
}

impl FoldedStack {
    /// The wait-kind frame without the object it names: `[futex]`, `[send]`,
    /// `[futex still-blocked]` (from `[futex queue]`, `[send 127.0.0.1:80]`,
    /// `[futex queue still-blocked]`).
    pub fn kind(&self) -> String {
        let frame = self.frames.last().map_or("", String::as_str);
        let inner = frame.trim_start_matches('[').trim_end_matches(']');
        let kind = inner.split(' ').next().unwrap_or_default();
        if inner.ends_with(" still-blocked") {
            format!("[{kind} still-blocked]")
        } else {
            format!("[{kind}]")
        }
    }

    /// What the wait-kind frame names as the wait's object (`127.0.0.1:80`, `queue`), if any.
    pub fn object(&self) -> Option<&str> {
        let frame = self.frames.last()?;
        let inner = frame.strip_prefix('[')?.strip_suffix(']')?;
        let inner = inner.strip_suffix(" still-blocked").unwrap_or(inner);
        inner.split_once(' ').map(|(_, object)| object)
    }

    /// The program's frames, root to leaf: without the process name and the wait kind, so a
    /// thread or process named like a function cannot satisfy a match.
    pub fn functions(&self) -> &[String] {
        match self.frames.len() {
            0..=2 => &[],
            n => &self.frames[1..n - 1],
        }
    }

    /// Whether some frame names the function `name` (see [`frame_is`]).
    pub fn has_function(&self, name: &str) -> bool {
        self.functions().iter().any(|frame| frame_is(frame, name))
    }
}

/// Whether a frame names the function `name`: equal (`handler`, a C function) or a path ending
/// in it (`rust_pileup::handler`). Tolerates inferno's annotation suffixes (`_[i]` for inlined
/// frames and the like) and a `+0x..` offset.
pub fn frame_is(frame: &str, name: &str) -> bool {
    let mut f = frame.trim();
    if let Some(stripped) = f
        .strip_suffix(']')
        .and_then(|s| s.rsplit_once("_["))
        .map(|(base, _)| base)
    {
        f = stripped;
    }
    if let Some((base, _)) = f.split_once("+0x") {
        f = base;
    }
    f == name
        || f.strip_suffix(name)
            .is_some_and(|prefix| prefix.ends_with("::"))
}

/// Parses collapsed stacks: `frame;frame;... MICROS` per line.
pub fn parse_folded(text: &str) -> Vec<FoldedStack> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (stack, count) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("folded line without a count: {line:?}"));
            let micros = count
                .parse()
                .unwrap_or_else(|e| panic!("folded count {count:?} in {line:?}: {e}"));
            let frames = stack.split(';').map(str::to_owned).collect();
            FoldedStack { frames, micros }
        })
        .collect()
}

/// Reads and parses a folded file.
pub fn read_folded(path: &Path) -> Vec<FoldedStack> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_folded(&text)
}

/// Total microseconds of the stacks that satisfy `pred`.
pub fn total_micros(stacks: &[FoldedStack], pred: impl Fn(&FoldedStack) -> bool) -> u64 {
    stacks.iter().filter(|s| pred(s)).map(|s| s.micros).sum()
}

/// Total threads on the stacks that satisfy `pred`, in a snapshot's folded output, which weighs
/// each stack by its number of threads (the count that [`FoldedStack::micros`] holds).
pub fn total_threads(stacks: &[FoldedStack], pred: impl Fn(&FoldedStack) -> bool) -> u64 {
    total_micros(stacks, pred)
}

/// The `n` heaviest folded stacks satisfying `pred`, one per line, for failure messages.
pub fn top_folded(stacks: &[FoldedStack], pred: impl Fn(&FoldedStack) -> bool, n: usize) -> String {
    let mut matching: Vec<_> = stacks.iter().filter(|s| pred(s)).collect();
    matching.sort_by_key(|s| std::cmp::Reverse(s.micros));
    matching
        .iter()
        .take(n)
        .map(|s| format!("  {} {}\n", s.frames.join(";"), s.micros))
        .collect()
}

/// Asserts that `path` is an SVG document (what inferno writes: an XML prolog, then `<svg`).
pub fn assert_svg(path: &Path) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = text.trim_start();
    assert!(
        start.starts_with("<?xml")
            || start.starts_with("<svg")
            || start.starts_with("<!DOCTYPE svg"),
        "{} does not start like an SVG document: {:?}",
        path.display(),
        &start[..start.len().min(200)]
    );
    assert!(
        text.contains("<svg"),
        "{} has no <svg element",
        path.display()
    );
    assert!(
        text.trim_end().ends_with("</svg>"),
        "{} does not end with </svg>",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_folded_lines() {
        let text = "rust-pileup;std::sys::thread::Thread::new::thread_start;rust_pileup::handler;\
                    rust_pileup::send_stat;syscall;[futex] 1234\nc-pileup;send_to_backend;[send] 7\n\n";
        let stacks = parse_folded(text);
        assert_eq!(stacks.len(), 2);
        assert_eq!(stacks[0].micros, 1234);
        assert_eq!(stacks[0].kind(), "[futex]");
        assert_eq!(stacks[0].object(), None);
        assert!(stacks[0].has_function("handler"));
        assert!(stacks[0].has_function("send_stat"));
        assert!(
            !stacks[0].has_function("rust-pileup"),
            "the process name is not a function"
        );
        assert_eq!(stacks[1].functions(), ["send_to_backend"]);
        assert_eq!(total_micros(&stacks, |s| s.kind() == "[send]"), 7);
    }

    #[test]
    fn parses_object_frames() {
        let stacks = parse_folded(
            "app;app::handler;[futex app::STATS_QUEUE] 3\n\
             app;app::sender;[send 127.0.0.1:80 still-blocked] 9\n\
             app;app::worker;[futex heap 0x55d0c2a4b188] 2\n",
        );
        assert_eq!(stacks[0].kind(), "[futex]");
        assert_eq!(stacks[0].object(), Some("app::STATS_QUEUE"));
        assert_eq!(stacks[1].kind(), "[send still-blocked]");
        assert_eq!(stacks[1].object(), Some("127.0.0.1:80"));
        assert_eq!(stacks[2].object(), Some("heap 0x55d0c2a4b188"));
    }

    #[test]
    fn matches_function_names() {
        assert!(frame_is("handler", "handler"));
        assert!(frame_is("rust_pileup::handler", "handler"));
        assert!(frame_is("rust_pileup::send_stat_[i]", "send_stat"));
        assert!(frame_is("enqueue_stat+0x1f", "enqueue_stat"));
        assert!(!frame_is("rust_pileup::my_handler", "handler"));
        assert!(!frame_is("handler_loop", "handler"));
    }
}
