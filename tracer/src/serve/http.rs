//! The endpoints, over HTTP/1.1 (hyper). Read-only; bounded in connections and time,
//! so slow or many clients cannot take more than their share.

use std::{
    convert::Infallible,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{
        ACCEPT, ALLOW, AUTHORIZATION, CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue, RETRY_AFTER,
        WWW_AUTHENTICATE,
    },
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;

use super::{
    BLOCKED_SAMPLE_TTL, GoroutineRead, ServeError, Shared,
    access::Access,
    counts_since, goroutines,
    host::{Host, HostError, ProcessFilter},
    lock,
    metrics::{self, Scrape},
};
use crate::{
    model::{Profile, ProfileKind},
    pipeline::Traced,
    pipeline::counts::below_threshold,
    pipeline::own_usage::ProcessUsage,
    report::{
        Provenance, Weight,
        pprof::{write_count_pprof, write_pprof},
        summary::render_summary,
    },
};

/// Connections open at once; more wait in the listen backlog. An idle connection costs a
/// socket and a small task, so the cap is high: clients that connect and send nothing
/// (issue 16: 64 of them, reconnecting when closed) must not keep /metrics from its
/// scrapers, as they did with 32.
const MAX_CONNECTIONS: usize = 1024;
/// Past this many open connections, a new one gets `CROWDED_HEADER_TIMEOUT` to send its
/// request, so that idle ones give way sooner.
const CROWDED: usize = 128;
const CROWDED_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// `/debug/pprof/block` windows open at once (each holds an aggregate).
const MAX_BLOCK_WINDOWS: usize = 8;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// `seconds` of /debug/pprof/block when none is given (as Go's profile endpoint).
const DEFAULT_SECONDS: u64 = 30;
/// The longest window /debug/pprof/block records; longer requests are cut to it.
const MAX_SECONDS: u64 = 300;
/// Beyond the longest window, the time one request may take in all (building the
/// profile, a slow reader): then its connection is closed. A keep-alive connection lives
/// on while its requests come (see `RequestDeadline`).
const CONNECTION_SLACK: Duration = Duration::from_secs(60);
/// Rows of the text summary of /debug/pprof/threads?debug=1.
const SUMMARY_TOP: usize = 30;

// Header values checked when compiled: no parsing, nothing to fail, per response.
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const BEARER_REALM: HeaderValue = HeaderValue::from_static("Bearer realm=\"tracer\"");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const OPENMETRICS: HeaderValue =
    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
/// Prometheus's own text format, for a client that does not ask for OpenMetrics.
const PROMETHEUS_TEXT: HeaderValue =
    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
const BLOCK_ATTACHMENT: HeaderValue =
    HeaderValue::from_static("attachment; filename=\"block.pb.gz\"");
const THREADS_ATTACHMENT: HeaderValue =
    HeaderValue::from_static("attachment; filename=\"threads.pb.gz\"");
/// What Go's net/http/pprof names its goroutine profile.
const GOROUTINE_ATTACHMENT: HeaderValue =
    HeaderValue::from_static("attachment; filename=\"goroutine\"");

const INDEX: &str = "tracer serve: the waits of a live process

/debug/pprof/block?seconds=N   waits that end in the next N seconds (default 30, at most 300), pprof
/debug/pprof/threads           threads blocked now, pprof; ?debug=1 for text
/debug/pprof/goroutine         a Go program's goroutines waiting now, as Go's net/http/pprof
                               answers: pprof; ?debug=1 counts by stack, ?debug=2 each goroutine
/metrics                       Prometheus metrics
/healthz                       liveness
";

const HOST_INDEX: &str = "tracer serve: the waits of the processes of a host (or a cgroup)

The profiles take ?pid=N or ?comm=NAME for one process; without them, all of them.
/debug/pprof/block?seconds=N   waits in the next N seconds (default 30, at most 300), pprof:
                               those that ended, and the part in the window of those that go on
/debug/pprof/threads           threads blocked now, pprof; ?debug=1 for text
/metrics                       Prometheus metrics, labelled by process (pid, comm, cgroup)
/healthz                       liveness
";

/// What the endpoints answer about: one process (followed across restarts), or the
/// processes of a host or cgroup.
#[derive(Clone)]
pub enum Daemon {
    One(Arc<Shared>),
    Host(Arc<Host>),
}

pub async fn run(
    listener: TcpListener,
    daemon: Daemon,
    access: Arc<Access>,
    tls: Option<TlsAcceptor>,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let windows = Arc::new(Semaphore::new(MAX_BLOCK_WINDOWS));
    loop {
        let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors, most likely: wait instead of spinning.
                log::warn!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let daemon = daemon.clone();
        let windows = Arc::clone(&windows);
        let access = Arc::clone(&access);
        let tls = tls.clone();
        let open = MAX_CONNECTIONS - connections.available_permits();
        let header_timeout = if open > CROWDED { CROWDED_HEADER_TIMEOUT } else { HEADER_TIMEOUT };
        let limit = Duration::from_secs(MAX_SECONDS) + CONNECTION_SLACK;
        let deadline = Arc::new(RequestDeadline::new(limit));
        tokio::spawn(async move {
            let _permit = permit;
            let connection_deadline = Arc::clone(&deadline);
            let service = service_fn(move |request: Request<_>| {
                deadline.rearm();
                let daemon = daemon.clone();
                let windows = Arc::clone(&windows);
                let allowed =
                    access.allows(request.uri().path(), request.headers().get(AUTHORIZATION));
                async move {
                    if !allowed {
                        return Ok::<_, Infallible>(unauthorized());
                    }
                    let reply = match &daemon {
                        Daemon::One(shared) => respond(shared, &windows, request).await,
                        Daemon::Host(host) => respond_host(host, &windows, request).await,
                    };
                    Ok::<_, Infallible>(reply)
                }
            });
            let http = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .clone();
            let deadline = connection_deadline;
            let served = match tls {
                None => {
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    deadline.serve(connection).await
                }
                Some(tls) => {
                    // The handshake, too, within the time a request's headers get.
                    let stream =
                        match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(err)) => {
                                // Scanners, clients without a certificate: not news.
                                log::debug!("TLS handshake with {peer} failed: {err}");
                                return;
                            }
                            Err(_) => {
                                log::debug!("TLS handshake with {peer} timed out");
                                return;
                            }
                        };
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    deadline.serve(connection).await
                }
            };
            match served {
                Some(Ok(())) => {}
                Some(Err(err)) => log::debug!("connection from {peer}: {err}"),
                None => log::info!(
                    "connection from {peer} closed: no request for {limit:?}, or one took longer"
                ),
            }
        });
    }
}

