//! The load generator for `http-service`: keep-alive connections on loopback sending
//! `GET /item/<n>` at a fixed total rate, each on a fixed schedule; a request's latency runs
//! from when it was due (not when it was sent), so a server that falls behind is charged
//! for the queueing it causes.
//!
//! Usage: `http-load --port P [--rate R] [--connections C] [--seconds S]`. Prints `ready`
//! once connected, then measures every window between a SIGUSR1 and the next SIGUSR2 (see
//! `window.rs`), for as many windows as the bench opens, until S seconds have passed. After
//! each window it prints `http <responses per second> p50_us <x> p99_us <y> max_us <z>
//! due <requests per second due> unanswered <n>`, then `latencies_us <µs>:<count> …`: every
//! latency of the window's requests at 1 µs resolution, so that the bench can pool the
//! windows of one variant into one distribution (a p99 of many short windows interleaved
//! with other variants, not a median of noisy ones).

#[path = "window.rs"]
mod window;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// One request: when it was due and when its response had been read.
#[derive(Clone, Copy)]
struct Sample {
    due: Instant,
    done: Instant,
}

/// What one connection has measured so far; the main thread takes it after each window.
#[derive(Default)]
struct Measured {
    samples: Vec<Sample>,
    /// When the request in flight was due: a window's results are complete once every
    /// connection has moved past the window's end.
    in_flight_due: Option<Instant>,
}

/// How long the requests due inside a window may take to be answered before the window's
/// results are printed without them (they are then counted as `unanswered`: with the latency
/// unknown, leaving them out would flatter the window).
const ANSWER_GRACE: Duration = Duration::from_secs(2);

fn main() {
    let mut port: Option<u16> = None;
    let mut rate = 20_000.0_f64;
    let mut connections = 16_usize;
    let mut seconds = 600.0_f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|value| value.parse::<f64>().ok());
        match (arg.as_str(), value) {
            ("--port", Some(value)) => port = Some(value as u16),
            ("--rate", Some(value)) if value > 0.0 => rate = value,
            ("--connections", Some(value)) if value >= 1.0 => connections = value as usize,
            ("--seconds", Some(value)) => seconds = value,
            _ => usage(),
        }
    }
    let Some(port) = port else { usage() };
    let signals = window::WindowSignals::block();
    // Requests are sent by sleeping until they are due; the default 50 µs timer slack would
    // send each one late by up to that and charge it to the server. Threads inherit it.
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes a plain integer and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_u64) };

    let stop = Arc::new(AtomicBool::new(false));
    // Each connection sends every `period`, shifted so the connections interleave evenly.
    let period = Duration::from_secs_f64(connections as f64 / rate);
    let started = Instant::now() + Duration::from_millis(50);
    let measured: Vec<Arc<Mutex<Measured>>> =
        (0..connections).map(|_| Arc::new(Mutex::new(Measured::default()))).collect();
    for (index, measured) in measured.iter().enumerate() {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
        let _ = stream.set_nodelay(true);
        let stop = stop.clone();
        let measured = measured.clone();
        let first = started + period.mul_f64(index as f64 / connections as f64);
        thread::Builder::new()
            .name(format!("client-{index}"))
            .spawn(move || client(stream, first, period, index as u64, &stop, &measured))
            .unwrap_or_else(|e| panic!("spawn client: {e}"));
    }
    println!("ready");
    let _ = std::io::stdout().flush();

    {
        let stop = stop.clone();
        thread::Builder::new()
            .name("deadline".into())
            .spawn(move || {
                thread::sleep(Duration::from_secs_f64(seconds));
                stop.store(true, Ordering::Relaxed);
                // The main thread may be waiting for a window that never comes.
                std::process::exit(0);
            })
            .unwrap_or_else(|e| panic!("spawn deadline: {e}"));
    }
    loop {
        // Samples of requests answered before this point belong to no window: drop them
        // (those that come between now and the opening are left out by their due time).
        let _ = take_samples(&measured);
        let opened = signals.wait_for(window::Edge::Open);
        let closed = signals.wait_for(window::Edge::Close);
        let unanswered = wait_until_answered(&measured, opened, closed, period);
        report_window(&take_samples(&measured), opened, closed, unanswered);
    }
}

