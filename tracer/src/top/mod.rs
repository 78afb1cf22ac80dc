//! `tracer top`: the pile-ups of live processes as they form, in the terminal. The
//! processes are read sampled (`pipeline::members`); once a second the call sites are
//! ranked by threads blocked now, with their blocked time over the last second and a
//! sparkline of the last five minutes (`table`), and drawn (`draw`). Keys sort, filter, pause,
//! open a site (its whole stack and its wait chain) and quit; the terminal is restored on
//! every way out (a key, Ctrl-C, SIGTERM, a panic, an error, the processes exiting).

mod backed_up;
mod draw;
mod exact;
mod table;

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::{
    cli::{Mode, TopArgs},
    model::{ProcessTag, Profile, ProfileKind, ProfileStack, WaitAggregate},
    pipeline::{
        Namer,
        members::{Member, Members, Selection},
        own_usage::ProcessUsage,
        pace::ReadPace,
    },
    stacks::RenewedSymbolFiles,
};
use backed_up::BackedUpReader;
use exact::ExactWaits;
use table::Table;

/// How often the table is refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// Set by SIGTERM, SIGINT or SIGQUIT: leave as `q` would.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn top(args: TopArgs) -> anyhow::Result<()> {
    let TopArgs { processes, rate, cpu_budget, mode, min_wait } = args;
    crate::pipeline::pace::set_cpu_budget(cpu_budget);
    let selection = processes.resolve()?;
    let rate = rate.unwrap_or(crate::golang::DEFAULT_RATE_HZ);
    let period = Duration::from_secs(1) / rate;
    crate::pipeline::check_outputs(&[])?;
    let pids = selection.matching()?;
    if pids.is_empty() {
        anyhow::bail!("no process matches: {}", selection.describe());
    }
    let selection = match (mode, &pids[..]) {
        // One process of the name: watched as that process (exact mode follows no name).
        (Mode::Exact, [pid]) if !selection.all && selection.cgroup.is_none() => {
            Selection { pids: vec![*pid], ..Selection::default() }
        }
        (Mode::Exact, _) => anyhow::bail!(
            "top --mode exact watches one process (--pid PID); several are read sampled"
        ),
        (Mode::Sampled, _) => selection,
    };
    // Before the members: whatever they symbolize shares the files too.
    let symbol_files = RenewedSymbolFiles::on_this_thread();
    let (members, _) = Members::start(selection, pids, period)?;
    if members.members.is_empty() {
        anyhow::bail!("none of the processes can be read");
    }
    let exact = match (mode, &members.members[..]) {
        (Mode::Sampled, _) => None,
        (Mode::Exact, [member]) if member.go => anyhow::bail!(
            "top --mode exact watches a process's threads; a Go program's goroutines are \
             read sampled (top without --mode)"
        ),
        (Mode::Exact, [member]) => Some(ExactWaits::attach(member.target.pid, min_wait)?),
        (Mode::Exact, _) => anyhow::bail!("top --mode exact watches one process"),
    };
    let (processes, watching) =
        (members.members.iter().map(Member::tag).collect(), members.selection().describe());
    let mut session = Session {
        members,
        namers: HashMap::new(),
        symbol_files,
        table: Table::default(),
        view: View::Table,
        paused: false,
        rate,
        window: 0,
        usage: (Instant::now(), ProcessUsage::of_self()),
        reads_at_refresh: 0,
        header: draw::Header {
            processes,
            watching,
            rate,
            reads_per_second: f64::from(rate),
            exact: exact.as_ref().map(ExactWaits::header),
            ..Default::default()
        },
        exact,
        exited: Vec::new(),
        backed_up: BackedUpReader::default(),
    };
    session.open_windows();
    watch_signals();
    let mut terminal = Terminal::enter()?;
    let ended = session.run(&mut terminal)?;
    // Said once the terminal is the shell's again, where it stays in sight.
    drop(terminal);
    if let Some(why) = ended {
        eprintln!("tracer top: {why}");
    }
    Ok(())
}

/// `waits`' blocked times per second of the time the window's reads stood for
/// (`covered`): about the refresh interval, but a read's gap longer or shorter when reads
/// are spaced out by their cost.
fn per_second(mut waits: WaitAggregate, covered: Option<Duration>) -> WaitAggregate {
    let Some(covered) = covered.filter(|covered| !covered.is_zero()) else { return waits };
    for stats in waits.stacks.values_mut() {
        stats.total_ns = (stats.total_ns as f64 / covered.as_secs_f64()) as u64;
    }
    waits
}