/// When a connection is closed: `limit` after its last request began (or after it
/// opened). A scraper that keeps its connection for window after window is served as
/// long as it asks (each connection's whole life was once bounded, cutting a keep-alive
/// connection mid-window after 6 minutes); a request that takes longer (a client that
/// never reads its answer) loses it.
struct RequestDeadline {
    limit: Duration,
    at: std::sync::Mutex<Instant>,
}

impl RequestDeadline {
    fn new(limit: Duration) -> Self {
        Self { limit, at: std::sync::Mutex::new(Instant::now() + limit) }
    }

    /// A request began.
    fn rearm(&self) {
        *self.at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Instant::now() + self.limit;
    }

    fn at(&self) -> Instant {
        *self.at.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Serves `connection` until it ends (Some), or until the deadline passes without
    /// being re-armed (None).
    async fn serve<F: std::future::Future>(&self, connection: F) -> Option<F::Output> {
        tokio::pin!(connection);
        loop {
            let at = self.at();
            match tokio::time::timeout_at(at.into(), &mut connection).await {
                Ok(served) => return Some(served),
                Err(_) if self.at() > at => continue,
                Err(_) => return None,
            }
        }
    }
}

/// The endpoints of the host daemon: the same as one process's, each for one process
/// (`?pid=`, `?comm=`) or all of them.
async fn respond_host<B>(host: &Host, windows: &Arc<Semaphore>, request: Request<B>) -> Reply {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    let query = request.uri().query().unwrap_or_default();
    let path = request.uri().path();
    let filter = match path {
        "/debug/pprof/block" | "/debug/pprof/threads" => match process_filter(query) {
            Ok(filter) => filter,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        },
        _ => ProcessFilter::default(),
    };
    let reply = match path {
        "/" | "/debug/pprof" | "/debug/pprof/" => Ok(text(StatusCode::OK, HOST_INDEX.into())),
        "/healthz" => {
            let processes = host.processes().len();
            Ok(text(
                StatusCode::OK,
                format!("ok: reading {processes} processes of {}\n", host.selection.describe()),
            ))
        }
        "/metrics" => {
            let accept = request.headers().get(ACCEPT).cloned();
            host.render_metrics().await.map(|body| metrics_reply(accept.as_ref(), body))
        }
        "/debug/pprof/block" => match parse_seconds(param(query, "seconds")) {
            Ok(seconds) => match windows.try_acquire() {
                Ok(_slot) => {
                    // Counted until its answer is made: a stopping daemon waits for it.
                    let _open = host.windows.opened();
                    match host.window(filter, seconds).await {
                        Ok(profile) => return pprof(profile, Weight::Time, BLOCK_ATTACHMENT).await,
                        Err(err) => Err(err),
                    }
                }
                Err(_) => Err(HostError::Busy),
            },
            Err(message) => Ok(text(StatusCode::BAD_REQUEST, message)),
        },
        "/debug/pprof/threads" => {
            let debug = param(query, "debug").is_some_and(|value| value != "0");
            match host.blocked_now(filter, true).await {
                Ok(profile) if debug => {
                    Ok(text(StatusCode::OK, render_summary(&profile, SUMMARY_TOP)))
                }
                Ok(profile) => return pprof(profile, Weight::Threads, THREADS_ATTACHMENT).await,
                Err(err) => Err(err),
            }
        }
        "/debug/pprof/goroutine" => Ok(text(
            StatusCode::NOT_FOUND,
            "goroutines are read of one Go program: serve it alone (--pid or --comm)\n".into(),
        )),
        path => {
            Ok(text(StatusCode::NOT_FOUND, format!("{path}: no such endpoint\n\n{HOST_INDEX}")))
        }
    };
    reply.unwrap_or_else(|err| {
        let message = with_causes(&err);
        log::info!("{}: {message}", request.uri());
        let status = match err {
            HostError::NoSuchProcess(_) => StatusCode::NOT_FOUND,
            HostError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            HostError::Stopped | HostError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        text(status, format!("{message}\n"))
    })
}

/// `?pid=N` and `?comm=NAME` (percent-decoded: a name may hold any byte).
fn process_filter(query: &str) -> Result<ProcessFilter, String> {
    let pid = match param(query, "pid") {
        Some(value) => {
            Some(value.parse::<u32>().map_err(|_| format!("pid={value}: give a process id\n"))?)
        }
        None => None,
    };
    let comm = param(query, "comm").map(percent_decode);
    Ok(ProcessFilter { pid, comm })
}

/// `%XX` escapes and `+` (a space) of a query value, as browsers and curl send them.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match bytes[index] {
            b'%' if hex(index + 1).is_some() && hex(index + 2).is_some() => {
                let (high, low) = (hex(index + 1).unwrap_or(0), hex(index + 2).unwrap_or(0));
                decoded.push((high * 16 + low) as u8);
                index += 3;
            }
            b'+' => {
                decoded.push(b' ');
                index += 1;
            }
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

type Reply = Response<Full<Bytes>>;

async fn respond<B>(shared: &Shared, windows: &Arc<Semaphore>, request: Request<B>) -> Reply {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    let query = request.uri().query().unwrap_or_default();
    let reply = match request.uri().path() {
        "/" | "/debug/pprof" | "/debug/pprof/" => Ok(text(StatusCode::OK, INDEX.into())),
        "/healthz" => Ok(healthz(shared)),
        "/metrics" => scrape(shared, request.headers().get(ACCEPT)).await,
        "/debug/pprof/block" => match parse_seconds(param(query, "seconds")) {
            Ok(seconds) => block(shared, windows, seconds).await,
            Err(message) => Ok(text(StatusCode::BAD_REQUEST, message)),
        },
        "/debug/pprof/threads" => threads(shared, param(query, "debug")).await,
        "/debug/pprof/goroutine" => goroutine(shared, param(query, "debug")).await,
        path => Ok(text(StatusCode::NOT_FOUND, format!("{path}: no such endpoint\n\n{INDEX}"))),
    };
    reply.unwrap_or_else(|err| {
        let message = with_causes(&err);
        log::info!("{}: {message}", request.uri());
        let status = match err {
            ServeError::NotAttached | ServeError::Worker(super::worker::WorkerError::Busy) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServeError::NotGo { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        text(status, format!("{message}\n"))
    })
}

/// An error and its causes on one line: `cannot read the goroutines: pid 4242 exited…`.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        message.push_str(": ");
        message.push_str(&err.to_string());
        cause = err.source();
    }
    message
}

/// The answer to a request without the token (RFC 6750).
fn unauthorized() -> Reply {
    let mut response = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n".into());
    response.headers_mut().insert(WWW_AUTHENTICATE, BEARER_REALM);
    response
}

fn text(status: StatusCode, body: String) -> Reply {
    // Text answers are read in terminals (curl), and quote the target's names.
    let body = match crate::report::escape_controls(&body) {
        std::borrow::Cow::Borrowed(_) => body,
        std::borrow::Cow::Owned(escaped) => escaped,
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, TEXT_PLAIN);
    // What RFC 9110 asks of these answers: the methods allowed, when to come back (the
    // windows or the symbolizer's queue busy, no process attached yet).
    match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

/// A download; `attachment` is its Content-Disposition.
fn binary(body: Vec<u8>, attachment: HeaderValue) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, OCTET_STREAM);
    headers.insert(CONTENT_DISPOSITION, attachment);
    response
}

/// The first value of `name` in a query string (no percent-decoding: the values we
/// read are numbers).
fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// `seconds` of /debug/pprof/block: a whole number from 1 to MAX_SECONDS, as the error
/// says (a longer window is refused, not cut short unsaid).
fn parse_seconds(value: Option<&str>) -> Result<u64, String> {
    let Some(value) = value else {
        return Ok(DEFAULT_SECONDS);
    };
    match value.parse::<u64>() {
        Ok(seconds @ 1..=MAX_SECONDS) => Ok(seconds),
        _ => Err(format!(
            "seconds={value}: give a whole number of seconds from 1 to {MAX_SECONDS}\n"
        )),
    }
}

fn healthz(shared: &Shared) -> Reply {
    let body = match shared.attached_process() {
        Some((pid, comm, _)) => format!("ok: tracing pid {pid} ({comm})\n"),
        None => format!("ok: waiting for {}\n", shared.wanted),
    };
    text(StatusCode::OK, body)
}

async fn scrape(shared: &Shared, accept: Option<&HeaderValue>) -> Result<Reply, ServeError> {
    shared.fold_metrics_window().await;
    let blocked = match shared.blocked_series().await {
        Ok(series) => Some(series),
        Err(err) => {
            log::debug!("no blocked threads for /metrics: {err}");
            None
        }
    };
    // Like the blocked threads, a read of the goroutines serves every scrape for a while.
    let goroutines = if shared.is_go() {
        let not_before =
            Instant::now().checked_sub(BLOCKED_SAMPLE_TTL).unwrap_or_else(Instant::now);
        match shared.goroutines(not_before).await {
            Ok(read) => Some(read),
            Err(err) => {
                log::info!("no goroutines for /metrics: {}", with_causes(&err));
                None
            }
        }
    } else {
        None
    };
    let backed_up = match shared.attached_process() {
        Some((pid, _, generation)) => {
            Some(shared.backed_up.series(vec![(pid, None)], generation).await)
        }
        None => None,
    };
    let tracer = shared.tracer_totals();
    let short_waits = shared.sampling.is_none().then(|| shared.total_short_waits());
    let body = {
        let waits = lock(&shared.waits);
        metrics::render(&Scrape {
            blocked: blocked.as_deref(),
            goroutines: goroutines.as_deref().map(|read: &GoroutineRead| &read.series),
            waits: &waits,
            tracer: &tracer,
            usage: ProcessUsage::of_self(),
            processes: None,
            firings: None,
            short_waits: short_waits.as_ref(),
            backed_up: backed_up.as_deref(),
        })
    };
    let body = body.map_err(ServeError::Render)?;
    Ok(metrics_reply(accept, body))
}

/// The metrics in the format the client accepts: OpenMetrics when it asks for it (as
/// Prometheus does, first), else Prometheus's text format 0.0.4, which older scrapers and
/// `promtool check metrics` read (OpenMetrics' counters are untyped to them).
fn metrics_reply(accept: Option<&HeaderValue>, openmetrics: String) -> Reply {
    let wants_openmetrics = accept
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let (body, content_type) = match wants_openmetrics {
        true => (openmetrics, OPENMETRICS),
        false => (metrics::prometheus_text(&openmetrics), PROMETHEUS_TEXT),
    };
    let mut response = text(StatusCode::OK, body);
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}

/// Removes its window if the request ends early (the client went away).
struct OpenWindow<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for OpenWindow<'_> {
    fn drop(&mut self) {
        lock(&self.shared.collector).close_window(self.id);
    }
}

