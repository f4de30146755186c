use super::*;
use crate::testing::check::{ParsedResponse, split_responses};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    Health,
    Log,
    Full,
    /// Answered later, through `Conn::answer_waiting`.
    Wait,
    NotFound,
    /// An answer larger than the output limit, as `/metrics` is.
    Big,
}

static BIG: [u8; 10 * 1024] = [b'b'; 10 * 1024];

/// A tiny application: /healthz, /log (echoes the body length), /full (always 503),
/// /wait (answer deferred).
#[derive(Default)]
struct App {
    bodies: Vec<Vec<u8>>,
    log: Vec<(String, String, u16)>,
    scratch: Vec<u8>,
    /// The `Authorization` value each `route` call was given.
    authorizations: Vec<Option<Vec<u8>>>,
}

impl Handler for App {
    type Route = Route;
    fn route(&mut self, method: Method, path: &str, authorization: Option<&[u8]>) -> Route {
        self.authorizations.push(authorization.map(<[u8]>::to_vec));
        match (method, path) {
            (Method::Get | Method::Head, "/healthz") => Route::Health,
            (_, "/log") => Route::Log,
            (_, "/full") => Route::Full,
            (_, "/wait") => Route::Wait,
            (Method::Get, "/big") => Route::Big,
            _ => Route::NotFound,
        }
    }
    fn early_answer(&mut self, route: Route) -> Option<Response<'_>> {
        match route {
            Route::Full => Some(Response::text(503, b"full")),
            Route::NotFound => Some(Response::text(404, b"nope")),
            _ => None,
        }
    }
    fn respond(&mut self, route: Route, body: &[u8]) -> Reply<'_> {
        match route {
            Route::Health => Response::text(200, b"OK").into(),
            Route::Log => {
                self.bodies.push(body.to_vec());
                self.scratch = format!("got {}", body.len()).into_bytes();
                Response::text(201, &self.scratch).into()
            }
            Route::Wait => {
                self.bodies.push(body.to_vec());
                Reply::Later
            }
            Route::Full => Response::text(503, b"full").into(),
            Route::NotFound => Response::text(404, b"nope").into(),
            Route::Big => Response::text(200, &BIG).into(),
        }
    }
    fn exchanged(&mut self, e: &Exchange<'_, Route>) {
        self.log
            .push((e.method.to_owned(), e.path.to_owned(), e.status));
    }
}

struct Harness {
    conn: Conn<Route>,
    app: App,
    limits: Limits,
    pool: BufferPool,
    now: Instant,
    written: Vec<u8>,
}

impl Harness {
    fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Self {
        let now = Instant::now();
        Harness {
            conn: Conn::new(now),
            app: App::default(),
            limits,
            pool: BufferPool::new(8),
            now,
            written: Vec::new(),
        }
    }

    fn io(&mut self) -> (&mut Conn<Route>, Io<'_, App>) {
        let io = Io {
            handler: &mut self.app,
            limits: &self.limits,
            pool: &mut self.pool,
            now: self.now,
            date: b"",
        };
        (&mut self.conn, io)
    }

    /// Feeds bytes, then drains the output as a socket that always accepts would.
    fn feed(&mut self, data: &[u8]) {
        let (conn, mut io) = self.io();
        conn.feed(data, &mut io);
        self.drain();
    }

    fn drain(&mut self) {
        loop {
            let out = self.conn.output().to_vec();
            if out.is_empty() {
                break;
            }
            self.written.extend_from_slice(&out);
            self.conn
                .consumed_output(out.len(), &mut self.pool, self.now);
            let (conn, mut io) = self.io();
            conn.resume(&mut io);
        }
    }

    fn responses(&self) -> Vec<ParsedResponse> {
        split_responses(&self.written, |_| false).expect("well-formed responses")
    }

    fn only_response(&self) -> ParsedResponse {
        let all = self.responses();
        assert_eq!(all.len(), 1, "{all:?}");
        all.into_iter().next().unwrap()
    }
}

