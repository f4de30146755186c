//! The proof that nothing accepted is lost: every record answered 201 ends up at the
//! receiver or in the dead-letter file, under failures, timeouts, a receiver that
//! goes away, and shutdown signals.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// What the clients were told.
#[derive(Default)]
struct Ledger {
    accepted: BTreeSet<u64>,
    refused: BTreeSet<u64>,
}

/// `clients` threads each post `per_client` uniquely numbered records on keep-alive
/// connections, reconnecting after errors and coming back after a 503.
fn drive(addr: SocketAddr, first_client: u64, clients: u64, per_client: u64) -> Ledger {
    drive_with_retries(addr, first_client, clients, per_client, 200)
}

/// As `drive`, with `retries` attempts after a 503 (0: a 503 is final).
fn drive_with_retries(
    addr: SocketAddr,
    first_client: u64,
    clients: u64,
    per_client: u64,
    retries: u32,
) -> Ledger {
    let threads: Vec<_> = (first_client..first_client + clients)
        .map(|t| {
            std::thread::spawn(move || {
                let mut ledger = Ledger::default();
                let mut conn: Option<RawClient> = None;
                for i in 0..per_client {
                    let id = t * 1_000_000 + i + 1;
                    let mut retries_left = retries;
                    'record: loop {
                        if conn.is_none() {
                            // The service is gone (it exited): the rest are never sent.
                            let Some(fresh) = RawClient::try_connect(addr) else {
                                break;
                            };
                            conn = Some(fresh);
                        }
                        let Some(client) = conn.as_mut() else { break };
                        use std::io::Write;
                        if client
                            .stream
                            .write_all(post_log(&record(id)).as_bytes())
                            .is_err()
                        {
                            conn = None;
                            if retries_left == 0 {
                                break;
                            }
                            retries_left -= 1;
                            continue;
                        }
                        match client.try_response(false) {
                            Some(r) if r.status == 201 => {
                                ledger.accepted.insert(id);
                            }
                            Some(r) => {
                                if r.header("connection") == Some("close") {
                                    conn = None;
                                }
                                // Like a real client, come back after a queue-full answer;
                                // the record counts as refused only if never accepted.
                                if r.status == 503 && retries_left > 0 {
                                    retries_left -= 1;
                                    std::thread::sleep(Duration::from_millis(5));
                                    continue 'record;
                                }
                                ledger.refused.insert(id);
                            }
                            None => conn = None, // no answer: neither accepted nor refused
                        }
                        break;
                    }
                }
                ledger
            })
        })
        .collect();
    let mut all = Ledger::default();
    for t in threads {
        let l = t.join().unwrap();
        all.accepted.extend(l.accepted);
        all.refused.extend(l.refused);
    }
    all
}

/// Checks the ledger against what arrived and what was dead-lettered.
/// `timed_out_posts` counts POST attempts the forwarder gave up on for a timeout:
/// the receiver may have taken those, which is the only way a record may arrive twice.
fn reconcile(ledger: &Ledger, batches: &[Batch], dead: &[u64], timed_out_posts: usize) {
    // A retry sends the very same batch again, so duplicates must come as whole
    // batches with identical contents; a record in two different batches is a bug.
    let mut arrivals_by_batch: BTreeMap<Vec<u64>, usize> = BTreeMap::new();
    for batch in batches.iter().filter(|b| b.status == 200) {
        *arrivals_by_batch
            .entry(user_ids(&batch.records))
            .or_default() += 1;
    }
    let mut batch_of: BTreeMap<u64, &Vec<u64>> = BTreeMap::new();
    for ids in arrivals_by_batch.keys() {
        for id in ids {
            if let Some(other) = batch_of.insert(*id, ids) {
                panic!("record {id} arrived in two different batches: {other:?} and {ids:?}");
            }
        }
    }
    let dead_set: BTreeSet<u64> = dead.iter().copied().collect();
    assert_eq!(
        dead_set.len(),
        dead.len(),
        "a record was dead-lettered twice"
    );
    for id in &ledger.accepted {
        assert!(
            batch_of.contains_key(id) || dead_set.contains(id),
            "record {id} got 201 but was neither delivered nor dead-lettered"
        );
    }
    for id in &ledger.refused {
        assert!(
            !batch_of.contains_key(id) && !dead_set.contains(id),
            "record {id} was refused but still forwarded"
        );
    }
    for id in batch_of.keys() {
        assert!(
            ledger.accepted.contains(id),
            "record {id} arrived but its client never saw a 201"
        );
    }
    // Every extra arrival, and every record both delivered and dead-lettered, needs a
    // timed-out attempt of its batch to explain it.
    let extra: usize = arrivals_by_batch
        .iter()
        .map(|(ids, &count)| count - 1 + usize::from(ids.iter().any(|id| dead_set.contains(id))))
        .sum();
    assert!(
        extra <= timed_out_posts,
        "{extra} repeated deliveries but only {timed_out_posts} timed-out posts to explain them"
    );
}

