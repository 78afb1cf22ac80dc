//! Parsers of the human tables on stdout. Being replaced by reading the JSON profile.

use std::time::Duration;

use crate::clients::GoroutineGroup;
use crate::profiles::frame_is;

/// How long a thread has been blocked, as the tracer prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age {
    pub duration: Duration,
    /// Printed with `≥`: the thread blocked before the tracer looked, and this is a lower bound.
    pub lower_bound: bool,
}

/// Parses an age as the tracer prints it: `850us`, `12.3ms`, `1.50s`, `2m05s`, `1h02m`, each
/// optionally prefixed by `≥` (or `>=`). None if it is not one of these.
pub fn parse_age(text: &str) -> Option<Age> {
    let text = text.trim();
    let (rest, lower_bound) = match text.strip_prefix('≥').or_else(|| text.strip_prefix(">=")) {
        Some(rest) => (rest.trim_start(), true),
        None => (text, false),
    };
    let number = |s: &str| -> Option<f64> {
        let v: f64 = s.parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    let seconds = if let Some(v) = rest.strip_suffix("ns") {
        number(v)? / 1e9
    } else if let Some(v) = rest.strip_suffix("us").or_else(|| rest.strip_suffix("µs")) {
        number(v)? / 1e6
    } else if let Some(v) = rest.strip_suffix("ms") {
        number(v)? / 1e3
    } else if let Some((h, m)) = rest.strip_suffix('m').and_then(|r| r.split_once('h')) {
        number(h)? * 3600.0 + number(m)? * 60.0
    } else if let Some((m, s)) = rest.strip_suffix('s').and_then(|r| r.split_once('m')) {
        number(m)? * 60.0 + number(s)?
    } else if let Some(v) = rest.strip_suffix('s') {
        number(v)?
    } else {
        return None;
    };
    Some(Age {
        duration: Duration::from_secs_f64(seconds),
        lower_bound,
    })
}

/// One row of the table of blocked threads that `snapshot` prints, and `record` prints after
/// `still blocked at the end of the recording:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedRow {
    pub threads: u64,
    /// The wait kind without brackets: `futex`, `send`, ...
    pub kind: String,
    pub youngest: Age,
    pub oldest: Age,
    /// The innermost frame of the program's own code, e.g. `rust_stuck::send_stat`.
    pub call_site: String,
    /// The row as printed, for failure messages.
    pub line: String,
}

/// The first line of the table header.
const TABLE_HEADER: &str = "THREADS";

/// Parses the table of blocked threads in `stdout`: the header line starting with `THREADS`
/// (the first one after the line containing `after`, if given), then one row per line up to the
/// first empty line. Columns: THREADS KIND YOUNGEST OLDEST CALL SITE, split on whitespace, the
/// call site being the rest of the line.
pub fn parse_blocked_table(stdout: &str, after: Option<&str>) -> Vec<BlockedRow> {
    let mut lines = stdout.lines();
    if let Some(marker) = after {
        lines
            .by_ref()
            .find(|line| line.contains(marker))
            .unwrap_or_else(|| panic!("no line contains {marker:?} in:\n{stdout}"));
    }
    lines
        .by_ref()
        .find(|line| line.trim_start().starts_with(TABLE_HEADER))
        .unwrap_or_else(|| panic!("no table header starting with {TABLE_HEADER} in:\n{stdout}"));
    lines
        .take_while(|line| !line.trim().is_empty())
        .map(parse_blocked_row)
        .collect()
}

fn parse_blocked_row(line: &str) -> BlockedRow {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let [threads, kind, youngest, oldest, site @ ..] = tokens.as_slice() else {
        panic!("table row with fewer than 5 columns: {line:?}");
    };
    assert!(!site.is_empty(), "table row without a call site: {line:?}");
    let age = |text: &str, column: &str| {
        parse_age(text).unwrap_or_else(|| panic!("{column} {text:?} is not an age in {line:?}"))
    };
    BlockedRow {
        threads: threads
            .parse()
            .unwrap_or_else(|e| panic!("THREADS {threads:?} in {line:?}: {e}")),
        kind: kind
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        youngest: age(youngest, "YOUNGEST"),
        oldest: age(oldest, "OLDEST"),
        call_site: site.join(" "),
        line: line.to_owned(),
    }
}

/// The rows whose wait kind is `kind` and whose call site names the function `name` (its first
/// word, so a trailing `file:line` or annotation does not matter).
pub fn rows_at<'a>(rows: &'a [BlockedRow], kind: &str, name: &str) -> Vec<&'a BlockedRow> {
    rows.iter()
        .filter(|row| {
            row.kind == kind
                && row
                    .call_site
                    .split_whitespace()
                    .next()
                    .is_some_and(|function| frame_is(function, name))
        })
        .collect()
}

