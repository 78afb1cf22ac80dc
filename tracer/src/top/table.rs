//! What `tracer top` shows, apart from how it is drawn: a row per call site (of a
//! process), its threads blocked now and its blocked time in the last interval, a history
//! of the threads blocked for its sparkline; the sort, the filter, the selection.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tracer_common::WaitKind;

use crate::model::{ProcessTag, Profile, endpoint_in_object};

/// Refreshes kept per row: five minutes at one a second.
pub const HISTORY: usize = 300;

/// What a row is: a call site of a process, its kind and object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SiteKey {
    pub process: Option<ProcessTag>,
    pub site: String,
    pub kind: WaitKind,
    pub object: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SiteRow {
    pub key: SiteKey,
    pub threads_now: u64,
    /// Blocked time over the last interval, summed over its threads.
    pub blocked_ns: u64,
    /// Threads blocked at each refresh, oldest first.
    pub history: VecDeque<u64>,
    /// The heaviest stack at the site now (or when last seen), root first.
    pub frames: Vec<String>,
    /// The state of the socket or pipe the site waits on, as last read while threads
    /// waited there (`pipe full (65408/65536 bytes)`).
    pub state: Option<String>,
}

/// The order of the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    ThreadsNow,
    BlockedTime,
    Site,
}

impl Sort {
    pub fn next(self) -> Self {
        match self {
            Sort::ThreadsNow => Sort::BlockedTime,
            Sort::BlockedTime => Sort::Site,
            Sort::Site => Sort::ThreadsNow,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::ThreadsNow => "threads now",
            Sort::BlockedTime => "blocked time",
            Sort::Site => "call site",
        }
    }
}

/// The rows and how they are looked at.
#[derive(Debug)]
pub struct Table {
    rows: BTreeMap<SiteKey, SiteRow>,
    pub sort: Sort,
    /// Rows whose site, object or process name hold this (case-insensitive).
    pub filter: String,
    /// The selected row's place among the visible rows, and its site: the rows are sorted
    /// again at every refresh and filtered as the user types, and the selection stays with
    /// its site.
    pub selected: usize,
    selected_key: Option<SiteKey>,
    pub refreshes: u64,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            rows: BTreeMap::new(),
            sort: Sort::ThreadsNow,
            filter: String::new(),
            selected: 0,
            selected_key: None,
            refreshes: 0,
        }
    }
}

impl Table {
    /// One refresh: `now` the threads blocked at the last read (a snapshot), `interval`
    /// the waits of the last interval (a recording of it). A row seen in neither keeps
    /// its history (a zero added) until its whole history is zeros.
    pub fn refresh(&mut self, now: &Profile, interval: &Profile) {
        self.refreshes += 1;
        let mut threads: BTreeMap<SiteKey, (BTreeSet<u64>, &[crate::stacks::Frame], u64)> =
            BTreeMap::new();
        for stack in &now.stacks {
            let entry = threads.entry(key_of(stack)).or_insert((BTreeSet::new(), &[], 0));
            entry.0.extend(&stack.stats.threads);
            let weight = stack.stats.threads.len() as u64;
            if weight > entry.2 {
                entry.1 = &stack.frames;
                entry.2 = weight;
            }
        }
        let mut blocked: BTreeMap<SiteKey, (u64, &[crate::stacks::Frame])> = BTreeMap::new();
        for stack in &interval.stacks {
            let entry = blocked.entry(key_of(stack)).or_insert((0, &[]));
            entry.0 += stack.stats.total_ns;
            if entry.1.is_empty() {
                entry.1 = &stack.frames;
            }
        }
        let keys: BTreeSet<SiteKey> =
            threads.keys().chain(blocked.keys()).chain(self.rows.keys()).cloned().collect();
        for key in keys {
            let (threads_now, frames_now) = threads
                .get(&key)
                .map_or((0, &[][..]), |(threads, frames, _)| (threads.len() as u64, *frames));
            let (blocked_ns, frames_then) = blocked.get(&key).copied().unwrap_or((0, &[]));
            let row = self.rows.entry(key.clone()).or_insert_with(|| SiteRow {
                key,
                threads_now: 0,
                blocked_ns: 0,
                history: VecDeque::new(),
                frames: Vec::new(),
                state: None,
            });
            row.threads_now = threads_now;
            row.blocked_ns = blocked_ns;
            if threads_now > 0 || blocked_ns > 0 {
                let endpoint = (row.key.object.as_deref())
                    .and_then(|object| endpoint_in_object(row.key.kind, object));
                row.state =
                    endpoint.and_then(|endpoint| now.endpoint_states.get(endpoint)).cloned();
            }
            let frames = if frames_now.is_empty() { frames_then } else { frames_now };
            if !frames.is_empty() {
                row.frames = frames.iter().map(|frame| frame.name.clone()).collect();
            }
            row.history.push_back(threads_now);
            if row.history.len() > HISTORY {
                row.history.pop_front();
            }
        }
        self.rows.retain(|_, row| row.blocked_ns > 0 || row.history.iter().any(|&n| n > 0));
        self.follow_selection();
    }

