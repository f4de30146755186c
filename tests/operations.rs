//! What operators rely on: metrics, log formats, outbound headers, HTTPS trust, the probe.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Samples of a Prometheus text exposition, checked line by line as the format demands.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE repeated: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(
                rest.split_once(' ')
                    .is_some_and(|(_, help)| !help.is_empty()),
                "{line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split(',') {
                let (k, v) = pair.split_once('=').expect("label=value");
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(
                    v.starts_with('"') && v.ends_with('"') && v.len() >= 2,
                    "{line}"
                );
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("no TYPE before {line}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter without _total: {line}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "series repeated: {line}"
        );
    }
    samples
}

fn scrape(fwd: &Forwarder) -> BTreeMap<String, f64> {
    let r = fwd.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    parse_prometheus(&r.body)
}

#[test]
fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let sink = Sink::start(&["--fail-first", "1"]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "2", "--retry-wait", "10ms"]);
    let before = scrape(&fwd);
    assert_eq!(before["webhook_records_accepted_total"], 0.0);
    assert_eq!(before["webhook_open_connections"], 1.0);
    assert!(before["process_start_time_seconds"] > 1.7e9);
    assert_eq!(before["webhook_queue_capacity"], 4.0);
    let version = format!(
        "webhook_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(before[&version], 1.0);
    // The usual process figures, from /proc, with values that make sense.
    let open = before["process_open_fds"];
    assert!((3.0..100.0).contains(&open), "{open}");
    assert!(before["process_max_fds"] >= open);
    assert!(before["process_resident_memory_bytes"] > 1e6);
    assert!(before["process_cpu_seconds_total"] >= 0.0);
    // Known routes and codes are there before their first request.
    for series in [
        "webhook_http_requests_total{route=\"/log\",code=\"201\"}",
        "webhook_http_requests_total{route=\"/log\",code=\"400\"}",
        "webhook_http_requests_total{route=\"/healthz\",code=\"200\"}",
        "webhook_http_requests_total{route=\"other\",code=\"404\"}",
        "webhook_request_body_bytes_total",
        "webhook_batch_body_bytes_total",
        "webhook_last_delivery_timestamp_seconds",
    ] {
        assert_eq!(before[series], 0.0, "{series}");
    }

    let bodies = [
        record(1),
        "{broken".to_owned(),
        r#"{"user_id": "x"}"#.to_owned(),
    ];
    assert_eq!(fwd.post(&bodies[0]).status, 201);
    assert_eq!(fwd.post(&bodies[1]).status, 400);
    assert_eq!(fwd.post(&bodies[2]).status, 400);
    assert_eq!(fwd.get("/missing").status, 404);
    let m = scrape(&fwd);
    assert_eq!(m["webhook_records_queued"], 1.0);
    assert_eq!(m["webhook_records_accepted_total"], 1.0);
    assert_eq!(
        m["webhook_records_rejected_total{reason=\"malformed\"}"],
        1.0
    );
    assert_eq!(m["webhook_records_rejected_total{reason=\"invalid\"}"], 1.0);
    assert_eq!(
        m["webhook_http_requests_total{route=\"/log\",code=\"201\"}"],
        1.0
    );
    assert_eq!(
        m["webhook_http_requests_total{route=\"/log\",code=\"400\"}"],
        2.0
    );
    assert_eq!(
        m["webhook_http_requests_total{route=\"other\",code=\"404\"}"],
        1.0
    );
    let received: usize = bodies.iter().map(String::len).sum();
    assert_eq!(m["webhook_request_body_bytes_total"], received as f64);

    assert_eq!(fwd.post(&record(2)).status, 201);
    sink.wait_delivered_records(2, SOON);
    let deadline = std::time::Instant::now() + SOON;
    let m = loop {
        let m = scrape(&fwd);
        if m["webhook_batches_total{result=\"delivered\"}"] == 1.0
            || std::time::Instant::now() > deadline
        {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(m["webhook_batches_total{result=\"delivered\"}"], 1.0);
    assert_eq!(m["webhook_records_forwarded_total"], 2.0);
    assert_eq!(
        m["webhook_post_attempts_total"], 2.0,
        "one failure, one success"
    );
    assert_eq!(m["webhook_post_retries_total"], 1.0);
    assert_eq!(m["webhook_post_duration_seconds_count"], 2.0);
    assert_eq!(m["webhook_post_duration_seconds_bucket{le=\"+Inf\"}"], 2.0);
    assert!(m["webhook_post_duration_seconds_sum"] > 0.0);
    let buckets: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("webhook_post_duration_seconds_bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.iter().all(|&b| b <= 2.0));
    assert_eq!(m["webhook_records_queued"], 0.0);
    assert_eq!(m["webhook_batch_in_flight"], 0.0);
    // Both attempts sent the same body, byte for byte as the receiver printed it.
    let sent = sink
        .proc
        .lines()
        .iter()
        .find_map(|l| l.text.split_once(" body=").map(|(_, body)| body.len()))
        .expect("a batch line");
    assert_eq!(m["webhook_batch_body_bytes_total"], (2 * sent) as f64);
    let last = m["webhook_last_delivery_timestamp_seconds"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        last >= before["process_start_time_seconds"] - 1.0 && last <= now,
        "{last}"
    );
}

#[test]
fn json_logs_carry_the_same_keys() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--log-format", "json", "--batch-size", "1"]);
    assert_eq!(fwd.post(&record(5)).status, 201);
    sink.wait_delivered_records(1, SOON);
    let sent = fwd.proc.wait_line("batch sent", SOON);
    let v: serde_json::Value = serde_json::from_str(&sent.text).unwrap();
    assert_eq!(v["msg"], "batch sent");
    assert_eq!(v["batch_size"], 1);
    assert_eq!(v["status"], 200);
    // The loop writes its own lines, on its own schedule: wait for the request's.
    let request = fwd.proc.wait_line("\"msg\":\"request\"", SOON);
    let v: serde_json::Value = serde_json::from_str(&request.text).unwrap();
    assert_eq!(
        (
            v["method"].as_str(),
            v["path"].as_str(),
            v["status"].as_u64()
        ),
        (Some("POST"), Some("/log"), Some(201))
    );
    assert!(v["ts"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn error_request_lines_say_why_in_the_words_of_the_answer() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--max-body-bytes", "2000"]);
    let bad = fwd.post(r#"{"user_id": "seven"}"#);
    assert_eq!(bad.status, 400);
    let long_time = "y".repeat(300);
    let long = fwd.post(&format!(
        r#"{{"user_id": 1, "meta": {{"logins": [{{"time": "{long_time}"}}]}}}}"#
    ));
    assert_eq!(long.status, 400);
    assert_eq!(fwd.get("/nowhere").status, 404);
    assert_eq!(fwd.post(&"x".repeat(3000)).status, 413);
    assert_eq!(fwd.post(&record(1)).status, 201);
    let lines = fwd.proc.wait_for("five request lines", SOON, |lines| {
        let found: Vec<String> = lines
            .iter()
            .filter(|l| l.text.contains("msg=request"))
            .map(|l| l.text.clone())
            .collect();
        (found.len() >= 5).then_some(found)
    });
    // The same words as the JSON message: quoted, escaped, after the usual keys.
    assert!(
        lines[0].ends_with(&format!(
            " reason={}",
            serde_json::to_string(&bad.message()).unwrap()
        )),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("status=400 "), "{}", lines[0]);
    // Quoted values may hold escaped quotes: read the last one as the JSON string it is.
    let reason_of = |line: &str| -> String {
        serde_json::from_str(line.rsplit_once(" reason=").expect("a reason").1).unwrap()
    };
    let cut = reason_of(&lines[1]);
    assert!(cut.starts_with("meta.logins[0].time: \"yyy"), "{cut}");
    assert!(cut.ends_with("..."), "cut and marked: {cut}");
    // 100 bytes at most, less when that would split a character, and the mark.
    assert!((98..=103).contains(&cut.len()), "{cut}");
    assert!(long.message().starts_with(&cut[..cut.len() - 3]));
    assert_eq!(field(&lines[2], "reason"), "not found");
    // A refusal by the HTTP layer carries its own words.
    assert_eq!(field(&lines[3], "reason"), "request body too large");
    assert!(
        !lines[4].contains("reason="),
        "a 201 has no reason: {}",
        lines[4]
    );
}

/// The headers of each request a `header_catcher` got, in order.
type SeenHeaders = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A receiver that records the headers of every request it gets.
fn header_catcher() -> (String, SeenHeaders) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/in", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            loop {
                let mut headers = Vec::new();
                let mut length = 0usize;
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let (name, value) = line.trim_end().split_once(':').unwrap();
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap();
                    }
                    headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
                }
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                record.lock().unwrap().push(headers);
                let _ = reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        }
    });
    (url, seen)
}

