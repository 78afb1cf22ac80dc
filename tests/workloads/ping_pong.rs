//! A switch-heavy workload, the worst case for a blocking-call tracer: two threads
//! hand a token back and forth through a mutex and condition variable (futex waits),
//! and two threads bounce one byte over TCP loopback (socket waits).
//!
//! Usage: `ping-pong [futex|tcp] [--seconds S] [--rate R] [--pause-every N --pause-ms M]
//! [--timed] [--window]`; prints `<mode> <round trips per second>`.
//!
//! - `--rate R`: at most R round trips per second (paced; each round trip is two waits),
//!   for measuring a tracer's own cost at a known wait rate.
//! - `--pause-every N --pause-ms M`: after every N round trips the pinger sleeps M ms, so
//!   the ponger's run of short waits ends in a long one.
//! - `--timed` (futex): each wait has a timeout (never reached): a timed wait is one the
//!   tracer keeps a stack copy for at its sleep, as for waits woken from outside.
//! - `--window` (for the bench): prints `ready` once both players run, then measures only
//!   between SIGUSR1 and SIGUSR2 (see `window.rs`) and prints the rate of that window;
//!   `--seconds` is then only the time after which the workload exits.

#[path = "window.rs"]
mod window;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// Round trips so far; only the pinger writes it, the window watcher reads it.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

struct Settings {
    duration: Duration,
    /// Seconds between two round trips when paced.
    pace: Option<f64>,
    /// Round trips between two pauses, and how long each pause is.
    pauses: Option<(u64, Duration)>,
    window: bool,
    timed: bool,
}

fn main() {
    let mut mode = String::from("futex");
    let mut seconds = 3.0_f64;
    let mut rate: Option<f64> = None;
    let mut window = false;
    let mut timed = false;
    let mut pause_every: Option<u64> = None;
    let mut pause_ms: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => match args.next().and_then(|value| value.parse().ok()) {
                Some(value) => seconds = value,
                None => usage(),
            },
            "--rate" => match args.next().and_then(|value| value.parse::<f64>().ok()) {
                Some(value) if value > 0.0 => rate = Some(value),
                _ => usage(),
            },
            "--pause-every" => match args.next().and_then(|value| value.parse().ok()) {
                Some(value) if value > 0 => pause_every = Some(value),
                _ => usage(),
            },
            "--pause-ms" => match args.next().and_then(|value| value.parse().ok()) {
                Some(value) => pause_ms = Some(value),
                None => usage(),
            },
            "--window" => window = true,
            "--timed" => timed = true,
            "futex" | "tcp" => mode = arg,
            _ => usage(),
        }
    }
    let signals = window.then(window::WindowSignals::block);
    let settings = Settings {
        duration: Duration::from_secs_f64(seconds),
        pace: rate.map(|rate| 1.0 / rate),
        pauses: match (pause_every, pause_ms) {
            (Some(every), Some(ms)) => Some((every, Duration::from_millis(ms))),
            (None, None) => None,
            _ => usage(),
        },
        window,
        timed,
    };
    if let Some(signals) = signals {
        let mode = mode.clone();
        thread::Builder::new()
            .name("window".into())
            .spawn(move || watch_window(&signals, &mode))
            .unwrap_or_else(|e| panic!("spawn window watcher: {e}"));
    }
    let round_trips = match mode.as_str() {
        "futex" => futex_ping_pong(&settings),
        _ => tcp_ping_pong(&settings),
    };
    if !window {
        println!("{mode} {:.0}", round_trips as f64 / seconds);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: ping-pong [futex|tcp] [--seconds S] [--rate R] \
         [--pause-every N --pause-ms M] [--timed] [--window]"
    );
    std::process::exit(2);
}

/// Prints the round-trip rate between SIGUSR1 and SIGUSR2.
fn watch_window(signals: &window::WindowSignals, mode: &str) {
    let opened = signals.wait_for(window::Edge::Open);
    let at_open = ROUND_TRIPS.load(Ordering::Relaxed);
    let closed = signals.wait_for(window::Edge::Close);
    let at_close = ROUND_TRIPS.load(Ordering::Relaxed);
    let seconds = closed.duration_since(opened).as_secs_f64();
    println!("{mode} {:.0}", (at_close - at_open) as f64 / seconds);
    let _ = std::io::stdout().flush();
}

