//! The table printed at the end of a recording: the call sites where threads spent the
//! most time blocked, what was under the threshold, and what the tracing saw and lost.

use std::{
    collections::HashMap,
    fmt::Write as _,
};

use tracer_common::WaitKind;

use crate::aggregate::{Profile, WaitStats};

const SITE_WIDTH: usize = 46;

/// One row: a call site and the kind of wait it blocked in.
#[derive(Debug)]
pub struct SiteRow {
    pub site: String,
    pub kind: WaitKind,
    pub stats: WaitStats,
}

/// Stacks grouped by (call site, kind), heaviest first.
pub fn top_sites(profile: &Profile) -> Vec<SiteRow> {
    let mut by_site: HashMap<(String, WaitKind), WaitStats> = HashMap::new();
    for stack in &profile.stacks {
        by_site
            .entry((stack.call_site().to_string(), stack.kind))
            .or_default()
            .merge(&stack.stats);
    }
    let mut rows: Vec<SiteRow> = by_site
        .into_iter()
        .map(|((site, kind), stats)| SiteRow { site, kind, stats })
        .collect();
    rows.sort_by(|a, b| {
        b.stats
            .total_ns
            .cmp(&a.stats.total_ns)
            .then_with(|| a.site.cmp(&b.site))
    });
    rows
}

/// The whole text summary, at most 100 columns wide.
pub fn render_summary(profile: &Profile, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} (pid {}): {} recorded, waits >= {} with stacks{}",
        profile.comm,
        profile.pid,
        format_duration(profile.duration.as_nanos() as u64),
        format_duration(profile.min_wait.as_nanos() as u64),
        if profile.target_exited { "; the process exited during the recording" } else { "" },
    );
    let rows = top_sites(profile);
    if rows.is_empty() {
        let _ = writeln!(out, "no waits over the threshold");
    } else {
        let _ = writeln!(
            out,
            "{:<SITE_WIDTH$} {:<7} {:>10} {:>10} {:>9} {:>8}",
            "CALL SITE", "KIND", "BLOCKED", "MAX", "WAITS", "THREADS"
        );
        for row in rows.iter().take(top) {
            let _ = writeln!(
                out,
                "{:<SITE_WIDTH$} {:<7} {:>10} {:>10} {:>9} {:>8}",
                elide(&row.site, SITE_WIDTH),
                row.kind.name(),
                format_duration(row.stats.total_ns),
                format_duration(row.stats.max_ns),
                row.stats.waits,
                row.stats.threads.len(),
            );
        }
        if rows.len() > top {
            let rest: u64 = rows[top..].iter().map(|row| row.stats.total_ns).sum();
            let _ = writeln!(
                out,
                "... {} more call sites, {} blocked",
                rows.len() - top,
                format_duration(rest)
            );
        }
    }
    let below: Vec<String> = profile
        .below_threshold
        .iter()
        .filter(|(_, totals)| totals.count > 0)
        .map(|(kind, totals)| {
            format!("{} {} waits {}", kind.name(), totals.count, format_duration(totals.total_ns))
        })
        .collect();
    if !below.is_empty() {
        let _ = writeln!(out, "under the threshold (no stacks): {}", below.join(", "));
    }
    let counts = &profile.counts;
    let _ = writeln!(
        out,
        "seen: {} watched calls, {} long waits, {} short waits, {} returned without waiting",
        counts.calls_entered, counts.long_waits, counts.short_waits, counts.returned_without_waiting
    );
    if counts.stack_shortened > 0 {
        // Not a loss by itself: a shallow thread's stack ends before the copy would.
        let _ = writeln!(
            out,
            "stacks: {} copies ended at the top of their thread's stack",
            counts.stack_shortened
        );
    }
    let _ = writeln!(
        out,
        "lost: {} ring buffer full, {} in-flight map full, {} stacks unreadable, \
         {} unwinds truncated, {} unknown symbols, {} descriptors unresolved",
        counts.ring_buffer_full,
        counts.in_flight_map_full,
        counts.stack_unreadable,
        counts.unwind_truncated,
        counts.unknown_symbols,
        counts.unresolved_descriptors,
    );
    if counts.non_socket_io > 0 {
        let _ = writeln!(
            out,
            "left out: {} read/write waits on descriptors that are not sockets",
            counts.non_socket_io
        );
    }
    out
}

