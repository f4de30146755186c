//! The inbound bearer token over real sockets: who gets in, what stays open, and that
//! the token never reaches the log.

mod common;

use std::process::Command;

use common::*;

const TOKEN: &str = "t0ken-Zq8vXw3-secret";

fn post_with(fwd: &Forwarder, authorization: Option<&str>, body: &str) -> Reply {
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    request(
        fwd.addr,
        &format!(
            "POST /log HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn get_with(fwd: &Forwarder, path: &str, authorization: Option<&str>) -> Reply {
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    request(
        fwd.addr,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"),
    )
}

fn assert_unauthorized(r: &Reply, message: &str) {
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.message(), message);
}

#[test]
fn log_and_metrics_need_the_token_probes_do_not() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "1",
            "--auth-token",
            TOKEN,
            "--log-level",
            "debug",
        ],
    );
    let startup = fwd.proc.wait_line("msg=listening", SOON).text;
    assert_eq!(field(&startup, "auth"), "bearer");

    let missing = "a bearer token is required: Authorization: Bearer <token>";
    assert_unauthorized(&post_with(&fwd, None, SAMPLE), missing);
    assert_unauthorized(
        &post_with(&fwd, Some(&format!("Basic {TOKEN}")), SAMPLE),
        missing,
    );
    let wrong = &format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    assert_unauthorized(&post_with(&fwd, Some(wrong), SAMPLE), "wrong bearer token");
    // Refused before decoding: a broken body still gets 401, not 400.
    assert_unauthorized(
        &post_with(&fwd, Some("Bearer nope"), "{broken"),
        "wrong bearer token",
    );

    let right = format!("Bearer {TOKEN}");
    let r = post_with(&fwd, Some(&right), SAMPLE);
    assert_eq!((r.status, r.body.as_str()), (201, "accepted"));
    let records = sink.wait_delivered_records(1, SOON);
    assert_eq!(
        records[0],
        serde_json::from_str::<serde_json::Value>(SAMPLE).unwrap()
    );

    // A real client, the way an operator would send it.
    let curl = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
        .arg(format!("http://{}/log", fwd.addr))
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-H", "Content-Type: application/json", "-d", SAMPLE])
        .output()
        .expect("curl is installed");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "accepted\n201");

    for path in ["/healthz", "/readyz"] {
        let r = get_with(&fwd, path, None);
        assert_eq!((r.status, r.body.as_str()), (200, "OK"), "{path}");
        assert_eq!(get_with(&fwd, path, Some("Bearer nope")).status, 200);
    }
    assert_eq!(get_with(&fwd, "/nowhere", None).status, 404);

    assert_unauthorized(&get_with(&fwd, "/metrics", None), missing);
    let r = get_with(&fwd, "/metrics", Some(&right));
    assert_eq!(r.status, 200);
    for line in [
        "webhook_unauthorized_requests_total{route=\"/log\"} 4",
        "webhook_unauthorized_requests_total{route=\"/metrics\"} 1",
        "webhook_http_requests_total{route=\"/log\",code=\"401\"} 4",
        "webhook_records_rejected_total{reason=\"malformed\"} 0",
        "webhook_records_accepted_total 2",
    ] {
        assert!(
            r.body.lines().any(|l| l == line),
            "no {line} in\n{}",
            r.body
        );
    }

    fwd.proc.signal("TERM");
    let mut fwd = fwd;
    fwd.proc.wait_exit(SOON);
    let log = fwd.proc.text();
    assert!(log.contains("status=401"), "{log}");
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
    assert!(
        !log.contains(&TOKEN[..TOKEN.len() - 1]),
        "a wrong token is in the log"
    );
}

#[test]
fn a_wrong_token_with_expect_100_continue_gets_401_at_once() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--auth-token", TOKEN]);
    let mut client = RawClient::connect(fwd.addr);
    client.send(
        "POST /log HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer nope\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n",
    );
    let r = client.response(false);
    assert_eq!(r.status, 401, "no 100 Continue, no waiting for the body");
    assert!(client.closed_within(SOON));
    // With the token the body is wanted.
    let mut client = RawClient::connect(fwd.addr);
    client.send(format!(
        "POST /log HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        SAMPLE.len()
    ));
    assert_eq!(client.response(false).status, 100);
    client.send(SAMPLE);
    assert_eq!(client.response(false).status, 201);
}

#[test]
fn the_token_can_come_from_a_file() {
    let sink = Sink::start(&["--quiet"]);
    let path = temp_path("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    let fwd = Forwarder::start(
        &["--post-endpoint", &sink.endpoint()],
        &[("WEBHOOK_AUTH_TOKEN_FILE", path.to_str().unwrap())],
    );
    assert_eq!(post_with(&fwd, None, SAMPLE).status, 401);
    // The file's trailing newline is not part of the token.
    assert_eq!(
        post_with(&fwd, Some(&format!("Bearer {TOKEN}")), SAMPLE).status,
        201
    );
    assert_eq!(get_with(&fwd, "/healthz", None).status, 200);
    assert!(!fwd.proc.text().contains(TOKEN));
}

#[test]
fn a_bad_token_setting_stops_the_start_without_showing_it() {
    let path = temp_path("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    let file = path.to_str().unwrap();
    let empty = temp_path("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let missing = temp_path("no-such-token");
    /// Flags, environment, and what stderr must say.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 4] = [
        (
            &["--auth-token", TOKEN],
            &[("WEBHOOK_AUTH_TOKEN_FILE", file)],
            "--auth-token and WEBHOOK_AUTH_TOKEN_FILE are both set",
        ),
        (
            &["--auth-token-file", empty.to_str().unwrap()],
            &[],
            "the token in --auth-token-file is empty",
        ),
        (
            &["--auth-token-file", missing.to_str().unwrap()],
            &[],
            "cannot be read",
        ),
        (&["--auth-token="], &[], "--auth-token is empty"),
    ];
    for (args, env, says) in cases {
        let mut all = vec!["--post-endpoint", "http://127.0.0.1:9/x"];
        all.extend_from_slice(args);
        let mut proc = spawn_forwarder(&all, env);
        let status = proc.wait_exit(SOON);
        assert_eq!(status.code(), Some(2), "{args:?}");
        let stderr = proc.text();
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains(TOKEN), "{stderr}");
    }
}
