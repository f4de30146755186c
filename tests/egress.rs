//! Where batches go and what goes with them: redirects, headers, secrets in the log,
//! proxies. Each test talks to raw receivers on loopback that record what arrives.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_redirect_is_a_failed_attempt_and_nothing_reaches_the_other_host() {
    let other = Catcher::start(ANSWER_200);
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\n\r\n",
        other.url("/elsewhere")
    );
    let endpoint = Catcher::start(&redirect);
    let dead = temp_path("redirect.ndjson");
    let mut fwd = Forwarder::start(
        &[
            "--post-endpoint",
            &endpoint.url("/in"),
            "--batch-size",
            "1",
            "--retry-wait",
            "10ms",
            "--post-header",
            "X-Api-Key: k-123",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(fwd.post(&record(7)).status, 201);
    let status = fwd.proc.wait_exit(SOON);
    assert_eq!(status.code(), Some(3), "{}", fwd.proc.text());
    let tries = endpoint.caught();
    assert_eq!(tries.len(), 4, "the first attempt and 3 retries");
    assert!(
        tries
            .iter()
            .all(|t| t.request_line() == "POST /in HTTP/1.1")
    );
    assert_eq!(other.connections(), 0, "something reached the other host");
    assert_eq!(dead_letter_ids(&dead), vec![7]);
    let text = fwd.proc.text();
    assert!(text.contains("status=302"), "{text}");
    assert!(!text.contains("batch sent"), "{text}");
}

#[test]
fn an_operators_content_type_replaces_the_default() {
    let endpoint = Catcher::start(ANSWER_200);
    let fwd = Forwarder::start(
        &[
            "--post-endpoint",
            &endpoint.url("/in"),
            "--batch-size",
            "1",
            "--post-header",
            "content-type: application/vnd.batch+json",
        ],
        &[],
    );
    assert_eq!(fwd.post(&record(1)).status, 201);
    let caught = endpoint.wait_requests(1, SOON);
    assert_eq!(
        caught[0].header_values("Content-Type"),
        vec!["application/vnd.batch+json"],
        "{}",
        caught[0].head
    );
    // Without one, the default goes out once.
    let endpoint = Catcher::start(ANSWER_200);
    let fwd = Forwarder::start(
        &["--post-endpoint", &endpoint.url("/in"), "--batch-size", "1"],
        &[],
    );
    assert_eq!(fwd.post(&record(1)).status, 201);
    let caught = endpoint.wait_requests(1, SOON);
    assert_eq!(
        caught[0].header_values("content-type"),
        vec!["application/json"]
    );
}

#[test]
fn framing_and_hop_by_hop_post_headers_stop_the_start() {
    for (header, name) in [
        ("Content-Length: 5", "Content-Length"),
        ("Transfer-Encoding: chunked", "Transfer-Encoding"),
        ("Host: evil.example", "Host"),
        ("Proxy-Authorization: Basic c2VjcmV0", "Proxy-Authorization"),
    ] {
        let mut proc = spawn_forwarder(
            &[
                "--post-endpoint",
                "http://127.0.0.1:9/in",
                "--post-header",
                header,
            ],
            &[],
        );
        let status = proc.wait_exit(SOON);
        let text = proc.text();
        assert_eq!(status.code(), Some(2), "{header}: {text}");
        assert!(text.contains(name), "{text}");
        let value = header.split_once(": ").unwrap().1;
        assert!(!text.contains(value), "the value was echoed: {text}");
    }
}

#[test]
fn credentials_query_tokens_and_deep_paths_never_reach_the_log() {
    let port = closed_port();
    let endpoint = format!("http://user:secret@127.0.0.1:{port}/services/T000/B000/XXXX?token=abc");
    for proxy in ["user:pw@127.0.0.1:9", "http://user:pw@127.0.0.1:9"] {
        let mut fwd = Forwarder::start(
            &[
                "--post-endpoint",
                &endpoint,
                "--batch-size",
                "1",
                "--retry-wait",
                "10ms",
                "--log-level",
                "trace",
            ],
            &[("HTTP_PROXY", proxy)],
        );
        assert_eq!(fwd.post(&record(1)).status, 201);
        assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(3));
        let text = fwd.proc.text();
        let startup = fwd.proc.wait_line("msg=listening", SOON).text;
        assert_eq!(
            field(&startup, "post_endpoint"),
            format!("http://127.0.0.1:{port}/services/…")
        );
        assert_eq!(field(&startup, "proxy"), proxy.replace("user:pw@", ""));
        assert!(text.contains("batch post failed"), "{text}");
        for secret in ["secret", "XXXX", "abc", "pw@", ":pw", "T000", "B000"] {
            assert!(!text.contains(secret), "{secret} in the log:\n{text}");
        }
    }
}