/// Shortens `text` to `width` characters, keeping its end (the function's own name).
fn elide(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_string();
    }
    let tail: String = text.chars().skip(count - (width - 1)).collect();
    format!("…{tail}")
}

/// A duration in the unit a person reads: `850us`, `12.3ms`, `1.50s`, `2m05s`.
pub fn format_duration(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    match ns {
        0..US => format!("{ns}ns"),
        US..MS => format!("{}us", ns / US),
        MS..S => format!("{:.1}ms", ns as f64 / MS as f64),
        _ if ns < 60 * S => format!("{:.2}s", ns as f64 / S as f64),
        _ => format!("{}m{:02}s", ns / (60 * S), (ns / S) % 60),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracer_common::ShortWaitTotals;

    use super::*;
    use crate::aggregate::{TraceCounts, tests::stack};

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(format_duration(999), "999ns");
        assert_eq!(format_duration(850_000), "850us");
        assert_eq!(format_duration(12_340_000), "12.3ms");
        assert_eq!(format_duration(1_500_000_000), "1.50s");
        assert_eq!(format_duration(125_000_000_000), "2m05s");
    }

    #[test]
    fn long_names_keep_their_end() {
        let long = "a".repeat(60) + "::send_stat";
        let short = elide(&long, 20);
        assert_eq!(short.chars().count(), 20);
        assert!(short.ends_with("::send_stat"));
    }

    fn profile() -> Profile {
        let handler = |tid| {
            stack(
                &[("app::handler", true), ("app::send_stat", true), ("syscall", false)],
                WaitKind::Futex,
                &[(tid, 40_000_000)],
            )
        };
        let mut inlined_elsewhere = handler(3);
        inlined_elsewhere.frames.insert(0, crate::aggregate::tests::frame("main", true));
        Profile {
            pid: 4242,
            comm: "app".into(),
            duration: Duration::from_secs(3),
            min_wait: Duration::from_millis(1),
            target_exited: true,
            stacks: vec![
                handler(1),
                handler(2),
                inlined_elsewhere,
                stack(&[("app::write_to_backend", true)], WaitKind::Send, &[(9, 5_000_000)]),
            ],
            below_threshold: vec![(WaitKind::Futex, ShortWaitTotals { count: 7, total_ns: 700_000 })],
            counts: TraceCounts { long_waits: 4, ..TraceCounts::default() },
        }
    }

    #[test]
    fn sites_group_stacks_and_count_threads() {
        let rows = top_sites(&profile());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].site, "app::send_stat");
        assert_eq!(rows[0].stats.total_ns, 120_000_000);
        assert_eq!(rows[0].stats.threads.len(), 3);
        assert_eq!(rows[1].site, "app::write_to_backend");
    }

    #[test]
    fn summary_snapshot() {
        let text = render_summary(&profile(), 10);
        let expected = "\
app (pid 4242): 3.00s recorded, waits >= 1.0ms with stacks; the process exited during the recording
CALL SITE                                      KIND       BLOCKED        MAX     WAITS  THREADS
app::send_stat                                 futex      120.0ms     40.0ms         3        3
app::write_to_backend                          send         5.0ms      5.0ms         1        1
under the threshold (no stacks): futex 7 waits 700us
seen: 0 watched calls, 4 long waits, 0 short waits, 0 returned without waiting
lost: 0 ring buffer full, 0 in-flight map full, 0 stacks unreadable, 0 unwinds truncated, 0 unknown symbols, 0 descriptors unresolved
";
        assert_eq!(text, expected);
        for line in text.lines().skip(1).take(3) {
            assert!(line.chars().count() <= 100, "too wide: {line}");
        }
    }
}
