//! The table printed at the end of a recording: the call sites where threads spent the
//! most time blocked, what was under the threshold, and what the tracing saw and lost.

use std::{
    collections::{BTreeSet, HashMap},
    fmt::Write as _,
};

use tracer_common::{PASS_MAX_THREADS, WaitKind};

use crate::{
    chains,
    model::{
        BackedUpSocket, Profile, ProfileKind, ProfileStack, Sampling, TraceCounts, WaitStats,
        counted, endpoint_in_object,
    },
    report::folded::kind_frame,
};

const SITE_WIDTH: usize = 46;

/// One row: a call site and the kind of wait it blocked in.
#[derive(Debug)]
pub struct SiteRow {
    pub site: String,
    pub kind: WaitKind,
    pub stats: WaitStats,
}

/// The stacks of waits that ended (`in_progress == false`) or of waits in progress,
/// grouped by (call site, kind), heaviest first. In a profile of several processes a row
/// is one program's, over all its processes (`wait_for_work in postgres (31 processes)`):
/// a server forked per connection piles up across its processes, one thread each, and a
/// row per process hid the pile-up among its idle helpers (the table above it is per
/// process).
pub fn top_sites(profile: &Profile, in_progress: bool) -> Vec<SiteRow> {
    type Key = (String, Option<String>, WaitKind);
    // Both tables' stacks: a stack is named alike in each.
    let mut by_site: HashMap<Key, Vec<&ProfileStack>> = HashMap::new();
    for stack in &profile.stacks {
        let comm = stack.process.as_ref().map(|process| process.comm.clone());
        by_site.entry((site_label(stack), comm, stack.kind)).or_default().push(stack);
    }
    // A site reached from callers that differ is a row per caller, named by the first
    // caller where the stacks part (`WaitEventSetWait from ProcSleep`).
    let mut by_caller: HashMap<Key, (WaitStats, BTreeSet<u32>)> = HashMap::new();
    for ((site, comm, kind), stacks) in by_site {
        let frames: Vec<&[crate::stacks::Frame]> =
            stacks.iter().map(|stack| &stack.frames[..]).collect();
        let site_frame = stacks[0].call_site();
        let callers = match kind {
            WaitKind::Goroutine | WaitKind::Task => vec![None; stacks.len()],
            _ => crate::model::call_site::callers_that_differ(&frames, site_frame),
        };
        for (stack, caller) in stacks.into_iter().zip(callers) {
            if stack.in_progress != in_progress {
                continue;
            }
            let site = match caller {
                Some(caller) => format!("{site} from {caller}"),
                None => site.clone(),
            };
            let (stats, pids) = by_caller.entry((site, comm.clone(), kind)).or_default();
            stats.merge(&stack.stats);
            pids.extend(stack.process.as_ref().map(|process| process.pid));
        }
    }
    let mut rows: Vec<SiteRow> = by_caller
        .into_iter()
        .map(|((site, comm, kind), (stats, pids))| {
            // Whose (kept when the name is shortened).
            let site = match (comm, pids.len()) {
                (None, _) => site,
                (Some(comm), 1) => format!("{site} in {comm} ({})", pids.first().expect("one")),
                (Some(comm), processes) => format!("{site} in {comm} ({processes} processes)"),
            };
            SiteRow { site, kind, stats }
        })
        .collect();
    let weight = |row: &SiteRow| {
        if in_progress { row.stats.threads.len() as u64 } else { row.stats.total_ns }
    };
    rows.sort_by(|a, b| weight(b).cmp(&weight(a)).then_with(|| a.site.cmp(&b.site)));
    rows
}

/// The call site a row names; a goroutine's with its wait reason (`main.f [chan receive]`),
/// which tells more than its kind.
fn site_label(stack: &ProfileStack) -> String {
    match (stack.kind, &stack.object) {
        (WaitKind::Goroutine | WaitKind::Task, Some(reason)) => {
            format!("{} [{reason}]", stack.call_site())
        }
        _ => stack.call_site().to_string(),
    }
}

/// What a profile is of: `app (pid 4242)`, or `2 processes: app (4242), db (4250)`; past
/// `NAMED_PROCESSES`, the first of them and how many more (a host's `--all`).
pub(crate) fn target_name(profile: &Profile) -> String {
    super::escape_name(&target_names(profile)).into_owned()
}

fn target_names(profile: &Profile) -> String {
    if profile.processes.is_empty() {
        return format!("{} (pid {})", profile.comm, profile.pid);
    }
    let count = profile.processes.len();
    let names: Vec<String> =
        profile.processes.iter().take(NAMED_PROCESSES).map(ToString::to_string).collect();
    match count.checked_sub(NAMED_PROCESSES) {
        Some(more) if more > 0 => {
            format!("{count} processes: {}, and {more} more", names.join(", "))
        }
        _ => format!("{count} processes: {}", names.join(", ")),
    }
}

/// Processes a profile of several names in its header.
const NAMED_PROCESSES: usize = 8;

/// Which processes of a profile of several have pile-ups: blocked time and threads
/// blocked at the end (a recording), or threads blocked now (a snapshot), by process.
fn write_processes(out: &mut String, profile: &Profile, top: usize) {
    if profile.processes.is_empty() {
        return;
    }
    type Row<'a> = (&'a crate::model::ProcessTag, u64, bool, std::collections::BTreeSet<u64>);
    let mut rows: Vec<Row> =
        profile.processes.iter().map(|process| (process, 0, false, Default::default())).collect();
    for stack in &profile.stacks {
        let Some(row) = rows.iter_mut().find(|row| Some(row.0) == stack.process.as_ref()) else {
            continue;
        };
        row.1 += stack.stats.total_ns;
        row.2 |= stack.stats.lower_bound;
        if stack.in_progress {
            row.3.extend(&stack.stats.threads);
        }
    }
    rows.sort_by_key(|(_, blocked, _, now)| std::cmp::Reverse((now.len(), *blocked)));
    let now_header = match profile.waiters() {
        crate::model::MIXED_WAITERS => "WAITING NOW".to_string(),
        waiters => waiters.to_uppercase() + " NOW",
    };
    let now_width = now_header.len().max(12);
    let _ =
        writeln!(out, "{:>8}  {:<24} {:>9} {now_header:>now_width$}", "PID", "PROCESS", "BLOCKED");
    for (process, blocked, lower_bound, now) in rows.iter().take(top) {
        let _ = writeln!(
            out,
            "{:>8}  {:<24} {:>9} {:>now_width$}",
            process.pid,
            elide(&process.comm, 24),
            format_age(*blocked, *lower_bound),
            now.len()
        );
    }
    let _ = writeln!(out);
}

/// The KIND column's width: the longest kind shown, at least the header's.
fn kind_width(rows: &[SiteRow]) -> usize {
    rows.iter().map(|row| row.kind.name().len()).max().unwrap_or(0).max(7)
}

/// What a recording covered and how it was taken: `5.00s recorded, waits >= 1.0ms with
/// stacks`, a sampled recording's period, or an exact one of a Go program's goroutines.
pub(crate) fn recording_scope(profile: &Profile) -> String {
    scope(profile, false)
}

/// `recording_scope` in fewer words, for a flamegraph's one-line subtitle (which a
/// 1200-pixel drawing cut at both ends when the reads came slower than asked).
pub(crate) fn recording_scope_brief(profile: &Profile) -> String {
    scope(profile, true)
}

fn scope(profile: &Profile, brief: bool) -> String {
    let recorded = format_duration(profile.duration.as_nanos() as u64);
    if let Some(Sampling { period, reads }) = profile.sampling {
        let rate = 1.0 / period.as_secs_f64().max(1e-9);
        let average = reads as f64 / profile.duration.as_secs_f64().max(1e-9);
        if reads >= 2 && crate::pipeline::pace::came_slower(rate, average) {
            let average_period = format_duration((1e9 / average) as u64);
            if brief {
                return format!(
                    "{recorded} recorded, sampled at {average:.1} Hz on average ({rate:.0} \
                     asked, {reads} reads; waits under {average_period} are statistical)"
                );
            }
            // The budget is the recording's, which a profile read again does not keep.
            return format!(
                "{recorded} recorded, sampled at {rate:.0} Hz asked, {average:.1} Hz on average \
                 ({reads} reads, spaced out to stay within --cpu-budget, taken in turns with \
                 other processes past a pass's {PASS_MAX_THREADS} threads, or late on a busy \
                 machine; waits shorter than {average_period} are statistical)"
            );
        }
        let period = format_duration(period.as_nanos() as u64);
        format!(
            "{recorded} recorded, sampled at {rate:.0} Hz ({reads} reads; waits shorter than \
             {period} are statistical)"
        )
    } else if profile.waiters() == "goroutines" {
        format!("{recorded} recorded, exact: every goroutine wait from the Go scheduler")
    } else {
        let min_wait = format_duration(profile.min_wait.as_nanos() as u64);
        let wakers = if profile.no_wakers { ", no wakers (--no-wakers)" } else { "" };
        format!("{recorded} recorded, waits >= {min_wait} with stacks{wakers}")
    }
}

/// Where a CPython process's Python frames come from, and what could not be had.
fn write_python(out: &mut String, profile: &Profile) {
    let Some(python) = &profile.python else { return };
    let mut line = format!("CPython {}: ", python.version);
    match &python.missing {
        Some(missing) => line.push_str(missing),
        None => line.push_str("Python frames read from each blocked thread's memory"),
    }
    if python.unreadable_frames > 0 {
        let _ = write!(line, "; {} frames unreadable (left out)", python.unreadable_frames);
    }
    if python.truncated_stacks > 0 {
        let _ = write!(line, "; {} stacks cut short", python.truncated_stacks);
    }
    let _ = writeln!(out, "{line}");
}

