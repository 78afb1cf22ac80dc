//! The programs that read or drive the tracer: `tracer record`, `snapshot` and `report` under a
//! deadline, the `tracer serve` daemon and HTTP to it, a real Prometheus, outside tools
//! (`go tool pprof`, `xmllint`), and a Go workload's own goroutine profile (the oracle the Go
//! tests compare with).

use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::processes::{
    ChildGuard, POLL_INTERVAL, RunOutput, STARTUP_TIMEOUT, TempDir, run_with_timeout,
};

/// The tracer binary: `$TRACER_BIN`, else `target/release/tracer` of this workspace (honouring
/// `CARGO_TARGET_DIR`).
pub fn tracer_bin() -> PathBuf {
    let path = match std::env::var_os("TRACER_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let workspace =
                Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .map(|t| if t.is_relative() { workspace.join(t) } else { t })
                .unwrap_or_else(|| workspace.join("target"));
            target.join("release").join("tracer")
        }
    };
    assert!(
        path.is_file(),
        "tracer binary {} is missing: run `cargo build --release` first or set TRACER_BIN",
        path.display()
    );
    path
}

/// `tracer record --pid PID` with the given extra arguments, under a deadline.
pub fn tracer_record(pid: u32, args: &[&str], timeout: Duration) -> RunOutput {
    let mut cmd = Command::new(tracer_bin());
    cmd.arg("record").arg("--pid").arg(pid.to_string()).args(args);
    run_with_timeout("tracer record", cmd, timeout)
}

/// `tracer snapshot --pid PID` with the given extra arguments, under a deadline.
pub fn tracer_snapshot(pid: u32, args: &[&str], timeout: Duration) -> RunOutput {
    run_with_timeout("tracer snapshot", snapshot_command(pid, args), timeout)
}

/// The command line of `tracer snapshot --pid PID ARGS...`.
pub fn snapshot_command(pid: u32, args: &[&str]) -> Command {
    let mut cmd = Command::new(tracer_bin());
    cmd.arg("snapshot").arg("--pid").arg(pid.to_string()).args(args);
    cmd
}

/// `tracer report ARGS...` (needs no root and no live process), under a deadline.
pub fn tracer_report(args: &[&str], timeout: Duration) -> RunOutput {
    let mut cmd = Command::new(tracer_bin());
    cmd.arg("report").args(args);
    run_with_timeout("tracer report", cmd, timeout)
}

/// Runs an outside tool (`go tool pprof`, `xmllint`) that `cargo xtask setup` installs,
/// panicking with its output when it fails.
pub fn run_tool(program: &str, args: &[&str], timeout: Duration) -> RunOutput {
    let which = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh to look for {program}: {e}"));
    assert!(
        which.status.success(),
        "{program} is not installed: `cargo xtask setup` installs it (Debian's golang-go, libxml2-utils)"
    );
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_with_timeout(program, cmd, timeout);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

/// `tracer -v serve ARGS... --listen 127.0.0.1:0` running under a guard, with its log
/// (stderr) collected line by line, and the port it serves on.
pub struct ServeDaemon {
    guard: ChildGuard,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub port: u16,
}

impl ServeDaemon {
    /// Starts the daemon and waits for the line that names its address.
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(tracer_bin());
        cmd.arg("-v")
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn tracer serve ({cmd:?}): {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let mut daemon = Self { guard: ChildGuard::new("tracer serve", child), log, port: 0 };
        // http:// or https://
        const MARKER: &str = "://127.0.0.1:";
        let line = daemon.wait_for_log(|line| line.contains(MARKER), STARTUP_TIMEOUT);
        let port = line
            .split(MARKER)
            .nth(1)
            .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        daemon.port = port;
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).join("\n")
    }

    /// Waits for a log line matching `pred` and returns it; panics with the log after
    /// `timeout`.
    pub fn wait_for_log(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) =
                self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|line| pred(line))
            {
                return line.clone();
            }
            if let Ok(Some(status)) = self.guard.child.try_wait() {
                panic!("tracer serve exited ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "tracer serve logged no such line within {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// GET `path` (with its query) from the daemon.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.port, path, HTTP_TIMEOUT)
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit; returns the status and
    /// how long the exit took.
    pub fn terminate(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        self.stop_by(libc::SIGTERM, timeout)
    }

    /// Sends `signal` and waits (up to `timeout`) for the daemon to exit.
    pub fn stop_by(&mut self, signal: libc::c_int, timeout: Duration) -> (ExitStatus, Duration) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        let start = Instant::now();
        // SAFETY: kill takes a pid and a signal; `pid` is our unreaped child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill -{signal} {pid}: {}", std::io::Error::last_os_error());
        let status = self.guard.wait_timeout(timeout);
        (status, start.elapsed())
    }

    /// Waits (up to `timeout`) for the daemon to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.guard.wait_timeout(timeout)
    }
}

