//! Draws `tracer top`: a header (the processes, their threads, the mode and rate, the
//! tracer's own cost), the table of call sites or one site opened, and a line of keys.
//! Laid out for 80×24 and wider.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Table as TableWidget, TableState, Wrap},
};
use tracer_common::WaitKind;

use super::{
    View,
    table::{Sort, Table, sparkline},
};
use crate::{
    model::{BackedUp, ProcessTag, counted},
    pipeline::pace::came_slower,
    report::summary::{format_bytes, format_duration},
};

/// The header's numbers, taken at each refresh.
#[derive(Clone, Debug, Default)]
pub struct Header {
    /// False until the first interval ends: the processes are known, their threads not.
    pub read: bool,
    pub processes: Vec<ProcessTag>,
    /// What is watched (`processes named nginx`), said while no process of it is there.
    pub watching: String,
    pub threads: u64,
    pub blocked: u64,
    /// The reads per second asked for, and those made over the last interval (fewer when
    /// their cost spaced them out, see `pipeline::pace`).
    pub rate: u32,
    pub reads_per_second: f64,
    pub cpu_percent: f64,
    pub resident_bytes: u64,
    /// In exact mode, the threshold of the waits shown and the waits lost so far.
    pub exact: Option<ExactHeader>,
    /// The processes' backed-up sockets, as last read (`backed_up::READ_EVERY`), and
    /// how many processes' sockets could not be read then.
    pub backed_up: BackedUp,
    pub backed_up_unreadable: u64,
}

/// What the header says of an exact view (`top --mode exact`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExactHeader {
    pub min_wait: std::time::Duration,
    pub lost: u64,
}

pub struct State<'a> {
    pub header: &'a Header,
    pub table: &'a Table,
    pub view: &'a View,
    pub paused: bool,
}

const SPARK_WIDTH: usize = 16;

