//! The service contract end to end: real binary, real sockets, real receiver.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn readme_curl_commands_work_verbatim() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "1"]);
    let port = fwd.addr.port();
    // The two commands from the README, with the port swapped for the test's.
    let post = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            &format!("http://localhost:{port}/log"),
            "-H",
            "Content-Type: application/json",
            "-d",
            SAMPLE,
        ])
        .output()
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&post.stdout), "accepted\n201");
    let health = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://localhost:{port}/healthz"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "OK\n200");
    let records = sink.wait_delivered_records(1, SOON);
    let sent: serde_json::Value = serde_json::from_str(SAMPLE).unwrap();
    assert_eq!(records, vec![sent]);
}

#[test]
fn healthz_is_plain_ok() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &[]);
    let r = fwd.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
}

#[test]
fn a_full_batch_is_sent_at_once_in_order() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "3", "--batch-interval", "1h"]);
    for n in 1..=3 {
        assert_eq!(fwd.post(&record(n)).status, 201);
    }
    let batches = sink.wait_batches(1, SOON);
    assert_eq!(batches.len(), 1);
    assert_eq!(user_ids(&batches[0].records), vec![1, 2, 3]);
    let expected: serde_json::Value = serde_json::from_str(&record(2)).unwrap();
    assert_eq!(batches[0].records[1], expected);
    let log = fwd.proc.wait_line("msg=\"batch sent\"", SOON).text;
    assert_eq!(field(&log, "batch_size"), "3");
    assert_eq!(field(&log, "status"), "200");
    assert!(field(&log, "duration_ms").parse::<f64>().unwrap() >= 0.0);
}

#[test]
fn a_partial_batch_waits_for_the_interval() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "100", "--batch-interval", "700ms"]);
    let posted = Instant::now();
    assert_eq!(fwd.post(&record(42)).status, 201);
    let batches = sink.wait_batches(1, SOON);
    let waited = batches[0].at - posted;
    assert!(
        waited >= Duration::from_millis(690),
        "sent after {waited:?}, before the interval"
    );
    assert!(
        waited < Duration::from_millis(1700),
        "sent after {waited:?}, long past the interval"
    );
    assert_eq!(user_ids(&batches[0].records), vec![42]);
}

#[test]
fn batches_hold_exactly_the_posted_records_in_order() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "10", "--batch-interval", "300ms"]);
    for n in 1..=25 {
        fwd.post_accepted(&record(n));
    }
    let records = sink.wait_delivered_records(25, SOON);
    assert_eq!(user_ids(&records), (1..=25).collect::<Vec<_>>());
    for (n, got) in (1..=25).zip(&records) {
        let want: serde_json::Value = serde_json::from_str(&record(n)).unwrap();
        assert_eq!(got, &want);
    }
    let sizes: Vec<usize> = sink.delivered().iter().map(|b| b.records.len()).collect();
    assert!(
        sizes.iter().all(|&s| s <= 10),
        "a batch exceeded batch size: {sizes:?}"
    );
}

#[test]
fn batch_size_zero_sends_everything_waiting_by_time() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "0", "--batch-interval", "400ms"]);
    for n in 1..=30 {
        fwd.post_accepted(&record(n));
    }
    let records = sink.wait_delivered_records(30, SOON);
    assert_eq!(user_ids(&records), (1..=30).collect::<Vec<_>>());
    assert!(sink.delivered().len() <= 2, "{:?}", sink.delivered().len());
}