/// What the screen shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum View {
    Table,
    /// Typing a filter.
    Filter,
    /// One site: its stack and its chain, as found when opened, shown from row `scroll`
    /// (of the rows its lines wrap to: `rows`, as last drawn, at least one a line; `page`
    /// of them in sight).
    Site {
        title: String,
        lines: Vec<String>,
        scroll: usize,
        rows: std::cell::Cell<usize>,
        page: std::cell::Cell<usize>,
    },
}

struct Session {
    members: Members,
    namers: HashMap<u32, Namer>,
    /// The files the namers parse, shared by all of them: each process's namer parsing
    /// its own copy of libpython's debug info held 1.1 GB for 41 Python processes.
    symbol_files: RenewedSymbolFiles,
    table: Table,
    view: View,
    paused: bool,
    rate: u32,
    /// The id of the window the samplers count the current interval in.
    window: u64,
    /// When the tracer's own usage was last read, and what it was.
    usage: (Instant, ProcessUsage),
    /// The reads made by then.
    reads_at_refresh: u64,
    header: draw::Header,
    /// In exact mode, the probes that give the intervals' blocked time.
    exact: Option<ExactWaits>,
    /// The processes that exited, for the line said when none is left.
    exited: Vec<ProcessTag>,
    /// The processes' sockets read for backed-up ones, off the loop.
    backed_up: BackedUpReader,
}

impl Session {
    /// Watches until a key or a signal ends it (None), or every process exited (why, to
    /// be said after the terminal is given back: the screen would vanish without a word).
    fn run(&mut self, terminal: &mut Terminal) -> anyhow::Result<Option<String>> {
        let mut pace = ReadPace::new(Duration::from_secs(1) / self.rate);
        let mut next_refresh = Instant::now() + REFRESH;
        self.draw(terminal)?;
        loop {
            if STOP.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if let Some(exact) = &mut self.exact {
                exact.drain();
            }
            let now = Instant::now();
            if now >= pace.next() {
                self.members.look_for_new();
                if !pace.read(|| self.members.read()) {
                    return Ok(Some(self.every_process_exited()));
                }
                pace.set_period(self.members.read_interval());
                for exited in self.members.remove_exited() {
                    self.namers.remove(&exited.target.pid);
                    self.exited.push(exited.tag());
                }
            }
            if now >= next_refresh {
                self.refresh(self.members.reads());
                self.draw(terminal)?;
                next_refresh = (next_refresh + REFRESH).max(Instant::now());
            }
            let mut wake_at = pace.next().min(next_refresh);
            if let Some(look) = self.exact.as_ref().and_then(ExactWaits::next_look) {
                wake_at = wake_at.min(look);
            }
            let wait = wake_at.saturating_duration_since(Instant::now());
            // At most a read's period: a SIGTERM is seen at the loop's top that soon.
            if event::poll(wait).context("cannot read the terminal")? {
                let Event::Key(key) = event::read().context("cannot read the terminal")? else {
                    self.draw(terminal)?; // a resize
                    continue;
                };
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                if self.on_key(key) == Flow::Quit {
                    return Ok(None);
                }
                self.draw(terminal)?;
            }
        }
    }

    /// What to say when every process watched exited.
    fn every_process_exited(&self) -> String {
        let mut processes = self.members.members.iter().map(Member::tag).collect::<Vec<_>>();
        if processes.is_empty() {
            processes = self.exited.clone();
        }
        let names: Vec<String> = processes
            .iter()
            .map(|process| crate::report::escape_name(&process.to_string()).into_owned())
            .collect();
        match &names[..] {
            [] => "every process watched exited".to_string(),
            [one] => format!("{one} exited"),
            many => format!("every process watched exited: {}", many.join(", ")),
        }
    }

    /// Starts every member's next interval.
    fn open_windows(&mut self) {
        for member in &mut self.members.members {
            if !member.sampler.has_window(self.window) {
                member.sampler.open_window(self.window);
            }
        }
    }