/// The whole text summary of a recording or a snapshot, at most 100 columns wide
/// (call-site names are shortened, keeping their end), but for the wait chains: one
/// line each, whatever their length.
pub fn render_summary(profile: &Profile, top: usize) -> String {
    render_summary_in(profile, top, None)
}

/// The narrowest a call-site column gets to fit a terminal.
const NARROWEST_SITE: usize = 24;

/// `render_summary` for a terminal `columns` wide (None: not a terminal), whose main
/// tables' call-site columns are narrowed to fit it (at 80 columns every row wrapped onto
/// two lines).
pub fn render_summary_in(profile: &Profile, top: usize, columns: Option<usize>) -> String {
    let _wrap = WrapWidth::fit(columns);
    let mut out = String::new();
    match profile.kind {
        ProfileKind::Recording => {
            let _ = writeln!(
                out,
                "{}: {}{}",
                target_name(profile),
                recording_scope(profile),
                if profile.target_exited && !profile.processes.is_empty() {
                    "; a process exited during the recording"
                } else if profile.target_exited {
                    "; the process exited during the recording"
                } else {
                    ""
                },
            );
            write_python(&mut out, profile);
            write_chains(&mut out, profile, top);
            write_processes(&mut out, profile, top);
            // A sampled recording has no threshold (--min-wait): what it did not see
            // ended between two reads.
            let sampled = profile.sampling.is_some();
            write_completed_table(&mut out, &top_sites(profile, false), top, sampled, columns);
            let stuck = top_sites(profile, true);
            if !stuck.is_empty() {
                let _ = writeln!(out, "still blocked at the end of the recording:");
                write_threads_table(&mut out, &stuck, top, profile.waiters(), columns);
            }
            write_object_tables(&mut out, profile, top);
            write_backed_up(&mut out, profile, top);
            write_wakers(&mut out, profile, top, columns);
            write_below_threshold(&mut out, profile);
            write_counts(&mut out, profile);
        }
        ProfileKind::Snapshot => {
            let threads = &profile.thread_counts;
            let where_ = match profile.waiters() {
                "goroutines" => "waiting in the Go scheduler or in system calls",
                "threads" => "blocked in futex, socket or pipe waits",
                _ => "waiting",
            };
            let _ = writeln!(
                out,
                "{}: {}, {} {where_} now",
                target_name(profile),
                profile.count_waiters(threads.threads),
                threads.blocked_in_waits
            );
            write_python(&mut out, profile);
            write_chains(&mut out, profile, top);
            write_processes(&mut out, profile, top);
            let rows = top_sites(profile, true);
            if rows.is_empty() {
                let _ = writeln!(out, "no thread is blocked in a futex, socket or pipe wait\n");
            } else {
                write_threads_table(&mut out, &rows, top, profile.waiters(), columns);
                write_object_tables(&mut out, profile, top);
                write_stacks(&mut out, profile, top.min(SNAPSHOT_STACKS_SHOWN));
            }
            write_backed_up(&mut out, profile, top);
            write_counts(&mut out, profile);
        }
    }
    out
}

/// What a `-` in the ages of waits in progress means.
const UNAGED: &str = "-: age not known (seen by the last read only, or never timed)";

/// Full stacks printed after a snapshot's table, like a goroutine dump.
const SNAPSHOT_STACKS_SHOWN: usize = 5;
const FRAMES_SHOWN: usize = 40;

/// The call-site column's width: the longest of the `shown` rows' sites, at least
/// `least`; or what fits `columns` beside the row's `others` columns, but no narrower
/// than `NARROWEST_SITE`. Piped, a long C++ or Rust name is shown whole.
fn site_width(shown: &[SiteRow], least: usize, others: usize, columns: Option<usize>) -> usize {
    let longest = shown.iter().map(|row| super::escape_name(&row.site).chars().count()).max();
    let widest = longest.unwrap_or(0).max(least);
    match columns {
        Some(columns) => columns.saturating_sub(others).clamp(NARROWEST_SITE, widest),
        None => widest,
    }
}

fn write_completed_table(
    out: &mut String,
    rows: &[SiteRow],
    top: usize,
    sampled: bool,
    columns: Option<usize>,
) {
    if rows.is_empty() {
        let none = if sampled {
            "no completed waits seen"
        } else {
            "no completed waits over the threshold"
        };
        let _ = writeln!(out, "{none}");
        return;
    }
    let kind = kind_width(rows);
    let site = site_width(&rows[..rows.len().min(top)], SITE_WIDTH, kind + 42, columns);
    let _ = writeln!(
        out,
        "{:<site$} {:<kind$} {:>10} {:>10} {:>9} {:>8}",
        "CALL SITE", "KIND", "BLOCKED", "MAX", "WAITS", "THREADS"
    );
    // Waits summed in the kernel (a Go program's exact recording) keep no longest wait
    // and no goroutine ids: '-', not a 0 that reads as none.
    let mut unknown = false;
    for row in rows.iter().take(top) {
        let summed = row.stats.waits > 0 && row.stats.threads.is_empty();
        unknown |= summed;
        let (max, threads) = match summed {
            true => ("-".to_string(), "-".to_string()),
            // Waits begun before the recording know their earlier part as a lower bound.
            false => (
                format_age(row.stats.max_ns, row.stats.lower_bound),
                row.stats.threads.len().to_string(),
            ),
        };
        let _ = writeln!(
            out,
            "{:<site$} {:<kind$} {:>10} {:>10} {:>9} {:>8}",
            elide_function(&row.site, site),
            row.kind.name(),
            format_age(row.stats.total_ns, row.stats.lower_bound),
            max,
            row.stats.waits,
            threads,
        );
    }
    if unknown {
        let _ = writeln!(out, "-: MAX and THREADS unknown for waits summed in the kernel (no ids)");
    }
    write_rest(out, rows, top, |row| {
        format_age(row.stats.total_ns, row.stats.lower_bound) + " blocked"
    });
    let _ = writeln!(out);
}

/// Threads in waits in progress: `THREADS KIND YOUNGEST OLDEST CALL SITE`, the call
/// site last so that its spaces do not break the columns; ends with an empty line.
fn write_threads_table(
    out: &mut String,
    rows: &[SiteRow],
    top: usize,
    waiters: &str,
    columns: Option<usize>,
) {
    // A row's count is of its own kind's waiters; of both, the column says so.
    let header = match waiters {
        crate::model::MIXED_WAITERS => "THREADS/GOROUTINES".to_string(),
        waiters => waiters.to_uppercase(),
    };
    let count = header.len().max(7);
    let kind = kind_width(rows);
    let site =
        site_width(&rows[..rows.len().min(top)], SITE_WIDTH + 14, count + kind + 26, columns);
    let _ = writeln!(
        out,
        "{header:>count$}  {:<kind$} {:>10} {:>10}  CALL SITE",
        "KIND", "YOUNGEST", "OLDEST"
    );
    let mut unaged = false;
    for row in rows.iter().take(top) {
        // An asyncio task's age is not known (it is read, not traced).
        let age = |ns| match row.kind {
            WaitKind::Task => "-".to_owned(),
            _ => format_age(ns, row.stats.lower_bound),
        };
        let (youngest, oldest) = (age(row.stats.min_ns), age(row.stats.max_ns));
        unaged |= youngest == "-" || oldest == "-";
        let _ = writeln!(
            out,
            "{:>count$}  {:<kind$} {youngest:>10} {oldest:>10}  {}",
            row.stats.threads.len(),
            row.kind.name(),
            elide_function(&row.site, site),
        );
    }
    // A `-` is an age not known, not none.
    if unaged {
        let _ = writeln!(out, "{UNAGED}");
    }
    write_rest(out, rows, top, |row| {
        counted(row.stats.threads.len() as u64, crate::model::waiters_of(row.kind))
    });
    let _ = writeln!(out);
}

fn write_rest(out: &mut String, rows: &[SiteRow], top: usize, what: impl Fn(&SiteRow) -> String) {
    if rows.len() > top {
        let rest: Vec<String> = rows[top..].iter().map(&what).collect();
        write_wrapped(out, &format!("... {} more call sites:", rows.len() - top), &rest);
    }
}

fn write_stacks(out: &mut String, profile: &Profile, shown: usize) {
    for (stack, processes) in stacks_in_progress(profile).into_iter().take(shown) {
        let stats = &stack.stats;
        let count = stats.threads.len() as u64;
        let of_processes = match processes {
            0 | 1 => String::new(),
            processes => format!(" in {processes} processes"),
        };
        // Tasks are neither threads nor goroutines, and their ages are not known.
        let (waiters, ages) = match stack.kind {
            WaitKind::Task => (counted(count, "tasks"), String::new()),
            _ => (
                counted(count, crate::model::waiters_of(stack.kind)),
                format!(
                    ", blocked {} to {}",
                    format_age(stats.min_ns, stats.lower_bound),
                    format_age(stats.max_ns, stats.lower_bound)
                ),
            ),
        };
        let _ = writeln!(
            out,
            "{waiters}{of_processes} @ {}{ages}{}:",
            super::escape_name(&kind_frame(profile, &stack)),
            if stack.truncated { " (stack truncated)" } else { "" },
        );
        for frame in stack.frames.iter().rev().take(FRAMES_SHOWN) {
            // `    name  (module)` within WIDTH, the name giving way to the module.
            let module = elide(&frame.module, 30);
            let room = WIDTH - 8 - module.chars().count();
            let _ = writeln!(out, "    {}  ({module})", elide_function(&frame.name, room));
        }
        if stack.frames.len() > FRAMES_SHOWN {
            let _ = writeln!(out, "    ... {} more frames", stack.frames.len() - FRAMES_SHOWN);
        }
        let _ = writeln!(out);
    }
}