fn timed_out_posts(fwd: &Forwarder) -> usize {
    fwd.proc
        .lines()
        .iter()
        .filter(|l| l.text.contains("msg=\"batch post failed\"") && l.text.contains("imeout"))
        .count()
}

#[test]
fn faults_a_vanishing_receiver_and_sigterm_lose_nothing_and_replay_restores_all() {
    let dead = temp_path("accounting.ndjson");
    let dead_arg = dead.to_str().unwrap().to_owned();
    let mut sink = Sink::start(&["--fail-every", "5", "--slow-every", "7", "--delay", "400ms"]);
    let mut fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "25",
            "--batch-interval",
            "50ms",
            "--post-timeout",
            "200ms",
            "--retry-wait",
            "20ms",
            "--dead-letter",
            &dead_arg,
        ],
    );
    let ledger = drive(fwd.addr, 0, 4, 500);
    assert!(
        ledger.accepted.len() > 1000,
        "only {} accepted",
        ledger.accepted.len()
    );
    // Keep records waiting, then take the receiver away for good and stop the forwarder.
    let late = drive(fwd.addr, 4, 1, 30);
    sink.proc.kill();
    let batches_seen = sink.batches();
    fwd.proc.signal("TERM");
    let status = fwd.proc.wait_exit(SOON);
    assert!(
        matches!(status.code(), Some(0) | Some(3)),
        "exit {status:?}\n{}",
        fwd.proc.text()
    );
    let mut all = ledger;
    all.accepted.extend(late.accepted);
    all.refused.extend(late.refused);
    let dead_ids = dead_letter_ids(&dead);
    reconcile(&all, &batches_seen, &dead_ids, timed_out_posts(&fwd));
    let repeated = batches_seen
        .iter()
        .filter(|b| b.status == 200 && b.delayed)
        .count();
    assert!(
        repeated > 0,
        "the receiver never held a batch past the timeout: the test proves less than it claims"
    );
    let stopped = fwd.proc.wait_line("msg=stopped", SOON).text;
    assert_eq!(field(&stopped, "dead_lettered"), dead_ids.len().to_string());

    // Replay the dead letters into a healthy receiver: now it holds every accepted record.
    let healthy = Sink::start(&[]);
    let mut replayer = Forwarder::to(
        &healthy,
        &[
            "--batch-size",
            "50",
            "--replay",
            &dead_arg,
            "--dead-letter",
            &dead_arg,
        ],
    );
    let replayed = healthy.wait_delivered_records(dead_ids.len(), SOON);
    let mut holds: BTreeSet<u64> = user_ids(&replayed).into_iter().collect();
    for b in batches_seen.iter().filter(|b| b.status == 200) {
        holds.extend(user_ids(&b.records));
    }
    let missing: Vec<&u64> = all
        .accepted
        .iter()
        .filter(|id| !holds.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "after replay, still missing {missing:?}"
    );
    replayer.proc.wait_line("replay complete", SOON);
    assert!(!dead.exists(), "the replayed file was not renamed");
    // A second replay of the same path finds nothing to send.
    replayer.proc.signal("TERM");
    assert_eq!(replayer.proc.wait_exit(SOON).code(), Some(0));
    let again = Forwarder::to(&healthy, &["--replay", &dead_arg]);
    again.proc.wait_line("nothing to replay", SOON);
}

#[test]
fn a_receiver_down_from_the_start_loses_nothing() {
    let dead = temp_path("down.ndjson");
    // Nothing listens on port 9 of loopback.
    let mut fwd = Forwarder::start(
        &[
            "--post-endpoint",
            "http://127.0.0.1:9/",
            "--batch-size",
            "20",
            "--batch-interval",
            "50ms",
            "--retry-wait",
            "20ms",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
        &[],
    );
    let ledger = drive(fwd.addr, 0, 3, 200);
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(3));
    assert!(!ledger.accepted.is_empty());
    reconcile(&ledger, &[], &dead_letter_ids(&dead), 0);
}

