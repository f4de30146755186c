//! A full queue holds the request instead of refusing it (`--queue-wait`): real
//! binary, real receiver, real sockets.

mod common;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// Posts `record(n)` on its own connection from another thread.
fn post_in_background(addr: SocketAddr, n: u64) -> JoinHandle<(u64, Reply, Duration)> {
    std::thread::spawn(move || {
        let body = record(n);
        let started = Instant::now();
        let reply = request(
            addr,
            &format!(
                "POST /log HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        (n, reply, started.elapsed())
    })
}

/// Waits until the worker holds a batch (the receiver answers only after its delay).
fn wait_in_flight(fwd: &Forwarder) {
    wait_metric(
        fwd.addr,
        "webhook_batch_in_flight",
        1.0,
        "no batch went out",
    );
}

/// Waits until the service reports `count` requests waiting for room.
fn wait_for_waiting(fwd: &Forwarder, count: u64) {
    let what = format!("{count} requests never waited for room");
    wait_metric(fwd.addr, "webhook_requests_waiting", count as f64, &what);
}

#[test]
fn sequential_posts_wait_for_room_instead_of_being_refused() {
    let sink = Sink::start(&["--delay", "150ms"]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "3", "--batch-interval", "1h"]);
    for n in 1..=15 {
        let r = fwd.post(&record(n));
        assert_eq!(r.status, 201, "record {n}: {}", r.body);
    }
    let records = sink.wait_delivered_records(15, SOON);
    assert_eq!(user_ids(&records), (1..=15).collect::<Vec<_>>());
    assert!(metric(fwd.addr, "webhook_requests_waited_total") > 0.0);
    assert_eq!(metric(fwd.addr, "webhook_requests_wait_expired_total"), 0.0);
    let waited = fwd
        .proc
        .lines()
        .iter()
        .any(|l| l.text.contains("msg=request") && l.text.contains("waited_ms="));
    assert!(waited, "the request log says how long a request waited");
}

#[test]
fn a_request_that_finds_no_room_in_time_gets_503_after_the_wait() {
    let sink = Sink::start(&["--delay", "4s"]);
    let fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "1",
            "--batch-interval",
            "1h",
            "--queue-wait",
            "1s",
        ],
    );
    // Ring of 2: record 1 in flight (held by the receiver), record 2 waiting.
    assert_eq!(fwd.post(&record(1)).status, 201);
    wait_in_flight(&fwd);
    assert_eq!(fwd.post(&record(2)).status, 201);
    let started = Instant::now();
    let r = fwd.post(&record(3));
    let waited = started.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.message().contains("queue full"));
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "answered after {waited:?}, not after about 1 s"
    );
    assert_eq!(metric(fwd.addr, "webhook_requests_wait_expired_total"), 1.0);
    let records = sink.wait_delivered_records(2, SOON);
    assert_eq!(user_ids(&records), [1, 2], "the refused record is not sent");
}

#[test]
fn healthz_answers_at_once_while_requests_wait() {
    let sink = Sink::start(&["--delay", "1s"]);
    let fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "1",
            "--batch-interval",
            "1h",
            "--queue-wait",
            "10s",
        ],
    );
    assert_eq!(fwd.post(&record(1)).status, 201);
    wait_in_flight(&fwd);
    assert_eq!(fwd.post(&record(2)).status, 201);
    // One at a time, so that the order they wait in is known.
    let waiting: Vec<_> = (3..=5)
        .map(|n| {
            let handle = post_in_background(fwd.addr, n);
            wait_for_waiting(&fwd, n - 2);
            handle
        })
        .collect();
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(fwd.get("/healthz").status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "/healthz took {:?}",
            started.elapsed()
        );
    }
    for handle in waiting {
        let (n, reply, _) = handle.join().unwrap();
        assert_eq!(reply.status, 201, "record {n}");
    }
    let records = sink.wait_delivered_records(5, SOON);
    assert_eq!(user_ids(&records), [1, 2, 3, 4, 5], "admitted oldest first");
}

#[test]
fn sigterm_with_requests_waiting_answers_and_delivers_them_all() {
    let sink = Sink::start(&["--delay", "400ms"]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "1", "--batch-interval", "1h"]);
    let mut fwd = fwd;
    assert_eq!(fwd.post(&record(1)).status, 201);
    wait_in_flight(&fwd);
    assert_eq!(fwd.post(&record(2)).status, 201);
    let waiting: Vec<_> = (3..=6).map(|n| post_in_background(fwd.addr, n)).collect();
    wait_for_waiting(&fwd, 4);
    fwd.proc.signal("TERM");
    for handle in waiting {
        let (n, reply, _) = handle.join().unwrap();
        assert_eq!(reply.status, 201, "record {n}: {}", reply.body);
        assert_eq!(reply.header("connection"), Some("close"));
    }
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(0));
    let records = sink.wait_delivered_records(6, SOON);
    let mut ids = user_ids(&records);
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6], "each delivered once");
}

#[test]
fn a_failed_delivery_refuses_the_waiting_requests_and_dead_letters_only_the_201s() {
    let dead_letter = temp_path("backpressure-dead-letter.ndjson");
    let sink = Sink::start(&["--status", "500", "--delay", "200ms"]);
    let dl = dead_letter.to_str().unwrap();
    let mut fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "1",
            "--batch-interval",
            "1h",
            "--retry-wait",
            "300ms",
            "--queue-wait",
            "30s",
            "--dead-letter",
            dl,
        ],
    );
    assert_eq!(fwd.post(&record(1)).status, 201);
    wait_in_flight(&fwd);
    assert_eq!(fwd.post(&record(2)).status, 201);
    let waiting: Vec<_> = (3..=5).map(|n| post_in_background(fwd.addr, n)).collect();
    wait_for_waiting(&fwd, 3);
    for handle in waiting {
        let (n, reply, _) = handle.join().unwrap();
        assert_eq!(reply.status, 503, "record {n} must not be accepted");
    }
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(3));
    let text = std::fs::read_to_string(&dead_letter).expect("dead-letter file");
    let ids: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["user_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, [1, 2], "exactly the records answered 201");
    assert!(sink.delivered_records().is_empty());
}

#[test]
fn queue_wait_is_a_go_duration_checked_at_start() {
    let mut proc = spawn_forwarder(
        &[
            "--post-endpoint",
            "http://127.0.0.1:9/x",
            "--queue-wait",
            "soon",
        ],
        &[],
    );
    assert_eq!(proc.wait_exit(SOON).code(), Some(2));
    assert!(
        proc.text().contains("--queue-wait=\"soon\""),
        "{}",
        proc.text()
    );
    let mut proc = spawn_forwarder(
        &[
            "--post-endpoint",
            "http://127.0.0.1:9/x",
            "--http",
            "127.0.0.1:0",
        ],
        &[("WEBHOOK_QUEUE_WAIT", "-1s")],
    );
    assert_eq!(proc.wait_exit(SOON).code(), Some(2));
    assert!(
        proc.text().contains("WEBHOOK_QUEUE_WAIT"),
        "{}",
        proc.text()
    );
}