const POST: &[u8] = b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"user_id\":1}";

#[test]
fn answers_healthz() {
    let mut h = Harness::new();
    h.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = h.only_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"OK");
    assert!(!r.closes());
    assert!(!h.conn.is_closing());
    assert_eq!(h.app.log, vec![("GET".into(), "/healthz".into(), 200)]);
}

#[test]
fn a_request_split_at_every_byte_boundary_gives_the_same_answer() {
    let mut whole = Harness::new();
    whole.feed(POST);
    let expected = whole.written.clone();
    assert_eq!(whole.only_response().status, 201);
    for split in 1..POST.len() {
        let mut h = Harness::new();
        h.feed(&POST[..split]);
        assert!(h.written.is_empty(), "answered early at split {split}");
        h.feed(&POST[split..]);
        assert_eq!(h.written, expected, "split at {split}");
        assert_eq!(h.app.bodies, vec![b"{\"user_id\":1}".to_vec()]);
    }
}

#[test]
fn the_router_sees_the_one_authorization_header() {
    let mut h = Harness::new();
    h.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\nauthorization:  Bearer a b \r\n\r\n");
    h.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    // Repeated, it is ambiguous: the router is told of none.
    h.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n");
    assert_eq!(
        h.app.authorizations,
        vec![Some(b"Bearer a b".to_vec()), None, None]
    );
    assert!(h.responses().iter().all(|r| r.status == 200));
}

#[test]
fn byte_by_byte_feeding_works() {
    let mut h = Harness::new();
    for b in POST {
        h.feed(std::slice::from_ref(b));
    }
    assert_eq!(h.only_response().status, 201);
}

#[test]
fn hundred_pipelined_requests_are_answered_once_each_in_order() {
    let mut input = Vec::new();
    for i in 0..100 {
        let body = format!("{{\"n\":{i}}}");
        input.extend_from_slice(
            format!(
                "POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        if i % 10 == 0 {
            input.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        }
    }
    let mut h = Harness::new();
    h.feed(&input);
    let responses = h.responses();
    assert_eq!(responses.len(), 110);
    assert_eq!(h.app.bodies.len(), 100);
    for (i, body) in h.app.bodies.iter().enumerate() {
        assert_eq!(body, format!("{{\"n\":{i}}}").as_bytes());
    }
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses[0], 201);
    assert_eq!(statuses[1], 200);
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 10);
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    let mut h = Harness::new();
    h.feed(b"POST /log HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = h.responses();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].status, 201);
    assert_eq!(h.app.bodies, vec![b"hello world".to_vec()]);
    assert_eq!(r[1].status, 200);
}

fn rejected(input: &[u8], status: u16) -> Harness {
    let mut h = Harness::new();
    h.feed(input);
    let r = h.only_response();
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(input));
    assert!(r.closes(), "{status} must close");
    assert!(h.conn.is_closing());
    let message: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON error body");
    assert!(message["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(
        h.app.bodies.is_empty(),
        "a rejected request reached the app"
    );
    h
}