#[test]
fn post_headers_reach_the_endpoint_and_never_the_logs() {
    let (url, seen) = header_catcher();
    let secret = "Bearer s3cr3t-t0ken-value";
    let fwd = Forwarder::start(
        &[
            "--post-endpoint",
            &url,
            "--batch-size",
            "1",
            "--post-header",
            &format!("Authorization: {secret}"),
            "--log-level",
            "trace",
        ],
        &[("WEBHOOK_POST_HEADERS", "X-Ignored: because flags win")],
    );
    assert_eq!(fwd.post(&record(1)).status, 201);
    fwd.proc.wait_line("batch sent", SOON);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let headers: BTreeMap<String, String> = requests[0].iter().cloned().collect();
    assert_eq!(
        headers.get("authorization").map(String::as_str),
        Some(secret)
    );
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(!headers.contains_key("x-ignored"));
    let startup = fwd.proc.wait_line("msg=listening", SOON).text;
    assert_eq!(field(&startup, "post_headers"), "Authorization");
    assert!(
        !fwd.proc.text().contains("s3cr3t"),
        "a header value reached the log"
    );

    // From the environment, one header per line.
    let (url, seen) = header_catcher();
    let fwd = Forwarder::start(
        &["--post-endpoint", &url, "--batch-size", "1"],
        &[("WEBHOOK_POST_HEADERS", "X-Api-Key: k1,k2\nX-Team: core")],
    );
    assert_eq!(fwd.post(&record(1)).status, 201);
    fwd.proc.wait_line("batch sent", SOON);
    let headers: BTreeMap<String, String> = seen.lock().unwrap()[0].iter().cloned().collect();
    assert_eq!(headers.get("x-api-key").map(String::as_str), Some("k1,k2"));
    assert_eq!(headers.get("x-team").map(String::as_str), Some("core"));
}