#[test]
fn an_http_endpoint_goes_through_the_proxy_in_absolute_form() {
    let proxy = Catcher::start(ANSWER_200);
    // A name only the proxy could resolve: the service must not look it up.
    let endpoint = "http://endpoint.invalid:8080/in?k=v";
    let mut fwd = Forwarder::start(
        &["--post-endpoint", endpoint, "--batch-size", "1"],
        &[(
            "http_proxy",
            &format!("http://us%40r:p%3Aw@127.0.0.1:{}", proxy.addr.port()),
        )],
    );
    for n in 1..=2 {
        assert_eq!(fwd.post(&record(n)).status, 201);
        // One batch at a time, so both go over the one kept-alive connection.
        proxy.wait_requests(n as usize, SOON);
    }
    let caught = proxy.caught();
    assert_eq!(proxy.connections(), 1, "the connection is kept alive");
    for (n, c) in caught.iter().enumerate() {
        assert_eq!(
            c.request_line(),
            "POST http://endpoint.invalid:8080/in?k=v HTTP/1.1",
            "{}",
            c.head
        );
        assert_eq!(c.header_values("host"), vec!["endpoint.invalid:8080"]);
        // base64("us@r:p:w")
        assert_eq!(
            c.header_values("proxy-authorization"),
            vec!["Basic dXNAcjpwOnc="]
        );
        let records: Vec<serde_json::Value> = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(user_ids(&records), vec![n as u64 + 1]);
    }
    fwd.proc.signal("TERM");
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(0));
}

#[test]
fn an_https_endpoint_is_tunnelled_with_connect() {
    let proxy = Catcher::start("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    let mut fwd = Forwarder::start(
        &[
            "--post-endpoint",
            "https://endpoint.invalid/in",
            "--batch-size",
            "1",
            "--retry-wait",
            "10ms",
        ],
        &[("HTTPS_PROXY", &format!("127.0.0.1:{}", proxy.addr.port()))],
    );
    assert_eq!(fwd.post(&record(1)).status, 201);
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(3));
    let caught = proxy.caught();
    assert_eq!(caught.len(), 4);
    assert!(
        caught
            .iter()
            .all(|c| c.request_line() == "CONNECT endpoint.invalid:443 HTTP/1.1"),
        "{caught:?}"
    );
}

#[test]
fn no_proxy_takes_cidr_ranges_and_matches_labels_not_characters() {
    for (no_proxy, via_proxy) in [("127.0.0.0/8", false), (".0.0.1", true)] {
        let proxy = Catcher::start(ANSWER_200);
        let endpoint = Catcher::start(ANSWER_200);
        let fwd = Forwarder::start(
            &["--post-endpoint", &endpoint.url("/in"), "--batch-size", "1"],
            &[("HTTP_PROXY", &proxy.url("")), ("NO_PROXY", no_proxy)],
        );
        assert_eq!(fwd.post(&record(1)).status, 201);
        fwd.proc.wait_line("batch sent", SOON);
        let (used, unused) = if via_proxy {
            (&proxy, &endpoint)
        } else {
            (&endpoint, &proxy)
        };
        assert_eq!(used.caught().len(), 1, "NO_PROXY={no_proxy}");
        assert_eq!(unused.connections(), 0, "NO_PROXY={no_proxy}");
        let startup = fwd.proc.wait_line("msg=listening", SOON).text;
        let shown = field(&startup, "proxy").to_owned();
        assert_eq!(shown != "-", via_proxy, "{startup}");
    }
}