/// The stacks of the waits in progress, most threads first, those of one program's
/// processes alike in their frames, kind and object made one, with how many processes
/// it stands for (a forked server's backends, each one thread at the same wait, would
/// print the same stack once per process).
fn stacks_in_progress(profile: &Profile) -> Vec<(ProfileStack, usize)> {
    type Key<'a> = (Option<&'a str>, Vec<(&'a str, &'a str)>, WaitKind, Option<&'a str>, bool);
    let mut merged: Vec<(ProfileStack, BTreeSet<u32>)> = Vec::new();
    // Where each key's stack is in `merged` (a host's report has thousands).
    let mut index: HashMap<Key, usize> = HashMap::new();
    for stack in profile.stacks.iter().filter(|stack| stack.in_progress) {
        let key: Key = (
            stack.process.as_ref().map(|process| process.comm.as_str()),
            stack.frames.iter().map(|frame| (frame.name.as_str(), frame.module.as_str())).collect(),
            stack.kind,
            stack.object.as_deref(),
            stack.truncated,
        );
        let pid = stack.process.as_ref().map(|process| process.pid);
        match index.get(&key).filter(|_| key.0.is_some()) {
            Some(&at) => {
                let (alike, pids) = &mut merged[at];
                alike.stats.merge(&stack.stats);
                pids.extend(pid);
            }
            None => {
                index.insert(key, merged.len());
                merged.push((stack.clone(), pid.into_iter().collect()));
            }
        }
    }
    let mut stacks: Vec<(ProfileStack, usize)> =
        merged.into_iter().map(|(stack, pids)| (stack, pids.len())).collect();
    stacks.sort_by_key(|(stack, _)| std::cmp::Reverse(stack.stats.threads.len()));
    stacks
}

/// Waits grouped by what they wait on.
#[derive(Debug, Default)]
pub struct ObjectRow {
    pub object: String,
    pub kinds: Vec<WaitKind>,
    /// Completed waits' blocked time plus the ages of waits in progress.
    pub blocked_ns: u64,
    /// Completed waits.
    pub waits: u64,
    /// Threads blocked on it at the end (or at the snapshot).
    pub threads_now: u64,
    pub lower_bound: bool,
}

/// The objects the waits of these kinds wait on, most blocked time first.
pub fn object_rows(profile: &Profile, kinds: &[WaitKind]) -> Vec<ObjectRow> {
    let mut rows: HashMap<&str, ObjectRow> = HashMap::new();
    for stack in &profile.stacks {
        let object = match stack.object.as_deref().filter(|_| kinds.contains(&stack.kind)) {
            // A goroutine's object is its wait reason, an asyncio task's what it awaits:
            // only an IO wait, or a socket's, names an endpoint.
            Some(object) if matches!(stack.kind, WaitKind::Goroutine | WaitKind::Task) => {
                endpoint_in_object(stack.kind, object)
            }
            object => object,
        };
        let Some(object) = object else {
            continue;
        };
        let row = rows
            .entry(object)
            .or_insert_with(|| ObjectRow { object: object.to_string(), ..ObjectRow::default() });
        if !row.kinds.contains(&stack.kind) {
            row.kinds.push(stack.kind);
        }
        row.blocked_ns += stack.stats.total_ns;
        row.lower_bound |= stack.stats.lower_bound;
        if stack.in_progress {
            row.threads_now += stack.stats.threads.len() as u64;
        } else {
            row.waits += stack.stats.waits;
        }
    }
    let mut rows: Vec<ObjectRow> = rows.into_values().collect();
    rows.sort_by(|a, b| b.blocked_ns.cmp(&a.blocked_ns).then_with(|| a.object.cmp(&b.object)));
    rows
}

/// Waits on sockets and pipes: a thread's read/write is one only on a pipe (on a socket
/// it is a send/recv), a goroutine's and a task's where their object names an endpoint.
const ENDPOINT_KINDS: [WaitKind; 8] = [
    WaitKind::Send,
    WaitKind::Recv,
    WaitKind::Connect,
    WaitKind::Accept,
    WaitKind::Read,
    WaitKind::Write,
    WaitKind::Goroutine,
    WaitKind::Task,
];
/// The endpoint column: as wide as the widest endpoint shown, between these (an IPv4
/// address and port fits the least; a listener's `(listening)`, an IPv6 address, a long
/// path take more, up to the most).
const ENDPOINT_WIDTH: usize = 22;
const ENDPOINT_MAX_WIDTH: usize = 48;
const LOCK_WIDTH: usize = 46;

/// Two short tables: blocked time and threads blocked now, by remote endpoint and by lock.
fn write_object_tables(out: &mut String, profile: &Profile, top: usize) {
    let endpoints = object_rows(profile, &ENDPOINT_KINDS);
    if !endpoints.is_empty() {
        let kinds_of = |row: &ObjectRow| {
            row.kinds.iter().map(|kind| kind.name()).collect::<Vec<_>>().join(",")
        };
        // As wide as the widest kinds shown (`send,recv`, `goroutine`).
        let kind = endpoints.iter().take(top).map(|row| kinds_of(row).len()).max().unwrap_or(0);
        let kind = kind.max(7);
        let widest =
            endpoints.iter().take(top).map(|row| super::escape_name(&row.object).chars().count());
        // The state keeps 16 columns within 100.
        let most = ENDPOINT_MAX_WIDTH.min(100usize.saturating_sub(kind + 19 + 16));
        let width = widest.max().unwrap_or(0).clamp(ENDPOINT_WIDTH, most.max(ENDPOINT_WIDTH));
        let state_width = 100usize.saturating_sub(width + kind + 19).max(16);
        let _ = writeln!(
            out,
            "{:<width$} {:<kind$} {:>10} {:>4}  STATE",
            "BY ENDPOINT", "KIND", "BLOCKED", "NOW"
        );
        for row in endpoints.iter().take(top) {
            let state = profile.endpoint_states.get(&row.object).map_or("", String::as_str);
            let _ = writeln!(
                out,
                "{:<width$} {:<kind$} {:>10} {:>4}  {}",
                elide(&row.object, width),
                kinds_of(row),
                format_age(row.blocked_ns, row.lower_bound),
                row.threads_now,
                truncate(state, state_width),
            );
        }
        let _ = writeln!(out);
    }
    let locks = object_rows(profile, &[WaitKind::Futex]);
    if !locks.is_empty() {
        let _ = writeln!(
            out,
            "{:<LOCK_WIDTH$} {:>10} {:>9} {:>5}",
            "BY LOCK", "BLOCKED", "WAITS", "NOW"
        );
        for row in locks.iter().take(top) {
            let _ = writeln!(
                out,
                "{:<LOCK_WIDTH$} {:>10} {:>9} {:>5}",
                elide(&row.object, LOCK_WIDTH),
                format_age(row.blocked_ns, row.lower_bound),
                row.waits,
                row.threads_now,
            );
        }
        let _ = writeln!(out);
    }
}

/// What starts the line under a backed-up socket that says where its peer is stuck.
pub(crate) const BACKED_UP_PEER_MARK: &str = "    → ";

/// The backed-up table's columns between the peer and the process (WAY, FD, QUEUED,
/// IDLE) with their spaces, and the widest a process's name gets there.
const BACKED_UP_FIXED_WIDTH: usize = 1 + 8 + 1 + 5 + 1 + 9 + 1 + 8 + 2;
const BACKED_UP_PROCESS_MAX_WIDTH: usize = 30;

/// The sockets whose data stopped moving (`Profile::backed_up`), most queued first: an
/// event-driven server's client that stopped reading shows here, not among the waits.
fn write_backed_up(out: &mut String, profile: &Profile, top: usize) {
    let backed_up = &profile.backed_up;
    if backed_up.is_empty() {
        return;
    }
    let shown = &backed_up.sockets[..backed_up.sockets.len().min(top)];
    let peer = shown.iter().map(|socket| super::escape_name(&socket.peer).chars().count());
    let peer = peer.max().unwrap_or(0).clamp(ENDPOINT_WIDTH, ENDPOINT_MAX_WIDTH);
    // A profile of several processes names each socket's, in a column of its own.
    let process_of = |socket: &BackedUpSocket| {
        socket.process.as_ref().map_or(String::new(), ToString::to_string)
    };
    let process =
        shown.iter().map(|socket| super::escape_name(&process_of(socket)).chars().count());
    let process = process.max();
    // As wide as `PROCESS` at least, and a space.
    let process = match process.unwrap_or(0) {
        0 => 0,
        widest => widest.clamp("PROCESS".len(), BACKED_UP_PROCESS_MAX_WIDTH) + 1,
    };
    // The reason fills the line to 100, cut short beyond (the JSON says all), but keeps
    // 20 columns: a brief reason whole (`peer stopped reading`).
    let why = 100usize.saturating_sub(peer + BACKED_UP_FIXED_WIDTH + process).max(20);
    let _ = writeln!(
        out,
        "{:<peer$} {:<8} {:>5} {:>9} {:>8}  {:<process$}WHY",
        "BACKED UP (PEER)",
        "WAY",
        "FD",
        "QUEUED",
        "IDLE",
        if process > 0 { "PROCESS" } else { "" },
    );
    for socket in shown {
        let idle =
            socket.idle.map_or("-".to_string(), |idle| format_duration(idle.as_nanos() as u64));
        let _ = writeln!(
            out,
            "{:<peer$} {:<8} {:>5} {:>9} {:>8}  {:<process$}{}",
            elide(&socket.peer, peer),
            socket.backlog.name(),
            socket.fd,
            socket.queued().map_or("-".to_string(), format_bytes),
            idle,
            elide(&process_of(socket), process.saturating_sub(1)),
            // Its explanation goes first where the process column leaves no room.
            match socket.reason() {
                whole if whole.chars().count() <= why => whole.to_string(),
                _ => truncate(socket.brief_reason(), why),
            },
        );
        // Where the peer is stuck, as a chain says it: one line, read whole.
        if let Some(peer) = &socket.peer_process {
            let _ = writeln!(out, "{BACKED_UP_PEER_MARK}{}", super::escape_name(peer));
        }
    }
    let more = backed_up.count() - shown.len() as u64;
    if more > 0 {
        let _ = writeln!(out, "  … and {more} more backed-up sockets");
    }
    let _ = writeln!(out);
}

