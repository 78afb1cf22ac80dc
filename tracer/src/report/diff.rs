//! What changed between two profiles: inferno's differential folded stacks (and
//! flamegraph), and a table of the call sites whose blocked time or threads changed
//! most.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
};

use tracer_common::WaitKind;

use crate::{
    model::{Profile, ProfileKind},
    report::{
        Weight,
        folded::comparable_folded_lines,
        summary::{elide_function, format_bytes, format_duration},
    },
};

/// One call site (and kind) in both profiles.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SiteChange {
    pub site: String,
    pub kind: Option<WaitKind>,
    /// Waits still in progress at the end of a recording, kept apart from ended ones.
    pub still_blocked: bool,
    /// Its times are the ages of waits going on (still blocked at a recording's end, or
    /// a snapshot's): they grow while the same threads stay stuck, so the row changed
    /// only if its threads did.
    pub ages: bool,
    pub before_ns: u64,
    pub after_ns: u64,
    pub before_threads: u64,
    pub after_threads: u64,
}

impl SiteChange {
    /// The change of blocked time; none for ages (see `ages`).
    fn blocked_change(&self) -> i128 {
        if self.ages {
            return 0;
        }
        i128::from(self.after_ns) - i128::from(self.before_ns)
    }

    fn thread_change(&self) -> i128 {
        i128::from(self.after_threads) - i128::from(self.before_threads)
    }
}

/// The call sites whose blocked time or thread count differ, the largest change of
/// blocked time first (then of threads). A profile against itself gives none.
pub fn site_changes(before: &Profile, after: &Profile) -> Vec<SiteChange> {
    type Key = (String, WaitKind, bool);
    #[derive(Default)]
    struct Side {
        ns: u64,
        threads: BTreeSet<u64>,
    }
    let sides = |profile: &Profile| {
        let mut sites: HashMap<Key, Side> = HashMap::new();
        for stack in &profile.stacks {
            let still_blocked = stack.in_progress && profile.kind == ProfileKind::Recording;
            let side = sites
                .entry((stack.call_site().to_string(), stack.kind, still_blocked))
                .or_default();
            side.ns = side.ns.saturating_add(stack.stats.total_ns);
            side.threads.extend(&stack.stats.threads);
        }
        sites
    };
    // Blocked time over a baseline of another length, as over this one's.
    let mut before_sites = match baseline_scale(before, after) {
        Some(scale) => sides(&scaled_to(before, scale)),
        None => sides(before),
    };
    let after_sites = sides(after);
    let mut changes: Vec<SiteChange> = Vec::new();
    let snapshots = after.kind == ProfileKind::Snapshot;
    let mut change =
        |(site, kind, still_blocked): Key, before: Option<Side>, after: Option<Side>| {
            let (before, after) = (before.unwrap_or_default(), after.unwrap_or_default());
            changes.push(SiteChange {
                site,
                kind: Some(kind),
                still_blocked,
                ages: still_blocked || snapshots,
                before_ns: before.ns,
                after_ns: after.ns,
                before_threads: before.threads.len() as u64,
                after_threads: after.threads.len() as u64,
            });
        };
    for (key, after_side) in after_sites {
        let before_side = before_sites.remove(&key);
        change(key, before_side, Some(after_side));
    }
    for (key, before_side) in before_sites {
        change(key, Some(before_side), None);
    }
    changes.retain(|change| change.blocked_change() != 0 || change.thread_change() != 0);
    // Threads newly stuck (or freed) first, the most first: a pile-up forming is the
    // change a diff is for, and their ages compare as no blocked time does. Then the
    // largest change of blocked time.
    let stuck_change = |change: &SiteChange| match change.ages {
        true => change.thread_change().abs(),
        false => 0,
    };
    changes.sort_by(|a, b| {
        stuck_change(b)
            .cmp(&stuck_change(a))
            .then_with(|| b.blocked_change().abs().cmp(&a.blocked_change().abs()))
            .then_with(|| b.thread_change().abs().cmp(&a.thread_change().abs()))
            .then_with(|| a.site.cmp(&b.site))
    });
    changes
}