#[test]
fn sigterm_during_a_post_waits_for_it_then_sends_the_rest() {
    let sink = Sink::start(&["--delay", "700ms"]);
    let mut fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "5",
            "--batch-interval",
            "1h",
            "--post-timeout",
            "5s",
        ],
    );
    for n in 1..=8 {
        assert_eq!(fwd.post(&record(n)).status, 201);
    }
    // A request whose head is in but whose body is not, and one with half a head.
    let mut under_way = RawClient::connect(fwd.addr);
    let body = record(9);
    under_way.send(format!(
        "POST /log HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..10]
    ));
    let mut late = RawClient::connect(fwd.addr);
    late.send("POST /log HTTP/1.1\r\nHost: t\r\nContent-Le");
    let mut idle = RawClient::connect(fwd.addr);
    idle.send(HEALTH);
    assert_eq!(idle.response(false).status, 200);
    assert_eq!(metric(fwd.addr, "webhook_batch_in_flight"), 1.0);

    fwd.proc.signal("TERM");
    fwd.proc.wait_line("signal received: draining", SOON);
    assert!(
        idle.closed_within(SOON),
        "idle keep-alive connections are closed at once"
    );
    assert!(
        std::net::TcpStream::connect(fwd.addr).is_err(),
        "new connections are refused while draining"
    );
    under_way.send(&body[10..]);
    let r = under_way.response(false);
    assert_eq!(
        (r.status, r.header("connection")),
        (201, Some("close")),
        "a request under way is still served"
    );
    late.send(format!("ngth: {}\r\n\r\n{body}", body.len()));
    let r = late.response(false);
    assert_eq!(
        (r.status, r.header("connection")),
        (503, Some("close")),
        "a request begun after the signal is refused"
    );

    let status = fwd.proc.wait_exit(SOON);
    assert_eq!(status.code(), Some(0), "{}", fwd.proc.text());
    assert_eq!(
        user_ids(&sink.delivered_records()),
        (1..=9).collect::<Vec<_>>()
    );
    let stopped = fwd.proc.wait_line("msg=stopped", SOON).text;
    assert_eq!(field(&stopped, "delivered"), "9");
    assert_eq!(field(&stopped, "dead_lettered"), "0");
    assert_eq!(field(&stopped, "exit_status"), "0");
    assert_eq!(field(&stopped, "reason"), "drained");
}

#[test]
fn a_second_signal_abandons_the_drain_and_dead_letters_the_rest() {
    let dead = temp_path("forced.ndjson");
    let sink = Sink::start(&["--status", "500"]);
    let mut fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "2",
            "--batch-interval",
            "1h",
            "--retry-wait",
            "5s",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
    );
    for n in 1..=3 {
        assert_eq!(fwd.post(&record(n)).status, 201);
    }
    sink.wait_batches(1, SOON);
    fwd.proc.signal("TERM");
    fwd.proc.wait_line("signal received: draining", SOON);
    let started = std::time::Instant::now();
    fwd.proc.signal("TERM");
    let status = fwd.proc.wait_exit(SOON);
    assert_eq!(status.code(), Some(4), "{}", fwd.proc.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the retry wait was not cut short"
    );
    let stopped = fwd.proc.wait_line("msg=stopped", SOON).text;
    assert_eq!(field(&stopped, "exit_status"), "4");
    assert_eq!(field(&stopped, "reason"), "second signal");
    let mut ids = dead_letter_ids(&dead);
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
}