/// A byte count as a person reads it: `512 B`, `4.0 KiB`, `2.5 MiB`.
pub fn format_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / KIB),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", bytes as f64 / (KIB * KIB)),
        _ => format!("{:.1} GiB", bytes as f64 / (KIB * KIB * KIB)),
    }
}

/// Frames of a lock holder's stack printed under its chain, innermost first.
const HOLDER_FRAMES_SHOWN: usize = 12;

/// The wait chains, one line each, heaviest first: the answer before the tables it joins.
fn write_chains(out: &mut String, profile: &Profile, top: usize) {
    if profile.chains.is_empty() {
        return;
    }
    let _ = writeln!(out, "WAIT CHAINS");
    for (chain, line) in merged_chain_lines(profile).into_iter().take(top) {
        // One line, whatever the names it joins hold.
        let _ = writeln!(out, "  {}", super::escape_name(&line));
        // The holder's stack as it is now: where the lock is held.
        if let chains::Terminal::LockHolder(holder) = &chain.terminal
            && let chains::ThreadState::Blocked { stack, .. } = &holder.state
        {
            for name in stack.iter().rev().take(HOLDER_FRAMES_SHOWN) {
                let _ = writeln!(out, "      {}", elide(name, 94));
            }
        }
    }
    let _ = writeln!(out);
}

/// The chains' lines, heaviest first, the chains of one program's processes that read
/// alike from their first site on made one (`3 threads of postgres (3 processes) at ...`):
/// a server forked per connection has a chain per process, one thread each.
fn merged_chain_lines(profile: &Profile) -> Vec<(&chains::WaitChain, String)> {
    struct Merged<'a> {
        first: &'a chains::WaitChain,
        threads: u64,
        blocked_ns: u64,
        pids: BTreeSet<u32>,
    }
    let mut merged: Vec<(Option<&str>, String, Merged)> = Vec::new();
    let mut index: HashMap<(Option<&str>, String), usize> = HashMap::new();
    for chain in &profile.chains {
        let comm = chain.process.as_ref().map(|process| process.comm.as_str());
        let path = chains::chain_path(chain, format_duration);
        let pid = chain.process.as_ref().map(|process| process.pid);
        let key = (comm, path.clone());
        match index.get(&key).filter(|_| comm.is_some()) {
            Some(&at) => {
                let (_, _, same) = &mut merged[at];
                same.threads += chain.threads;
                same.blocked_ns = same.blocked_ns.saturating_add(chain.blocked_ns);
                same.pids.extend(pid);
            }
            None => {
                index.insert(key, merged.len());
                merged.push((
                    comm,
                    path,
                    Merged {
                        first: chain,
                        threads: chain.threads,
                        blocked_ns: chain.blocked_ns,
                        pids: pid.into_iter().collect(),
                    },
                ));
            }
        }
    }
    // Heaviest first, as the chains were, by what they add up to.
    let weight = |merged: &Merged| match profile.kind {
        ProfileKind::Recording => (merged.blocked_ns, merged.threads),
        ProfileKind::Snapshot => (merged.threads, merged.blocked_ns),
    };
    merged.sort_by_key(|(_, _, merged)| std::cmp::Reverse(weight(merged)));
    merged
        .into_iter()
        .map(|(comm, path, Merged { first, threads, pids, .. })| {
            let line = match (comm, pids.len()) {
                (Some(comm), processes) if processes > 1 => format!(
                    "{} of {comm} ({processes} processes) {path}",
                    chains::chain_waiters(first, threads)
                ),
                // One process's chains that read alike: their threads together.
                _ => {
                    let mut chain = first.clone();
                    chain.threads = threads;
                    chains::chain_line(&chain, format_duration)
                }
            };
            (first, line)
        })
        .collect()
}

const WAKE_SITE_WIDTH: usize = 38;

/// Who woke the long futex waits: the first step towards "who holds them up".
fn write_wakers(out: &mut String, profile: &Profile, top: usize, columns: Option<usize>) {
    if profile.wakers.is_empty() {
        return;
    }
    // Two site columns share what the counts (and the spaces, 20 columns) leave.
    let site = match columns {
        Some(columns) => (columns.saturating_sub(20) / 2).clamp(NARROWEST_SITE, WAKE_SITE_WIDTH),
        None => WAKE_SITE_WIDTH,
    };
    let _ = writeln!(
        out,
        "{:<site$} {:<site$} {:>9} {:>8}",
        "WAITING AT", "WOKEN BY", "WAKES", "WAKERS"
    );
    for row in profile.wakers.iter().take(top) {
        let _ = writeln!(
            out,
            "{:<site$} {:<site$} {:>9} {:>8}",
            elide_function(&row.waiting_site, site),
            elide_function(&row.waker_site, site),
            row.wakes,
            row.waker_threads.len(),
        );
    }
    let _ = writeln!(out);
}

fn write_below_threshold(out: &mut String, profile: &Profile) {
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
}

fn write_counts(out: &mut String, profile: &Profile) {
    match profile.waiters() {
        "goroutines" => {
            write_goroutine_counts(out, profile);
            return;
        }
        // Several processes, a Go program's goroutines among them: the threads' counts
        // below (which count the goroutines read with them), and the Go readers' own.
        crate::model::MIXED_WAITERS => write_wrapped(
            out,
            "goroutines (of the Go programs among them):",
            &[
                format!("{} of the runtime's own hidden", profile.thread_counts.runtime_hidden),
                format!("{} changed while read", profile.counts.go_goroutines_skipped),
                format!("{} channels, locks or calls unnamed", profile.counts.go_objects_unnamed),
            ],
        ),
        _ => {}
    }
    let counts = &profile.counts;
    if let (ProfileKind::Recording, Some(Sampling { reads, .. })) = (profile.kind, profile.sampling)
    {
        let ended: u64 =
            profile.stacks.iter().filter(|s| !s.in_progress).map(|s| s.stats.waits).sum();
        write_wrapped(out, "seen:", &[format!("{reads} reads"), format!("{ended} waits ended")]);
        if counts.waits_at_last_place > 0 {
            // Their thread ran before they were read: not a loss, an attribution.
            let _ = writeln!(
                out,
                "stacks: {} waits given the last stack read at their call (their thread ran or exited first)",
                counts.waits_at_last_place
            );
        }
    } else if profile.kind == ProfileKind::Recording {
        write_wrapped(
            out,
            "seen:",
            &[
                format!("{} waits", counts.waits_started),
                format!("{} long", counts.long_waits),
                format!("{} short", counts.short_waits),
            ],
        );
        if counts.waits_begun_before > 0 {
            // In progress at the attach: not among the waits seen to begin; counted as
            // long or short if they ended, else still blocked.
            write_wrapped(
                out,
                "begun before the recording:",
                &[
                    format!(
                        "{} waits in progress at the attach (not among the {} begun)",
                        counts.waits_begun_before, counts.waits_started
                    ),
                    "their earlier part from the scheduler (a lower bound)".to_string(),
                ],
            );
        }
        if counts.waits_discarded > 0 {
            // Their thread slept again before their end was seen: their length is unknown.
            let _ =
                writeln!(out, "left out: {} waits whose end was not seen", counts.waits_discarded);
        }
        // What the stack copies were: none of these is a loss by itself.
        let stack_lines = [
            // A shallow thread's stack ends before the copy would.
            (counts.stack_shortened, "copies ended at the top of their thread's stack"),
            (
                counts.stack_partial,
                "copied in part, as far as their thread's last walk from the same place read",
            ),
            // Not waits: copies of short ones, walked only to size later copies.
            (counts.span_samples, "short waits' copies walked to size their thread's later copies"),
            (
                counts.span_samples_dropped,
                "short waits' copies not sent (ring buffer full, or the copy gone)",
            ),
            // For waits likely to end where no probe can read the sleeper's memory.
            (counts.sleep_copies, "sleeps kept a copy of their stack (whole or in part)"),
            // Without wakers: long waits whose sleep kept none, copied while they slept.
            (counts.late_copies, "long waits' stacks copied from outside while they slept"),
            // What the spans save: each whole copy costs the sleeping thread microseconds.
            (
                counts.sleep_copies_whole,
                "sleeps copied whole (no span known yet for where they slept)",
            ),
        ];
        for (count, what) in stack_lines.into_iter().filter(|&(count, _)| count > 0) {
            let _ = writeln!(out, "stacks: {count} {what}");
        }
    }
    let threads = &profile.thread_counts;
    if threads.threads > 0 {
        // A recording's are of its last read of the threads, at its end: not a sum over
        // it (its losses are the lines below).
        let read = match profile.kind {
            ProfileKind::Recording => "threads read at the end",
            ProfileKind::Snapshot => "threads read",
        };
        write_wrapped(
            out,
            &format!("{read}: {},", threads.threads),
            &[
                format!("{} blocked in waits", threads.blocked_in_waits),
                format!("{} running or blocked elsewhere", threads.elsewhere),
                format!(
                    "{} exited and {} woke while read",
                    threads.exited_while_read, threads.woke_while_read
                ),
                format!("{} unreadable", threads.unreadable),
                format!("{} without saved rbp", threads.frame_pointer_unknown),
            ],
        );
    }
    write_wrapped(
        out,
        "lost:",
        &[
            format!("{} ring buffer full", counts.ring_buffer_full),
            format!("{} in-flight map full", counts.in_flight_map_full),
            format!("{} wakers lost", counts.wake_ring_buffer_full),
            format!("{} stacks unreadable", counts.stack_unreadable),
            format!("{} unwinds truncated", counts.unwind_truncated),
            format!("{} unknown symbols", counts.unknown_symbols),
            format!("{} descriptors unresolved", counts.unresolved_descriptors),
        ],
    );
    if counts.malformed_records > 0 {
        let _ = writeln!(out, "lost: {} malformed ring-buffer records", counts.malformed_records);
    }
    if counts.reads_lost > 0 {
        let _ = writeln!(
            out,
            "lost: {} sampled reads (passes in the kernel not read whole)",
            counts.reads_lost
        );
    }
    if counts.thread_reads_failed > 0 {
        let _ = writeln!(
            out,
            "lost: {} sampled reads of a thread that failed (files or stack unreadable)",
            counts.thread_reads_failed
        );
    }
    if counts.waits_unread > 0 {
        let _ = writeln!(
            out,
            "lost: {} sampled waits whose thread ran or exited before their stack was read",
            counts.waits_unread
        );
    }
    if counts.wakers_unmatched > 0 {
        let _ = writeln!(
            out,
            "lost: {} wakers whose wait's record never arrived",
            counts.wakers_unmatched
        );
    }
    if counts.non_socket_io > 0 {
        let _ = writeln!(
            out,
            "left out: {} read/write waits on descriptors neither sockets nor pipes",
            counts.non_socket_io
        );
    }
    write_rare_losses(out, counts);
}