#[test]
fn framing_errors_are_400_and_close() {
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    );
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        400,
    );
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        400,
    );
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
        400,
    );
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        400,
    );
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
        400,
    );
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        400,
    );
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
    );
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
    );
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    );
    rejected(b"POST /log HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    rejected(b"GET /healthz HTTP/1.1\r\n\r\n", 400);
    rejected(
        b"POST /log HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
    rejected(b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    rejected(b"GARBAGE\r\n\r\n", 400);
    rejected(b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400);
}

#[test]
fn unsupported_codings_versions_and_expectations() {
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    );
    rejected(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505);
    rejected(b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505);
    rejected(
        b"POST /log HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx",
        417,
    );
}

#[test]
fn a_coded_body_is_415_and_identity_or_no_body_is_not() {
    for coding in ["gzip", "br", "deflate", "identity, gzip", "x-anything"] {
        let head = format!(
            "POST /log HTTP/1.1\r\nHost: x\r\nContent-Encoding: {coding}\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        rejected(head.as_bytes(), 415);
    }
    for coding in ["identity", "IDENTITY", "", " identity , "] {
        let head =
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Encoding: {coding}\r\n\r\n");
        let mut h = Harness::new();
        h.feed(head.as_bytes());
        assert_eq!(h.only_response().status, 200, "{coding:?}");
    }
}

#[test]
fn head_limits_are_431() {
    let limits = Limits {
        max_head_bytes: 256,
        max_headers: 4,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits.clone());
    let mut big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 300));
    h.feed(&big); // no end of head yet: the size alone decides
    assert_eq!(h.only_response().status, 431);
    assert!(h.conn.is_closing());

    let mut h = Harness::with_limits(limits);
    h.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n");
    assert_eq!(h.only_response().status, 431);
}