#[test]
fn an_unwritable_dead_letter_path_sends_records_to_stderr() {
    let sink = Sink::start(&["--status", "500"]);
    let mut fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "1",
            "--retry-wait",
            "10ms",
            "--dead-letter",
            "/nonexistent/dir/dead.ndjson",
        ],
    );
    assert_eq!(fwd.post(&record(77)).status, 201);
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(3));
    let stopped = fwd.proc.wait_line("msg=stopped", SOON).text;
    assert_eq!(field(&stopped, "exit_status"), "3");
    assert_eq!(field(&stopped, "reason"), "delivery failed after retries");
    let text = fwd.proc.text();
    assert!(text.contains("cannot write the dead-letter file"), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("{\"user_id\":77"))
        .unwrap_or_else(|| panic!("record not on stderr:\n{text}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["user_id"], 77);
}

#[test]
fn replay_reports_bad_lines_and_keeps_them() {
    let path = temp_path("replay-bad.ndjson");
    std::fs::write(
        &path,
        format!(
            "{}\nthis is not a record\n{}\n",
            record(1).replace('\n', ""),
            record(2)
        ),
    )
    .unwrap();
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--replay", path.to_str().unwrap()]);
    let line = fwd.proc.wait_line("line not valid", SOON).text;
    assert_eq!(field(&line, "line"), "2");
    assert_eq!(user_ids(&sink.wait_delivered_records(2, SOON)), vec![1, 2]);
    let mut rejected = path.clone().into_os_string();
    rejected.push(".rejected");
    assert_eq!(
        std::fs::read_to_string(rejected).unwrap(),
        "this is not a record\n"
    );
}

#[test]
fn a_ring_full_most_of_the_time_loses_nothing_and_forwards_no_refusal() {
    let dead = temp_path("full-ring.ndjson");
    // A receiver slower than the clients: 60 ms per batch of 5 is 83 records/s,
    // against 12 clients that post as fast as they are answered, so most wait and
    // some wait longer than --queue-wait.
    let sink = Sink::start(&["--delay", "60ms"]);
    let mut fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "5",
            "--batch-interval",
            "20ms",
            "--queue-wait",
            "50ms",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
    );
    // No retries: every 503 is final, so the refused set is what must never arrive.
    let ledger = drive_with_retries(fwd.addr, 0, 12, 25, 0);
    assert!(
        metric(fwd.addr, "webhook_requests_waited_total") > 0.0,
        "the ring never filled: the test proves less than it claims"
    );
    assert!(
        !ledger.refused.is_empty(),
        "no request ever gave up waiting"
    );
    assert!(!ledger.accepted.is_empty());
    // Stop with requests still waiting behind a full ring.
    let late = std::thread::spawn({
        let addr = fwd.addr;
        move || drive_with_retries(addr, 12, 6, 5, 0)
    });
    std::thread::sleep(Duration::from_millis(30));
    fwd.proc.signal("TERM");
    let late = late.join().unwrap();
    assert_eq!(
        fwd.proc.wait_exit(SOON).code(),
        Some(0),
        "{}",
        fwd.proc.text()
    );
    let mut all = ledger;
    all.accepted.extend(late.accepted);
    all.refused.extend(late.refused);
    let batches = sink.delivered();
    reconcile(&all, &batches, &dead_letter_ids(&dead), 0);
    let delivered: BTreeSet<u64> = batches.iter().flat_map(|b| user_ids(&b.records)).collect();
    assert_eq!(delivered, all.accepted, "a clean drain delivers every 201");
}

#[test]
fn records_the_endpoint_refuses_are_dead_lettered_once_and_the_rest_delivered() {
    let dead = temp_path("refusing.ndjson");
    // Every record whose id is a multiple of 97 is refused with 400, as an API that
    // rejects one bad record would; the batch holding it must still get through.
    let sink = Sink::start(&["--refuse-multiple-of", "97"]);
    let mut fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "20",
            "--batch-interval",
            "50ms",
            "--retry-wait",
            "20ms",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
    );
    let ledger = drive(fwd.addr, 0, 4, 300);
    fwd.proc.signal("TERM");
    assert_eq!(
        fwd.proc.wait_exit(SOON).code(),
        Some(0),
        "{}",
        fwd.proc.text()
    );
    let batches = sink.batches();
    let dead_ids = dead_letter_ids(&dead);
    reconcile(&ledger, &batches, &dead_ids, 0);
    let refused: BTreeSet<u64> = ledger
        .accepted
        .iter()
        .copied()
        .filter(|id| id % 97 == 0)
        .collect();
    assert!(
        !refused.is_empty(),
        "no record was refused: the test proves less"
    );
    assert_eq!(
        dead_ids.iter().copied().collect::<BTreeSet<u64>>(),
        refused,
        "exactly the refused records are set aside"
    );
    let delivered: BTreeSet<u64> = sink
        .delivered()
        .iter()
        .flat_map(|b| user_ids(&b.records))
        .collect();
    assert_eq!(delivered.len() + refused.len(), ledger.accepted.len());
}
