//! A realistic blocking service for the overhead bench: a thread-pool HTTP/1.1 server on
//! loopback whose every request makes a blocking call to a backend (a condition-variable
//! handoff to a backend thread that owns the data), so each request costs a socket wait for
//! the next request and a futex wait for the backend's answer.
//!
//! Usage: `http-service [--workers N] [--seconds S]`; prints `port <P>` once it listens.
//! Requests: `GET /item/<n>` (keep-alive); the answer is a small text body.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    sync::{Arc, Condvar, Mutex, mpsc},
    thread,
    time::Duration,
};

/// Handler threads; one keep-alive connection keeps one busy, like a classic blocking server.
const DEFAULT_WORKERS: usize = 16;

fn main() {
    let mut workers = DEFAULT_WORKERS;
    let mut seconds = 600.0_f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|value| value.parse::<f64>().ok());
        match (arg.as_str(), value) {
            ("--workers", Some(value)) if value >= 1.0 => workers = value as usize,
            ("--seconds", Some(value)) => seconds = value,
            _ => {
                eprintln!("usage: http-service [--workers N] [--seconds S]");
                std::process::exit(2);
            }
        }
    }

    let backend = Arc::new(Backend::default());
    {
        let backend = backend.clone();
        thread::Builder::new()
            .name("backend".into())
            .spawn(move || backend.serve())
            .unwrap_or_else(|e| panic!("spawn backend: {e}"));
    }
    let (connections, queue) = mpsc::channel::<TcpStream>();
    let queue = Arc::new(Mutex::new(queue));
    for index in 0..workers {
        let queue = queue.clone();
        let backend = backend.clone();
        thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || worker(&queue, &backend))
            .unwrap_or_else(|e| panic!("spawn worker: {e}"));
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}")).port();
    thread::Builder::new()
        .name("acceptor".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_nodelay(true);
                if connections.send(stream).is_err() {
                    return;
                }
            }
        })
        .unwrap_or_else(|e| panic!("spawn acceptor: {e}"));
    println!("port {port}");
    let _ = std::io::stdout().flush();
    thread::sleep(Duration::from_secs_f64(seconds));
}

/// One pool thread: takes a connection and serves its requests until the client closes it.
fn worker(queue: &Mutex<mpsc::Receiver<TcpStream>>, backend: &Backend) {
    let reply = Arc::new(Reply::default());
    loop {
        let stream = match queue.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(stream) => stream,
            Err(_) => return,
        };
        serve_connection(stream, backend, &reply);
    }
}

fn serve_connection(stream: TcpStream, backend: &Backend, reply: &Arc<Reply>) {
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        // Request line, then headers up to the empty line; no request here has a body.
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let key = item_key(&line);
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) if header == "\r\n" || header == "\n" => break,
                Ok(_) => {}
            }
        }
        let value = backend.call(key, reply);
        let body = format!("item {key} = {value:016x}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// `GET /item/<n> HTTP/1.1` → n (0 for anything else).
fn item_key(request_line: &str) -> u64 {
    request_line
        .split_whitespace()
        .nth(1)
        .and_then(|path| path.strip_prefix("/item/"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Where the backend puts one worker's answer.
#[derive(Default)]
struct Reply {
    value: Mutex<Option<u64>>,
    ready: Condvar,
}

/// The backend: one thread owning the data, fed through a queue.
#[derive(Default)]
struct Backend {
    jobs: Mutex<VecDeque<(u64, Arc<Reply>)>>,
    queued: Condvar,
}

impl Backend {
    /// The blocking backend call of a request: queue the key, wait for the answer.
    #[inline(never)]
    fn call(&self, key: u64, reply: &Arc<Reply>) -> u64 {
        *reply.value.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).push_back((key, reply.clone()));
        self.queued.notify_one();
        let mut value = reply.value.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(value) = *value {
                return value;
            }
            value = reply.ready.wait(value).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn serve(&self) {
        loop {
            let (key, reply) = {
                let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = jobs.pop_front() {
                        break job;
                    }
                    jobs = self.queued.wait(jobs).unwrap_or_else(|e| e.into_inner());
                }
            };
            *reply.value.lock().unwrap_or_else(|e| e.into_inner()) = Some(lookup(key));
            reply.ready.notify_one();
        }
    }
}

/// The backend's work: a few rounds of a 64-bit mix, standing in for a lookup.
fn lookup(key: u64) -> u64 {
    let mut x = key ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..64 {
        x ^= x >> 30;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 27;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}