    /// Finds the selected site again among the visible rows (after a refresh, a new sort
    /// or filter); where it is gone, the row at its place is selected instead.
    pub fn follow_selection(&mut self) {
        let visible = self.visible();
        let found = (self.selected_key.as_ref())
            .and_then(|key| visible.iter().position(|row| &row.key == key));
        let selected = found.unwrap_or(self.selected).min(visible.len().saturating_sub(1));
        let key = visible.get(selected).map(|row| row.key.clone());
        self.selected = selected;
        self.selected_key = key;
    }

    /// The rows the filter lets through, in the sort's order.
    pub fn visible(&self) -> Vec<&SiteRow> {
        let filter = self.filter.to_lowercase();
        let mut rows: Vec<&SiteRow> = self
            .rows
            .values()
            .filter(|row| filter.is_empty() || matches_filter(row, &filter))
            .collect();
        match self.sort {
            Sort::ThreadsNow => {
                rows.sort_by_key(|row| std::cmp::Reverse((row.threads_now, row.blocked_ns)))
            }
            Sort::BlockedTime => {
                rows.sort_by_key(|row| std::cmp::Reverse((row.blocked_ns, row.threads_now)))
            }
            Sort::Site => rows.sort_by(|a, b| a.key.site.cmp(&b.key.site)),
        }
        rows
    }

    /// Whether any row is there, the filter aside.
    pub fn has_rows(&self) -> bool {
        !self.rows.is_empty()
    }

    pub fn selected_row(&self) -> Option<&SiteRow> {
        self.visible().get(self.selected).copied()
    }

    pub fn move_selection(&mut self, by: isize) {
        let visible = self.visible();
        let selected = match visible.len() {
            0 => 0,
            rows => self.selected.saturating_add_signed(by).min(rows - 1),
        };
        let key = visible.get(selected).map(|row| row.key.clone());
        self.selected = selected;
        self.selected_key = key;
    }
}

fn key_of(stack: &crate::model::ProfileStack) -> SiteKey {
    SiteKey {
        process: stack.process.clone(),
        site: stack.call_site().to_string(),
        kind: stack.kind,
        object: stack.object.clone(),
    }
}

fn matches_filter(row: &SiteRow, lowercase: &str) -> bool {
    let key = &row.key;
    key.site.to_lowercase().contains(lowercase)
        || key.object.as_deref().is_some_and(|object| object.to_lowercase().contains(lowercase))
        || key.process.as_ref().is_some_and(|p| p.to_string().to_lowercase().contains(lowercase))
}

