//! Memory stays bounded whatever clients send, and goes back after a burst.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const MIB: usize = 1024 * 1024;

/// `clients` connections that each announce a 1 MiB body and send `sent` bytes of
/// it, as far as the socket takes them without blocking, then stall.
fn slow_large_bodies(addr: SocketAddr, clients: usize, sent: usize) -> Vec<TcpStream> {
    let head = format!(
        "POST /log HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        MIB
    );
    let mut body = br#"{"user_id": 1, "title": ""#.to_vec();
    body.resize(sent, b'x');
    (0..clients)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream.write_all(head.as_bytes()).unwrap();
            stream.set_nonblocking(true).unwrap();
            let mut at = 0;
            while at < body.len() {
                match stream.write(&body[at..]) {
                    Ok(n) => at += n,
                    Err(_) => break, // the socket is full: the service holds back
                }
            }
            stream
        })
        .collect()
}

fn wait_rss_below(fwd: &Forwarder, kib: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let rss = fwd.proc.rss_kib();
        if rss < kib || Instant::now() >= deadline {
            return rss;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn slow_large_bodies_are_held_to_the_global_budget_and_small_records_still_pass() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(
        &sink,
        &["--batch-size", "1", "--max-buffered-bytes", "4194304"],
    );
    let idle = fwd.proc.rss_kib();
    // 300 clients each sending 512 KiB of a 1 MiB body: 150 MiB if all were read.
    let stalled = slow_large_bodies(fwd.addr, 300, 512 * 1024);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let r = fwd.post(&record(7));
    assert_eq!(r.status, 201);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "an ordinary record waited {:?} behind slow large bodies",
        started.elapsed()
    );
    let rss = fwd.proc.rss_kib();
    // The budget (4 MiB) plus a read's worth per connection, with a generous margin.
    assert!(
        rss < idle + 48 * 1024,
        "RSS grew from {idle} KiB to {rss} KiB with 300 slow bodies pending"
    );
    assert_eq!(user_ids(&sink.wait_delivered_records(1, SOON)), [7]);
    drop(stalled);
}

#[test]
fn memory_goes_back_after_bursts_and_does_not_ratchet() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    let idle = fwd.proc.rss_kib();
    let mut after = Vec::new();
    for _round in 0..4 {
        let stalled = slow_large_bodies(fwd.addr, 200, 512 * 1024);
        std::thread::sleep(Duration::from_millis(500));
        drop(stalled);
        after.push(wait_rss_below(
            &fwd,
            idle + 16 * 1024,
            Duration::from_secs(10),
        ));
    }
    for (round, rss) in after.iter().enumerate() {
        assert!(
            *rss < idle + 16 * 1024,
            "round {round}: RSS {rss} KiB did not come back near idle ({idle} KiB): {after:?}"
        );
    }
}

#[test]
fn a_burst_of_connections_waits_in_the_kernel_instead_of_being_reset() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &[]);
    let pid = fwd.proc.pid().to_string();
    // Stopped, the service accepts nothing: every connection must wait in the
    // backlog. The standard library's backlog of 128 would refuse most of them.
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status();
    assert!(stop.unwrap().success());
    let mut established = Vec::new();
    for _ in 0..1000 {
        match TcpStream::connect_timeout(&fwd.addr, Duration::from_millis(200)) {
            Ok(stream) => established.push(stream),
            Err(_) => break,
        }
    }
    let cont = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    assert!(cont.unwrap().success());
    assert_eq!(
        established.len(),
        1000,
        "connections beyond the backlog were dropped"
    );
    drop(established);
    assert_eq!(fwd.get("/healthz").status, 200);
}

/// Answers of `route` and `code` so far, from `/metrics`.
fn answered(addr: SocketAddr, route: &str, code: u16) -> f64 {
    metric(
        addr,
        &format!("webhook_http_requests_total{{route=\"{route}\",code=\"{code}\"}}"),
    )
}

#[test]
fn pipelining_clients_that_never_read_hold_a_bounded_amount_and_get_every_answer() {
    // Issue F5: each such connection held a 64 KiB output limit grown to 128 KiB.
    const CLIENTS: usize = 100;
    // 7 MB of answers: more than the kernel buffers for a socket that is not read.
    const METRICS: usize = 800;
    const HEALTH: usize = 2000;
    const MAX_HEAD: usize = 16 * 1024;
    const BUDGET: usize = MIB;
    let port = closed_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Warnings only: a line per request would fill the log buffer and the pipe.
    let proc = spawn_forwarder(
        &[
            "--http",
            &addr.to_string(),
            "--post-endpoint",
            &format!("http://127.0.0.1:{}/in", closed_port()),
            "--max-connections",
            "1000",
            "--max-buffered-bytes",
            &BUDGET.to_string(),
            "--log-level",
            "warn",
        ],
        &[],
    );
    let deadline = Instant::now() + SOON;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the service did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let idle = proc.rss_kib();
    // /metrics answers (the largest) fill the kernel's buffers; the healthz answers
    // behind them are what the service must hold back.
    let mut requests = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(METRICS);
    requests.extend(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".repeat(HEALTH));
    let mut clients: Vec<(RawClient, usize)> = (0..CLIENTS)
        .map(|_| {
            let c = RawClient::connect(addr);
            c.stream.set_nonblocking(true).unwrap();
            (c, 0)
        })
        .collect();
    let deadline = Instant::now() + SOON;
    while clients.iter().any(|(_, sent)| *sent < requests.len()) {
        assert!(
            Instant::now() < deadline,
            "the service stopped reading requests"
        );
        for (c, sent) in &mut clients {
            if let Ok(n) = c.stream.write(&requests[*sent..]) {
                *sent += n;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Every connection stalls once its unread answers reach the limit: the count of
    // answers stops moving. (Only healthz: reading /metrics is an answer too.)
    let deadline = Instant::now() + SOON;
    let mut last = -1.0;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = answered(addr, "/healthz", 200);
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline, "answers kept coming: {now}");
        last = now;
    }
    let healthz = last as usize;
    assert!(
        healthz < CLIENTS * HEALTH / 2,
        "{healthz} of {} answers produced: too few connections stalled to test the bound",
        CLIENTS * HEALTH
    );
    let rss = proc.rss_kib();
    // README's worst case: the budget, plus per connection a head and a read of
    // input, and 16 KiB of unread answers; a quarter more for the allocator.
    let formula = BUDGET + CLIENTS * (MAX_HEAD + 4096 + 16 * 1024);
    let bound = idle as usize + (formula + formula / 4) / 1024;
    assert!(
        (rss as usize) < bound,
        "RSS {rss} KiB with {CLIENTS} stalled pipelining clients, over {bound} KiB \
         (idle {idle} KiB)"
    );
    eprintln!("RSS {idle} KiB idle, {rss} KiB with {CLIENTS} stalled clients");
    // The clients read at last: every answer arrives, in order.
    for (c, _) in clients.iter_mut().take(3) {
        c.stream.set_nonblocking(false).unwrap();
        for i in 0..METRICS + HEALTH {
            let r = c.response(false);
            assert_eq!(r.status, 200, "answer {i}");
            if i < METRICS {
                assert!(r.body.starts_with(b"# HELP"), "answer {i} is not /metrics");
            } else {
                assert_eq!(r.body, b"OK", "answer {i}");
            }
        }
    }
}
