//! A stderr nobody reads must not stop the service: log writes never block.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_stderr_nobody_reads_does_not_stop_the_service() {
    let fifo = temp_path("stderr.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // Our end stays open and is read only for the startup line, then never again.
    let mut reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open(&fifo)
        .expect("open the fifo for reading");
    let writer: File = OpenOptions::new().write(true).open(&fifo).unwrap();
    let sink = Sink::start(&["--quiet"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhook-forwarder"))
        .args(["--http", "127.0.0.1:0", "--post-endpoint", &sink.endpoint()])
        .args(["--batch-size", "50", "--log-level", "info"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut seen = String::new();
    let deadline = Instant::now() + SOON;
    let addr = loop {
        let mut buf = [0u8; 4096];
        if let Ok(n) = reader.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        if let Some(line) = seen.lines().find(|l| l.contains("msg=listening")) {
            break field(line, "listen")
                .parse::<std::net::SocketAddr>()
                .unwrap();
        }
        assert!(Instant::now() < deadline, "no startup line: {seen}");
        std::thread::sleep(Duration::from_millis(10));
    };
    // Each request logs a line of about 130 bytes: 10,000 of them are far more than
    // the fifo's 64 KiB and the service's 1 MiB backlog; nobody drains the fifo now.
    let started = Instant::now();
    let mut client = RawClient::connect(addr);
    for n in 1..=10_000 {
        client.send(post_log(&record(n)));
        let r = client.response(false);
        assert_eq!(r.status, 201, "request {n}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "requests slowed to a crawl"
    );
    let r = request(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(metric(addr, "webhook_log_lines_dropped_total") > 0.0);
    // Signals are handled all the while.
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + SOON;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM not handled");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    // Every record was still delivered: 200 batches of 50.
    let deadline = Instant::now() + SOON;
    while sink.proc.count("batch records=50 status=200") < 200 {
        assert!(Instant::now() < deadline, "not every batch arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn libc_o_nonblock() -> i32 {
    // O_NONBLOCK on Linux; the tests run only there.
    0o4000
}