    /// Ends the interval: the table takes the threads blocked now and the interval's
    /// waits (unless paused), the header the processes' and the tracer's own numbers
    /// (`reads`: how many reads were made so far, for the rate they came at).
    fn refresh(&mut self, reads: u64) {
        if self.symbol_files.renew_when_due() {
            self.namers.clear();
        }
        let window = self.window;
        self.window += 1;
        let (mut now, mut interval) = (Vec::new(), Vec::new());
        let (mut threads, mut blocked) = (0, 0);
        // Exact mode has one member: the probes' waits stand for its interval.
        let mut exact_interval = self.exact.as_mut().map(ExactWaits::take_interval);
        for member in &mut self.members.members {
            let namer = self.namers.entry(member.target.pid).or_default();
            let covered = member.sampler.window_covered(window);
            let sampled = member.sampler.close_window(window).unwrap_or_default();
            let (waits, short_rows) = match exact_interval.take() {
                Some((waits, short_rows, covered)) => {
                    (per_second(waits, Some(covered)), short_rows)
                }
                None => (per_second(sampled, covered), Vec::new()),
            };
            member.sampler.open_window(self.window);
            let counts = member.sampler.thread_counts();
            threads += counts.threads;
            blocked += counts.blocked_in_waits;
            if self.paused {
                continue;
            }
            // The interval's waits first: the locks they show shared (two waiters) are named
            // in the threads blocked now too, where a moment may find one waiter.
            let mut waits = member.profile(namer, waits, ProfileKind::Recording);
            let blocked_now = member.sampler.blocked_now();
            now.push(member.profile(namer, blocked_now, ProfileKind::Snapshot));
            let process = Some(member.tag());
            waits.stacks.extend(
                short_rows.into_iter().map(|row| ProfileStack { process: process.clone(), ..row }),
            );
            interval.push(waits);
        }
        // Members that joined during the interval start theirs now.
        self.open_windows();
        let (backed_up, backed_up_unreadable) = self.backed_up.latest(&self.members.members);
        let usage = ProcessUsage::of_self();
        let elapsed = self.usage.0.elapsed().as_secs_f64().max(1e-3);
        let cpu = (usage.cpu_seconds - self.usage.1.cpu_seconds).max(0.0) / elapsed;
        self.header = draw::Header {
            read: true,
            exact: self.exact.as_ref().map(ExactWaits::header),
            processes: self.members.members.iter().map(Member::tag).collect(),
            watching: self.members.selection().describe(),
            threads,
            blocked,
            rate: self.rate,
            reads_per_second: reads.saturating_sub(self.reads_at_refresh) as f64 / elapsed,
            cpu_percent: cpu * 100.0,
            resident_bytes: usage.resident_bytes,
            backed_up,
            backed_up_unreadable,
        };
        self.usage = (Instant::now(), usage);
        self.reads_at_refresh = reads;
        if !self.paused {
            self.table.refresh(&Profile::of_processes(now), &Profile::of_processes(interval));
        }
    }

    fn draw(&self, terminal: &mut Terminal) -> anyhow::Result<()> {
        let state = draw::State {
            header: &self.header,
            table: &self.table,
            view: &self.view,
            paused: self.paused,
        };
        terminal.inner.draw(|frame| draw::draw(frame, &state)).context("cannot draw")?;
        Ok(())
    }

    fn on_key(&mut self, key: KeyEvent) -> Flow {
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl_c {
            return Flow::Quit;
        }
        let flow = self.on_key_in_view(key);
        // A new filter or sort: the selection stays with its site where it is still shown.
        self.table.follow_selection();
        flow
    }