/// Losses both kinds of profile can meet, said only when they happened.
fn write_rare_losses(out: &mut String, counts: &TraceCounts) {
    if counts.waits_unnamed > 0 {
        let _ = writeln!(
            out,
            "lost: {} ended waits of a process gone before their stacks were named",
            counts.waits_unnamed
        );
    }
    if counts.socket_scans_failed > 0 {
        let _ = writeln!(
            out,
            "lost: {} processes' socket reads (backed-up sockets of theirs may be missing)",
            counts.socket_scans_failed
        );
    }
    // A chain that ends at an endpoint may have a process of this host behind it.
    if counts.peer_lookups_failed > 0 {
        let _ = writeln!(
            out,
            "lost: {} peer lookups (socket tables unreadable: chains may stop at the endpoint)",
            counts.peer_lookups_failed
        );
    }
}

/// What the Go probes and the goroutine reads saw and lost.
fn write_goroutine_counts(out: &mut String, profile: &Profile) {
    let counts = &profile.counts;
    let recording = profile.kind == ProfileKind::Recording;
    let hidden = format!("{} waits of the runtime's own hidden", counts.go_runtime_waits_hidden);
    match profile.sampling {
        Some(Sampling { reads, .. }) if recording => {
            let ended: u64 = profile
                .stacks
                .iter()
                .filter(|stack| !stack.in_progress)
                .map(|stack| stack.stats.waits)
                .sum();
            let items = [format!("{reads} reads"), format!("{ended} waits ended"), hidden];
            write_wrapped(out, "seen:", &items);
            if counts.waits_at_last_place > 0 {
                // Changed while read: not a loss, an attribution.
                let _ = writeln!(
                    out,
                    "stacks: {} waits given their goroutine's last stack at the call (it changed while read)",
                    counts.waits_at_last_place
                );
            }
        }
        _ if recording => {
            let items = [
                format!("{} parks", counts.waits_started),
                format!("{} waits ended", counts.long_waits),
                hidden,
            ];
            write_wrapped(out, "seen:", &items);
        }
        _ => {}
    }
    let goroutines = &profile.thread_counts;
    if goroutines.threads > 0 {
        write_wrapped(
            out,
            &format!("goroutines read from the runtime: {},", goroutines.threads),
            &[
                format!("{} waiting (parked or in system calls)", goroutines.blocked_in_waits),
                format!("{} running or runnable", goroutines.elsewhere),
                format!("{} of the runtime's own hidden", goroutines.runtime_hidden),
                format!("{} changed while read", goroutines.woke_while_read),
                format!("{} unreadable", goroutines.unreadable),
            ],
        );
    }
    let mut lost = Vec::new();
    if profile.sampling.is_some() {
        lost.push(format!(
            "{} goroutines changed while read (a wait seen before kept its time)",
            counts.go_goroutines_skipped
        ));
    } else if recording {
        lost.push(format!("{} parks", counts.go_parks_lost));
        lost.push(format!("{} stacks", counts.go_stacks_lost));
        lost.push(format!("{} waits", counts.go_waits_lost));
    }
    lost.push(format!("{} stacks truncated", counts.unwind_truncated));
    lost.push(format!("{} IO waits unresolved", counts.unresolved_descriptors));
    lost.push(format!("{} channels, locks or calls unnamed", counts.go_objects_unnamed));
    write_wrapped(out, "lost:", &lost);
    if counts.non_socket_io > 0 {
        let _ = writeln!(
            out,
            "left out: {} IO waits on descriptors neither sockets nor pipes",
            counts.non_socket_io
        );
    }
    write_rare_losses(out, counts);
}

/// The table's width: every line of the summary fits it.
const WIDTH: usize = 100;
/// The narrowest lines are wrapped to, for a narrow terminal.
const NARROWEST_WRAP: usize = 60;

thread_local! {
    /// The width `write_wrapped` wraps at while a summary for a terminal is rendered (see
    /// `render_summary_in`): `WIDTH`, or the terminal's if narrower.
    static WRAP_WIDTH: std::cell::Cell<usize> = const { std::cell::Cell::new(WIDTH) };
}

/// Sets `WRAP_WIDTH` for a terminal `columns` wide until dropped.
struct WrapWidth(usize);

impl WrapWidth {
    fn fit(columns: Option<usize>) -> Self {
        let width = columns.map_or(WIDTH, |columns| columns.clamp(NARROWEST_WRAP, WIDTH));
        Self(WRAP_WIDTH.with(|cell| cell.replace(width)))
    }
}

impl Drop for WrapWidth {
    fn drop(&mut self) {
        WRAP_WIDTH.with(|cell| cell.set(self.0));
    }
}

/// `head item, item, ...`, continued on lines indented by four spaces so that none
/// passes `WIDTH` (or a narrower terminal's width).
fn write_wrapped(out: &mut String, head: &str, items: &[String]) {
    let width = WRAP_WIDTH.with(std::cell::Cell::get);
    let mut line = head.to_string();
    for (index, item) in items.iter().enumerate() {
        let piece = if index + 1 < items.len() { format!("{item},") } else { item.clone() };
        if line.chars().count() + 1 + piece.chars().count() > width {
            let _ = writeln!(out, "{line}");
            line = "   ".to_string(); // the pushed space makes four
        }
        line.push(' ');
        line.push_str(&piece);
    }
    let _ = writeln!(out, "{line}");
}

/// An age, prefixed with `≥` when it is a lower bound; `-` for a lower bound of nothing
/// (a goroutine whose wait no GC timed, a wait first seen by the last read).
pub fn format_age(ns: u64, lower_bound: bool) -> String {
    match (ns, lower_bound) {
        (0, true) => "-".to_string(),
        (_, true) => format!("≥{}", format_duration(ns)),
        (_, false) => format_duration(ns),
    }
}

/// Shortens `text` to `width` characters, keeping its end (the function's own name).
/// Control characters are written out first: a name's newline or tab (a thread may name
/// itself anything) must not break a row, nor its escape widen one after it was padded.
pub(crate) fn elide(text: &str, width: usize) -> String {
    let text = super::escape_name(text);
    let count = text.chars().count();
    if count <= width {
        return text.to_string();
    }
    let tail: String = text.chars().skip(count - (width - 1)).collect();
    format!("…{tail}")
}

/// Shortens function name `text` (a call site, a frame, `a from b`) to `width` characters
/// as a reader would: its generic arguments first (`block_on<…>`), then a C++ name's
/// parameters, then from the left (`elide`), keeping the function's own name where a cut
/// from the left alone would keep only a type's tail (`…ync_fn#0}>, …Schedule>`).
pub(crate) fn elide_function(text: &str, width: usize) -> String {
    let text = super::escape_name(text);
    if text.chars().count() <= width {
        return text.to_string();
    }
    let collapsed = collapse_groups(&text, '<', '>', "<…>");
    if collapsed.chars().count() <= width {
        return collapsed;
    }
    elide(&collapse_groups(&collapsed, '(', ')', ""), width)
}

/// `text` with each `open`…`close` group that follows a name (`Vec<u8>`, `run(int)`; not
/// a qualified self's `<T as Trait>`, nor C++'s `(anonymous namespace)`) written as
/// `with`, nested groups inside it too.
fn collapse_groups(text: &str, open: char, close: char, with: &str) -> String {
    let named = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut depth = 0usize;
    let mut previous = ' ';
    for (index, c) in text.char_indices() {
        if depth > 0 {
            // An arrow (`fn() -> u8`) does not close a group.
            if c == open {
                depth += 1;
            } else if c == close && !(close == '>' && previous == '-') {
                depth -= 1;
            }
        } else if c == open
            && named(previous)
            && !text[index..].starts_with("(anonymous namespace)")
        {
            depth = 1;
            out.push_str(with);
        } else {
            out.push(c);
        }
        previous = c;
    }
    out
}

/// Shortens `text` to `width` characters, keeping its start (a phrase's point); its
/// control characters written out first, as `elide` does.
fn truncate(text: &str, width: usize) -> String {
    let text = super::escape_name(text);
    if text.chars().count() <= width {
        return text.to_string();
    }
    let head: String = text.chars().take(width - 1).collect();
    format!("{head}…")
}

