//! Real-kernel test of `tracer top`, driven as a user drives it: in a tmux pane of 80×24,
//! with keys sent to it and the screen read back. The C pile-up's call site comes first;
//! `s` sorts by blocked time; Enter opens the site (its whole stack and its wait chain, to
//! the slow backend); Esc goes back; `q` quits, and the terminal is the shell's again
//! (alternate screen left, cursor shown).

use std::process::Command;
use std::time::{Duration, Instant};

use tracer_tests::{
    C_PILEUP_SOURCE, TempDir, build_c, build_c_pileup, start_c_pileup, start_futex_ping_pong,
    tracer_bin,
};

const SLOW_BACKEND: &str = env!("CARGO_BIN_EXE_slow-backend");
const PING_PONG: &str = env!("CARGO_BIN_EXE_ping-pong");
const HANDLERS: usize = 8;
const WORKLOAD_SECONDS: f64 = 120.0;
/// Far above what a refresh takes; only a hang reaches it.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A detached tmux session running a plain shell in an 80×24 pane; killed when dropped.
struct Tmux {
    session: String,
}

impl Tmux {
    /// A shell in a new 80×24 session, at its prompt.
    fn start() -> Self {
        let session = format!("tracer-top-{}", std::process::id());
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", "80", "-y", "24"])
            .args(["env", "PS1=$ ", "TERM=xterm-256color", "bash", "--norc", "--noprofile"])
            .status()
            .expect("run tmux (cargo xtask setup installs Debian's tmux)");
        assert!(status.success(), "tmux new-session: {status}");
        let tmux = Self { session };
        tmux.wait_for("shell prompt", |screen| screen.contains('$'));
        tmux
    }

    /// Runs `command` in the shell, then prints its exit status after `top-exited `
    /// (quoted apart on the command line, so only the output matches).
    fn run(&self, command: &str) {
        self.send(&[&format!("{command}; echo \"top\"\"-exited $?\""), "Enter"]);
    }

    /// Waits for the command `run` started to exit, and checks that it exited 0.
    fn wait_for_exit_0(&self) {
        let screen = self.wait_for("the exit", |screen| screen.contains("top-exited "));
        assert!(screen.contains("top-exited 0"), "{screen}");
    }

    /// Types `keys` (tmux key names: `Enter`, `Escape`, or literal text).
    fn send(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A pane variable (`alternate_on`, `cursor_flag`).
    fn pane(&self, variable: &str) -> String {
        let out = Command::new("tmux")
            .args(["display-message", "-p", "-t", &self.session, &format!("#{{{variable}}}")])
            .output()
            .expect("tmux display-message");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until the screen satisfies `pred`, and returns it.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} on the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.session]).status();
    }
}

/// The first row of the table: the line after its header.
fn first_row(screen: &str) -> &str {
    let mut lines = screen.lines().skip_while(|line| !line.contains("THREADS"));
    lines.next();
    lines.next().unwrap_or_default()
}