fn usage() -> ! {
    eprintln!("usage: http-load --port P [--rate R] [--connections C] [--seconds S]");
    std::process::exit(2);
}

fn take_samples(measured: &[Arc<Mutex<Measured>>]) -> Vec<Sample> {
    measured
        .iter()
        .flat_map(|m| std::mem::take(&mut m.lock().unwrap_or_else(|e| e.into_inner()).samples))
        .collect()
}

/// Waits (at most `ANSWER_GRACE`) until no connection still waits for a request due before
/// `closed`; returns how many requests due in [`opened`, `closed`) are still unanswered then
/// (the one in flight on each stuck connection and those queued behind it).
fn wait_until_answered(
    measured: &[Arc<Mutex<Measured>>],
    opened: Instant,
    closed: Instant,
    period: Duration,
) -> u64 {
    let deadline = Instant::now() + ANSWER_GRACE;
    loop {
        let pending: Vec<Instant> = measured
            .iter()
            .filter_map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).in_flight_due)
            .filter(|&due| due < closed)
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            return pending
                .iter()
                .map(|&due| {
                    let stuck_since = due.max(opened);
                    (closed.duration_since(stuck_since).as_secs_f64() / period.as_secs_f64()).ceil()
                        as u64
                })
                .sum();
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn report_window(samples: &[Sample], opened: Instant, closed: Instant, unanswered: u64) {
    let answered_in_window = samples.iter().filter(|s| s.done >= opened && s.done < closed).count();
    let mut latencies: Vec<u64> = samples
        .iter()
        .filter(|s| s.due >= opened && s.due < closed)
        .map(|s| s.done.duration_since(s.due).as_micros() as u64)
        .collect();
    latencies.sort_unstable();
    let seconds = closed.duration_since(opened).as_secs_f64();
    let percentile = |q: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)]
    };
    println!(
        "http {:.0} p50_us {} p99_us {} max_us {} due {:.0} unanswered {unanswered}",
        answered_in_window as f64 / seconds,
        percentile(0.50),
        percentile(0.99),
        latencies.last().copied().unwrap_or(0),
        latencies.len() as f64 / seconds,
    );
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for latency in latencies {
        *counts.entry(latency).or_default() += 1;
    }
    let histogram: Vec<String> = counts.iter().map(|(us, n)| format!("{us}:{n}")).collect();
    println!("latencies_us {}", histogram.join(" "));
    let _ = std::io::stdout().flush();
}

/// Sends a request every `period` from `first` on, reads each response, until `stop`.
fn client(
    stream: TcpStream,
    first: Instant,
    period: Duration,
    id: u64,
    stop: &AtomicBool,
    measured: &Mutex<Measured>,
) {
    let mut writer = stream.try_clone().unwrap_or_else(|e| panic!("clone stream: {e}"));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut body = Vec::new();
    let mut n = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        let due = first + period.mul_f64(n as f64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        measured.lock().unwrap_or_else(|e| e.into_inner()).in_flight_due = Some(due);
        let request = format!("GET /item/{} HTTP/1.1\r\nHost: bench\r\n\r\n", id << 32 | n);
        if writer.write_all(request.as_bytes()).is_err() {
            break;
        }
        let mut length = 0_usize;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {
                    if let Some(value) = line.strip_prefix("Content-Length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
        }
        body.resize(length, 0);
        if reader.read_exact(&mut body).is_err() {
            break;
        }
        let mut measured = measured.lock().unwrap_or_else(|e| e.into_inner());
        measured.samples.push(Sample { due, done: Instant::now() });
        measured.in_flight_due = None;
        n += 1;
    }
}