#[test]
fn bad_records_get_400_naming_the_problem_and_are_never_forwarded() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "1"]);
    let cases = [
        ("{not json", "malformed JSON"),
        ("", "malformed JSON"),
        (
            r#"{"user_id": "seven"}"#,
            r#"user_id: invalid type: string "seven", expected i64"#,
        ),
        (r#"{"title": "no id"}"#, "user_id: required"),
        (r#"{"user_id": 0}"#, "user_id: required"),
        (
            r#"{"user_id": 5, "meta": {"logins": [{"time": "yesterday"}]}}"#,
            "meta.logins[0].time: \"yesterday\" is not an RFC 3339 timestamp",
        ),
        (
            r#"{"user_id": 5, "completed": "yes"}"#,
            "completed: invalid type",
        ),
    ];
    for (body, want) in cases {
        let r = fwd.post(body);
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
        assert!(r.message().starts_with(want), "{body}: {:?}", r.message());
    }
    assert_eq!(fwd.post(&record(77)).status, 201);
    let records = sink.wait_delivered_records(1, SOON);
    assert_eq!(user_ids(&records), vec![77]);
    assert_eq!(sink.batches().len(), 1, "rejected records were forwarded");
}

#[test]
fn unknown_paths_and_wrong_methods() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &[]);
    let r = fwd.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.message(), "not found");
    let r = fwd.get("/log");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.message(), "method not allowed");
    let r = request(
        fwd.addr,
        "DELETE /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn bodies_over_the_limit_get_413() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--max-body-bytes", "100"]);
    let big = format!(r#"{{"user_id": 1, "title": "{}"}}"#, "x".repeat(200));
    let r = fwd.post(&big);
    assert_eq!(r.status, 413);
    assert!(r.message().contains("too large"));
    // The default limit is 1 MiB.
    let fwd = Forwarder::to(&sink, &[]);
    let big = format!(
        r#"{{"user_id": 1, "title": "{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    assert_eq!(fwd.post(&big).status, 413);
    let fits = format!(
        r#"{{"user_id": 1, "title": "{}"}}"#,
        "x".repeat(1000 * 1024)
    );
    assert_eq!(fwd.post(&fits).status, 201);
}

#[test]
fn a_full_ring_answers_503_at_once_without_queue_wait() {
    // The receiver holds the first batch for a while, so the ring fills behind it.
    let sink = Sink::start(&["--delay", "1500ms"]);
    let fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "2",
            "--batch-interval",
            "1h",
            "--queue-wait",
            "0",
        ],
    );
    // Ring capacity is 2 x 2: two in flight, two waiting, then full.
    for n in 1..=2 {
        assert_eq!(fwd.post(&record(n)).status, 201);
    }
    // The batch of 1 and 2 left for the worker before the 201 for 2 was read.
    let mut accepted = vec![1, 2];
    let mut refused = None;
    for n in 3..=10 {
        let r = fwd.post(&record(n));
        match r.status {
            201 => accepted.push(n),
            503 => {
                assert_eq!(r.header("retry-after"), Some("1"));
                assert!(r.message().contains("queue full"));
                refused = Some(n);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let refused = refused.expect("the ring never filled");
    assert_eq!(accepted.len(), 4, "ring of 4 accepted {accepted:?}");
    let records = sink.wait_delivered_records(4, SOON);
    assert_eq!(user_ids(&records), accepted);
    assert!(!user_ids(&records).contains(&refused));
}

#[test]
fn env_settings_and_every_flag_form_with_flags_winning() {
    let sink = Sink::start(&[]);
    let ep = sink.endpoint();
    let env = [
        ("WEBHOOK_POST_ENDPOINT", ep.as_str()),
        ("WEBHOOK_BATCH_SIZE", "50"),
        ("WEBHOOK_BATCH_INTERVAL", "1m30s"),
    ];
    let fwd = Forwarder::start(&[], &env);
    let startup = fwd.proc.wait_line("msg=listening", SOON).text;
    assert_eq!(field(&startup, "batch_size"), "50");
    assert_eq!(field(&startup, "batch_interval"), "1m30s");
    assert_eq!(field(&startup, "post_endpoint"), ep);
    for form in [
        &["-batch-size", "5"][..],
        &["-batch-size=5"],
        &["--batch-size=5"],
        &["--batch-size", "5"],
    ] {
        let fwd = Forwarder::start(form, &env);
        let startup = fwd.proc.wait_line("msg=listening", SOON).text;
        assert_eq!(field(&startup, "batch_size"), "5", "{form:?}");
    }
    let fwd = Forwarder::start(&["-batch-interval", "250ms", "-batch-size=2"], &env);
    let startup = fwd.proc.wait_line("msg=listening", SOON).text;
    assert_eq!(field(&startup, "batch_interval"), "250ms");
    // And the winning values are the ones in force.
    assert_eq!(fwd.post(&record(1)).status, 201);
    assert_eq!(fwd.post(&record(2)).status, 201);
    assert_eq!(user_ids(&sink.wait_delivered_records(2, SOON)), vec![1, 2]);
    // WEBHOOK_HTTP picks the listen address.
    let fwd = Forwarder::start(
        &[],
        &[
            ("WEBHOOK_POST_ENDPOINT", ep.as_str()),
            ("WEBHOOK_HTTP", "127.0.0.1:0"),
        ],
    );
    assert!(fwd.addr.ip().is_loopback());
}

#[test]
fn bad_settings_exit_2_naming_the_setting() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            &["--post-endpoint", "http://127.0.0.1:9/"],
            &[("WEBHOOK_BATCH_INTERVAL", "10 seconds")],
            r#"WEBHOOK_BATCH_INTERVAL="10 seconds" is not a Go duration"#,
        ),
        (
            &["--post-endpoint", "http://127.0.0.1:9/", "-batch-size=lots"],
            &[],
            r#"--batch-size="lots""#,
        ),
        (&[], &[], "WEBHOOK_POST_ENDPOINT"),
        (
            &[
                "--post-endpoint",
                "http://127.0.0.1:9/",
                "--batch-size=0",
                "--batch-interval=0",
            ],
            &[],
            "both 0",
        ),
        (
            &["--post-endpoint", "http://127.0.0.1:9/", "--bogus"],
            &[],
            "bogus",
        ),
    ];
    for (args, env, want) in cases {
        let mut proc = spawn_forwarder(args, env);
        let status = proc.wait_exit(SOON);
        assert_eq!(status.code(), Some(2), "{args:?} {env:?}");
        let text = proc.text();
        assert!(text.contains(want), "{args:?}: {text}");
        assert_eq!(text.lines().count(), 1, "one line expected: {text}");
    }
}