/// Far above what any endpoint takes besides the requested window, for a loaded CI
/// machine; only a hang reaches it.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP response: status code and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain HTTP/1.1 GET of `path` on 127.0.0.1:`port` (Connection: close; the body is
/// whatever follows the headers, its chunks joined if it came chunked).
pub fn http_get(port: u16, path: &str, timeout: Duration) -> HttpResponse {
    http_get_with(port, path, &[], timeout)
}

/// As `http_get`, with more request headers (`("Authorization", "Bearer x")`).
pub fn http_get_with(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> HttpResponse {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
    stream.set_read_timeout(Some(timeout)).expect("set a read timeout");
    let headers: String =
        headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("send GET {path}: {e}"));
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap_or_else(|e| panic!("read the answer to GET {path}: {e}"));
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("GET {path}: no end of headers in {:?}", String::from_utf8_lossy(&raw))
    });
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status in {head:?}"));
    let body = &raw[split + 4..];
    let chunked = head
        .lines()
        .any(|line| line.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        dechunk(body).unwrap_or_else(|| {
            panic!("GET {path}: a broken chunked body: {:?}", String::from_utf8_lossy(body))
        })
    } else {
        body.to_vec()
    };
    HttpResponse { status, head, body }
}

/// The data of a chunked HTTP/1.1 body (RFC 9112, 7.1): `SIZE-IN-HEX[;ext]\r\n DATA\r\n`
/// chunks up to one of size 0. `None` if it is cut short or malformed.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&body[..line_end]).ok()?;
        let size_hex = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(data);
        }
        data.extend_from_slice(body.get(..size)?);
        body = body.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap_or_else(|e| panic!("find a free port: {e}"))
        .port()
}

/// A real Prometheus server (Debian's `prometheus`) on 127.0.0.1, scraping one target
/// every second, with its storage in a temporary directory.
pub struct Prometheus {
    guard: ChildGuard,
    pub port: u16,
    _dir: TempDir,
}

impl Prometheus {
    /// How long Prometheus may take to start answering (it replays an empty TSDB).
    const READY_TIMEOUT: Duration = Duration::from_secs(60);

    pub fn start(scrape_port: u16) -> Self {
        Self::start_with_token(scrape_port, None)
    }

    /// As `start`, sending the bearer token in `token_file` with each scrape (the
    /// `authorization` of its scrape config).
    pub fn start_with_token(scrape_port: u16, token_file: Option<&Path>) -> Self {
        Self::start_scraping(&[scrape_port], token_file, None)
    }