/// inferno's differential folded lines: `stack before after`, from each profile's
/// folded stacks with the same weight, as they compare (`comparable_folded_lines`: the
/// same wait in two runs is one line, not a wait gone and a new one). Blocked time and
/// waits of a baseline of another length are scaled to this one's (`baseline_scale`).
pub fn differential_lines(before: &Profile, after: &Profile, weight: Weight) -> Vec<String> {
    let before = match baseline_scale(before, after) {
        Some(scale) => comparable_folded_lines(&scaled_to(before, scale), weight),
        None => comparable_folded_lines(before, weight),
    };
    let before = before.join("\n");
    let after = comparable_folded_lines(after, weight).join("\n");
    let mut out = Vec::new();
    // Reading from and writing to memory cannot fail.
    let written = inferno::differential::from_readers(
        inferno::differential::Options::default(),
        before.as_bytes(),
        after.as_bytes(),
        &mut out,
    );
    debug_assert!(written.is_ok(), "in-memory differential failed: {written:?}");
    let mut lines: Vec<String> =
        String::from_utf8_lossy(&out).lines().map(str::to_string).collect();
    lines.sort(); // inferno writes them in hash order
    lines
}

const SITE_WIDTH: usize = 40;

/// The table of `site_changes`, at most 100 columns wide.
pub fn render_changes(
    before_name: &str,
    after_name: &str,
    changes: &[SiteChange],
    top: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{after_name} against {before_name}:");
    if changes.is_empty() {
        let _ = writeln!(out, "no call site changed its blocked time or threads");
        return out;
    }
    let kind_of = |change: &SiteChange| {
        let mark = if change.still_blocked { "*" } else { "" };
        format!("{}{mark}", change.kind.map_or("", WaitKind::name))
    };
    // As wide as the widest kind shown (`goroutine*`), at least as the header's.
    let kind = changes.iter().take(top).map(|change| kind_of(change).len()).max().unwrap_or(0);
    let kind = kind.max(8);
    let _ = writeln!(
        out,
        "{:<SITE_WIDTH$} {:<kind$} {:>10} {:>10} {:>10}  THREADS",
        "CALL SITE", "KIND", "BEFORE", "AFTER", "CHANGE"
    );
    for change in changes.iter().take(top) {
        // Ages are shown, not compared: their change is the time between the two looks.
        let (before, after, blocked_change) = match change.ages {
            true => (age(change.before_ns), age(change.after_ns), "-".to_string()),
            false => (
                format_duration(change.before_ns),
                format_duration(change.after_ns),
                signed_duration(change.blocked_change()),
            ),
        };
        let _ = writeln!(
            out,
            "{:<SITE_WIDTH$} {:<kind$} {:>10} {:>10} {:>10}  {} -> {} ({:+})",
            elide_function(&change.site, SITE_WIDTH),
            kind_of(change),
            before,
            after,
            blocked_change,
            change.before_threads,
            change.after_threads,
            change.thread_change(),
        );
    }
    if changes.len() > top {
        let _ = writeln!(out, "... {} more changed call sites", changes.len() - top);
    }
    if changes.iter().take(top).any(|change| change.still_blocked) {
        let _ = writeln!(
            out,
            "* still blocked at the end of the recording (their times are ages, compared by \
             threads)"
        );
    } else if changes.iter().take(top).any(|change| change.ages) {
        let _ = writeln!(out, "times are the ages of the waits going on, compared by threads");
    }
    out
}

/// The backed-up sockets of the two profiles, by way and why (their peers differ from
/// one run to the next: a client's port), where either has some: how many, and their
/// bytes.
pub fn backed_up_changes(before: &Profile, after: &Profile) -> String {
    type Counts = BTreeMap<(&'static str, &'static str), (u64, u64)>;
    let counts = |profile: &Profile| -> Counts {
        let mut counts = Counts::new();
        for socket in &profile.backed_up.sockets {
            let (sockets, bytes) =
                counts.entry((socket.backlog.name(), socket.brief_reason())).or_default();
            *sockets += 1;
            *bytes += socket.queued_bytes;
        }
        counts
    };
    let (then, now) = (counts(before), counts(after));
    let (total_then, total_now) = (before.backed_up.count(), after.backed_up.count());
    let mut out = String::new();
    if total_then == 0 && total_now == 0 {
        return out;
    }
    let _ =
        writeln!(out, "backed-up sockets, as each report was made: {total_then} -> {total_now}");
    let ways: BTreeSet<_> = then.keys().chain(now.keys()).collect();
    let left_out = (before.backed_up.left_out, after.backed_up.left_out);
    if left_out != (0, 0) {
        let _ = writeln!(
            out,
            "  not listed (past each process's heaviest): {} -> {}",
            left_out.0, left_out.1
        );
    }
    for way in ways {
        let (sockets_then, bytes_then) = then.get(way).copied().unwrap_or_default();
        let (sockets_now, bytes_now) = now.get(way).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}, {}: {sockets_then} -> {sockets_now} ({} -> {})",
            way.0,
            way.1,
            format_bytes(bytes_then),
            format_bytes(bytes_now),
        );
    }
    out
}