pub fn draw(frame: &mut Frame<'_>, state: &State<'_>) {
    // A third line while a socket is backed up (or some could not be read).
    let third = backed_up_line(state.header);
    let header_rows = if third.is_none() { 2 } else { 3 };
    let [header, body, keys] = Layout::vertical([
        Constraint::Length(header_rows),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(header_lines(state, third), header);
    match state.view {
        View::Site { title, lines, scroll, rows, page } => {
            rows.set(draw_site(frame, body, title, lines, *scroll));
            // Below the block's border row.
            page.set(usize::from(body.height.saturating_sub(1)).max(1));
        }
        View::Table | View::Filter => draw_table(frame, body, state),
    }
    frame.render_widget(key_line(state), keys);
}

fn header_lines<'a>(state: &State<'_>, third: Option<String>) -> Paragraph<'a> {
    let header = state.header;
    let processes = match &header.processes[..] {
        [] if header.watching.is_empty() => "no process".to_string(),
        [] => format!("waiting for {}", crate::report::escape_name(&header.watching)),
        [one] => one.to_string(),
        many => format!("{} processes", many.len()),
    };
    let exact = match header.exact {
        Some(ExactHeader { min_wait, .. }) => {
            format!("; exact ≥{}", format_duration(min_wait.as_nanos() as u64))
        }
        None => String::new(),
    };
    let threads = match header.read {
        true => format!(
            "{}, {} blocked in waits{exact}",
            counted(header.threads, "threads"),
            header.blocked
        ),
        false => format!("reading their threads{exact}"),
    };
    let first = Line::from(vec![
        Span::styled("tracer top ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("{processes}: {threads}")),
    ]);
    // Exact: the blocked time comes from the probes; the threads blocked now are still read.
    let read = if header.exact.is_some() { "threads read" } else { "sampled" };
    let mut reads = if came_slower(f64::from(header.rate), header.reads_per_second) {
        format!(
            "{read} at {:.1} Hz ({} asked: spaced out to stay within --cpu-budget, or late)",
            header.reads_per_second, header.rate
        )
    } else {
        format!("{read} at {} Hz", header.rate)
    };
    if let Some(ExactHeader { lost, .. }) = header.exact
        && lost > 0
    {
        reads.push_str(&format!("; {lost} lost"));
    }
    // What the user set first: a long line of reads is cut at a narrow terminal's edge,
    // and the pause, sort and filter must stay in sight.
    let mut second = String::new();
    if state.paused {
        second.push_str("PAUSED; ");
    }
    second.push_str(&format!("sort: {}", state.table.sort.name()));
    if !state.table.filter.is_empty() {
        second.push_str(&format!("; filter: {}", state.table.filter));
    }
    second.push_str(&format!("; {reads}"));
    // Its own cost is measured over an interval: none before the first.
    if header.read {
        second.push_str(&format!(
            "; tracer {:.1}% CPU, {} MiB",
            header.cpu_percent,
            header.resident_bytes / (1 << 20),
        ));
    }
    let mut lines = vec![first, Line::from(second)];
    if let Some(third) = third {
        lines.push(Line::styled(third, Style::new().add_modifier(Modifier::BOLD)));
    }
    Paragraph::new(lines)
}

/// The heaviest backed-up socket and how many more: an event-driven server's client that
/// stopped reading, which no row of waits shows. None when there is nothing to say.
fn backed_up_line(header: &Header) -> Option<String> {
    let backed_up = &header.backed_up;
    let unreadable = match header.backed_up_unreadable {
        0 => String::new(),
        n => format!("; the sockets of {} unreadable", counted(n, "processes")),
    };
    let Some(heaviest) = backed_up.sockets.first() else {
        return (!unreadable.is_empty()).then(|| format!("backed up: none seen{unreadable}"));
    };
    let process =
        heaviest.process.as_ref().map_or(String::new(), |process| format!(" of {process}"));
    let more = backed_up.count() - 1;
    let more = if more > 0 { format!("; {more} more") } else { String::new() };
    let queued = heaviest.queued().map_or(String::new(), |bytes| format_bytes(bytes) + " ");
    let line = format!(
        "backed up: {} fd {}{process}: {queued}{}, {}{more}{unreadable}",
        heaviest.peer,
        heaviest.fd,
        heaviest.backlog.name(),
        heaviest.brief_reason(),
    );
    Some(crate::report::escape_name(&line).into_owned())
}

/// The table's fixed columns (THREADS, BLOCKED/s, KIND) and its narrowest site column,
/// with the spaces between: below this width (and the sparkline's) the sparkline goes,
/// rather than the table cutting every cell (BLOCKED/s losing its unit).
const FIXED_WIDTH: u16 = 7 + 9 + 7 + 20 + 3;

fn draw_table(frame: &mut Frame<'_>, area: Rect, state: &State<'_>) {
    let rows = state.table.visible();
    // Rows say their process while they are of several: also once all but one exited,
    // whose rows stay until they age out.
    let pids: std::collections::BTreeSet<u32> =
        rows.iter().filter_map(|row| row.key.process.as_ref().map(|p| p.pid)).collect();
    let several = state.header.processes.len() > 1 || pids.len() > 1;
    let spark = area.width > FIXED_WIDTH + SPARK_WIDTH as u16;
    let mut names = vec!["THREADS", "BLOCKED/s", "KIND", "LAST 5 MINUTES", "CALL SITE [OBJECT]"];
    if !spark {
        names.remove(3);
    }
    let header = Row::new(names).style(Style::new().add_modifier(Modifier::BOLD));
    let body: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let key = &row.key;
            let mut site = key.site.clone();
            if several && let Some(process) = &key.process {
                site.push_str(&format!(" in {process}"));
            }
            match (&key.object, &row.state) {
                (Some(object), Some(state)) => site.push_str(&format!(" [{object}: {state}]")),
                (Some(object), None) => site.push_str(&format!(" [{object}]")),
                (None, _) => {}
            }
            let style = if index == state.table.selected {
                Style::new().add_modifier(Modifier::REVERSED)
            } else {
                Style::new()
            };
            // An asyncio task is read, not traced: how long it waited is not known.
            let blocked = match key.kind {
                WaitKind::Task => "-".to_owned(),
                _ => format_duration(row.blocked_ns),
            };
            let mut cells = vec![
                Cell::from(format!("{:>7}", row.threads_now)),
                Cell::from(format!("{blocked:>9}")),
                Cell::from(key.kind.name()),
                Cell::from(sparkline(&row.history, SPARK_WIDTH)),
                Cell::from(crate::report::escape_name(&site).into_owned()),
            ];
            if !spark {
                cells.remove(3);
            }
            Row::new(cells).style(style)
        })
        .collect();
    let mut widths = vec![
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(SPARK_WIDTH as u16),
        Constraint::Min(20),
    ];
    if !spark {
        widths.remove(3);
    }
    let title = match rows.len() {
        _ if state.table.refreshes == 0 => " reading… ".to_string(),
        0 if state.table.has_rows() => " no call site matches the filter ".to_string(),
        0 => " no thread blocked in a futex, socket or pipe wait ".to_string(),
        1 => " 1 call site ".to_string(),
        shown => format!(" {shown} call sites "),
    };
    let table = TableWidget::new(body, widths)
        .header(header)
        .column_spacing(1)
        .block(Block::new().borders(Borders::TOP).title(title));
    // Stateful: the rows scroll to keep the selected one in sight.
    let mut scroll = TableState::default().with_selected(Some(state.table.selected));
    frame.render_stateful_widget(table, area, &mut scroll);
}