    fn on_key_in_view(&mut self, key: KeyEvent) -> Flow {
        match (&self.view, key.code) {
            (View::Filter, KeyCode::Enter) => self.view = View::Table,
            (View::Filter, KeyCode::Esc) => {
                self.table.filter.clear();
                self.view = View::Table;
            }
            (View::Filter, KeyCode::Backspace) => {
                self.table.filter.pop();
            }
            // As a shell's line: Ctrl-U clears it, Ctrl-W takes back its last word; other
            // keys with Ctrl or Alt (an Esc read with the key after it) are no text.
            (View::Filter, KeyCode::Char('u')) if key.modifiers.contains(KeyModifiers::CONTROL) => {
                self.table.filter.clear();
            }
            (View::Filter, KeyCode::Char('w')) if key.modifiers.contains(KeyModifiers::CONTROL) => {
                let kept = self.table.filter.trim_end().rfind(' ').map_or(0, |space| space + 1);
                self.table.filter.truncate(kept);
            }
            (View::Filter, KeyCode::Char(_))
                if key.modifiers.intersects(KeyModifiers::CONTROL | KeyModifiers::ALT) => {}
            (View::Filter, KeyCode::Char(c)) => self.table.filter.push(c),
            (View::Site { .. }, KeyCode::Esc | KeyCode::Enter | KeyCode::Left) => {
                self.view = View::Table
            }
            (View::Site { .. }, code) if is_scroll_key(code) => {
                if let View::Site { scroll, rows, page, .. } = &mut self.view {
                    *scroll = scroll_site(*scroll, rows.get(), page.get(), code);
                }
            }
            // Esc in the table quits nothing: a second Esc after leaving a site (or one
            // read alone over a slow link) must not lose the minutes of history.
            (_, KeyCode::Char('q')) => return Flow::Quit,
            (View::Table, KeyCode::Char('s')) => self.table.sort = self.table.sort.next(),
            (View::Table, KeyCode::Char('/')) => self.view = View::Filter,
            (View::Table, KeyCode::Char('p') | KeyCode::Char(' ')) => self.paused = !self.paused,
            (View::Table, KeyCode::Up | KeyCode::Char('k')) => self.table.move_selection(-1),
            (View::Table, KeyCode::Down | KeyCode::Char('j')) => self.table.move_selection(1),
            (View::Table, KeyCode::Enter | KeyCode::Right) => self.open_site(),
            _ => {}
        }
        Flow::Continue
    }

    /// The selected site: the wait chain that starts there (read from the live system
    /// now, as a snapshot's), then its whole stack: the chain first, where the view opens
    /// (a deep stack is scrolled through).
    fn open_site(&mut self) {
        let Some(row) = self.table.selected_row() else { return };
        let key = row.key.clone();
        let mut stack: Vec<String> = Vec::new();
        stack.push(format!("{} threads blocked now; stack, innermost first:", row.threads_now));
        stack.extend(row.frames.iter().rev().map(|frame| format!("  {frame}")));
        let mut lines: Vec<String> = Vec::new();
        let member = self.members.members.iter_mut().find(|member| {
            key.process.as_ref().is_none_or(|process| process.pid == member.target.pid)
        });
        let chain = member.and_then(|member| {
            let namer = self.namers.entry(member.target.pid).or_default();
            let blocked_now = member.sampler.blocked_now();
            let mut snapshot = member.profile(namer, blocked_now, ProfileKind::Snapshot);
            let (unwinder, objects, tasks) = member.sampler.parts_mut();
            let frame_pointers = tasks.host();
            crate::pipeline::add_wait_chains(&mut snapshot, objects, unwinder, &frame_pointers);
            // The site's chain of its kind (a site may wait on a lock and a pipe), of its
            // object where one is.
            let of_row = |chain: &&crate::chains::WaitChain| {
                chain.start.site == key.site && chain.start.kind == key.kind
            };
            let chain = snapshot
                .chains
                .iter()
                .filter(of_row)
                .min_by_key(|chain| chain.start.object != key.object);
            chain.map(|chain| {
                let format = crate::report::summary::format_duration;
                crate::chains::chain_line(chain, format)
            })
        });
        match chain {
            Some(chain) => {
                lines.push("wait chain:".to_string());
                lines.push(format!("  {chain}"));
            }
            None => lines.push("no wait chain starts here now".to_string()),
        }
        lines.push(String::new());
        lines.extend(stack);
        let object = key.object.as_deref().map_or(String::new(), |object| format!(" [{object}]"));
        let title = format!("{} {}{object}", key.site, key.kind.name());
        let rows = std::cell::Cell::new(lines.len());
        let page = std::cell::Cell::new(1);
        self.view = View::Site { title, lines, scroll: 0, rows, page };
    }
}

fn is_scroll_key(code: KeyCode) -> bool {
    matches!(
        code,
        KeyCode::Up
            | KeyCode::Down
            | KeyCode::Char('k' | 'j')
            | KeyCode::PageUp
            | KeyCode::PageDown
            | KeyCode::Home
            | KeyCode::End
    )
}