/// A sparkline of the whole history in `width` cells (the latest at the right), each
/// cell the most of its share of the refreshes, scaled to the maximum: one of eight
/// block heights each.
pub fn sparkline(values: &VecDeque<u64>, width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let per_cell = HISTORY.div_ceil(width.max(1));
    // Cells counted back from the latest refresh, so the newest cell is always current.
    let mut shown: Vec<u64> = values
        .iter()
        .rev()
        .copied()
        .collect::<Vec<_>>()
        .chunks(per_cell)
        .take(width)
        .map(|cell| cell.iter().copied().max().unwrap_or(0))
        .collect();
    shown.reverse();
    let most = shown.iter().copied().max().unwrap_or(0);
    let mut line: String = " ".repeat(width - shown.len());
    for value in shown {
        line.push(if most == 0 || value == 0 {
            ' '
        } else {
            BARS[((value * 7).div_ceil(most)) as usize]
        });
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProfileKind, tests::stack};

    fn snapshot(threads_at_send: &[(u32, u64)], threads_at_recv: &[(u32, u64)]) -> Profile {
        let mut profile = Profile::new(ProfileKind::Snapshot, 1, "app".into());
        profile.stacks.push(stack(
            &[("main", true), ("send_stat", true)],
            WaitKind::Futex,
            threads_at_send,
        ));
        profile.stacks.push(stack(
            &[("main", true), ("recv_loop", true)],
            WaitKind::Recv,
            threads_at_recv,
        ));
        profile.stacks.retain(|stack| !stack.stats.threads.is_empty());
        profile
    }

    #[test]
    fn rows_are_call_sites_sorted_filtered_and_kept_while_their_history_lasts() {
        let mut table = Table::default();
        let now = snapshot(&[(1, 5), (2, 5), (3, 5)], &[(4, 9)]);
        let interval = snapshot(&[(1, 900_000_000)], &[(4, 2_000_000_000)]);
        table.refresh(&now, &interval);
        let sites: Vec<&str> = table.visible().iter().map(|row| row.key.site.as_str()).collect();
        assert_eq!(sites, ["send_stat", "recv_loop"], "most threads now first");
        table.sort = Sort::BlockedTime;
        assert_eq!(table.visible()[0].key.site, "recv_loop");
        table.filter = "SEND".into();
        assert_eq!(table.visible().len(), 1);
        table.filter.clear();
        // Gone from both: kept, its history going to zero.
        table.refresh(&snapshot(&[(1, 5)], &[]), &snapshot(&[], &[]));
        let recv = table.visible().into_iter().find(|row| row.key.site == "recv_loop").unwrap();
        assert_eq!((recv.threads_now, recv.blocked_ns), (0, 0));
        assert_eq!(recv.history, [1, 0]);
        assert_eq!(recv.frames, ["main", "recv_loop"]);
    }

    #[test]
    fn a_row_shows_the_state_of_the_pipe_or_socket_it_waits_on() {
        let mut now = snapshot(&[(1, 5)], &[(2, 5)]);
        now.stacks[1].object = Some("10.0.0.5:80".into());
        let mut write = stack(&[("main", true), ("log_line", true)], WaitKind::Write, &[(3, 5)]);
        write.object = Some("pipe:[4711]".into());
        now.stacks.push(write);
        now.endpoint_states = [
            ("pipe:[4711]".into(), "pipe full (65408/65536 bytes)".into()),
            ("10.0.0.5:80".into(), "waiting for data".into()),
        ]
        .into();
        let mut table = Table::default();
        table.refresh(&now, &snapshot(&[], &[]));
        let state_of = |table: &Table, site: &str| {
            let row = table.visible().into_iter().find(|row| row.key.site == site).unwrap();
            row.state.clone()
        };
        assert_eq!(state_of(&table, "log_line").as_deref(), Some("pipe full (65408/65536 bytes)"));
        assert_eq!(state_of(&table, "recv_loop").as_deref(), Some("waiting for data"));
        assert_eq!(state_of(&table, "send_stat"), None, "a lock has no state");
        // Read again only while threads wait there: the last state seen stays.
        now.endpoint_states.clear();
        table.refresh(&snapshot(&[], &[]), &snapshot(&[], &[]));
        assert_eq!(state_of(&table, "log_line").as_deref(), Some("pipe full (65408/65536 bytes)"));
    }

    #[test]
    fn the_selection_stays_on_the_rows() {
        let mut table = Table::default();
        table.refresh(&snapshot(&[(1, 5)], &[(2, 5)]), &snapshot(&[], &[]));
        table.move_selection(5);
        assert_eq!(table.selected, 1);
        table.move_selection(-9);
        assert_eq!(table.selected, 0);
        // send_stat first and selected; recv_loop overtakes it: the selection follows
        // send_stat.
        table.refresh(&snapshot(&[(1, 5), (4, 5)], &[(2, 5)]), &snapshot(&[], &[]));
        table.move_selection(-1);
        assert_eq!(table.selected_row().unwrap().key.site, "send_stat");
        table.refresh(&snapshot(&[(1, 5), (4, 5)], &[(2, 5), (3, 5), (5, 5)]), &snapshot(&[], &[]));
        assert_eq!(table.visible()[0].key.site, "recv_loop");
        assert_eq!(table.selected_row().unwrap().key.site, "send_stat");
        // Filtered out: the row at its place is selected instead.
        table.filter = "recv".into();
        table.follow_selection();
        assert_eq!(table.selected_row().unwrap().key.site, "recv_loop");
    }

    #[test]
    fn sparklines_cover_the_whole_history_scaled_to_its_largest_value() {
        // 300 refreshes in 3 cells: 100 each, the most of each shown.
        let mut values: VecDeque<u64> = std::iter::repeat_n(0, 300).collect();
        values[50] = 2;
        values[150] = 4;
        values[299] = 8;
        assert_eq!(sparkline(&values, 3), "▃▅█");
        // Fewer refreshes than that: the cells they fill, at the right.
        let few: VecDeque<u64> = std::iter::repeat_n(8, 150).collect();
        assert_eq!(sparkline(&few, 3), " ██");
        assert_eq!(sparkline(&VecDeque::new(), 3), "   ");
    }
}
