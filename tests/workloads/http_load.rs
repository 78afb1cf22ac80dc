//! The load generator for `http-service`: keep-alive connections on loopback sending
//! `GET /item/<n>` at a fixed total rate, each on a fixed schedule; a request's latency runs
//! from when it was due (not when it was sent), so a server that falls behind is charged
//! for the queueing it causes.
//!
//! Usage: `http-load --port P [--rate R] [--connections C] [--seconds S]`. Prints `ready`
//! once connected, then measures between SIGUSR1 and SIGUSR2 (see `window.rs`), stops, and
//! prints `http <responses per second> p50_us <x> p99_us <y> max_us <z> due <requests per
//! second due>` for that window.

#[path = "window.rs"]
mod window;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc,
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

    let stop = Arc::new(AtomicBool::new(false));
    // Each connection sends every `period`, shifted so the connections interleave evenly.
    let period = Duration::from_secs_f64(connections as f64 / rate);
    let started = Instant::now() + Duration::from_millis(50);
    let clients: Vec<_> = (0..connections)
        .map(|index| {
            let stream = TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
            let _ = stream.set_nodelay(true);
            let stop = stop.clone();
            let first = started + period.mul_f64(index as f64 / connections as f64);
            thread::Builder::new()
                .name(format!("client-{index}"))
                .spawn(move || client(stream, first, period, index as u64, &stop))
                .unwrap_or_else(|e| panic!("spawn client: {e}"))
        })
        .collect();
    println!("ready");
    let _ = std::io::stdout().flush();

    let deadline = {
        let stop = stop.clone();
        thread::Builder::new()
            .name("deadline".into())
            .spawn(move || {
                thread::sleep(Duration::from_secs_f64(seconds));
                stop.store(true, Ordering::Relaxed);
            })
            .unwrap_or_else(|e| panic!("spawn deadline: {e}"))
    };
    let opened = signals.wait_for(window::Edge::Open);
    let closed = signals.wait_for(window::Edge::Close);
    stop.store(true, Ordering::Relaxed);
    drop(deadline);

    let mut in_window = 0_u64;
    let mut latencies = Vec::new();
    for client in clients {
        let samples = client.join().unwrap_or_default();
        for Sample { due, done } in samples {
            if done >= opened && done < closed {
                in_window += 1;
            }
            if due >= opened && due < closed {
                latencies.push(done.duration_since(due).as_secs_f64() * 1e6);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    let seconds = closed.duration_since(opened).as_secs_f64();
    println!(
        "http {:.0} p50_us {:.0} p99_us {:.0} max_us {:.0} due {:.0}",
        in_window as f64 / seconds,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        latencies.len() as f64 / seconds,
    );
}

fn usage() -> ! {
    eprintln!("usage: http-load --port P [--rate R] [--connections C] [--seconds S]");
    std::process::exit(2);
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Sends a request every `period` from `first` on, reads each response, until `stop`.
fn client(stream: TcpStream, first: Instant, period: Duration, id: u64, stop: &AtomicBool) -> Vec<Sample> {
    let mut writer = stream.try_clone().unwrap_or_else(|e| panic!("clone stream: {e}"));
    let mut reader = BufReader::new(stream);
    let mut samples = Vec::new();
    let mut line = String::new();
    let mut body = Vec::new();
    let mut n = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        let due = first + period.mul_f64(n as f64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let request = format!("GET /item/{} HTTP/1.1\r\nHost: bench\r\n\r\n", id << 32 | n);
        if writer.write_all(request.as_bytes()).is_err() {
            break;
        }
        let mut length = 0_usize;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return samples,
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
        samples.push(Sample { due, done: Instant::now() });
        n += 1;
    }
    samples
}