    /// Scrapes every port of `scrape_ports` as an instance of one job, with the bearer
    /// token in `token_file`, over HTTPS trusting `ca_file` when given.
    pub fn start_scraping(
        scrape_ports: &[u16],
        token_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.join("prometheus.yml");
        let authorization = token_file.map_or(String::new(), |file| {
            format!("    authorization:\n      credentials_file: {}\n", file.display())
        });
        let tls = ca_file.map_or(String::new(), |file| {
            format!("    scheme: https\n    tls_config:\n      ca_file: {}\n", file.display())
        });
        let targets: Vec<String> =
            scrape_ports.iter().map(|port| format!("'127.0.0.1:{port}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: tracer\n{authorization}{tls}    \
                 static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        let port = free_port();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("spawn prometheus: {e} (`cargo xtask setup` installs Debian's prometheus)")
        });
        let prometheus = Self { guard: ChildGuard::new("prometheus", child), port, _dir: dir };
        let deadline = Instant::now() + Self::READY_TIMEOUT;
        loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_get(port, "/-/ready", HTTP_TIMEOUT).status == 200;
            if ready {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {:?}",
                Self::READY_TIMEOUT
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The JSON answer of the instant query `query` (letters, digits, `_` and `{}=",`
    /// only: it is percent-encoded here).
    pub fn query(&self, query: &str) -> String {
        let encoded: String = query
            .bytes()
            .map(|byte| match byte {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (byte as char).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect();
        let response = http_get(self.port, &format!("/api/v1/query?query={encoded}"), HTTP_TIMEOUT);
        assert_eq!(response.status, 200, "prometheus query {query}: {}", response.text());
        response.text()
    }
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate it signed, made
/// with Debian's `openssl` (P-256 keys, valid two days).
pub struct TestCertificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCertificates {
    pub fn make(dir: &TempDir) -> Self {
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(args).current_dir(dir.path());
            let out = run_with_timeout("openssl", cmd, Duration::from_secs(30));
            assert_success(&format!("openssl {}", args.join(" ")), &out);
        };
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let ca =
            ["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=tracer-test-ca"];
        openssl(&[&["req", "-x509"], &key[..], &ca[..]].concat());
        let extensions = [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
        ];
        for (name, extension) in extensions {
            std::fs::write(dir.join(&format!("{name}.ext")), extension)
                .expect("write the extensions");
            let (csr, out_key, cert, ext) = (
                format!("{name}.csr"),
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            let subject = format!("/CN={name}");
            openssl(
                &[&["req"], &key[..], &["-keyout", &out_key, "-out", &csr, "-subj", &subject]]
                    .concat(),
            );
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                &ext,
            ]);
        }
        Self {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

/// A GET of `path` on https://127.0.0.1:`port` with curl, trusting `ca`, with the bearer
/// `token` and the client certificate and key `client` when given. Err: curl's complaint
/// (a refused handshake).
pub fn https_get(
    port: u16,
    path: &str,
    ca: &Path,
    token: Option<&str>,
    client: Option<(&Path, &Path)>,
) -> Result<HttpResponse, String> {
    let body = std::env::temp_dir().join(format!("tracer-https-{}-{port}", std::process::id()));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-w", "%{http_code}", "-o"]).arg(&body);
    cmd.arg("--cacert").arg(ca);
    if let Some(token) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
    }
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.arg(format!("https://127.0.0.1:{port}{path}"));
    let out = run_with_timeout("curl", cmd, HTTP_TIMEOUT + Duration::from_secs(10));
    let answer = std::fs::read(&body).unwrap_or_default();
    let _ = std::fs::remove_file(&body);
    if !out.status.success() {
        return Err(out.stderr.trim().to_string());
    }
    let status = out.stdout.trim().parse().map_err(|_| format!("curl printed {:?}", out.stdout))?;
    // curl keeps the headers to itself here: none of the HTTPS tests reads them.
    Ok(HttpResponse { status, head: String::new(), body: answer })
}

/// What speedscope (from npm, installed by `cargo xtask setup`) makes of a `.trace.json`,
/// opened in headless Chromium as a user opens it: the page's title and the names of the
/// tracks it imported (`app (42) (pid 42), worker (43) (tid 43)`), read off the page.
pub fn speedscope_tracks(trace: &Path) -> (String, Vec<String>) {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let release = PathBuf::from(home)
        .join(".local/share/tracer/speedscope/node_modules/speedscope/dist/release");
    assert!(release.join("index.html").is_file(), "no speedscope (cargo xtask setup installs it)");
    // The page and the trace served from one directory on loopback, as speedscope fetches
    // a `profileURL`.
    let site = TempDir::new("speedscope");
    for entry in std::fs::read_dir(&release).expect("read speedscope's release") {
        let entry = entry.expect("an entry");
        std::fs::copy(entry.path(), site.join(&entry.file_name().to_string_lossy()))
            .expect("copy speedscope");
    }
    std::fs::copy(trace, site.join("waits.trace.json")).expect("copy the trace");
    let port = free_port();
    let mut server = Command::new("python3");
    server.args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"]);
    server.current_dir(site.path()).stdout(Stdio::null()).stderr(Stdio::null());
    let _server = ChildGuard::new("http.server", server.spawn().expect("spawn python3"));
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http.server did not listen");
        std::thread::sleep(POLL_INTERVAL);
    }
    let profile = format!("http%3A%2F%2F127.0.0.1%3A{port}%2Fwaits.trace.json");
    let mut chromium = Command::new("chromium");
    chromium
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", site.join("chromium").display()))
        .arg(format!("http://127.0.0.1:{port}/index.html#profileURL={profile}"));
    let out = run_with_timeout("chromium", chromium, Duration::from_secs(120));
    assert_success("chromium --dump-dom", &out);
    // The text of the page's elements, one per piece.
    let texts: Vec<String> = out
        .stdout
        .split('<')
        .filter_map(|element| element.split_once('>').map(|(_, text)| text.trim()))
        .filter(|text| !text.is_empty())
        .map(|text| text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
        .collect();
    let title = texts.iter().find(|text| text.ends_with(" - speedscope")).cloned();
    let tracks: std::collections::BTreeSet<String> =
        texts.iter().filter(|text| text.contains("(tid ")).cloned().collect();
    (title.unwrap_or_default(), tracks.into_iter().collect())
}

/// One group of a Go program's own goroutine profile (pprof's `debug=1` text): how many
/// goroutines, and the functions of their frames leaf first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoroutineGroup {
    pub count: u64,
    pub functions: Vec<String>,
}

/// The groups of a `debug=1` goroutine profile: `N @ 0x… 0x…` lines, each followed by
/// `#\t0xADDR\tfunction+0xOFF\tfile:line` frame lines.
pub fn parse_pprof_goroutines(text: &str) -> Vec<GoroutineGroup> {
    let mut groups: Vec<GoroutineGroup> = Vec::new();
    for line in text.lines() {
        if let Some((count, _)) = line.split_once(" @ ")
            && let Ok(count) = count.trim().parse()
        {
            groups.push(GoroutineGroup { count, functions: Vec::new() });
        } else if let Some(frame) = line.strip_prefix('#')
            && let Some(group) = groups.last_mut()
        {
            let mut fields = frame.split_whitespace();
            let _address = fields.next();
            if let Some(function) = fields.next() {
                let name = function.rsplit_once("+0x").map_or(function, |(name, _)| name);
                group.functions.push(name.to_owned());
            }
        }
    }
    groups
}

/// The Go program's own goroutine profile, fetched from its `net/http/pprof`.
pub fn pprof_goroutines(port: u16) -> Vec<GoroutineGroup> {
    let response = http_get(port, "/debug/pprof/goroutine?debug=1", Duration::from_secs(30));
    assert_eq!(response.status, 200, "pprof goroutine profile: {}", response.text());
    parse_pprof_goroutines(&response.text())
}

/// Goroutines in the groups whose frames include `function`.
pub fn goroutines_at(groups: &[GoroutineGroup], function: &str) -> u64 {
    groups
        .iter()
        .filter(|group| group.functions.iter().any(|name| name == function))
        .map(|group| group.count)
        .sum()
}

/// Asserts that `out` is a success, showing its output otherwise.
pub fn assert_success(what: &str, out: &RunOutput) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// A run of `tracer record` or `tracer snapshot` and the JSON profile it wrote, read back.
pub struct Traced {
    pub out: RunOutput,
    pub profile: crate::Profile,
}

/// `tracer record --pid PID ARGS... --output DIR/record.json` under a deadline: asserts that it
/// succeeded and said something, and reads the profile back.
pub fn record_profile(pid: u32, args: &[&str], dir: &TempDir, timeout: Duration) -> Traced {
    traced("tracer record", dir, "record.json", |json| {
        let mut args = args.to_vec();
        args.extend(["--output", json]);
        tracer_record(pid, &args, timeout)
    })
}

/// `tracer snapshot --pid PID ARGS... --output DIR/snapshot.json` under a deadline: asserts that
/// it succeeded and said something, and reads the profile back.
pub fn snapshot_profile(pid: u32, args: &[&str], dir: &TempDir, timeout: Duration) -> Traced {
    traced("tracer snapshot", dir, "snapshot.json", |json| {
        let mut args = args.to_vec();
        args.extend(["--output", json]);
        tracer_snapshot(pid, &args, timeout)
    })
}

fn traced(what: &str, dir: &TempDir, name: &str, run: impl FnOnce(&str) -> RunOutput) -> Traced {
    let json = dir.join(name);
    let out = run(json.to_str().expect("utf-8 temp path"));
    assert_success(what, &out);
    // The human report is pinned by golden files; here it only has to be there.
    assert!(!out.stdout.trim().is_empty(), "{what} printed nothing; stderr:\n{}", out.stderr);
    let profile = crate::read_profile(&json);
    Traced { out, profile }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_go_goroutine_profile() {
        let text = "goroutine profile: total 1002\n\
                    1000 @ 0x43e 0x40a 0x409 0x4a1\n\
                    #\t0x43d\truntime.gopark+0xce\t/usr/lib/go/src/runtime/proc.go:402\n\
                    #\t0x4a0\tmain.receiver+0x25\t/src/goroutines.go:101\n\
                    \n\
                    2 @ 0x43e 0x4b2\n\
                    #\t0x4b1\tmain.sendStat+0x31\t/src/goroutines.go:131\n";
        let groups = parse_pprof_goroutines(text);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].count, 1000);
        assert_eq!(groups[0].functions, ["runtime.gopark", "main.receiver"]);
        assert_eq!(goroutines_at(&groups, "main.receiver"), 1000);
        assert_eq!(goroutines_at(&groups, "main.sendStat"), 2);
        assert_eq!(goroutines_at(&groups, "main.absent"), 0);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        assert_eq!(dechunk(body).as_deref(), Some(&b"hello, world"[..]));
        assert_eq!(dechunk(b"5\r\nhel"), None);
        assert_eq!(dechunk(b"zz\r\n"), None);
    }
}