#[test]
fn a_303_is_not_followed_either() {
    // 303 would turn the POST into a bodiless GET if followed: still a failure.
    let other = Catcher::start(ANSWER_200);
    let redirect = format!(
        "HTTP/1.1 303 See Other\r\nLocation: {}\r\nContent-Length: 0\r\n\r\n",
        other.url("/")
    );
    let endpoint = Catcher::start(&redirect);
    let mut fwd = Forwarder::start(
        &[
            "--post-endpoint",
            &endpoint.url("/in"),
            "--batch-size",
            "1",
            "--retry-wait",
            "10ms",
        ],
        &[],
    );
    assert_eq!(fwd.post(&record(1)).status, 201);
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(3));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(other.connections(), 0);
}

/// Credentials in the endpoint URL go as `Authorization: Basic`, as curl sends them,
/// and never in the request line: not to the endpoint, not to a proxy.
#[test]
fn credentials_in_the_endpoint_url_are_sent_as_basic_auth_and_only_so() {
    let endpoint = Catcher::start(ANSWER_200);
    let url = endpoint
        .url("/in")
        .replace("http://", "http://us%40er:p%3Ass@");
    let mut fwd = Forwarder::start(&["--post-endpoint", &url, "--batch-size", "1"], &[]);
    assert_eq!(fwd.post(&record(1)).status, 201);
    let caught = endpoint.wait_requests(1, SOON);
    // base64("us@er:p:ss")
    assert_eq!(
        caught[0].header_values("authorization"),
        vec!["Basic dXNAZXI6cDpzcw=="],
        "{}",
        caught[0].head
    );
    assert_eq!(caught[0].request_line(), "POST /in HTTP/1.1");
    assert!(!caught[0].head.contains("us%40er"), "{}", caught[0].head);
    fwd.proc.signal("TERM");
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(0));

    // Through an HTTP proxy, in absolute form: the request line holds no userinfo.
    let proxy = Catcher::start(ANSWER_200);
    let mut fwd = Forwarder::start(
        &[
            "--post-endpoint",
            "http://user:secret@endpoint.invalid:8080/in",
            "--batch-size",
            "1",
        ],
        &[(
            "http_proxy",
            &format!("http://127.0.0.1:{}", proxy.addr.port()),
        )],
    );
    assert_eq!(fwd.post(&record(2)).status, 201);
    let caught = proxy.wait_requests(1, SOON);
    assert_eq!(
        caught[0].request_line(),
        "POST http://endpoint.invalid:8080/in HTTP/1.1"
    );
    assert_eq!(
        caught[0].header_values("authorization"),
        vec!["Basic dXNlcjpzZWNyZXQ="]
    );
    fwd.proc.signal("TERM");
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(0));

    // Credentials both ways is a settings error, not a silent choice.
    let mut both = spawn_forwarder(
        &[
            "--post-endpoint",
            "http://user:secret@127.0.0.1:9/in",
            "--post-header",
            "Authorization: Bearer t",
        ],
        &[],
    );
    assert_eq!(both.wait_exit(SOON).code(), Some(2));
    assert!(both.text().contains("drop one of them"), "{}", both.text());

    // An @ in the path (a raw / in a password puts it there) would make the log name
    // another host than the one posted to: refused, without showing the URL's secret.
    for url in [
        "http://user:s3/cr3t@127.0.0.1:9/in",
        "http://alice:s3cr?3t@127.0.0.1:9/in",
        "http://alice:s3cr#3t@127.0.0.1:9/in",
        "http://127.0.0.1:9/s3cr3t@example.invalid/in",
        "http://127.0.0.1:9?s3cr3t@example.invalid/in",
    ] {
        let mut odd = spawn_forwarder(&["--post-endpoint", url], &[]);
        assert_eq!(odd.wait_exit(SOON).code(), Some(2), "{url}");
        let text = odd.text();
        assert!(text.contains("percent-encode"), "{text}");
        assert!(!text.contains("s3cr") && !text.contains("cr3t"), "{text}");
    }
}