/// An age shown in the table: none where no thread waited.
fn age(ns: u64) -> String {
    if ns == 0 { "-".to_string() } else { format!("≥{}", format_duration(ns)) }
}

fn signed_duration(ns: i128) -> String {
    let magnitude = format_duration(u64::try_from(ns.unsigned_abs()).unwrap_or(u64::MAX));
    if ns < 0 { format!("-{magnitude}") } else { format!("+{magnitude}") }
}

/// Lines saying what makes two profiles compare poorly: they are of different programs,
/// or one was sampled and the other exact (statistical waits beside counted ones).
pub fn mismatch_notes(before: &Profile, after: &Profile) -> String {
    let mut notes = String::new();
    // A profile of several processes is named by how many: its processes' names compare.
    let names = |profile: &Profile| -> BTreeSet<String> {
        match profile.processes.is_empty() {
            true => BTreeSet::from([profile.comm.clone()]),
            false => profile.processes.iter().map(|process| process.comm.clone()).collect(),
        }
    };
    if names(before).is_disjoint(&names(after)) {
        let _ = writeln!(
            notes,
            "the profiles are of different programs ({} against {})",
            after.comm, before.comm
        );
    }
    let mode = |profile: &Profile| match (profile.kind, profile.sampling) {
        (ProfileKind::Recording, Some(_)) => Some("sampled"),
        (ProfileKind::Recording, None) => Some("exact"),
        (ProfileKind::Snapshot, _) => None,
    };
    if let (Some(after_mode), Some(before_mode)) = (mode(after), mode(before))
        && after_mode != before_mode
    {
        let an = |mode: &str| if mode == "exact" { "an" } else { "a" };
        let _ = writeln!(
            notes,
            "{} {after_mode} recording against {} {before_mode} one: waits shorter than the \
             sampled one's period are statistical there",
            an(after_mode),
            an(before_mode)
        );
    }
    notes
}

/// What a baseline recording's blocked time and waits are multiplied by to compare with
/// a recording of another length: its length over the baseline's. None for recordings
/// within a tenth of each other's length (compared as they are) and for snapshots.
/// Without it a recording three times as long reads as three times the waiting.
pub fn baseline_scale(before: &Profile, after: &Profile) -> Option<f64> {
    if before.kind != ProfileKind::Recording || after.kind != ProfileKind::Recording {
        return None;
    }
    let (b, a) = (before.duration.as_secs_f64(), after.duration.as_secs_f64());
    if b <= 0.0 || a <= 0.0 || (a / b - 1.0).abs() <= 0.1 {
        return None;
    }
    Some(a / b)
}

fn scaled(value: u64, scale: f64) -> u64 {
    (value as f64 * scale).round() as u64
}

/// `profile` with its ended waits' blocked time and number scaled by `scale`; the waits
/// still in progress keep theirs (an age, and one wait, whatever the length).
fn scaled_to(profile: &Profile, scale: f64) -> Profile {
    let mut profile = profile.clone();
    for stack in profile.stacks.iter_mut().filter(|stack| !stack.in_progress) {
        stack.stats.total_ns = scaled(stack.stats.total_ns, scale);
        stack.stats.waits = scaled(stack.stats.waits, scale);
    }
    profile
}

