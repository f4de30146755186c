//! A stderr nobody reads must not stop the service: log writes never block, and
//! what goes to stderr goes in whole lines.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_stderr_nobody_reads_does_not_stop_the_service() {
    let sink = Sink::start(&["--quiet"]);
    let (mut child, _reader, addr) = spawn_with_fifo_stderr(
        "stderr.fifo",
        &["--post-endpoint", &sink.endpoint(), "--batch-size", "50"],
        false,
    );
    let pid = child.id();
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

/// Starts the service with its stderr on a fifo of which the test holds the read
/// end (non-blocking); `nonblocking_writer` sets O_NONBLOCK on the service's side
/// too, as a parent sharing the descriptor may. Reads up to the startup line.
fn spawn_with_fifo_stderr(
    name: &str,
    args: &[&str],
    nonblocking_writer: bool,
) -> (std::process::Child, File, std::net::SocketAddr) {
    let fifo = temp_path(name);
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let mut reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open(&fifo)
        .expect("open the fifo for reading");
    let writer: File = OpenOptions::new()
        .write(true)
        .custom_flags(if nonblocking_writer {
            libc_o_nonblock()
        } else {
            0
        })
        .open(&fifo)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_webhook-forwarder"))
        .args(["--http", "127.0.0.1:0", "--log-level", "info"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .unwrap();
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
    (child, reader, addr)
}

/// Everything left in the fifo, read until the service has exited and nothing more
/// comes.
fn read_until_exit(reader: &mut File, child: &mut std::process::Child) -> String {
    let mut text = Vec::new();
    let deadline = Instant::now() + SOON * 3;
    let mut exited = false;
    loop {
        let mut buf = [0u8; 65536];
        match reader.read(&mut buf) {
            Ok(0) if exited => break,
            Ok(n) if n > 0 => text.extend_from_slice(&buf[..n]),
            _ => {
                exited = exited || child.try_wait().unwrap().is_some();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(Instant::now() < deadline, "the service did not exit");
    }
    String::from_utf8(text).expect("stderr is UTF-8")
}

fn wait_exit(child: &mut std::process::Child) -> Option<i32> {
    let deadline = Instant::now() + SOON * 3;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "the service did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line is a whole log line or a whole record: nothing spliced into another.
fn assert_whole_lines(text: &str) {
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("ts=") {
            assert!(
                line.contains(" level=") && line.contains(" msg="),
                "line {} is part of a log line: {line}",
                number + 1
            );
        } else {
            let record: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("line {} is torn ({e}): {line}", number + 1));
            assert!(record["user_id"].is_u64(), "line {}: {line}", number + 1);
        }
    }
}

/// When the endpoint refuses a record and the dead-letter file cannot be written, the
/// worker writes it to stderr. With stderr full, that waits; the loop must not wait
/// with it, and the record must come out on a line of its own once stderr is read.
#[test]
fn records_written_to_a_full_stderr_hold_up_neither_the_loop_nor_log_lines() {
    let sink = Sink::start(&["--quiet", "--refuse-user-id", "7"]);
    let (mut child, mut reader, addr) = spawn_with_fifo_stderr(
        "stderr-refused.fifo",
        &[
            "--post-endpoint",
            &sink.endpoint(),
            "--batch-size",
            "10",
            "--batch-interval",
            "1h",
            "--dead-letter",
            "/nonexistent-dir/dead-letter.ndjson",
        ],
        false,
    );
    // About 130 bytes of log per request: 1,000 fill the fifo's 64 KiB twice over.
    let mut client = RawClient::connect(addr);
    for n in 1000..2000 {
        client.send(post_log(&record(n)));
        assert_eq!(client.response(false).status, 201);
    }
    // A batch of ten, one of which the endpoint refuses: it alone is set aside.
    for n in [7, 3001, 3002, 3003, 3004, 3005, 3006, 3007, 3008, 3009] {
        client.send(post_log(&record(n)));
        assert_eq!(client.response(false).status, 201);
    }
    std::thread::sleep(Duration::from_millis(300));
    // The worker now waits for stderr with the refused record: the loop answers on,
    // and takes records while the ring has room (half of it, at this batch size).
    for n in 2000..2020 {
        let started = Instant::now();
        if n < 2005 {
            client.send(post_log(&record(n)));
            assert_eq!(client.response(false).status, 201, "request {n}");
        }
        let r = request(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the loop waited {:?} behind stderr",
            started.elapsed()
        );
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let text = read_until_exit(&mut reader, &mut child);
    assert_eq!(wait_exit(&mut child), Some(0), "{text}");
    assert_whole_lines(&text);
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("{\"user_id\":7,"))
        .collect();
    assert_eq!(refused.len(), 1, "the refused record, once, whole: {text}");
}

/// A parent may share a non-blocking stderr: a write then fails with EAGAIN when the
/// pipe is full. Records meant for stderr wait for room rather than being dropped.
#[test]
fn records_on_a_non_blocking_stderr_wait_for_room_instead_of_being_lost() {
    let sink = Sink::start(&["--quiet", "--status", "500"]);
    let (mut child, mut reader, addr) = spawn_with_fifo_stderr(
        "stderr-nonblocking.fifo",
        &[
            "--post-endpoint",
            &sink.endpoint(),
            "--batch-size",
            "100",
            "--retry-wait",
            "20ms",
            "--dead-letter",
            "/nonexistent-dir/dead-letter.ndjson",
        ],
        true,
    );
    // 100 records of over 1 KB: far more than the fifo holds.
    let title = "x".repeat(1000);
    let mut client = RawClient::connect(addr);
    for n in 1..=100u64 {
        let body = record(n).replace(&format!("record {n}"), &title);
        client.send(post_log(&body));
        assert_eq!(client.response(false).status, 201);
    }
    // The batch fails four times and the service starts writing the records to
    // stderr; nobody reads it for a while.
    std::thread::sleep(Duration::from_millis(1500));
    let text = read_until_exit(&mut reader, &mut child);
    assert_eq!(wait_exit(&mut child), Some(3), "{text}");
    assert_whole_lines(&text);
    let ids: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["user_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, (1..=100).collect::<Vec<_>>(), "{text}");
    assert!(
        text.contains("msg=stopped"),
        "the summary is written too: {text}"
    );
}

fn libc_o_nonblock() -> i32 {
    // O_NONBLOCK on Linux; the tests run only there.
    0o4000
}
