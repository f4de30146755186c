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