// For a Go program this is still the threads' waits (runtime.futex and the netpoller).
async fn block(shared: &Shared, windows: &Semaphore, seconds: u64) -> Result<Reply, ServeError> {
    let Ok(_slot) = windows.try_acquire() else {
        return Err(ServeError::Worker(super::worker::WorkerError::Busy));
    };
    let _open = shared.windows.opened();
    if let Some(traced) = shared.go_target() {
        return goroutine_block(shared, traced, seconds).await;
    }
    let mark = shared.counts_mark();
    let exits_before = shared.exited_generation.load(Ordering::Relaxed);
    let window = OpenWindow { shared, id: lock(&shared.collector).open_window() };
    let started = std::time::Instant::now();
    log::info!("block profile: a window of {seconds}s open");
    // A daemon that stops (its target exited, a signal) ends the window at once.
    shared.windows.hold(Duration::from_secs(seconds), started).await;
    let (generation, closed) = {
        let mut collector = lock(&shared.collector);
        (collector.generation, collector.close_window(window.id).unwrap_or_default())
    };
    let now = shared.counts_mark();
    let mut base = shared.base_profile(ProfileKind::Recording, started.elapsed());
    // A process the window was open on exited (its attachment may not be undone yet).
    base.target_exited = shared.exited_generation.load(Ordering::Relaxed) != exits_before;
    if let Some(now) = &now {
        let (counts, short_waits) = counts_since(now, mark.as_ref());
        base.counts = counts;
        base.below_threshold = below_threshold(&short_waits);
        if let Some(period) = shared.sampling {
            // Counted over every attachment: a window across a restart holds both's reads.
            let reads = now.reads.saturating_sub(mark.as_ref().map_or(0, |mark| mark.reads));
            base.sampling = Some(crate::model::Sampling { period, reads });
        }
    }
    let super::collector::Window { aggregate, earlier, lost_waits } = closed;
    if lost_waits > 0 {
        // Also in /metrics: tracer_lost_events_total{reason="block_window"}.
        log::warn!("block profile: {lost_waits} waits of an earlier process lost");
        base.counts.waits_unnamed += lost_waits;
    }
    let profile = if aggregate.stacks.is_empty() {
        base
    } else {
        shared.worker.symbolize(generation, aggregate, base).await?
    };
    let profile = if earlier.is_empty() {
        profile
    } else {
        let mut profile = profile;
        let stacks = std::mem::take(&mut profile.stacks);
        Profile::from_symbolized(profile, stacks.into_iter().chain(earlier))
    };
    log::info!(
        "block profile: {:?} of {seconds}s, {} stacks, {} waits",
        started.elapsed(),
        profile.stacks.len(),
        profile.stacks.iter().map(|stack| stack.stats.waits).sum::<u64>()
    );
    Ok(pprof(profile, Weight::Time, BLOCK_ATTACHMENT).await)
}