/// Before round trip `n`: with pacing, sleeps until it is due; with pauses, sleeps the
/// pause after every so many.
fn pace(settings: &Settings, started: Instant, n: u64) {
    if let Some((every, pause)) = settings.pauses
        && n > 0
        && n.is_multiple_of(every)
    {
        thread::sleep(pause);
    }
    if let Some(period) = settings.pace {
        let due = started + Duration::from_secs_f64(period * n as f64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
    }
}

/// Counts a round trip where the window watcher can see it.
fn count(n: &mut u64) {
    *n += 1;
    ROUND_TRIPS.store(*n, Ordering::Relaxed);
}

fn ready(settings: &Settings) {
    if settings.window {
        println!("ready");
        let _ = std::io::stdout().flush();
    }
}

/// The ball: even when it is the pinger's turn, odd for the ponger, `STOP` to end.
struct Table {
    ball: Mutex<u64>,
    moved: Condvar,
    /// Wait with a timeout (`--timed`).
    timed: bool,
}

/// A timed wait's timeout: far beyond any handoff.
const TIMED_WAIT_LIMIT: Duration = Duration::from_secs(10);

const STOP: u64 = u64::MAX;

/// Waits until the ball's parity is `parity` (or it is `STOP`), then hits it back.
#[inline(never)]
fn hit(table: &Table, parity: u64) -> bool {
    let mut ball = table.ball.lock().unwrap_or_else(|e| e.into_inner());
    while *ball != STOP && *ball % 2 != parity {
        ball = if table.timed {
            let waited = table.moved.wait_timeout(ball, TIMED_WAIT_LIMIT);
            waited.unwrap_or_else(|e| e.into_inner()).0
        } else {
            table.moved.wait(ball).unwrap_or_else(|e| e.into_inner())
        };
    }
    if *ball == STOP {
        return false;
    }
    *ball += 1;
    table.moved.notify_one();
    true
}

fn futex_ping_pong(settings: &Settings) -> u64 {
    let table =
        Arc::new(Table { ball: Mutex::new(0), moved: Condvar::new(), timed: settings.timed });
    let ponger = {
        let table = table.clone();
        thread::Builder::new()
            .name("ponger".into())
            .spawn(move || while hit(&table, 1) {})
            .unwrap_or_else(|e| panic!("spawn ponger: {e}"))
    };
    ready(settings);
    let started = Instant::now();
    let mut round_trips = 0;
    while started.elapsed() < settings.duration {
        pace(settings, started, round_trips);
        hit(&table, 0);
        count(&mut round_trips);
    }
    *table.ball.lock().unwrap_or_else(|e| e.into_inner()) = STOP;
    table.moved.notify_one();
    let _ = ponger.join();
    round_trips
}

fn tcp_ping_pong(settings: &Settings) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    let ponger = thread::Builder::new()
        .name("ponger".into())
        .spawn(move || {
            let (mut stream, _) = listener.accept().unwrap_or_else(|e| panic!("accept: {e}"));
            let _ = stream.set_nodelay(true);
            let mut byte = [0u8; 1];
            while stream.read_exact(&mut byte).is_ok() && stream.write_all(&byte).is_ok() {}
        })
        .unwrap_or_else(|e| panic!("spawn ponger: {e}"));
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    let _ = stream.set_nodelay(true);
    ready(settings);
    let started = Instant::now();
    let mut round_trips = 0;
    let mut byte = [1u8; 1];
    while started.elapsed() < settings.duration {
        pace(settings, started, round_trips);
        if stream.write_all(&byte).is_err() || stream.read_exact(&mut byte).is_err() {
            break;
        }
        count(&mut round_trips);
    }
    drop(stream);
    let _ = ponger.join();
    round_trips
}