#[test]
fn top_shows_the_pileup_first_sorts_opens_a_site_and_gives_the_terminal_back() {
    let build = TempDir::new("top-build");
    let bin = build_c_pileup(build.path());
    let pileup = start_c_pileup(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    let pid = pileup.workload.pid();
    let tmux = Tmux::start();
    tmux.run(&format!("{} top --pid {pid}", tracer_bin().display()));

    // The pile-up's call site on top, with its threads blocked now.
    let screen =
        tmux.wait_for("the pile-up's row", |screen| first_row(screen).contains("enqueue_stat"));
    assert_eq!(tmux.pane("alternate_on"), "1", "top draws on the alternate screen");
    assert!(
        screen.contains(&format!("c-pileup ({pid})")),
        "the header names the process:\n{screen}"
    );
    // The rate asked, or the one the reads came at when a busy machine made them late.
    assert!(screen.contains("sampled at 49 Hz") || screen.contains("(49 asked: "), "{screen}");
    assert!(screen.contains("% CPU"), "the tracer's own cost:\n{screen}");
    let row = first_row(&screen);
    assert!(row.contains("futex"), "{row}");
    // The handlers wait on the queue's condition variable, whose two futex words are two
    // objects: its rows hold them all (one may be between two waits).
    let threads: u64 = screen
        .lines()
        .filter(|line| line.contains("enqueue_stat"))
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(threads >= HANDLERS as u64 - 1, "{threads} handlers:\n{screen}");
    for line in screen.lines() {
        assert!(line.chars().count() <= 80, "wider than the pane: {line:?}");
    }

    // Sorted by blocked time.
    tmux.send(&["s"]);
    tmux.wait_for("sort by blocked time", |screen| screen.contains("sort: blocked time"));

    // Back to threads, then the top site opened: its whole stack. A snapshot sees no
    // wakers, so no chain starts at a condition variable's waiters; it says so.
    tmux.send(&["s", "s"]);
    let screen = tmux.wait_for("sort by threads", |screen| screen.contains("sort: threads now"));
    assert!(first_row(&screen).contains("enqueue_stat"), "{screen}");
    tmux.send(&["Enter"]);
    let opened = tmux.wait_for("the opened site", |screen| screen.contains("wait chain"));
    assert!(opened.contains("enqueue_stat futex"), "{opened}");
    assert!(opened.contains("pthread_cond_wait"), "its whole stack:\n{opened}");
    assert!(opened.contains("handler"), "{opened}");
    // It scrolls: two rows down, its first line (the chain's heading, or that none starts
    // here) is above the view; back up, it is there again.
    tmux.send(&["Down", "Down"]);
    let scrolled = tmux.wait_for("the site scrolled", |screen| {
        !screen.contains("wait chain") && screen.contains("threads blocked now")
    });
    assert!(scrolled.contains("pthread_cond_wait"), "{scrolled}");
    tmux.send(&["Up", "Up"]);
    tmux.wait_for("the site scrolled back", |screen| screen.contains("wait chain"));
    tmux.send(&["Escape"]);
    tmux.wait_for("the table again", |screen| screen.contains("THREADS"));

    // Filtered to the reporter's send, and opened: its chain ends at the slow backend.
    tmux.send(&["/"]);
    tmux.send(&["-l", "send_to"]);
    tmux.send(&["Enter"]);
    let filtered = tmux.wait_for("the filter", |screen| screen.contains("filter: send_to"));
    assert!(first_row(&filtered).contains("send_to_backend"), "{filtered}");
    assert!(!filtered.contains("enqueue_stat"), "filtered out:\n{filtered}");
    // The reporter is in its send most of the time; opened again if it was not then.
    let mut opened = String::new();
    for _ in 0..10 {
        tmux.send(&["Enter"]);
        opened = tmux.wait_for("the opened site", |screen| screen.contains("wait chain"));
        if opened.contains("wait chain:") {
            break;
        }
        tmux.send(&["Escape"]);
        tmux.wait_for("the table again", |screen| screen.contains("THREADS"));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(opened.contains("slow-backend"), "the chain ends at the backend:\n{opened}");
    tmux.send(&["Escape"]);
    tmux.wait_for("the table again", |screen| screen.contains("THREADS"));

    // Quit: the shell's screen is back, the cursor shown, the exit status 0.
    tmux.send(&["q"]);
    tmux.wait_for_exit_0();
    assert_eq!(tmux.pane("alternate_on"), "0", "the alternate screen is left");
    assert_eq!(tmux.pane("cursor_flag"), "1", "the cursor is shown again");
}

/// `top --mode exact`: the pile-up's blocked time from the probes, every wait as it ends;
/// its threads blocked now still read; the header says so.
#[test]
fn top_in_exact_mode_shows_the_pileup_from_the_probes() {
    let build = TempDir::new("top-exact-build");
    let bin = build_c_pileup(build.path());
    let pileup = start_c_pileup(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    let pid = pileup.workload.pid();
    let tmux = Tmux::start();
    tmux.run(&format!("{} top --mode exact --pid {pid}", tracer_bin().display()));
    // Two refreshes: the first interval may end before any handler's wait did.
    let with_time = |screen: &str| {
        let row = first_row(screen);
        let blocked = row.split_whitespace().nth(1).unwrap_or("-");
        row.contains("enqueue_stat") && blocked != "-" && blocked != "0s"
    };
    let screen = tmux.wait_for("the pile-up's row with its blocked time", with_time);
    assert!(screen.contains("exact ≥1.0ms"), "the header says exact:\n{screen}");
    assert!(screen.contains("threads read at"), "THREADS is still read:\n{screen}");
    let row = first_row(&screen);
    assert!(row.contains("futex"), "{row}");
    for line in screen.lines() {
        assert!(line.chars().count() <= 80, "wider than the pane: {line:?}");
    }
    tmux.send(&["q"]);
    tmux.wait_for_exit_0();
}

/// `top --mode exact` on a futex ping-pong, whose handoffs are all under the threshold:
/// they carry no stack, and their time shows as one row of kind futex.
#[test]
fn top_in_exact_mode_shows_the_waits_under_the_threshold_as_a_row() {
    let workload = start_futex_ping_pong(PING_PONG, WORKLOAD_SECONDS, &[]);
    let tmux = Tmux::start();
    tmux.run(&format!("{} top --mode exact --pid {}", tracer_bin().display(), workload.pid()));
    let short_row = |screen: &str| {
        let row = screen.lines().find(|line| line.contains("(waits under 1.0ms: no stack)"))?;
        let columns: Vec<&str> = row.split_whitespace().take(3).collect();
        (columns.len() == 3 && columns[1] != "0ns").then(|| columns[2].to_owned())
    };
    let screen = tmux.wait_for("the short waits' row", |screen| short_row(screen).is_some());
    assert_eq!(short_row(&screen).as_deref(), Some("futex"), "{screen}");
    tmux.send(&["q"]);
}

/// An asyncio program's pending tasks are rows of the table as blocked threads are: the
/// refreshers' tasks at the lock a holder keeps.
#[test]
fn top_shows_an_asyncio_programs_pending_tasks() {
    const REFRESHERS: &str = "6";
    let dir = TempDir::new("top-asyncio");
    let mut cmd = Command::new(tracer_tests::DEBIAN_PYTHON);
    cmd.arg(tracer_tests::PY_ASYNC_SOURCE)
        .args([REFRESHERS, "4", "120"])
        .arg(dir.path().join("tasks.json"));
    let (workload, _) = tracer_tests::spawn_and_read_line("pyasync", cmd);
    let tmux = Tmux::start();
    tmux.run(&format!("{} top --pid {}", tracer_bin().display(), workload.pid()));
    let refreshers = |screen: &str| {
        let row = screen.lines().find(|line| line.contains("refresh_cache"))?;
        Some(row.to_owned())
    };
    let screen = tmux.wait_for("the refreshers' tasks", |screen| refreshers(screen).is_some());
    let row = refreshers(&screen).unwrap_or_default();
    // Six tasks, their waits' time not known (they are read, not traced), of kind task.
    let columns: Vec<&str> = row.split_whitespace().take(3).collect();
    assert_eq!(columns, [REFRESHERS, "-", "task"], "{screen}");
    tmux.send(&["q"]);
}

/// SIGTERM (a session killed), and SIGINT or SIGQUIT sent from outside (`timeout -s
/// INT`, a supervisor; Ctrl-C itself comes as a key), restore the terminal as `q` does
/// (SIGINT left the alternate screen on and the cursor hidden).
#[test]
fn a_signal_gives_the_terminal_back() {
    let build = TempDir::new("top-sigterm-build");
    let bin = build_c_pileup(build.path());
    let pileup = start_c_pileup(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    let tmux = Tmux::start();
    for signal in ["TERM", "INT", "QUIT"] {
        tmux.send(&["clear", "Enter"]);
        tmux.wait_for("a clear screen", |screen| !screen.contains("top-exited"));
        // In the foreground (it owns the terminal), signalled after 8 s: once its table
        // is drawn, so the signal meets the terminal taken over.
        tmux.run(&format!(
            "timeout --foreground --preserve-status -s {signal} 8 {} top --pid {}",
            tracer_bin().display(),
            pileup.workload.pid()
        ));
        tmux.wait_for("the table", |screen| first_row(screen).contains("enqueue_stat"));
        assert_eq!(tmux.pane("alternate_on"), "1", "SIG{signal}");
        tmux.wait_for_exit_0();
        assert_eq!(tmux.pane("alternate_on"), "0", "SIG{signal}");
        assert_eq!(tmux.pane("cursor_flag"), "1", "SIG{signal}");
    }
}

/// The process watched exits: top gives the terminal back and says so (it vanished
/// without a word).
#[test]
fn the_process_exiting_ends_top_with_a_line_saying_so() {
    let build = TempDir::new("top-exit-build");
    let bin = build_c_pileup(build.path());
    let pileup = start_c_pileup(SLOW_BACKEND, &bin, HANDLERS, 6.0);
    let pid = pileup.workload.pid();
    let tmux = Tmux::start();
    tmux.run(&format!("{} top --pid {pid}", tracer_bin().display()));
    tmux.wait_for("the table", |screen| first_row(screen).contains("enqueue_stat"));
    tmux.wait_for_exit_0();
    let screen = tmux.screen();
    let said = screen.lines().find(|line| line.starts_with("tracer top: "));
    assert!(said.is_some_and(|line| line.ends_with(&format!("({pid}) exited"))), "{screen}");
    assert_eq!(tmux.pane("alternate_on"), "0");
}

/// `top --comm NAME` follows the name: the process restarted (a new pid) is watched again,
/// and while none is there the header says what it waits for (it ended at the first exit,
/// and a second process of the name never joined).
#[test]
fn top_by_name_follows_the_process_across_a_restart() {
    const NAME: &str = "c-top-follows";
    let build = TempDir::new("top-follow-build");
    let bin = build_c(build.path(), C_PILEUP_SOURCE, NAME);
    let first = start_c_pileup(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    let first_pid = first.workload.pid();
    let tmux = Tmux::start();
    tmux.run(&format!("{} top --comm {NAME}", tracer_bin().display()));
    tmux.wait_for("the first process's table", |screen| {
        screen.contains(&format!("{NAME} ({first_pid})"))
            && first_row(screen).contains("enqueue_stat")
    });
    drop(first);
    let screen = tmux.wait_for("the header waiting for the name", |screen| {
        screen.contains(&format!("waiting for processes named {NAME}"))
    });
    assert!(!screen.contains("top-exited"), "top ended with its process:\n{screen}");
    let second = start_c_pileup(SLOW_BACKEND, &bin, HANDLERS, WORKLOAD_SECONDS);
    let second_pid = second.workload.pid();
    tmux.wait_for("the restarted process's table", |screen| {
        screen.contains(&format!("{NAME} ({second_pid})"))
            && first_row(screen).contains("enqueue_stat")
    });
    tmux.send(&["q"]);
    tmux.wait_for_exit_0();
}

/// An event-driven writer whose peers stopped reading: no row shows it (its one thread
/// waits in epoll), so the header's third line names its heaviest backed-up socket, the
/// one to the backend, and counts the others (the socketpair's two ends).
#[test]
fn top_names_a_backed_up_socket_in_its_header() {
    let build = TempDir::new("top-backed-up-build");
    let bin = build_c(build.path(), tracer_tests::C_EVENT_WRITER_SOURCE, "c-event-writer");
    let (_backend, port) = tracer_tests::start_dead_backend(SLOW_BACKEND, WORKLOAD_SECONDS);
    let mut cmd = Command::new(&bin);
    cmd.arg(port.to_string()).arg(WORKLOAD_SECONDS.to_string());
    let writer = tracer_tests::start_workload("c-event-writer", cmd);
    let tmux = Tmux::start();
    tmux.run(&format!("{} top --pid {}", tracer_bin().display(), writer.pid()));
    // The TCP socket counts once nothing moved on it for a second: a first read may
    // come sooner and list the socketpair alone (the next is 5 s later).
    let expected = |line: &str| {
        line.starts_with(&format!("backed up: 127.0.0.1:{port} fd "))
            && line.contains(" unsent, peer stopped reading; 2 more")
    };
    let screen =
        tmux.wait_for("the backed-up line", |screen| screen.lines().nth(2).is_some_and(expected));
    // The table is still there, below it.
    assert!(screen.contains("CALL SITE"), "{screen}");
    tmux.send(&["q"]);
    tmux.wait_for_exit_0();
}