/// Draws a site's lines from row `scroll`; returns how many rows they wrap to at this
/// width (the scroll's bound: a long chain line takes several).
fn draw_site(
    frame: &mut Frame<'_>,
    area: Rect,
    title: &str,
    lines: &[String],
    scroll: usize,
) -> usize {
    let text: Vec<Line> = lines
        .iter()
        .map(|line| Line::from(crate::report::escape_name(line).into_owned()))
        .collect();
    let title = format!(" {} ", crate::report::escape_name(title));
    let scroll = u16::try_from(scroll).unwrap_or(u16::MAX);
    let block = Block::new().borders(Borders::TOP).title(title);
    let paragraph = Paragraph::new(text).wrap(Wrap { trim: false }).scroll((scroll, 0));
    // Without the block: its border row is no row of the text.
    let rows = paragraph.line_count(area.width);
    frame.render_widget(paragraph.block(block), area);
    rows
}

fn key_line<'a>(state: &State<'_>) -> Paragraph<'a> {
    let keys = match state.view {
        View::Filter => format!("filter: {}▏  Enter apply  Esc clear", state.table.filter),
        View::Site { .. } => "↑↓ PgUp PgDn Home End scroll  Esc/Enter back  q quit".to_string(),
        View::Table => {
            let next = state.table.sort.next();
            let sort = match next {
                Sort::ThreadsNow => "s by threads",
                Sort::BlockedTime => "s by time",
                Sort::Site => "s by name",
            };
            format!("q quit  {sort}  / filter  p pause  ↑↓ select  Enter open site")
        }
    };
    Paragraph::new(Line::from(keys)).style(Style::new().add_modifier(Modifier::REVERSED))
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;

    #[test]
    fn a_site_counts_the_rows_its_wrapped_lines_take() {
        let mut terminal = Terminal::new(TestBackend::new(20, 10)).unwrap();
        let chain = "a chain line of forty-one characters here".to_string();
        let lines = [chain, "  frame".to_string()];
        let mut rows = 0;
        terminal.draw(|frame| rows = draw_site(frame, frame.area(), "site", &lines, 0)).unwrap();
        // The chain wraps to three rows of 20 columns, the frame takes one.
        assert_eq!(rows, 4);
    }
}