/// A duration in the unit a person reads: `850us`, `12.3ms`, `1.50s`, `2m05s`.
pub fn format_duration(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    // Each unit up to where its rounding would write the next unit's 1000 (or 60 s).
    match ns {
        0..US => format!("{ns}ns"),
        US..MS => format!("{}us", ns / US),
        _ if ns < S - MS / 20 => format!("{:.1}ms", ns as f64 / MS as f64),
        _ if ns < 60 * S - S / 200 => format!("{:.2}s", ns as f64 / S as f64),
        _ => {
            let seconds = (ns / S).max(60);
            format!("{}m{:02}s", seconds / 60, seconds % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tracer_common::ShortWaitTotals;

    use super::*;
    use crate::model::{ThreadCounts, TraceCounts, tests::stack};

    #[test]
    fn byte_counts_read_like_a_person_writes_them() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(4096), "4.0 KiB");
        assert_eq!(format_bytes(2_621_440), "2.5 MiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn backed_up_sockets_of_several_processes_name_each_one() {
        let mut one = crate::report::fixtures::fixture_profile();
        let mut other = one.clone();
        other.pid = 4343;
        other.backed_up.sockets.truncate(1);
        other.backed_up.sockets[0].inode += 1;
        other.backed_up.left_out = 4;
        one.backed_up.sockets[0].peer = "10.0.0.7:5\n1234".to_string();
        let several = Profile::of_processes(vec![one, other]);
        let text = render_summary(&several, 2);
        // Each peer's line follows its socket's row.
        assert!(text.contains("\n    → peer pid 5252 (stats-client): blocked in"), "{text}");
        let table: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.starts_with("BACKED UP"))
            .filter(|line| !line.starts_with(BACKED_UP_PEER_MARK))
            .take(4)
            .collect();
        assert_eq!(table.len(), 4, "{text}");
        assert!(table[0].contains(" PROCESS ") && table[0].ends_with("WHY"), "{text}");
        // Two shown of four, the heaviest first, each with its process; the rest counted.
        assert!(table[1].contains("app (4242)") || table[1].contains("app (4343)"), "{text}");
        assert!(table[1].contains("2.5 MiB") && table[2].contains("2.5 MiB"), "{text}");
        assert!(table[1].contains(r"10.0.0.7:5\x0a1234"), "a name's newline is escaped:\n{text}");
        assert_eq!(table[3], "  … and 6 more backed-up sockets", "{text}");
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(format_duration(999), "999ns");
        assert_eq!(format_duration(850_000), "850us");
        // Never 1000.0ms nor 60.00s: the next unit's.
        assert_eq!(format_duration(999_949_999), "999.9ms");
        assert_eq!(format_duration(999_950_000), "1.00s");
        assert_eq!(format_duration(59_994_999_999), "59.99s");
        assert_eq!(format_duration(59_995_000_000), "1m00s");
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

    #[test]
    fn long_function_names_lose_their_generics_and_parameters_first() {
        let rust = "tokio::runtime::park::CachedParkThread::block_on<tokio_app::main::{async_block_env#0}>";
        assert_eq!(elide_function(rust, 60), "tokio::runtime::park::CachedParkThread::block_on<…>");
        // A qualified self keeps its type; the generics inside it go.
        let write = "<&mut alloc::vec::Vec<u8, alloc::alloc::Global> as std::io::Write>::write_all";
        assert_eq!(
            elide_function(write, 60),
            "<&mut alloc::vec::Vec<…> as std::io::Write>::write_all"
        );
        // An arrow closes nothing.
        assert_eq!(
            elide_function("call_once<fn() -> u8, u16>::run_it", 20),
            "call_once<…>::run_it"
        );
        let cxx = "uv_cond_wait from node::(anonymous namespace)::PlatformWorkerThread(void*)";
        assert_eq!(
            elide_function(cxx, 67),
            "uv_cond_wait from node::(anonymous namespace)::PlatformWorkerThread"
        );
        let cut = elide_function(cxx, 40);
        assert_eq!(cut.chars().count(), 40);
        assert!(cut.starts_with('…') && cut.ends_with("::PlatformWorkerThread"), "{cut}");
        // What fits is left alone.
        assert_eq!(elide_function("run(int)", 20), "run(int)");
    }

    #[test]
    fn an_age_not_known_is_said_so_under_the_table() {
        let mut profile = profile();
        assert!(!render_summary_in(&profile, 10, None).contains(UNAGED));
        // The sender stuck at the end, first seen by the last read.
        let stats = &mut profile.stacks[4].stats;
        (stats.min_ns, stats.max_ns, stats.total_ns) = (0, 0, 0);
        let text = render_summary_in(&profile, 10, None);
        let legend = text.lines().position(|line| line == UNAGED);
        let row = text.lines().position(|line| line.ends_with("  app::write_to_backend"));
        assert!(legend.is_some() && row < legend, "{text}");
    }

    #[test]
    fn piped_call_sites_are_shown_whole() {
        let long = "node::WorkerThreadsTaskRunner::DelayedTaskScheduler::Start()::{lambda(void*)#1}::_FUN(void*)";
        let mut profile = profile();
        // The sender stuck at the end: the still-blocked table's site.
        profile.stacks[4].frames[0].name = long.to_string();
        let piped = render_summary_in(&profile, 10, None);
        assert!(piped.lines().any(|line| line.ends_with(&format!("  {long}"))), "{piped}");
        // A terminal 100 wide: cut to fit, its function's own name kept.
        let fitted = render_summary_in(&profile, 10, Some(100));
        assert!(fitted.lines().all(|line| line.chars().count() <= 100), "{fitted}");
        assert!(fitted.contains("TaskScheduler::Start::{lambda#1}::_FUN\n"), "{fitted}");
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
        inlined_elsewhere.frames.insert(0, crate::model::tests::frame("main", true));
        let mut stuck_sender =
            stack(&[("app::write_to_backend", true)], WaitKind::Send, &[(9, 61_000_000_000)]);
        stuck_sender.in_progress = true;
        stuck_sender.stats.lower_bound = true;
        stuck_sender.object = Some("10.0.0.5:80".into());
        let mut sender =
            stack(&[("app::write_to_backend", true)], WaitKind::Send, &[(9, 5_000_000)]);
        sender.object = Some("10.0.0.5:80".into());
        Profile {
            kind: ProfileKind::Recording,
            pid: 4242,
            start_unix_ns: None,
            command_line: None,
            comm: "app".into(),
            cgroup: None,
            duration: Duration::from_secs(3),
            min_wait: Duration::from_millis(1),
            sampling: None,
            no_wakers: false,
            target_exited: false,
            stacks: vec![handler(1), handler(2), inlined_elsewhere, sender, stuck_sender],
            below_threshold: vec![(
                WaitKind::Futex,
                ShortWaitTotals { count: 7, total_ns: 700_000 },
            )],
            counts: TraceCounts { long_waits: 4, ..TraceCounts::default() },
            thread_counts: ThreadCounts {
                threads: 5,
                blocked_in_waits: 1,
                elsewhere: 4,
                ..ThreadCounts::default()
            },
            endpoint_states: [(
                "10.0.0.5:80".to_string(),
                "send buffer full (4608/4608 bytes), peer window zero".to_string(),
            )]
            .into(),
            thread_names: Default::default(),
            wakers: Vec::new(),
            modules: Default::default(),
            process_modules: Default::default(),
            lock_addresses: Default::default(),
            chains: Vec::new(),
            processes: Vec::new(),
            timeline: None,
            python: None,
            backed_up: Default::default(),
        }
    }

    #[test]
    fn names_with_newlines_and_tabs_stay_in_their_cells() {
        let mut odd = profile();
        let mut site = stack(&[("f\nfake row\tx", true)], WaitKind::Send, &[(11, 9_000_000)]);
        site.object = Some("pipe\n--".into());
        odd.stacks.push(site);
        odd.processes =
            vec![crate::model::ProcessTag { pid: 4242, comm: "a\nb".into(), cgroup: None }];
        for stack in &mut odd.stacks {
            stack.process = Some(odd.processes[0].clone());
        }
        let text = render_summary(&odd, 15);
        assert!(!text.contains('\t'), "{text}");
        for line in text.lines() {
            assert!(!line.starts_with("fake row") && !line.starts_with("--"), "{text}");
            assert!(!line.starts_with('b'), "{text}");
        }
        assert!(text.contains("f\\x0afake row\\x09x in a\\x0ab (4242)"), "{text}");
        assert!(text.contains("pipe\\x0a--"), "{text}");
        // The row keeps its width: its blocked time ends where the header's column does.
        let end_column = |line: &str, text: &str| {
            line.find(text).map(|at| line[..at + text.len()].chars().count())
        };
        let header = text.lines().find(|line| line.starts_with("CALL SITE")).expect("header");
        let row = text.lines().find(|line| line.contains("fake row")).expect("the odd row");
        assert_eq!(end_column(header, "BLOCKED"), end_column(row, "9.0ms"), "{text}");
    }

    #[test]
    fn a_profile_of_many_processes_names_the_first_and_counts_the_rest() {
        let mut several = profile();
        let tag = |pid| crate::model::ProcessTag { pid, comm: "worker".to_string(), cgroup: None };
        several.processes = (1..=3).map(tag).collect();
        assert_eq!(target_name(&several), "3 processes: worker (1), worker (2), worker (3)");
        several.processes = (1..=300).map(tag).collect();
        let name = target_name(&several);
        assert!(name.starts_with("300 processes: worker (1), worker (2), "), "{name}");
        assert!(name.ends_with("worker (8), and 292 more"), "{name}");
    }

    #[test]
    fn a_site_is_one_row_over_the_processes_of_one_program() {
        let mut forked = profile();
        forked.stacks.clear();
        let tag = |pid, comm: &str| crate::model::ProcessTag {
            pid,
            comm: comm.to_string(),
            cgroup: None,
        };
        // Three backends forked per connection, one thread each, at one lock wait; one
        // more backend elsewhere; another program at the same site.
        for (pid, comm, site, tid) in [
            (10, "postgres", "ProcSleep", 10),
            (11, "postgres", "ProcSleep", 11),
            (12, "postgres", "ProcSleep", 12),
            (13, "postgres", "secure_read", 13),
            (20, "other", "ProcSleep", 20),
        ] {
            let mut waited = stack(&[(site, true)], WaitKind::Futex, &[(tid, 1_000_000)]);
            waited.process = Some(tag(pid, comm));
            forked.stacks.push(waited);
        }
        forked.processes = [(10, "postgres"), (11, "postgres"), (12, "postgres"), (13, "postgres")]
            .into_iter()
            .chain([(20, "other")])
            .map(|(pid, comm)| tag(pid, comm))
            .collect();
        let rows = top_sites(&forked, false);
        let row = |site: &str| rows.iter().find(|row| row.site == site);
        let backends = row("ProcSleep in postgres (3 processes)").expect("one row");
        assert_eq!(backends.stats.threads.len(), 3);
        assert_eq!(backends.stats.total_ns, 3_000_000);
        assert_eq!(rows[0].site, "ProcSleep in postgres (3 processes)", "heaviest first");
        assert!(row("secure_read in postgres (13)").is_some(), "{rows:#?}");
        assert!(row("ProcSleep in other (20)").is_some(), "{rows:#?}");
        assert_eq!(rows.len(), 3, "{rows:#?}");
    }

    #[test]
    fn a_sampled_recording_says_its_rate_and_what_it_resolves() {
        let mut sampled = profile();
        sampled.sampling = Some(Sampling { period: Duration::from_millis(20), reads: 150 });
        assert_eq!(
            recording_scope(&sampled),
            "3.00s recorded, sampled at 50 Hz (150 reads; waits shorter than 20.0ms are \
             statistical)"
        );
        assert_eq!(recording_scope(&profile()), "3.00s recorded, waits >= 1.0ms with stacks");
        let mut without_wakers = profile();
        without_wakers.no_wakers = true;
        assert_eq!(
            recording_scope(&without_wakers),
            "3.00s recorded, waits >= 1.0ms with stacks, no wakers (--no-wakers)"
        );
        // Reads spaced out by their cost: the rate they came at, and what it resolves.
        sampled.sampling = Some(Sampling { period: Duration::from_millis(20), reads: 15 });
        assert_eq!(
            recording_scope(&sampled),
            "3.00s recorded, sampled at 50 Hz asked, 5.0 Hz on average (15 reads, spaced out \
             to stay within --cpu-budget, taken in turns with other processes past a pass's \
             1024 threads, or late on a busy machine; waits shorter than 200.0ms are \
             statistical)"
        );
    }

    #[test]
    fn sampled_reads_lost_have_a_line_only_when_some_were() {
        let mut sampled = profile();
        sampled.sampling = Some(Sampling { period: Duration::from_millis(20), reads: 148 });
        assert!(!render_summary(&sampled, 10).contains("sampled reads"));
        sampled.counts.reads_lost = 2;
        let text = render_summary(&sampled, 10);
        assert!(
            text.contains("lost: 2 sampled reads (passes in the kernel not read whole)\n"),
            "{text}"
        );
        assert!(!text.contains("reads of a thread"), "{text}");
        sampled.counts.thread_reads_failed = 4;
        let text = render_summary(&sampled, 10);
        assert!(
            text.contains("lost: 4 sampled reads of a thread that failed (files or stack"),
            "{text}"
        );
        sampled.counts.waits_unread = 12;
        sampled.counts.waits_at_last_place = 290;
        let text = render_summary(&sampled, 10);
        assert!(
            text.contains(
                "lost: 12 sampled waits whose thread ran or exited before their stack was read\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "stacks: 290 waits given the last stack read at their call (their thread ran or exited first)\n"
            ),
            "{text}"
        );
        let lost: Vec<&str> = text.lines().filter(|line| line.starts_with("lost:")).collect();
        assert!(lost.len() == 4 && lost.iter().all(|line| line.len() <= WIDTH), "{text}");
    }

    #[test]
    fn waits_begun_before_the_recording_are_told_apart_from_the_waits_seen_to_begin() {
        let mut recorded = profile();
        (recorded.counts.waits_started, recorded.counts.long_waits) = (10, 14);
        assert!(!render_summary(&recorded, 10).contains("begun before"));
        recorded.counts.waits_begun_before = 4;
        let text = render_summary(&recorded, 10);
        assert!(
            text.contains("begun before the recording: 4 waits in progress at the attach (not"),
            "{text}"
        );
        assert!(text.contains("(a lower bound)"), "{text}");
    }

    #[test]
    fn waits_summed_in_the_kernel_show_no_longest_and_no_threads() {
        let mut summed = profile();
        for stack in &mut summed.stacks {
            let stats = &mut stack.stats;
            (stats.threads, stats.max_ns, stats.min_ns) = (Default::default(), 0, 0);
        }
        let text = render_summary(&summed, 10);
        let row = text.lines().find(|line| line.starts_with("app::send_stat")).expect("its row");
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[3], "-", "{text}");
        assert_eq!(columns.last(), Some(&"-"), "{text}");
        assert!(
            text.contains("-: MAX and THREADS unknown for waits summed in the kernel"),
            "{text}"
        );
        assert!(!render_summary(&profile(), 10).contains("summed in the kernel"));
    }

    #[test]
    fn failed_peer_lookups_have_a_line_only_when_some_were() {
        let mut recorded = profile();
        assert!(!render_summary(&recorded, 10).contains("peer lookups"));
        recorded.counts.peer_lookups_failed = 3;
        let text = render_summary(&recorded, 10);
        assert!(
            text.contains("lost: 3 peer lookups (socket tables unreadable: chains may stop at"),
            "{text}"
        );
        assert!(text.lines().all(|line| line.chars().count() <= WIDTH), "{text}");
    }

    #[test]
    fn waits_lost_before_they_were_named_have_a_line_only_when_some_were() {
        let mut window = profile();
        assert!(!render_summary(&window, 10).contains("before their stacks"));
        window.counts.waits_unnamed = 4;
        let text = render_summary(&window, 10);
        assert!(
            text.contains("lost: 4 ended waits of a process gone before their stacks were named"),
            "{text}"
        );
        assert!(text.lines().all(|line| line.chars().count() <= WIDTH), "{text}");
    }

    #[test]
    fn span_samples_are_told_apart_from_waits() {
        let mut sampled = profile();
        let text = render_summary(&sampled, 10);
        assert!(!text.contains("short waits' copies"), "{text}");
        sampled.counts.span_samples = 2;
        sampled.counts.span_samples_dropped = 1;
        sampled.counts.sleep_copies_whole = 3;
        sampled.counts.sleep_copies = 7;
        sampled.counts.late_copies = 4;
        let text = render_summary(&sampled, 10);
        for line in [
            "stacks: 7 sleeps kept a copy of their stack (whole or in part)",
            "stacks: 4 long waits' stacks copied from outside while they slept",
            "stacks: 2 short waits' copies walked to size their thread's later copies",
            "stacks: 1 short waits' copies not sent (ring buffer full, or the copy gone)",
            "stacks: 3 sleeps copied whole (no span known yet for where they slept)",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        // Each line within the report's 100 columns.
        assert!(text.lines().all(|line| line.chars().count() <= 100), "{text}");
    }

    #[test]
    fn sites_group_stacks_and_count_threads() {
        let rows = top_sites(&profile(), false);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].site, "app::send_stat");
        assert_eq!(rows[0].stats.total_ns, 120_000_000);
        assert_eq!(rows[0].stats.threads.len(), 3);
        assert_eq!(rows[1].site, "app::write_to_backend");
        let stuck = top_sites(&profile(), true);
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].stats.threads.len(), 1);
    }

    #[test]
    fn a_pipe_written_to_is_an_endpoint_with_its_fill() {
        let mut profile = profile();
        let mut logger = stack(&[("log_line", true)], WaitKind::Write, &[(12, 900_000_000)]);
        logger.object = Some("pipe:[4711]".into());
        profile.stacks.push(logger);
        profile
            .endpoint_states
            .insert("pipe:[4711]".into(), "pipe full (65408/65536 bytes)".into());
        let text = render_summary(&profile, 10);
        let row = text.lines().find(|line| line.starts_with("pipe:[4711]")).expect(&text);
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[..3], ["pipe:[4711]", "write", "900.0ms"], "{row}");
        assert!(row.ends_with("pipe full (65408/65536 bytes)"), "{row}");
    }

    #[test]
    fn an_endpoint_column_is_as_wide_as_its_widest_endpoint() {
        let mut profile = profile();
        let listener = "127.0.0.1:6172 (listening)";
        let mut accept = profile.stacks[1].clone();
        accept.object = Some(listener.to_string());
        accept.kind = WaitKind::Accept;
        profile.stacks.push(accept);
        profile.endpoint_states.insert(listener.into(), "accept queue 0/4096".into());
        let text = render_summary(&profile, 10);
        let row = text.lines().find(|line| line.starts_with(listener)).expect(&text);
        assert!(row.ends_with("accept queue 0/4096"), "{row}");
        // The other rows line up with it.
        let column = |line: &str| line.find(" send").or_else(|| line.find(" accept"));
        let other = text.lines().find(|line| line.starts_with("10.0.0.5:80")).expect(&text);
        assert_eq!(column(other), column(row), "{text}");
        // A name past the widest column keeps its end.
        let long = format!("[{}]:443", "2001:db8:".repeat(8));
        let mut far = profile.stacks[1].clone();
        far.object = Some(long.clone());
        far.kind = WaitKind::Send;
        profile.stacks.push(far);
        let text = render_summary(&profile, 10);
        assert!(text.contains(&format!("…{}", &long[long.len() - 47..])), "{text}");
        assert!(text.lines().all(|line| line.chars().count() <= 100), "{text}");
    }

    #[test]
    fn recording_summary_snapshot() {
        let text = render_summary(&profile(), 10);
        let expected = "\
app (pid 4242): 3.00s recorded, waits >= 1.0ms with stacks
CALL SITE                                      KIND       BLOCKED        MAX     WAITS  THREADS
app::send_stat                                 futex      120.0ms     40.0ms         3        3
app::write_to_backend                          send         5.0ms      5.0ms         1        1

still blocked at the end of the recording:
THREADS  KIND      YOUNGEST     OLDEST  CALL SITE
      1  send        ≥1m01s     ≥1m01s  app::write_to_backend

BY ENDPOINT            KIND       BLOCKED  NOW  STATE
10.0.0.5:80            send        ≥1m01s    1  send buffer full (4608/4608 bytes), peer window zero

under the threshold (no stacks): futex 7 waits 700us
seen: 0 waits, 4 long, 0 short
threads read at the end: 5, 1 blocked in waits, 4 running or blocked elsewhere,
    0 exited and 0 woke while read, 0 unreadable, 0 without saved rbp
lost: 0 ring buffer full, 0 in-flight map full, 0 wakers lost, 0 stacks unreadable,
    0 unwinds truncated, 0 unknown symbols, 0 descriptors unresolved
";
        assert_eq!(text, expected);
        for line in text.lines() {
            assert!(line.chars().count() <= 100, "too wide: {line}");
        }
    }

    #[test]
    fn snapshot_summary_lists_threads_then_stacks() {
        let mut snapshot = profile();
        snapshot.kind = ProfileKind::Snapshot;
        for stack in &mut snapshot.stacks {
            stack.in_progress = true;
        }
        let text = render_summary(&snapshot, 10);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("app (pid 4242): 5 threads, 1 blocked in futex, socket or pipe waits now")
        );
        assert_eq!(lines.next(), Some("THREADS  KIND      YOUNGEST     OLDEST  CALL SITE"));
        assert_eq!(lines.next(), Some("      3  futex       40.0ms     40.0ms  app::send_stat"));
        // One thread is one, not "1 threads".
        assert!(text.contains("\n1 thread @ [futex], blocked 40.0ms to 40.0ms:\n    syscall  (libc.so.6)\n    app::send_stat  (app)\n"), "{text}");
        assert!(text.contains("\n1 thread @ [send 10.0.0.5:80], blocked"), "{text}");
    }

    /// A snapshot of an asyncio program: its tasks are counted as tasks, without ages
    /// (they are read, not traced), next to its threads.
    #[test]
    fn asyncio_tasks_are_counted_as_tasks_without_ages() {
        let mut snapshot = profile();
        snapshot.kind = ProfileKind::Snapshot;
        let mut tasks = stack(&[("refresh_cache", true)], WaitKind::Task, &[(11, 0), (12, 0)]);
        tasks.object = Some("Lock CACHE_LOCK".into());
        tasks.stats.lower_bound = true;
        snapshot.stacks = vec![tasks];
        for stack in &mut snapshot.stacks {
            stack.in_progress = true;
        }
        let text = render_summary(&snapshot, 10);
        assert!(
            text.contains(
                "\n      2  task             -          -  refresh_cache [Lock CACHE_LOCK]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n2 tasks @ [task Lock CACHE_LOCK]:\n    refresh_cache  (app)\n"),
            "{text}"
        );
    }

    /// A Go snapshot goes through the same summary: goroutines counted, the wait reason
    /// beside the call site, an IO wait's endpoint in the endpoint table, the runtime's own
    /// goroutines counted as hidden.
    #[test]
    fn goroutine_snapshot_summary_speaks_of_goroutines() {
        fn go(name: &str) -> (&str, bool) {
            (name, true)
        }
        let mut senders = stack(
            &[
                go("runtime.goexit"),
                go("main.sendStat"),
                go("runtime.chansend1"),
                go("runtime.gopark"),
            ],
            WaitKind::Goroutine,
            &[(1, 1_000), (2, 2_000), (3, 3_000)],
        );
        senders.in_progress = true;
        senders.object = Some("chan send".into());
        let mut writer = stack(
            &[
                go("main.writeToBackend"),
                go("internal/poll.runtime_pollWait"),
                go("runtime.gopark"),
            ],
            WaitKind::Goroutine,
            &[(4, 5_000)],
        );
        writer.in_progress = true;
        writer.object = Some("IO wait 10.0.0.5:80".into());
        let mut snapshot = Profile::new(ProfileKind::Snapshot, 7, "push".into());
        snapshot.stacks = vec![senders, writer];
        snapshot.thread_counts = ThreadCounts {
            threads: 10,
            blocked_in_waits: 6,
            runtime_hidden: 2,
            ..Default::default()
        };
        snapshot.endpoint_states = [("10.0.0.5:80".into(), "send buffer full".into())].into();
        let text = render_summary(&snapshot, 10);
        assert!(text.starts_with(
            "push (pid 7): 10 goroutines, 6 waiting in the Go scheduler or in system calls now"
        ));
        assert!(text.contains("GOROUTINES  KIND"), "{text}");
        assert!(text.contains("main.sendStat [chan send]"), "{text}");
        assert!(text.contains("main.writeToBackend [IO wait 10.0.0.5:80]"), "{text}");
        let endpoint = text.lines().find(|line| line.starts_with("10.0.0.5:80 ")).expect(&text);
        assert!(endpoint.contains("send buffer full"), "{endpoint}");
        assert!(text.contains("2 of the runtime's own hidden"), "{text}");
        assert!(text.contains("3 goroutines @ [chan send]"), "{text}");
    }

    /// On a terminal 80 columns wide the main tables' rows fit it, their call sites
    /// elided from the left (the function's own name kept); piped, they are as wide as
    /// ever.
    #[test]
    fn the_tables_fit_a_terminal_of_80_columns() {
        let long = "very_long_crate_name::module::submodule::Type::method_with_a_long_name";
        let mut ended = stack(&[(long, true)], WaitKind::Futex, &[(1, 40_000_000)]);
        ended.stats.waits = 3;
        let mut stuck = stack(&[(long, true)], WaitKind::Send, &[(9, 61_000_000_000)]);
        stuck.in_progress = true;
        let mut recorded = profile();
        recorded.stacks.extend([ended, stuck]);
        recorded.wakers.push(crate::model::WakerRow {
            waiting_site: long.to_string(),
            kind: WaitKind::Futex,
            waker_site: long.to_string(),
            waker_frames: Vec::new(),
            wakes: 3,
            waker_threads: [2].into(),
        });
        let fitted = render_summary_in(&recorded, 10, Some(80));
        let rows: Vec<&str> = fitted.lines().filter(|line| line.contains("method_with")).collect();
        assert_eq!(rows.len(), 3, "the two tables' rows and the wakers': {fitted}");
        assert!(rows.iter().all(|row| row.chars().count() <= 80), "{fitted}");
        assert!(fitted.lines().any(|l| l.starts_with("CALL SITE") && l.len() <= 80), "{fitted}");
        let wakers = fitted.lines().skip_while(|l| !l.starts_with("WAITING AT")).take(2);
        assert!(
            wakers.clone().count() == 2 && wakers.clone().all(|l| l.chars().count() <= 80),
            "{fitted}"
        );
        // The counts' lines wrap within it too.
        assert!(fitted.lines().filter(|l| l.starts_with("lost:")).all(|l| l.len() <= 80));
        let piped = render_summary_in(&recorded, 10, None);
        assert_eq!(piped, render_summary(&recorded, 10));
        assert!(piped.lines().any(|line| line.chars().count() > 80), "{piped}");
    }

    /// A snapshot of a Go program and a C one: each row, chain and stack counts its own
    /// kind's waiters (every thread was called a goroutine), the whole both; an age no
    /// one timed reads `-`, not `≥0ns`.
    #[test]
    fn a_snapshot_of_goroutines_and_threads_names_each_its_own_way() {
        let mut senders = stack(
            &[("main.sendStat", true), ("runtime.gopark", true)],
            WaitKind::Goroutine,
            &[(1, 0), (2, 0)],
        );
        senders.in_progress = true;
        senders.stats.lower_bound = true;
        let mut lockers = stack(
            &[("handler", true), ("record_stat", true), ("futex_wait", false)],
            WaitKind::Futex,
            &[(11, 2_000_000_000), (12, 2_000_000_000), (13, 2_000_000_000)],
        );
        lockers.in_progress = true;
        lockers.stats.lower_bound = true;
        let mut snapshot = Profile::new(ProfileKind::Snapshot, 7, "push".into());
        snapshot.stacks = vec![senders, lockers];
        snapshot.thread_counts =
            ThreadCounts { threads: 9, blocked_in_waits: 5, ..Default::default() };
        let text = render_summary(&snapshot, 10);
        assert!(text.contains("9 threads and goroutines, 5 waiting now"), "{text}");
        assert!(text.contains("THREADS/GOROUTINES  KIND"), "{text}");
        assert!(text.contains("3 threads @ [futex]"), "{text}");
        assert!(text.contains("2 goroutines @ "), "{text}");
        let sender_row = text.lines().find(|line| line.contains("main.sendStat")).expect(&text);
        assert!(sender_row.contains(" -  ") && !sender_row.contains("≥0ns"), "{sender_row}");
        assert_eq!(snapshot.count_waiters(1), "1 thread or goroutine");
        // The Go readers' counts beside the threads'.
        assert!(text.contains("goroutines (of the Go programs among them):"), "{text}");
        assert!(text.contains("threads read: 9"), "{text}");
    }
}