/// The header of the table of blocked time by remote endpoint (by local address for `accept`).
pub const ENDPOINT_TABLE_HEADER: &str = "BY ENDPOINT";
/// The header of the table of blocked time by lock.
pub const LOCK_TABLE_HEADER: &str = "BY LOCK";

/// One row of the `BY ENDPOINT` table: ENDPOINT KIND BLOCKED NOW STATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    /// `127.0.0.1:40123`: the remote address of a send, recv or connect; the local listening
    /// address of an accept.
    pub endpoint: String,
    /// The wait kinds seen on it, comma-separated: `send`, `recv`, `send,recv`.
    pub kind: String,
    pub blocked: Age,
    /// Threads blocked on it now (at the snapshot, or at the end of the recording).
    pub now: u64,
    /// What explains the wait: `send buffer full (4608/4608 bytes)`, `waiting for data`,
    /// `connecting (SYN sent)`, `accept queue 0/128`; empty if none is known.
    pub state: String,
    /// The row as printed, for failure messages.
    pub line: String,
}

/// One row of the `BY LOCK` table: LOCK BLOCKED WAITS NOW.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRow {
    /// `rust_objects::STATS_QUEUE`, `stats_lock`, `heap 0x55d0c2a4b188`.
    pub lock: String,
    pub blocked: Age,
    /// Waits that ended within the recording.
    pub waits: u64,
    /// Threads blocked on it now.
    pub now: u64,
    /// The row as printed, for failure messages.
    pub line: String,
}

/// The rows of the table whose header line starts with `header`: the lines after it up to the
/// first empty line, each split on whitespace.
fn table_rows<'a>(stdout: &'a str, header: &str) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut lines = stdout.lines();
    lines
        .by_ref()
        .find(|line| line.trim_start().starts_with(header))
        .unwrap_or_else(|| panic!("no table header starting with {header:?} in:\n{stdout}"));
    lines
        .take_while(|line| !line.trim().is_empty())
        .map(|line| (line, line.split_whitespace().collect()))
        .collect()
}

fn parse_count(text: &str, column: &str, line: &str) -> u64 {
    text.parse()
        .unwrap_or_else(|e| panic!("{column} {text:?} is not a count in {line:?}: {e}"))
}

fn parse_age_column(text: &str, column: &str, line: &str) -> Age {
    parse_age(text).unwrap_or_else(|| panic!("{column} {text:?} is not an age in {line:?}"))
}

/// Parses the `BY ENDPOINT` table in `stdout` (the first one). Panics if there is none.
pub fn parse_endpoint_table(stdout: &str) -> Vec<EndpointRow> {
    table_rows(stdout, ENDPOINT_TABLE_HEADER)
        .into_iter()
        .map(|(line, tokens)| {
            let [endpoint, kind, blocked, now, state @ ..] = tokens.as_slice() else {
                panic!("{ENDPOINT_TABLE_HEADER} row with fewer than 4 columns: {line:?}");
            };
            EndpointRow {
                endpoint: (*endpoint).to_owned(),
                kind: (*kind).to_owned(),
                blocked: parse_age_column(blocked, "BLOCKED", line),
                now: parse_count(now, "NOW", line),
                state: state.join(" "),
                line: line.to_owned(),
            }
        })
        .collect()
}

/// Parses the `BY LOCK` table in `stdout` (the first one). Panics if there is none. The last
/// three columns are BLOCKED WAITS NOW and the lock is everything before them, so a lock named
/// by its mapping (`heap 0x55d0c2a4b188`) stays whole.
pub fn parse_lock_table(stdout: &str) -> Vec<LockRow> {
    table_rows(stdout, LOCK_TABLE_HEADER)
        .into_iter()
        .map(|(line, tokens)| {
            let [lock @ .., blocked, waits, now] = tokens.as_slice() else {
                panic!("{LOCK_TABLE_HEADER} row with fewer than 4 columns: {line:?}");
            };
            assert!(
                !lock.is_empty(),
                "{LOCK_TABLE_HEADER} row without a lock: {line:?}"
            );
            LockRow {
                lock: lock.join(" "),
                blocked: parse_age_column(blocked, "BLOCKED", line),
                waits: parse_count(waits, "WAITS", line),
                now: parse_count(now, "NOW", line),
                line: line.to_owned(),
            }
        })
        .collect()
}