/// A Go program's block profile in goroutine terms: its goroutines sampled over the
/// window, as `tracer record` samples them (their waits at their call sites, with their
/// wait reasons and objects), not the runtime's threads.
async fn goroutine_block(
    shared: &Shared,
    traced: Arc<Traced>,
    seconds: u64,
) -> Result<Reply, ServeError> {
    let period = Duration::from_secs(1) / crate::golang::DEFAULT_RATE_HZ;
    let window = Duration::from_secs(seconds);
    // Set when this request is dropped (its client hung up, serve shuts down): the
    // sampling thread cannot be cancelled, so it looks at the flag every read.
    let stop = super::StopOnDrop::new();
    let flag = stop.flag();
    let mut sampling = tokio::task::spawn_blocking(move || {
        crate::golang::sample_window(&traced, window, period, &flag)
    });
    log::info!("goroutine block profile: a window of {seconds}s open");
    // A daemon that stops ends the window early: the sampling returns what it read.
    let sampled = tokio::select! {
        sampled = &mut sampling => sampled,
        () = shared.windows.closing() => {
            stop.stop();
            sampling.await
        }
    };
    let profile = sampled
        .map_err(|err| ServeError::Goroutines(err.into()))?
        .map_err(|err| ServeError::Goroutines(err.into()))?;
    log::info!(
        "goroutine block profile: {seconds}s, {} reads, {} stacks",
        profile.sampling.map_or(0, |sampling| sampling.reads),
        profile.stacks.len()
    );
    Ok(pprof(profile, Weight::Time, BLOCK_ATTACHMENT).await)
}

