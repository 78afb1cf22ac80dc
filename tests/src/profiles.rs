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

/// The stacks of `profile` that satisfy `pred`.
pub fn stacks_where(profile: &Profile, pred: impl Fn(&ProfileStack) -> bool) -> Vec<&ProfileStack> {
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
pub fn thread_ids(profile: &Profile, pred: impl Fn(&ProfileStack) -> bool) -> BTreeSet<u64> {
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

/// The wakes, over the profile's waker rows, of waits at a call site satisfying `waiting` by
/// a waker at one satisfying `waker`.
pub fn wakes_between(
    profile: &Profile,
    waiting: impl Fn(&str) -> bool,
    waker: impl Fn(&str) -> bool,
) -> u64 {
    profile
        .wakers
        .iter()
        .filter(|row| waiting(&row.waiting_site) && waker(&row.waker_site))
        .map(|row| row.wakes)
        .sum()
}

/// The profile's waker rows as (waiting site, waker site, wakes), for failure messages.
pub fn waker_rows(profile: &Profile) -> Vec<(&str, &str, u64)> {
    profile
        .wakers
        .iter()
        .map(|row| (row.waiting_site.as_str(), row.waker_site.as_str(), row.wakes))
        .collect()
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

/// Whether a frame names the function `name`: equal (`handler`, a C function) or a path ending
/// in it (`rust_pileup::handler`). Tolerates inferno's annotation suffixes (`_[i]` for inlined
/// frames and the like) and a `+0x..` offset.
pub fn frame_is(frame: &str, name: &str) -> bool {
    let mut f = frame.trim();
    if let Some(stripped) =
        f.strip_suffix(']').and_then(|s| s.rsplit_once("_[")).map(|(base, _)| base)
    {
        f = stripped;
    }
    if let Some((base, _)) = f.split_once("+0x") {
        f = base;
    }
    f == name || f.strip_suffix(name).is_some_and(|prefix| prefix.ends_with("::"))
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
    assert!(text.contains("<svg"), "{} has no <svg element", path.display());
    assert!(text.trim_end().ends_with("</svg>"), "{} does not end with </svg>", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

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
