//! A switch-heavy workload, the worst case for a blocking-call tracer: two threads
//! hand a token back and forth through a mutex and condition variable (futex waits),
//! and two threads bounce one byte over TCP loopback (socket waits).
//!
//! Usage: `ping-pong [futex|tcp] [--seconds S]`; prints `<mode> <round trips per second>`.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

fn main() {
    let mut mode = String::from("futex");
    let mut seconds = 3.0_f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => match args.next().and_then(|value| value.parse().ok()) {
                Some(value) => seconds = value,
                None => usage(),
            },
            "futex" | "tcp" => mode = arg,
            _ => usage(),
        }
    }
    let duration = Duration::from_secs_f64(seconds);
    let round_trips = match mode.as_str() {
        "futex" => futex_ping_pong(duration),
        _ => tcp_ping_pong(duration),
    };
    println!("{mode} {:.0}", round_trips as f64 / seconds);
}

fn usage() -> ! {
    eprintln!("usage: ping-pong [futex|tcp] [--seconds S]");
    std::process::exit(2);
}

/// The ball: even when it is the pinger's turn, odd for the ponger, `STOP` to end.
struct Table {
    ball: Mutex<u64>,
    moved: Condvar,
}

const STOP: u64 = u64::MAX;

/// Waits until the ball's parity is `parity` (or it is `STOP`), then hits it back.
#[inline(never)]
fn hit(table: &Table, parity: u64) -> bool {
    let mut ball = table.ball.lock().unwrap_or_else(|e| e.into_inner());
    while *ball != STOP && *ball % 2 != parity {
        ball = table.moved.wait(ball).unwrap_or_else(|e| e.into_inner());
    }
    if *ball == STOP {
        return false;
    }
    *ball += 1;
    table.moved.notify_one();
    true
}

fn futex_ping_pong(duration: Duration) -> u64 {
    let table = Arc::new(Table { ball: Mutex::new(0), moved: Condvar::new() });
    let ponger = {
        let table = table.clone();
        thread::Builder::new()
            .name("ponger".into())
            .spawn(move || while hit(&table, 1) {})
            .unwrap_or_else(|e| panic!("spawn ponger: {e}"))
    };
    let started = Instant::now();
    let mut round_trips = 0;
    while started.elapsed() < duration {
        hit(&table, 0);
        round_trips += 1;
    }
    *table.ball.lock().unwrap_or_else(|e| e.into_inner()) = STOP;
    table.moved.notify_one();
    let _ = ponger.join();
    round_trips
}

fn tcp_ping_pong(duration: Duration) -> u64 {
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
    let started = Instant::now();
    let mut round_trips = 0;
    let mut byte = [1u8; 1];
    while started.elapsed() < duration {
        if stream.write_all(&byte).is_err() || stream.read_exact(&mut byte).is_err() {
            break;
        }
        round_trips += 1;
    }
    drop(stream);
    let _ = ponger.join();
    round_trips
}