/// The site view's first row after `key`: the arrows move it a row, the page keys the
/// `page` rows in sight (less one, kept as context), Home back to the top, End to the
/// last page; never past the last of `rows` rows.
fn scroll_site(scroll: usize, rows: usize, page: usize, key: KeyCode) -> usize {
    let step = page.saturating_sub(1).max(1);
    let last = rows.saturating_sub(1);
    let scroll = match key {
        KeyCode::Up | KeyCode::Char('k') => scroll.saturating_sub(1),
        KeyCode::Down | KeyCode::Char('j') => scroll + 1,
        KeyCode::PageUp => scroll.saturating_sub(step),
        KeyCode::PageDown => scroll + step,
        KeyCode::Home => 0,
        KeyCode::End => rows.saturating_sub(page),
        _ => scroll,
    };
    scroll.min(last)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// The terminal in raw mode on the alternate screen, given back as it was however the
/// session ends: on drop, and from the panic hook ratatui installs.
struct Terminal {
    inner: ratatui::DefaultTerminal,
}

impl Terminal {
    fn enter() -> anyhow::Result<Self> {
        use std::io::IsTerminal as _;
        if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
            anyhow::bail!("tracer top draws in a terminal: run it in one (or use `tracer serve`)");
        }
        match ratatui::try_init() {
            Ok(inner) => Ok(Self { inner }),
            Err(err) => {
                // Raw mode may be on already: give the terminal back before saying why.
                ratatui::restore();
                Err(anyhow::Error::new(err).context("cannot take over the terminal"))
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// SIGTERM ends the session like `q`, so the terminal is restored; so do SIGINT and
/// SIGQUIT sent from outside (`timeout -s INT`, a supervisor: Ctrl-C itself reaches top as
/// a key in raw mode, which their default would leave on the alternate screen, the cursor
/// hidden). SIGHUP keeps its default: the terminal is gone, nothing to restore.
fn watch_signals() {
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{StackKey, WaitObject};
    use tracer_common::WaitKind;

    #[test]
    fn a_site_scrolls_a_line_or_a_page_and_stops_at_its_last_line() {
        // 30 rows, 11 in sight: a page moves 10, one row staying in sight.
        assert_eq!(scroll_site(0, 30, 11, KeyCode::Down), 1);
        assert_eq!(scroll_site(0, 30, 11, KeyCode::Char('j')), 1);
        assert_eq!(scroll_site(0, 30, 11, KeyCode::Up), 0, "not above the first line");
        assert_eq!(scroll_site(5, 30, 11, KeyCode::Char('k')), 4);
        assert_eq!(scroll_site(5, 30, 11, KeyCode::PageDown), 15);
        assert_eq!(scroll_site(25, 30, 11, KeyCode::PageDown), 29, "the last line at most");
        assert_eq!(scroll_site(29, 30, 11, KeyCode::Down), 29);
        assert_eq!(scroll_site(5, 30, 11, KeyCode::PageUp), 0);
        assert_eq!(scroll_site(17, 30, 11, KeyCode::Home), 0);
        assert_eq!(scroll_site(0, 30, 11, KeyCode::End), 19, "the last page in sight");
        assert_eq!(scroll_site(0, 0, 11, KeyCode::Down), 0, "an empty view stays put");
        // A short terminal's 8 rows in sight: a page skips none.
        assert_eq!(scroll_site(0, 30, 8, KeyCode::PageDown), 7);
    }

    #[test]
    fn blocked_time_is_per_second_of_what_the_reads_stood_for() {
        let waits = || {
            let mut waits = WaitAggregate::default();
            let key = StackKey {
                addresses: vec![0x10],
                kind: WaitKind::Futex,
                object: WaitObject::Futex(0xa0),
                truncated: false,
                in_progress: true,
            };
            waits.add(key, 7, 300_000_000);
            waits
        };
        let total = |waits: &WaitAggregate| waits.stacks.values().map(|s| s.total_ns).sum::<u64>();
        // Reads spaced out: 1.5 s of them in the window.
        let spaced = per_second(waits(), Some(Duration::from_millis(1500)));
        assert_eq!(total(&spaced), 200_000_000);
        // No read yet: nothing to divide by.
        assert_eq!(total(&per_second(waits(), Some(Duration::ZERO))), 300_000_000);
    }
}