async fn threads(shared: &Shared, debug: Option<&str>) -> Result<Reply, ServeError> {
    let profile = shared.blocked_now(super::worker::ChainsWanted::WithFacts).await?;
    if debug.is_some_and(|value| value != "0") {
        return Ok(text(StatusCode::OK, render_summary(&profile, SUMMARY_TOP)));
    }
    Ok(pprof(profile, Weight::Threads, THREADS_ATTACHMENT).await)
}

/// The goroutines of a Go program waiting now, as Go's net/http/pprof answers
/// /debug/pprof/goroutine: `debug` 0 (or absent, or not a number) pprof, 1 the counts by
/// stack as text, 2 and more every goroutine's stack as text. Each request reads the
/// goroutines anew (or takes a read that began after it came).
async fn goroutine(shared: &Shared, debug: Option<&str>) -> Result<Reply, ServeError> {
    let read = shared.goroutines(Instant::now()).await?;
    let debug = debug.and_then(|value| value.parse::<i64>().ok()).unwrap_or(0);
    if debug <= 0 {
        let encoded = tokio::task::spawn_blocking(move || {
            let profile = &read.dump.profile;
            let mut bytes = Vec::new();
            write_count_pprof(profile, &Provenance::of_profile(profile), "goroutine", &mut bytes)
                .map(|()| bytes)
        })
        .await;
        return Ok(match encoded {
            Ok(Ok(bytes)) => binary(bytes, GOROUTINE_ATTACHMENT),
            Ok(Err(err)) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the profile: {err}\n"),
            ),
            Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
        });
    }
    // Hundreds of thousands of goroutines make tens of MiB of text.
    let rendered = tokio::task::spawn_blocking(move || {
        if debug == 1 {
            goroutines::count_text(&read.dump)
        } else {
            goroutines::traceback_text(&read.dump)
        }
    })
    .await;
    Ok(match rendered {
        Ok(body) => text(StatusCode::OK, body),
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
    })
}