#[test]
fn body_limit_is_413_before_the_body_and_as_soon_as_chunks_cross_it() {
    let limits = Limits {
        max_body_bytes: 10,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits.clone());
    h.feed(b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n");
    assert_eq!(h.only_response().status, 413);
    assert!(h.conn.is_closing());

    let mut h = Harness::with_limits(limits.clone());
    h.feed(b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789");
    assert_eq!(h.only_response().status, 201);

    let mut h = Harness::with_limits(limits);
    h.feed(b"POST /log HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n01234567\r\n");
    assert!(h.written.is_empty());
    h.feed(b"3\r\n");
    assert_eq!(h.only_response().status, 413);
    assert!(h.app.bodies.is_empty());
}

#[test]
fn expect_continue_gets_100_when_the_body_is_wanted() {
    let mut h = Harness::new();
    h.feed(b"POST /log HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(h.written, b"HTTP/1.1 100 Continue\r\n\r\n");
    h.feed(b"{}");
    let r = h.responses();
    assert_eq!(
        r.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![100, 201]
    );
    assert!(!h.conn.is_closing());
}

#[test]
fn expect_continue_gets_the_final_answer_when_it_is_known() {
    for (path, status) in [("/full", 503), ("/nowhere", 404)] {
        let mut h = Harness::new();
        h.feed(format!("POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n").as_bytes());
        let r = h.only_response();
        assert_eq!(r.status, status);
        assert!(r.closes());
        assert!(h.conn.is_closing());
    }
    let limits = Limits {
        max_body_bytes: 1,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits);
    h.feed(b"POST /log HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(h.only_response().status, 413);
}

#[test]
fn persistence_rules() {
    let cases: [(&[u8], bool, Option<&str>); 6] = [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false, None),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            true,
            Some("close"),
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, Close\r\n\r\n",
            true,
            Some("close"),
        ),
        (b"GET /healthz HTTP/1.0\r\n\r\n", true, Some("close")),
        (
            b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            false,
            Some("keep-alive"),
        ),
        (
            b"GET /healthz HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
            true,
            Some("close"),
        ),
    ];
    for (input, closes, header) in cases {
        let mut h = Harness::new();
        h.feed(input);
        let r = h.only_response();
        assert_eq!(r.status, 200);
        assert_eq!(
            h.conn.is_closing(),
            closes,
            "{}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(r.header("connection"), header);
    }
}

#[test]
fn nothing_is_produced_after_a_close() {
    let mut h = Harness::new();
    h.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(h.only_response().status, 200);
    h.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(h.responses().len(), 1);
}

#[test]
fn head_requests_get_headers_only() {
    let mut h = Harness::new();
    h.feed(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = split_responses(&h.written, |i| i == 0).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].header("content-length"), Some("2"));
    assert!(r[0].body.is_empty());
    assert_eq!(r[1].body, b"OK");
}

#[test]
fn absolute_form_and_query_strings_route_by_path() {
    let mut h = Harness::new();
    h.feed(b"GET http://example.com/healthz?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\nGET /healthz?probe HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = h.responses();
    assert_eq!(
        r.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 200]
    );
    assert_eq!(h.app.log[0].1, "/healthz");
}

#[test]
fn timeouts_follow_the_phase() {
    let limits = Limits::default();
    let mut h = Harness::new();
    let start = h.now;
    assert_eq!(
        h.conn.deadline(&limits),
        Some(start + limits.header_timeout)
    );
    h.now = start + Duration::from_secs(1);
    h.feed(b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab");
    assert_eq!(h.conn.deadline(&limits), Some(h.now + limits.body_timeout));
    h.feed(b"cde");
    assert_eq!(h.conn.deadline(&limits), Some(h.now + limits.idle_timeout));
    h.now += Duration::from_secs(2);
    h.feed(b"GET /hea");
    assert_eq!(
        h.conn.deadline(&limits),
        Some(h.now + limits.header_timeout)
    );
    let (conn, mut io) = h.io();
    conn.timed_out(&mut io);
    h.drain();
    let r = h.responses();
    assert_eq!(r.last().map(|r| r.status), Some(408));
    assert!(h.conn.is_closing());
}

#[test]
fn an_idle_timeout_closes_without_an_answer() {
    let mut h = Harness::new();
    h.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let (conn, mut io) = h.io();
    conn.timed_out(&mut io);
    h.drain();
    assert_eq!(h.responses().len(), 1);
    assert!(h.conn.is_closing());
}

#[test]
fn unread_output_stops_processing_until_it_drains() {
    let limits = Limits {
        max_pending_output: 1024,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits.clone());
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let input: Vec<u8> = request
        .iter()
        .copied()
        .cycle()
        .take(request.len() * 200)
        .collect();
    let (conn, mut io) = h.io();
    conn.feed(&input, &mut io);
    // Processing stopped just past the limit; the rest waits in the input buffer.
    assert!(h.conn.output().len() >= 1024 && h.conn.output().len() < 1024 + 200);
    assert!(!h.conn.wants_read(&limits));
    assert!(h.conn.is_stalled());
    // Input grows to a head's worth and a read at most, output to its own size.
    assert!(
        h.conn.buffered_bytes() <= limits.max_head_bytes + MIN_READ + BufferPool::OUTPUT_CAPACITY
    );
    h.drain();
    assert_eq!(h.responses().len(), 200);
    assert!(h.conn.wants_read(&limits));
}

#[test]
fn a_peer_that_does_not_read_holds_a_bounded_output_buffer() {
    // Issue F5: the buffer grew past a 64 KiB limit to 128 KiB of capacity.
    let limits = Limits::default();
    let mut h = Harness::with_limits(limits.clone());
    // A buffer a large body left in the pool must not become this output.
    let mut large = Vec::with_capacity(64 * 1024);
    large.push(0);
    h.pool.give(large);
    let health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let big = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = |route_body: &'static [u8]| {
        response::written_len_bound(&Response::text(200, route_body), false, b"")
    };
    let mut input = Vec::new();
    let mut expected = Vec::new();
    // Healthz answers up to just under the limit, then one larger than the limit.
    for round in 0..3 {
        let n = limits.max_pending_output / 40 + round;
        input.extend(health.repeat(n));
        expected.extend(std::iter::repeat_n(2, n));
        input.extend_from_slice(big);
        expected.push(BIG.len());
    }
    let (conn, mut io) = h.io();
    conn.feed(&input, &mut io);
    let bound = BufferPool::OUTPUT_CAPACITY.max(limits.max_pending_output + answer(&BIG));
    let mut stalls = 0;
    loop {
        // The peer reads nothing until the service stops producing.
        assert!(!h.conn.wants_read(&limits));
        let pending = h.conn.output().len();
        assert!(
            pending < limits.max_pending_output + answer(&BIG),
            "{pending} bytes pending"
        );
        assert!(
            h.conn.output_capacity() <= bound,
            "output capacity {} over {bound}",
            h.conn.output_capacity()
        );
        // Then it reads everything, and the service goes on.
        let out = h.conn.output().to_vec();
        h.written.extend_from_slice(&out);
        h.conn.consumed_output(out.len(), &mut h.pool, h.now);
        let (conn, mut io) = h.io();
        conn.resume(&mut io);
        stalls += 1;
        if h.conn.output().is_empty() {
            break;
        }
    }
    assert!(
        stalls > 3,
        "only {stalls} stalls: the limit was not reached"
    );
    let bodies: Vec<usize> = h.responses().iter().map(|r| r.body.len()).collect();
    assert_eq!(bodies, expected, "every answer, in order");
    assert!(h.conn.wants_read(&limits));
}

#[test]
fn half_close_after_a_request_still_answers_then_closes() {
    let mut h = Harness::new();
    h.feed(POST);
    let (conn, mut io) = h.io();
    conn.peer_closed(&mut io);
    h.drain();
    assert_eq!(h.only_response().status, 201);
    assert!(h.conn.is_closing());

    let mut h = Harness::new();
    h.feed(b"POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab");
    let (conn, mut io) = h.io();
    conn.peer_closed(&mut io);
    h.drain();
    assert!(h.written.is_empty());
    assert!(h.conn.is_closing());
    assert_eq!(h.conn.buffered_bytes(), 0);
}

#[test]
fn an_idle_connection_holds_no_buffers() {
    let mut h = Harness::new();
    h.feed(POST);
    h.feed(
        b"POST /log HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    );
    assert_eq!(h.responses().len(), 2);
    assert_eq!(h.conn.buffered_bytes(), 0);
    assert!(h.pool.pooled() > 0, "buffers went back to the pool");
    assert!(
        std::mem::size_of::<Conn<Route>>() <= 512,
        "{}",
        std::mem::size_of::<Conn<Route>>()
    );
}

#[test]
fn partial_bodies_stay_within_the_limits() {
    let limits = Limits {
        max_body_bytes: 64 * 1024,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits.clone());
    h.feed(
        format!(
            "POST /log HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            64 * 1024
        )
        .as_bytes(),
    );
    for _ in 0..63 {
        h.feed(&[b'a'; 1024]);
        assert!(h.conn.buffered_bytes() <= 2 * limits.max_body_bytes + limits.max_head_bytes);
    }
    h.feed(&[b'a'; 1024]);
    assert_eq!(h.only_response().status, 201);
    assert_eq!(h.app.bodies[0].len(), 64 * 1024);
}

#[test]
fn log_labels_are_truncated_not_allocated() {
    let mut h = Harness::new();
    let long_path = format!("/{}", "é".repeat(100));
    h.feed(format!("POST {long_path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes());
    assert_eq!(h.only_response().status, 404);
    let logged = &h.app.log[0].1;
    assert!(logged.len() <= 64 && long_path.starts_with(logged.as_str()));
}

#[test]
fn a_request_held_up_by_our_back_pressure_does_not_time_out() {
    let limits = Limits {
        max_pending_output: 512,
        ..Limits::default()
    };
    let mut h = Harness::with_limits(limits.clone());
    let start = h.now;
    let mut input = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20);
    input.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHo");
    let (conn, mut io) = h.io();
    conn.feed(&input, &mut io);
    assert!(!h.conn.wants_read(&limits));
    // While we owe output, the clock that runs is the peer's reading, not its sending.
    assert_eq!(h.conn.deadline(&limits), Some(start + limits.idle_timeout));
    h.now = start + limits.header_timeout * 3;
    h.drain();
    // Reading resumed just now: the partial head gets a full header timeout from here.
    assert_eq!(
        h.conn.deadline(&limits),
        Some(h.now + limits.header_timeout)
    );
    assert_eq!(h.responses().len(), 20);
}

#[test]
fn an_error_answer_to_head_has_no_body() {
    // Found by the http_conn fuzz target.
    let mut h = Harness::new();
    h.feed(b"HEAD /healthz HTTP/1.1\r\n\r\n");
    let r = split_responses(&h.written, |_| true).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 400);
    assert!(r[0].body.is_empty());
    assert!(h.conn.is_closing());
}

#[test]
fn a_long_malformed_head_gets_the_same_answer_however_it_is_split() {
    // Found by the http_conn fuzz target: the error lies past the head limit.
    let limits = Limits {
        max_head_bytes: 256,
        ..Limits::default()
    };
    let mut input = b"GET / HTTP/1.1\r\nX: ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 300));
    input.extend_from_slice(b"\x01\r\n\r\n");
    let mut whole = Harness::with_limits(limits.clone());
    whole.feed(&input);
    for split in [1, 17, 100, 255, 256, 257, 300] {
        let mut h = Harness::with_limits(limits.clone());
        h.feed(&input[..split]);
        h.feed(&input[split..]);
        assert_eq!(h.written, whole.written, "split at {split}");
    }
    assert_eq!(whole.only_response().status, 431);
}

#[test]
fn a_body_timeout_answers_for_the_request_it_cuts_short() {
    // Found by the http_conn fuzz target: the 408 lost the request's route and,
    // for HEAD, carried a body.
    let mut h = Harness::new();
    h.feed(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab");
    let (conn, mut io) = h.io();
    conn.timed_out(&mut io);
    h.drain();
    let r = split_responses(&h.written, |_| true).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 408);
    assert!(r[0].body.is_empty());
    assert_eq!(h.app.log, vec![("HEAD".into(), "/healthz".into(), 408)]);
}

const WAIT: &[u8] = b"POST /wait HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";

#[test]
fn a_deferred_answer_holds_the_connection_until_it_is_given() {
    let mut h = Harness::new();
    let pipelined = [WAIT, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
    h.feed(&pipelined);
    assert!(
        h.written.is_empty(),
        "nothing is answered while the first waits"
    );
    assert!(h.conn.is_waiting());
    assert!(!h.conn.wants_read(&h.limits), "nothing more is read");
    assert!(!h.conn.is_idle());
    assert_eq!(
        h.conn.deadline(&h.limits),
        None,
        "the application bounds the wait"
    );
    // A deadline sweep leaves a waiting request alone.
    let (conn, mut io) = h.io();
    conn.timed_out(&mut io);
    assert!(h.conn.is_waiting() && !h.conn.is_closing());

    h.now += Duration::from_millis(250);
    let (conn, mut io) = h.io();
    conn.answer_waiting(Response::text(201, b"accepted"), &mut io);
    h.drain();
    let statuses: Vec<u16> = h.responses().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [201, 200],
        "answered in order, then the pipelined one"
    );
    assert!(!h.conn.is_waiting());
    assert!(h.conn.wants_read(&h.limits));
    assert_eq!(h.app.bodies, [b"{}".to_vec()]);
}

#[test]
fn a_deferred_answer_can_close_the_connection() {
    let mut h = Harness::new();
    h.feed(&[WAIT, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"].concat());
    let mut refusal = Response::text(503, b"stopping");
    refusal.close = true;
    let (conn, mut io) = h.io();
    conn.answer_waiting(refusal, &mut io);
    h.drain();
    let r = h.only_response();
    assert_eq!(r.status, 503);
    assert!(r.closes());
    assert!(h.conn.is_closing());
}

#[test]
fn answering_a_connection_that_does_not_wait_does_nothing() {
    let mut h = Harness::new();
    h.feed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let (conn, mut io) = h.io();
    conn.answer_waiting(Response::text(201, b"accepted"), &mut io);
    h.drain();
    assert_eq!(h.responses().len(), 1);
}

#[test]
fn a_bare_lf_in_the_head_is_400_and_closes() {
    // httparse ends a line at a bare LF, so `Foo: bar\nTransfer-Encoding: chunked`
    // would frame the body by a header that a proxy in front reads as part of `Foo`.
    for head in [
        &b"POST /log HTTP/1.1\r\nHost: x\r\nFoo: bar\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            [..],
        b"GET /healthz HTTP/1.1\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\n",
        b"\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let h = rejected(head, 400);
        // Refused before routing: nothing of the request is trusted.
        assert_eq!(h.app.log, vec![("-".into(), "-".into(), 400)]);
    }
    // A request before it on the same connection is still answered.
    let mut h = Harness::new();
    h.feed(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\nA: b\r\n\r\n",
    );
    let statuses: Vec<u16> = h.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 400]);
    assert!(h.conn.is_closing());
}

#[test]
fn chunk_size_lines_are_bounded_per_request_by_the_head_limit() {
    let limits = Limits {
        max_head_bytes: 256,
        ..Limits::default()
    };
    let head = b"POST /log HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    // Three lines of 104 bytes, each far under the per-line limit: 312 > 256.
    let mut input = head.to_vec();
    for _ in 0..3 {
        input.extend_from_slice(b"1;");
        input.extend(std::iter::repeat_n(b'e', 100));
        input.extend_from_slice(b"\r\nx\r\n");
    }
    let mut h = Harness::with_limits(limits.clone());
    h.feed(&input);
    let r = h.only_response();
    assert_eq!(r.status, 400);
    assert!(r.closes());
    assert!(h.conn.is_closing());
    assert!(h.app.bodies.is_empty());
    assert_eq!(h.app.log, vec![("POST".into(), "/log".into(), 400)]);

    // Many small chunks within the budget are a body like any other; the budget is
    // the next request's again.
    let mut input = Vec::new();
    for _ in 0..2 {
        input.extend_from_slice(head);
        for _ in 0..50 {
            input.extend_from_slice(b"1\r\nx\r\n");
        }
        input.extend_from_slice(b"0\r\n\r\n");
    }
    let mut h = Harness::with_limits(limits);
    h.feed(&input);
    let statuses: Vec<u16> = h.responses().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![201, 201]);
    assert_eq!(h.app.bodies, vec![vec![b'x'; 50], vec![b'x'; 50]]);
}

/// The block-wise bare-LF check agrees with the plain definition: an LF at the start,
/// or after anything but CR.
#[test]
fn the_block_wise_bare_lf_check_agrees_with_the_definition() {
    fn by_definition(head: &[u8]) -> bool {
        head.first() == Some(&b'\n') || head.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r')
    }
    let alphabet = [b'\r', b'\n', b'a'];
    // Every head of up to seven bytes over CR, LF and one other byte.
    for len in 0..=7u32 {
        for mut code in 0..3usize.pow(len) {
            let head: Vec<u8> = (0..len)
                .map(|_| {
                    let b = alphabet[code % 3];
                    code /= 3;
                    b
                })
                .collect();
            assert_eq!(super::has_bare_lf(&head), by_definition(&head), "{head:?}");
        }
    }
    // Long heads, so whole 64-byte blocks and the rest after them both run.
    let mut long = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        long.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "a".repeat(i % 37)).as_bytes());
    }
    long.extend_from_slice(b"\r\n");
    assert!(!super::has_bare_lf(&long));
    let last = long.len() - 1;
    for at in [0, 1, 2, 63, 64, 65, 127, 128, last / 2, last] {
        let mut bad = long.clone();
        bad[at] = b'\n';
        if at > 0 && bad[at - 1] == b'\r' {
            continue;
        }
        assert!(super::has_bare_lf(&bad), "LF at {at}");
    }
}