/// A line saying that two recordings' lengths differ by more than a tenth, and that the
/// baseline's blocked times and waits are scaled to this one's length. None otherwise.
pub fn durations_note(before: &Profile, after: &Profile) -> Option<String> {
    let scale = baseline_scale(before, after)?;
    Some(format!(
        "the recordings' lengths differ ({} against {}): BEFORE is the baseline's blocked \
         time scaled to {} (×{scale:.2})\n",
        format_duration(after.duration.as_nanos() as u64),
        format_duration(before.duration.as_nanos() as u64),
        format_duration(after.duration.as_nanos() as u64),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::fixture_profile;

    #[test]
    fn a_profile_against_itself_has_no_changes() {
        let profile = fixture_profile();
        assert!(site_changes(&profile, &profile).is_empty());
        let lines = differential_lines(&profile, &profile, Weight::Time);
        // Four stacks, the one still blocked left out of blocked time (its age).
        assert_eq!(lines.len(), 3);
        for line in &lines {
            let mut counts = line.rsplitn(3, ' ');
            assert_eq!(counts.next(), counts.next(), "{line}");
        }
        let table = render_changes("a.json", "a.json", &[], 10);
        assert_eq!(
            table,
            "a.json against a.json:\nno call site changed its blocked time or threads\n"
        );
    }

    #[test]
    fn backed_up_sockets_are_compared_by_way_and_why() {
        let before = fixture_profile();
        assert_eq!(backed_up_changes(&before, &before).lines().count(), 4);
        let mut after = before.clone();
        after.backed_up.sockets.remove(1);
        after.backed_up.sockets[0].queued_bytes *= 2;
        assert_eq!(
            backed_up_changes(&before, &after),
            "backed-up sockets, as each report was made: 3 -> 2\n\
             \x20 unread, process not reading: 1 -> 0 (4.0 KiB -> 0 B)\n\
             \x20 unsent, peer reads slowly: 1 -> 1 (1.0 MiB -> 1.0 MiB)\n\
             \x20 unsent, peer stopped reading: 1 -> 1 (2.5 MiB -> 5.0 MiB)\n"
        );
        after.backed_up = Default::default();
        let mut none = after.clone();
        none.backed_up = Default::default();
        assert_eq!(backed_up_changes(&after, &none), "");
    }

    #[test]
    fn recordings_of_different_lengths_are_said_to_be() {
        let mut before = fixture_profile();
        before.kind = ProfileKind::Recording;
        before.duration = std::time::Duration::from_secs(10);
        let mut after = before.clone();
        after.duration = std::time::Duration::from_millis(10_500);
        assert_eq!(durations_note(&before, &after), None, "within a tenth");
        after.duration = std::time::Duration::from_secs(30);
        let note = durations_note(&before, &after).expect("a note");
        assert!(
            note.starts_with("the recordings' lengths differ (30.00s against 10.00s)"),
            "{note}"
        );
        assert!(note.contains("scaled to 30.00s (×3.00)"), "{note}");
        // The same waiting, per second, over three times the length: no change.
        let mut longer = after.clone();
        for stack in &mut longer.stacks {
            if !stack.in_progress {
                stack.stats.total_ns *= 3;
                stack.stats.waits *= 3;
            }
        }
        assert!(site_changes(&before, &longer).is_empty(), "{:#?}", site_changes(&before, &longer));
        for weight in [Weight::Time, Weight::Count] {
            for line in differential_lines(&before, &longer, weight) {
                let mut counts = line.rsplitn(3, ' ');
                assert_eq!(counts.next(), counts.next(), "{line}");
            }
        }
        // The same waiting over three times the length is a third as much per second.
        let changes = site_changes(&before, &after);
        assert!(!changes.is_empty());
        for change in changes.iter().filter(|change| !change.ages) {
            assert_eq!(change.before_ns, change.after_ns * 3, "{change:#?}");
        }
        after.kind = ProfileKind::Snapshot;
        before.kind = ProfileKind::Snapshot;
        assert_eq!(durations_note(&before, &after), None, "snapshots have no length");
    }

    #[test]
    fn the_same_wait_on_another_object_or_pid_is_the_same_line() {
        let before = fixture_profile();
        let mut after = fixture_profile();
        let ended = |profile: &Profile, kind| {
            profile.stacks.iter().position(|s| s.kind == kind && !s.in_progress).expect("a stack")
        };
        let (futex, send) = (ended(&after, WaitKind::Futex), ended(&after, WaitKind::Send));
        // The next run: the stats lock at another address, the backend at another port.
        after.stacks[futex].object = Some("futex 0x7f1234".to_string());
        after.stacks[send].object = Some("10.0.0.5:8080".to_string());
        let lines = differential_lines(&before, &after, Weight::Time);
        assert_eq!(lines, differential_lines(&before, &before, Weight::Time));
        assert!(lines.iter().all(|line| !line.contains("10.0.0.5")), "{lines:#?}");
        // A goroutine's wait keeps its Go wait reason, not what it waits on.
        let (mut before, mut after) = (before, after);
        for (profile, fill) in [(&mut before, "5/8"), (&mut after, "8/8")] {
            profile.stacks[futex].kind = WaitKind::Goroutine;
            profile.stacks[futex].object = Some(format!("chan send on chan int {fill}"));
        }
        let lines = differential_lines(&before, &after, Weight::Time);
        assert_eq!(lines, differential_lines(&before, &before, Weight::Time));
        assert!(lines.iter().any(|line| line.contains("[chan send]")), "{lines:#?}");
    }

    #[test]
    fn waits_going_on_are_compared_by_their_threads_not_their_ages() {
        let before = fixture_profile();
        let mut after = fixture_profile();
        // The reporter is as stuck as before, a minute later.
        let stuck = after.stacks.iter().position(|stack| stack.in_progress).expect("stuck");
        after.stacks[stuck].stats.total_ns += 60_000_000_000;
        assert!(site_changes(&before, &after).is_empty());
        // Nor is it drawn as more blocked time.
        assert_eq!(
            differential_lines(&before, &after, Weight::Time),
            differential_lines(&before, &before, Weight::Time)
        );
        // A second thread stuck there is a change, its ages shown, not subtracted.
        after.stacks[stuck].stats.add(21, 1_000_000_000);
        // It comes before a change of blocked time, however large.
        let handlers = after.stacks.iter().position(|s| s.kind == WaitKind::Futex).expect("futex");
        after.stacks[handlers].stats.add(11, 9_000_000_000);
        let changes = site_changes(&before, &after);
        assert!(changes[0].still_blocked && changes.len() == 2, "{changes:#?}");
        let table = render_changes("before.json", "after.json", &changes, 10);
        assert!(
            table.contains("send*        ≥1.25s     ≥1m02s          -  1 -> 2 (+1)"),
            "{table}"
        );
        assert!(table.contains("their times are ages, compared by threads"), "{table}");
        // In snapshots every wait goes on.
        let (mut before, mut after) = (before, after);
        (before.kind, after.kind) = (ProfileKind::Snapshot, ProfileKind::Snapshot);
        let changes = site_changes(&before, &after);
        assert!(changes.iter().all(|change| change.ages), "{changes:#?}");
        let table = render_changes("before.json", "after.json", &changes, 10);
        assert!(table.contains("times are the ages of the waits going on"), "{table}");
    }

    #[test]
    fn profiles_that_compare_poorly_are_said_to() {
        let before = fixture_profile();
        let mut after = fixture_profile();
        assert_eq!(mismatch_notes(&before, &after), "");
        after.comm = "other".to_string();
        after.sampling = Some(crate::model::Sampling {
            period: std::time::Duration::from_millis(20),
            reads: 100,
        });
        let notes = mismatch_notes(&before, &after);
        assert!(notes.contains("different programs (other against app)"), "{notes}");
        assert!(notes.contains("a sampled recording against an exact one"), "{notes}");
    }

    #[test]
    fn the_largest_change_comes_first() {
        let before = fixture_profile();
        let mut after = fixture_profile();
        after.stacks[1].stats.add(14, 500_000_000); // one more handler, blocked longer
        after.stacks.remove(3); // the poll stack is gone
        let changes = site_changes(&before, &after);
        let table = render_changes("before.json", "after.json", &changes, 10);
        let expected = "\
after.json against before.json:
CALL SITE                                KIND         BEFORE      AFTER     CHANGE  THREADS
app::send_stat                           futex       140.5ms    640.5ms   +500.0ms  3 -> 4 (+1)
poll                                     poll          5.0ms        0ns     -5.0ms  1 -> 0 (-1)
";
        assert_eq!(table, expected);
        for line in table.lines() {
            assert!(line.chars().count() <= 100, "too wide: {line}");
        }
    }
}