#[test]
fn help_and_version() {
    let help = Command::new(env!("CARGO_BIN_EXE_webhook-forwarder"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--post-endpoint",
        "WEBHOOK_POST_ENDPOINT",
        "--batch-size",
        "WEBHOOK_BATCH_SIZE",
        "default 10",
        "--batch-interval",
        "WEBHOOK_BATCH_INTERVAL",
        "default 10s",
        "--http",
        "WEBHOOK_HTTP",
        "default :8080",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
    let version = Command::new(env!("CARGO_BIN_EXE_webhook-forwarder"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("webhook-forwarder {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn failed_posts_are_retried_with_the_wait_between() {
    let sink = Sink::start(&["--fail-first", "2"]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "2", "--retry-wait", "300ms"]);
    assert_eq!(fwd.post(&record(1)).status, 201);
    assert_eq!(fwd.post(&record(2)).status, 201);
    let attempts = sink.wait_batches(3, SOON);
    let statuses: Vec<u16> = attempts.iter().map(|b| b.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    for pair in attempts.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(290), "retry after {gap:?}");
        assert!(gap < Duration::from_secs(3), "retry after {gap:?}");
    }
    assert!(attempts.iter().all(|b| user_ids(&b.records) == vec![1, 2]));
    fwd.proc.wait_line("msg=\"batch sent\"", SOON);
    assert_eq!(fwd.proc.count("msg=\"retrying batch\""), 2);
    // The service goes on normally afterwards.
    assert_eq!(fwd.post(&record(3)).status, 201);
    assert_eq!(fwd.post(&record(4)).status, 201);
    assert_eq!(
        user_ids(&sink.wait_delivered_records(4, SOON)),
        vec![1, 2, 3, 4]
    );
}

#[test]
fn the_process_exits_non_zero_after_the_last_retry_fails() {
    let sink = Sink::start(&["--status", "503"]);
    let mut fwd = Forwarder::to(&sink, &["--batch-size", "1", "--retry-wait", "100ms"]);
    let started = Instant::now();
    assert_eq!(fwd.post(&record(9)).status, 201);
    let status = fwd.proc.wait_exit(SOON);
    assert_eq!(status.code(), Some(3), "{}", fwd.proc.text());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "3 waits of 100ms"
    );
    assert_eq!(sink.batches().len(), 4, "1 attempt + 3 retries");
    let text = fwd.proc.text();
    assert!(
        text.contains("batch delivery failed after all retries"),
        "{text}"
    );
    assert!(text.contains("last=\"status 503\""), "{text}");
}

#[test]
fn an_unreachable_endpoint_counts_as_failure() {
    // Port 9 on loopback: nothing listens, the connection is refused.
    let mut fwd = Forwarder::start(
        &[
            "--post-endpoint",
            "http://127.0.0.1:9/",
            "--batch-size",
            "1",
            "--retry-wait",
            "50ms",
        ],
        &[],
    );
    assert_eq!(fwd.post(&record(1)).status, 201);
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(3));
    assert_eq!(fwd.proc.count("msg=\"batch post failed\""), 4);
}

#[test]
fn an_idle_service_uses_no_cpu() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &[]);
    // One request so the lazy parts are warm, then nothing.
    assert_eq!(fwd.get("/healthz").status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let before = fwd.proc.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = fwd.proc.cpu_ticks() - before;
    assert!(used <= 1, "{used} ticks of CPU in 2 s idle");
}