/// Encodes off the runtime's threads: a big profile takes a while to compress.
async fn pprof(profile: Profile, weight: Weight, attachment: HeaderValue) -> Reply {
    let encoded = tokio::task::spawn_blocking(move || {
        let provenance = Provenance::of_profile(&profile);
        let mut bytes = Vec::new();
        write_pprof(&profile, &provenance, weight, &mut bytes).map(|()| bytes)
    })
    .await;
    match encoded {
        Ok(Ok(bytes)) => binary(bytes, attachment),
        Ok(Err(err)) => {
            log::warn!("cannot encode a pprof profile: {err:#}");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the profile: {err}\n"))
        }
        Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose requests keep coming outlives the limit; one whose request
    /// takes longer is closed.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_lives_while_its_requests_come() {
        let limit = Duration::from_millis(200);
        let deadline = RequestDeadline::new(limit);
        let requests = async {
            for _ in 0..5 {
                tokio::time::sleep(limit / 2).await;
                deadline.rearm();
            }
            "answered"
        };
        assert_eq!(deadline.serve(requests).await, Some("answered"));
        let deadline = RequestDeadline::new(limit);
        let stalled = tokio::time::sleep(limit * 3);
        assert_eq!(deadline.serve(stalled).await, None);
    }

    #[test]
    fn refusals_say_what_is_allowed_and_when_to_come_back() {
        let refused = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        assert_eq!(refused.headers()[ALLOW], "GET, HEAD");
        let busy = text(StatusCode::SERVICE_UNAVAILABLE, "busy\n".into());
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
        assert!(!text(StatusCode::OK, String::new()).headers().contains_key(RETRY_AFTER));
    }

    #[test]
    fn a_name_with_control_characters_is_found_by_its_bytes_or_written_out() {
        // Processes are tagged with their name written out (`a\x0ab`).
        let tagged = crate::report::escape_name("a\nb").into_owned();
        let by_bytes = process_filter("comm=a%0Ab").unwrap();
        assert!(by_bytes.matches(7, &tagged));
        let written_out = process_filter("comm=a%5Cx0ab").unwrap();
        assert!(written_out.matches(7, &tagged));
        assert!(!process_filter("comm=ab").unwrap().matches(7, &tagged));
    }

    #[test]
    fn seconds_default_cap_and_refuse() {
        assert_eq!(parse_seconds(None), Ok(DEFAULT_SECONDS));
        assert_eq!(parse_seconds(Some("2")), Ok(2));
        assert_eq!(parse_seconds(Some("300")), Ok(MAX_SECONDS));
        assert!(parse_seconds(Some("301")).unwrap_err().contains("from 1 to 300"));
        assert!(parse_seconds(Some("100000")).unwrap_err().contains("from 1 to 300"));
        for bad in ["0", "-1", "abc", "", "1.5"] {
            assert!(parse_seconds(Some(bad)).unwrap_err().contains("whole number"), "{bad}");
        }
    }

    #[test]
    fn process_filters_come_from_the_query() {
        assert_eq!(process_filter(""), Ok(ProcessFilter::default()));
        assert_eq!(
            process_filter("seconds=5&pid=42"),
            Ok(ProcessFilter { pid: Some(42), comm: None })
        );
        assert_eq!(
            process_filter("comm=my%20app+x%zz").map(|filter| filter.comm),
            Ok(Some("my app x%zz".to_string()))
        );
        assert!(process_filter("pid=abc").unwrap_err().contains("give a process id"));
    }

    #[test]
    fn query_parameters_are_found_by_name() {
        assert_eq!(param("seconds=5&debug=1", "debug"), Some("1"));
        assert_eq!(param("debug", "debug"), Some(""));
        assert_eq!(param("", "seconds"), None);
        assert_eq!(param("xseconds=5", "seconds"), None);
    }
}