/// The groups `tracer snapshot` prints for a Go process: `N @ headline [reason]` (the
/// reason may carry `, longest ≥…`), then `#\tfunction\tfile:line` lines.
pub fn parse_goroutine_table(stdout: &str) -> Vec<GoroutineGroup> {
    let mut groups: Vec<GoroutineGroup> = Vec::new();
    for line in stdout.lines() {
        if let Some((count, rest)) = line.split_once(" @ ")
            && let Ok(count) = count.trim().parse()
            && let Some((headline, reason)) = rest.split_once(" [")
        {
            let reason = reason.trim_end_matches(']');
            let reason = reason.split_once(", longest").map_or(reason, |(reason, _)| reason);
            groups.push(GoroutineGroup {
                count,
                headline: headline.to_owned(),
                reason: reason.to_owned(),
                functions: Vec::new(),
            });
        } else if let Some(frame) = line.strip_prefix("#\t")
            && let Some(group) = groups.last_mut()
        {
            let function = frame.split('\t').next().unwrap_or_default();
            group.functions.push(function.to_owned());
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ages() {
        let age = |text| parse_age(text).map(|a| (a.duration, a.lower_bound));
        assert_eq!(age("850us"), Some((Duration::from_micros(850), false)));
        assert_eq!(age("12.3ms"), Some((Duration::from_micros(12_300), false)));
        assert_eq!(age("1.50s"), Some((Duration::from_millis(1_500), false)));
        assert_eq!(age("2m05s"), Some((Duration::from_secs(125), false)));
        assert_eq!(age("1h02m"), Some((Duration::from_secs(3_720), false)));
        assert_eq!(age("≥1.50s"), Some((Duration::from_millis(1_500), true)));
        assert_eq!(age("≥2m05s"), Some((Duration::from_secs(125), true)));
        assert_eq!(age("CALL"), None);
        assert_eq!(age("-1s"), None);
    }

    #[test]
    fn parses_blocked_tables() {
        let stdout = "rust-stuck (pid 42): 17 threads blocked\n\
                      THREADS KIND  YOUNGEST OLDEST CALL SITE\n\
                      16      futex ≥1.02s   ≥1.05s rust_stuck::send_stat\n\
                      1       send  ≥1.05s   ≥1.05s rust_stuck::write_to_backend\n\
                      \n\
                      footer 3 futex 1s 1s x\n";
        let rows = parse_blocked_table(stdout, None);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].threads, 16);
        assert_eq!(rows[0].kind, "futex");
        assert_eq!(rows[0].youngest.duration, Duration::from_millis(1_020));
        assert!(rows[0].youngest.lower_bound);
        assert_eq!(rows_at(&rows, "futex", "send_stat").len(), 1);
        assert_eq!(rows_at(&rows, "send", "write_to_backend")[0].threads, 1);

        let record = "waits...\nTHREADS KIND TOTAL\n9 futex 1s 1s early\n\n\
                      still blocked at the end of the recording:\n\
                      THREADS KIND YOUNGEST OLDEST CALL SITE\n\
                      3 futex 2.00s 3.00s enqueue_stat <inlined>\n";
        let rows = parse_blocked_table(record, Some("still blocked at the end of the recording:"));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].call_site, "enqueue_stat <inlined>");
        assert_eq!(rows_at(&rows, "futex", "enqueue_stat").len(), 1);
    }

    #[test]
    fn parses_object_tables() {
        let stdout = "THREADS  KIND      YOUNGEST     OLDEST  CALL SITE\n\
                      \x20     1  send        ≥1m01s     ≥1m01s  app::write_to_backend\n\
                      \n\
                      BY ENDPOINT              KIND       BLOCKED   NOW  STATE\n\
                      10.0.0.5:80              send        ≥1m01s     1  send buffer full (4608/4608 bytes queued)\n\
                      127.0.0.1:9              connect     2.00s      0\n\
                      \n\
                      BY LOCK                                           BLOCKED     WAITS   NOW\n\
                      app::STATS_QUEUE                                   ≥1.05s         0    16\n\
                      heap 0x55d0c2a4b188                                 3.0ms         7     0\n\
                      \n";
        let endpoints = parse_endpoint_table(stdout);
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].endpoint, "10.0.0.5:80");
        assert_eq!(endpoints[0].kind, "send");
        assert_eq!(endpoints[0].blocked.duration, Duration::from_secs(61));
        assert_eq!(endpoints[0].now, 1);
        assert_eq!(
            endpoints[0].state,
            "send buffer full (4608/4608 bytes queued)"
        );
        assert_eq!(endpoints[1].state, "");
        let locks = parse_lock_table(stdout);
        assert_eq!(locks.len(), 2);
        assert_eq!(locks[0].lock, "app::STATS_QUEUE");
        assert_eq!(locks[0].now, 16);
        assert_eq!(locks[0].waits, 0);
        assert_eq!(locks[1].lock, "heap 0x55d0c2a4b188");
        assert_eq!(locks[1].waits, 7);
    }

}