#[test]
fn every_request_is_logged() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &[]);
    fwd.get("/healthz");
    fwd.get("/missing");
    let line = fwd.proc.wait_line("path=/missing", SOON).text;
    assert_eq!(field(&line, "method"), "GET");
    assert_eq!(field(&line, "status"), "404");
    assert!(field(&line, "duration_us").parse::<u64>().is_ok());
    assert!(field(&line, "remote").starts_with("127.0.0.1:"));
    assert!(field(&line, "ts").ends_with('Z'));
    assert_eq!(fwd.proc.count("msg=request"), 2);
}

#[test]
fn readyz_is_200_while_serving_and_503_once_draining() {
    let sink = Sink::start(&["--delay", "1s"]);
    let mut fwd = Forwarder::to(&sink, &["--batch-size", "1"]);
    let r = fwd.get("/readyz");
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    // A batch in flight keeps the drain going while we ask again.
    assert_eq!(fwd.post(&record(1)).status, 201);
    // A request under way when the signal comes is still answered.
    let mut c = RawClient::connect(fwd.addr);
    c.send("GET /readyz HTTP/1.1\r\n");
    std::thread::sleep(Duration::from_millis(100));
    fwd.proc.signal("TERM");
    fwd.proc.wait_line("draining", SOON);
    c.send("Host: t\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.status, 503);
    assert_eq!(r.body, b"draining");
    assert!(r.closes());
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(0));
}

#[test]
fn an_answer_never_echoes_much_of_the_input() {
    // Issue 14: a 1 MiB timestamp of U+0300 came back as a 4 MB error body.
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &[]);
    let time = "\u{300}".repeat(524_000);
    let r = fwd.post(&format!(
        r#"{{"user_id": 1, "meta": {{"logins": [{{"time": "{time}"}}]}}}}"#
    ));
    assert_eq!(r.status, 400);
    assert!(r.body.len() <= 1024, "{} byte error body", r.body.len());
    assert!(
        r.message()
            .starts_with("meta.logins[0].time: \"\\u{300}\\u{300}"),
        "{}",
        r.message()
    );
}

#[test]
fn arrays_in_place_of_objects_are_refused_and_long_fractions_accepted() {
    // Issue 14: as Go does. `[7]` was accepted as user_id 7; a time with more than
    // nine fractional digits was refused.
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "1"]);
    for (body, message) in [
        ("[7]", "invalid type: sequence, expected a JSON object"),
        (
            r#"{"user_id": 7, "meta": [[{"time": "2020-08-08T01:52:50Z"}]]}"#,
            "meta: invalid type: sequence, expected a JSON object",
        ),
        (
            r#"{"user_id": 7, "meta": {"logins": [["2020-08-08T01:52:50Z"]]}}"#,
            "meta.logins[0]: invalid type: sequence, expected a JSON object",
        ),
        (
            r#"{"user_id": 7, "meta": {"phone_numbers": ["555-1212"]}}"#,
            "meta.phone_numbers: invalid type: sequence, expected a JSON object",
        ),
    ] {
        let r = fwd.post(body);
        assert_eq!((r.status, r.message()), (400, message.to_owned()), "{body}");
    }
    let time = "2020-08-08T01:52:50.123456789012Z";
    let body = format!(r#"{{"user_id": 8, "meta": {{"logins": [{{"time": "{time}"}}]}}}}"#);
    assert_eq!(fwd.post(&body).status, 201);
    let records = sink.wait_delivered_records(1, SOON);
    assert_eq!(records[0]["user_id"], 8);
    assert_eq!(records[0]["meta"]["logins"][0]["time"], time);
}

#[test]
fn a_record_that_would_be_forwarded_larger_than_the_body_limit_is_413() {
    // Issue 14: 1 MiB of `{}` logins was accepted, each forwarded as a full login, and
    // ten such records made a 140 MB POST.
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "1"]);
    let mut body = String::from(r#"{"user_id":1,"meta":{"logins":["#);
    while body.len() < 1024 * 1024 - 16 {
        body.push_str("{},");
    }
    body.push_str("{}]}}");
    let r = fwd.post(&body);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(
        r.message(),
        "record too large: forwarded with every absent field written out, it would take more than 1048576 bytes"
    );
    assert_eq!(
        metric(
            fwd.addr,
            "webhook_records_rejected_total{reason=\"too_large\"}"
        ),
        1.0
    );
    // Amplified but within the limit, and ordinary records, are accepted.
    let logins = vec!["{}"; 1000].join(",");
    fwd.post_accepted(&format!(
        r#"{{"user_id":2,"meta":{{"logins":[{logins}]}}}}"#
    ));
    fwd.post_accepted(&record(3));
    let records = sink.wait_delivered_records(2, SOON);
    assert_eq!(user_ids(&records), vec![2, 3]);
    assert_eq!(records[0]["meta"]["logins"].as_array().unwrap().len(), 1000);
}
