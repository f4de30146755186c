//! Drives the real binaries over real loopback sockets.
//!
//! `Forwarder` and `Sink` start the built executables and collect their output lines
//! with arrival times; every wait polls with a deadline, so a slow machine makes a
//! test slower, not flaky.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const SAMPLE: &str = r#"{"user_id": 1, "total": 1.65, "title": "delectus aut autem", "meta": {"logins": [{"time": "2020-08-08T01:52:50Z", "ip": "0.0.0.0"}], "phone_numbers": {"home": "555-1212", "mobile": "123-5555"}}, "completed": false}"#;

/// A generous ceiling for anything that should happen "soon".
pub const SOON: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

type Lines = Arc<(Mutex<Vec<Line>>, Condvar)>;

/// A child process whose stdout or stderr is collected line by line.
pub struct Proc {
    child: Child,
    lines: Lines,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(mut command: Command, watch_stderr: bool) -> Proc {
        // The caller's WEBHOOK_* variables must not leak into a test.
        for (key, _) in std::env::vars() {
            if key.starts_with("WEBHOOK_") {
                command.env_remove(key);
            }
        }
        command.stdin(Stdio::null());
        if watch_stderr {
            command.stderr(Stdio::piped()).stdout(Stdio::null());
        } else {
            command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        }
        let mut child = command.spawn().expect("spawn test binary");
        let lines: Lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let reader: Box<dyn Read + Send> = if watch_stderr {
            Box::new(child.stderr.take().unwrap())
        } else {
            Box::new(child.stdout.take().unwrap())
        };
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(text) = line else { break };
                let (vec, cv) = &*sink;
                vec.lock().unwrap().push(Line {
                    at: Instant::now(),
                    text,
                });
                cv.notify_all();
            }
        });
        Proc {
            child,
            lines,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn lines(&self) -> Vec<Line> {
        self.lines.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.lines()
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `check` holds over all lines so far; panics with the output if not.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[Line]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let (vec, cv) = &*self.lines;
        let mut guard = vec.lock().unwrap();
        loop {
            if let Some(found) = check(&guard) {
                return found;
            }
            let now = Instant::now();
            if now >= deadline {
                let dump: Vec<&str> = guard.iter().map(|l| l.text.as_str()).collect();
                panic!(
                    "timed out waiting for {what}; output so far:\n{}",
                    dump.join("\n")
                );
            }
            guard = cv.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Line {
        self.wait_for(needle, timeout, |lines| {
            lines.iter().find(|l| l.text.contains(needle)).cloned()
        })
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.text.contains(needle))
            .count()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.status = Some(status);
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "process did not exit in {timeout:?}; output:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process for good; its output stays readable.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.status = Some(status);
        }
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(50));
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Lowers the running process's limit on open files (soft and hard), below what
    /// it planned for at start: how a descriptor shortage looks from inside.
    pub fn limit_open_files(&self, n: u32) {
        let ok = Command::new("prlimit")
            .arg("--pid")
            .arg(self.pid().to_string())
            .arg(format!("--nofile={n}:{n}"))
            .status()
            .expect("prlimit (util-linux) is installed")
            .success();
        assert!(ok, "prlimit --nofile={n} failed");
    }

    /// CPU time (user + system) in clock ticks, from /proc.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The bundled receiver, on an ephemeral loopback port.
pub struct Sink {
    pub proc: Proc,
    pub addr: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Batch {
    pub at: Instant,
    pub status: u16,
    /// The sink held its answer (`--delay`), perhaps past the forwarder's timeout.
    pub delayed: bool,
    pub records: Vec<serde_json::Value>,
}

impl Sink {
    pub fn start(args: &[&str]) -> Sink {
        let mut command = Command::new(env!("CARGO_BIN_EXE_webhook-sink"));
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        let proc = Proc::spawn(command, false);
        let line = proc.wait_line("listening on", SOON);
        let addr = line.text.rsplit(' ').next().unwrap().parse().unwrap();
        Sink { proc, addr }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    pub fn batches(&self) -> Vec<Batch> {
        self.proc.lines().iter().filter_map(parse_batch).collect()
    }

    /// Batches answered with 2xx, i.e. delivered.
    pub fn delivered(&self) -> Vec<Batch> {
        self.batches()
            .into_iter()
            .filter(|b| (200..300).contains(&b.status))
            .collect()
    }

    pub fn delivered_records(&self) -> Vec<serde_json::Value> {
        self.delivered()
            .into_iter()
            .flat_map(|b| b.records)
            .collect()
    }

    pub fn wait_delivered_records(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        self.proc
            .wait_for(&format!("{count} delivered records"), timeout, |lines| {
                let records: Vec<serde_json::Value> = lines
                    .iter()
                    .filter_map(parse_batch)
                    .filter(|b| b.status < 300)
                    .flat_map(|b| b.records)
                    .collect();
                (records.len() >= count).then_some(records)
            })
    }

    pub fn wait_batches(&self, count: usize, timeout: Duration) -> Vec<Batch> {
        self.proc
            .wait_for(&format!("{count} batches"), timeout, |lines| {
                let batches: Vec<Batch> = lines.iter().filter_map(parse_batch).collect();
                (batches.len() >= count).then_some(batches)
            })
    }
}

fn parse_batch(line: &Line) -> Option<Batch> {
    let rest = line.text.strip_prefix("batch records=")?;
    let status_at = rest.find("status=")? + "status=".len();
    let status = rest[status_at..status_at + 3].parse().ok()?;
    let delayed = rest.contains(" delayed=true ");
    let body = &rest[rest.find("body=")? + "body=".len()..];
    Some(Batch {
        at: line.at,
        status,
        delayed,
        records: serde_json::from_str(body).ok()?,
    })
}

/// The service under test.
pub struct Forwarder {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Forwarder {
    /// Starts with `--http 127.0.0.1:0` and the given flags and environment.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Forwarder {
        Forwarder::start_limited(args, env, None)
    }

    pub fn start_limited(
        args: &[&str],
        env: &[(&str, &str)],
        max_open_files: Option<u32>,
    ) -> Forwarder {
        Forwarder::listening(spawn_forwarder_limited(args, env, max_open_files))
    }

    /// The service started some other way (see `spawn_forwarder`), once it listens.
    pub fn listening(proc: Proc) -> Forwarder {
        let line = proc.wait_for("the startup line", SOON, |lines| {
            lines
                .iter()
                .find(|l| {
                    l.text.contains("msg=listening") || l.text.contains("\"msg\":\"listening\"")
                })
                .cloned()
        });
        let addr = if line.text.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(&line.text).unwrap();
            v["listen"].as_str().unwrap().parse().unwrap()
        } else {
            field(&line.text, "listen").parse().unwrap()
        };
        Forwarder { proc, addr }
    }

    pub fn to(sink: &Sink, args: &[&str]) -> Forwarder {
        let mut all = vec!["--post-endpoint", &sink.endpoint()[..]]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        Forwarder::start(&refs, &[])
    }

    pub fn post(&self, body: &str) -> Reply {
        request(
            self.addr,
            &format!(
                "POST /log HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    /// Posts like a well-behaved client: a 503 (queue full) is retried shortly after.
    pub fn post_accepted(&self, body: &str) {
        let deadline = Instant::now() + SOON;
        loop {
            let r = self.post(body);
            match r.status {
                201 => return,
                503 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                other => panic!("POST answered {other}: {}", r.body),
            }
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        request(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
    }
}

/// Starts the forwarder without waiting for it to listen (for startup failures).
pub fn spawn_forwarder(args: &[&str], env: &[(&str, &str)]) -> Proc {
    spawn_forwarder_limited(args, env, None)
}

/// Starts the forwarder with a limit on open files, when given: soft and hard alike,
/// so the service cannot raise it.
pub fn spawn_forwarder_limited(
    args: &[&str],
    env: &[(&str, &str)],
    max_open_files: Option<u32>,
) -> Proc {
    let command = match max_open_files {
        None => Command::new(env!("CARGO_BIN_EXE_webhook-forwarder")),
        Some(n) => {
            let mut sh = Command::new("sh");
            sh.args([
                "-c",
                &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                env!("CARGO_BIN_EXE_webhook-forwarder"),
            ]);
            sh
        }
    };
    spawn_forwarder_with(command, args, env)
}

/// Starts the forwarder through `command`: the binary itself, or a launcher that ends
/// by running it with the arguments added after its own.
pub fn spawn_forwarder_with(mut command: Command, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let names_http = |a: &&str| {
        let name = a.trim_start_matches('-');
        a.starts_with('-') && (name == "http" || name.starts_with("http="))
    };
    if !args.iter().any(names_http) && !env.iter().any(|(k, _)| *k == "WEBHOOK_HTTP") {
        command.args(["--http", "127.0.0.1:0"]);
    }
    // Keep dead letters out of the source tree unless a test chooses the path.
    if !args.iter().any(|a| a.contains("dead-letter"))
        && !env.iter().any(|(k, _)| *k == "WEBHOOK_DEAD_LETTER")
    {
        command
            .arg("--dead-letter")
            .arg(temp_path("dead-letter.ndjson"));
    }
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    Proc::spawn(command, true)
}

/// A fresh path in a directory of this test process, for files a test makes.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("webhook-forwarder-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", NEXT.fetch_add(1, Ordering::SeqCst)))
}

/// The value of `key=value` in a logfmt line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = if line.starts_with(&format!("{key}=")) {
        key.len() + 1
    } else {
        line.find(&format!(" {key}="))
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            + key.len()
            + 2
    };
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        &quoted[..quoted.find('"').unwrap_or(quoted.len())]
    } else {
        rest.split(' ').next().unwrap()
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn message(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {}", self.body));
        v["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message in {}", self.body))
            .to_owned()
    }
}

/// Sends raw bytes on a fresh connection and reads one response (until close).
pub fn request(addr: SocketAddr, raw: &str) -> Reply {
    let bytes = exchange(addr, raw.as_bytes());
    let responses = webhook_forwarder::testing::check::split_responses(&bytes, |_| false)
        .expect("well-formed response");
    let r = responses
        .into_iter()
        .find(|r| r.status != 100)
        .expect("a final response");
    Reply {
        status: r.status,
        headers: r.headers,
        body: String::from_utf8_lossy(&r.body).into_owned(),
    }
}

/// Writes `raw`, then reads everything the server sends until it closes.
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// A distinct, complete record numbered `n`.
pub fn record(n: u64) -> String {
    format!(
        r#"{{"user_id": {n}, "total": 1.5, "title": "record {n}", "meta": {{"logins": [{{"time": "2020-08-08T01:52:50Z", "ip": "10.0.0.{}"}}], "phone_numbers": {{"home": "555-{n}", "mobile": "123-5555"}}}}, "completed": true}}"#,
        n % 250
    )
}

pub fn user_ids(records: &[serde_json::Value]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r["user_id"].as_u64().unwrap())
        .collect()
}

/// A raw HTTP/1.1 client on one connection, reading one response at a time.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub use webhook_forwarder::testing::check::ParsedResponse;

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        RawClient::try_connect(addr).expect("connect")
    }

    pub fn try_connect(addr: SocketAddr) -> Option<RawClient> {
        let stream = TcpStream::connect(addr).ok()?;
        stream.set_nodelay(true).ok()?;
        stream.set_read_timeout(Some(SOON)).ok()?;
        Some(RawClient {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("write");
    }

    /// Reads exactly one response (a `100 Continue` counts as one). `head_only` for HEAD.
    pub fn response(&mut self, head_only: bool) -> ParsedResponse {
        self.try_response(head_only).unwrap_or_else(|| {
            panic!(
                "connection ended before a response; got {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        })
    }

    pub fn try_response(&mut self, head_only: bool) -> Option<ParsedResponse> {
        loop {
            if let Some((response, used)) = parse_one(&self.buf, head_only) {
                self.buf.drain(..used);
                return Some(response);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// True when the server closes the connection (EOF or reset) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + timeout;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }
}

/// One complete response at the start of `buf`, and its length.
fn parse_one(buf: &[u8], head_only: bool) -> Option<(ParsedResponse, usize)> {
    webhook_forwarder::testing::check::parse_one(buf, head_only).expect("a valid response")
}

/// Reads one gauge or counter from `/metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let r = request(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", r.body))
        .parse()
        .unwrap()
}

/// Waits until a gauge or counter reaches `at_least`, failing with `what` after 10 s.
pub fn wait_metric(addr: SocketAddr, name: &str, at_least: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(addr, name) < at_least {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The user_ids of a dead-letter file's records, in file order (none if it is absent).
pub fn dead_letter_ids(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["user_id"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

pub const HEALTH: &str = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

pub fn post_log(body: &str) -> String {
    format!(
        "POST /log HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Under CI (`CI=true`), a test whose tool is missing must fail, not skip: a green run
/// that checked nothing would hide the missing install step.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// One request as a `Catcher` saw it: the head as sent, and the body.
#[derive(Clone, Debug)]
pub struct Caught {
    pub head: String,
    pub body: Vec<u8>,
}

impl Caught {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Every value of the header `name`, in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// A raw HTTP/1.1 receiver on loopback that records each request head byte for byte
/// and gives every request the same answer (keep-alive, unless the answer closes).
pub struct Catcher {
    pub addr: SocketAddr,
    caught: Arc<Mutex<Vec<Caught>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Catcher {
    pub fn start(answer: &str) -> Catcher {
        Catcher::start_closing(answer, None)
    }

    /// With `close_after`, each connection is closed that long after its first answer,
    /// without saying so in the answer: an endpoint with a short idle timeout.
    pub fn start_closing(answer: &str, close_after: Option<Duration>) -> Catcher {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let caught = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (record, count, answer) = (
            Arc::clone(&caught),
            Arc::clone(&connections),
            answer.to_owned(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (record, answer) = (Arc::clone(&record), answer.clone());
                std::thread::spawn(move || Catcher::serve(stream, &record, &answer, close_after));
            }
        });
        Catcher {
            addr,
            caught,
            connections,
        }
    }

    fn serve(
        stream: TcpStream,
        record: &Mutex<Vec<Caught>>,
        answer: &str,
        close_after: Option<Duration>,
    ) {
        let mut reader = BufReader::new(stream);
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0usize);
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            record.lock().unwrap().push(Caught { head, body });
            if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                return;
            }
            if let Some(linger) = close_after {
                std::thread::sleep(linger);
                return;
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn caught(&self) -> Vec<Caught> {
        self.caught.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` requests have come in.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Caught> {
        let deadline = Instant::now() + timeout;
        loop {
            let caught = self.caught();
            if caught.len() >= n {
                return caught;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} requests; got {caught:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub const ANSWER_200: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/// A loopback port with nothing listening on it.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Whether strace can be used here. In CI it must be (`.ci/run` installs it);
/// elsewhere a test that needs it says it was skipped.
pub fn strace_available() -> bool {
    if Command::new("strace").arg("-V").output().is_ok() {
        return true;
    }
    assert!(!in_ci(), "strace is missing; .ci/run installs it");
    eprintln!("skipped: strace is not installed");
    false
}

/// strace attached to `target` (a process, or with `-p` one thread's id), writing
/// the calls named by `args` to a file; returned once it is attached.
pub struct Strace {
    child: Child,
    pub trace: std::path::PathBuf,
}

impl Strace {
    pub fn attach(target: &str, args: &[&str], name: &str) -> Strace {
        let trace = temp_path(name);
        let child = Command::new("strace")
            .args(args)
            .arg("-o")
            .arg(&trace)
            .args(["-p", target])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace");
        // strace opens its output file first, then attaches: wait for the file, then
        // give the attach a moment.
        let deadline = Instant::now() + SOON;
        while !trace.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        Strace { child, trace }
    }

    /// Detaches and returns what was traced.
    pub fn finish(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.trace).unwrap_or_default()
    }
}