#[test]
fn gzip_batches_say_so_in_content_encoding() {
    let (url, seen) = header_catcher();
    let fwd = Forwarder::start(
        &["--post-endpoint", &url, "--batch-size", "1"],
        &[("WEBHOOK_POST_COMPRESSION", "gzip")],
    );
    assert_eq!(fwd.post(&record(1)).status, 201);
    fwd.proc.wait_line("batch sent", SOON);
    let headers: BTreeMap<String, String> = seen.lock().unwrap()[0].iter().cloned().collect();
    assert_eq!(
        headers.get("content-encoding").map(String::as_str),
        Some("gzip")
    );
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
}

/// A throwaway CA and a certificate for localhost it signed, made with openssl.
fn make_test_pki(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=webhook-forwarder test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

/// An HTTPS receiver (Python's ssl module) that prints each body it gets.
fn tls_receiver(dir: &std::path::Path) -> (u16, Arc<Mutex<Vec<String>>>, std::process::Child) {
    let script = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        print("body " + body.decode(), flush=True)
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain("server.pem", "server.key")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print("port", s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 is installed");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port = first.strip_prefix("port ").unwrap().parse().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&bodies);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (port, bodies, child)
}

#[test]
fn https_endpoints_trust_the_ca_file_and_refuse_unknown_issuers() {
    let dir = temp_path("pki");
    std::fs::create_dir_all(&dir).unwrap();
    make_test_pki(&dir);
    let (port, bodies, mut receiver) = tls_receiver(&dir);
    let endpoint = format!("https://localhost:{port}/in");
    let ca = dir.join("ca.pem");
    let fwd = Forwarder::start(
        &[
            "--post-endpoint",
            &endpoint,
            "--batch-size",
            "1",
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(fwd.post(&record(42)).status, 201);
    let sent = fwd.proc.wait_line("batch sent", SOON).text;
    assert_eq!(field(&sent, "status"), "200");
    let got = bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let batch: serde_json::Value =
        serde_json::from_str(got[0].strip_prefix("body ").unwrap()).unwrap();
    assert_eq!(batch[0]["user_id"], 42);
    // More batches over the kept-alive TLS connection (head and body go out as one
    // write of TLS records).
    for n in 1..=3 {
        assert_eq!(fwd.post(&record(100 + n)).status, 201);
    }
    let deadline = std::time::Instant::now() + SOON;
    while bodies.lock().unwrap().len() < 4 {
        assert!(std::time::Instant::now() < deadline, "{}", fwd.proc.text());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        fwd.proc.count("batch post failed"),
        0,
        "{}",
        fwd.proc.text()
    );

    // Without the CA the certificate is untrusted: every attempt fails, nothing arrives.
    let mut untrusting = Forwarder::start(
        &[
            "--post-endpoint",
            &endpoint,
            "--batch-size",
            "1",
            "--retry-wait",
            "10ms",
            "--post-timeout",
            "3s",
        ],
        &[],
    );
    assert_eq!(untrusting.post(&record(43)).status, 201);
    assert_eq!(untrusting.proc.wait_exit(SOON).code(), Some(3));
    let failures = untrusting
        .proc
        .lines()
        .into_iter()
        .filter(|l| l.text.contains("msg=\"batch post failed\""))
        .collect::<Vec<_>>();
    assert_eq!(failures.len(), 4);
    assert!(
        failures[0]
            .text
            .to_ascii_lowercase()
            .contains("certificate")
            || failures[0].text.contains("UnknownIssuer"),
        "{}",
        failures[0].text
    );
    assert_eq!(bodies.lock().unwrap().len(), 4);
    let _ = receiver.kill();
    let _ = receiver.wait();
}

#[test]
fn the_probe_subcommand_checks_healthz() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &[]);
    let probe = |args: &[&str], env: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_webhook-forwarder"));
        command.arg("probe").args(args).env_remove("WEBHOOK_HTTP");
        if let Some(addr) = env {
            command.env("WEBHOOK_HTTP", addr);
        }
        command.output().unwrap()
    };
    let addr = fwd.addr.to_string();
    assert_eq!(probe(&["--http", &addr], None).status.code(), Some(0));
    assert_eq!(
        probe(&[&format!("-http=:{}", fwd.addr.port())], None)
            .status
            .code(),
        Some(0)
    );
    assert_eq!(probe(&[], Some(&addr)).status.code(), Some(0));
    // Nothing listens on port 9.
    let dead = probe(&["--http", "127.0.0.1:9"], None);
    assert_eq!(dead.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dead.stderr).contains("cannot connect"));
    // Something that is not us answers 404 for /healthz.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        }
    });
    assert_eq!(probe(&["--http", &other], None).status.code(), Some(1));
}
