//! Fuzz target bodies, shared by `fuzz/` (cargo fuzz, nightly) and `tests/fuzz_corpus.rs`
//! (the committed corpus replayed on stable), so a fixed crash stays fixed.

use std::time::{Duration, Instant};

use crate::duration::{format_go_duration, parse_go_duration};
use crate::http::chunked::{ChunkError, ChunkedDecoder, MAX_LINE_EXTRA, MAX_TRAILER_BYTES};
use crate::http::{
    BufferPool, Conn, Exchange, Handler, Io, Limits, Method, Refusal, Reply, Response,
};
use crate::record::{self, Rejection};
use crate::testing::check::{ParsedResponse, split_responses};

/// How a byte stream is cut into reads. Bugs in incremental parsers hide at the
/// boundaries, so the cuts come from the input and the fuzzer can steer them.
#[derive(Debug, Clone, Copy)]
struct Split {
    mode: u8,
    seed: u8,
}

impl Split {
    /// Bits of a control byte: the low three choose the piece sizes, the next two
    /// (when the target can spare them) the seed.
    fn from_bits(bits: u8) -> Split {
        Split {
            mode: bits & 7,
            seed: (bits >> 3) & 3,
        }
    }

    fn pieces(self, stream: &[u8]) -> Vec<&[u8]> {
        let largest = match self.mode {
            0 => 1,
            1 => 2,
            2 => 5,
            3 => 16,
            4 => 64,
            5 => 600,
            6 => 5000,
            _ => return line_pieces(stream),
        };
        // splitmix64: a different split for each seed and length, the same every run.
        let mut state = (u64::from(self.seed) << 32) ^ stream.len() as u64;
        let mut next = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut pieces = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            let len = (1 + (next() % largest) as usize).min(rest.len());
            let (piece, after) = rest.split_at(len);
            pieces.push(piece);
            rest = after;
        }
        pieces
    }
}

/// Cuts before every CR and after every CR or LF: the line ends are where framing
/// decisions are taken.
fn line_pieces(stream: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for i in 1..stream.len() {
        if matches!(stream[i - 1], b'\r' | b'\n') || stream[i] == b'\r' {
            pieces.push(&stream[start..i]);
            start = i;
        }
    }
    if start < stream.len() {
        pieces.push(&stream[start..]);
    }
    pieces
}

// ---------------------------------------------------------------------------------
// http_conn

/// Small, so that a fuzz input of a few kilobytes reaches every limit.
fn conn_limits() -> Limits {
    Limits {
        max_head_bytes: 1024,
        max_headers: 16,
        max_body_bytes: 4096,
        max_pending_output: 2048,
        refuse_content_coding: true,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(60),
    }
}

const DATE: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";
/// `/echo` answers with at most this much of the body, which bounds a response.
const ECHO_MAX: usize = 256;
/// Status line and every header we write, with room to spare.
const HEAD_ALLOWANCE: usize = 512;
/// Statuses the connection produces on its own, never the application.
const MACHINE_STATUSES: [u16; Refusal::ALL.len()] = {
    let mut statuses = [0; Refusal::ALL.len()];
    let mut i = 0;
    while i < statuses.len() {
        statuses[i] = Refusal::ALL[i].status;
        i += 1;
    }
    statuses
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    WrongMethod,
    Log,
    Echo,
    Close,
    Full,
    NotFound,
}

/// What the application saw and said, to check the connection's bookkeeping against.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Route {
        method: Method,
        path: String,
        route: Route,
    },
    Answer {
        status: u16,
        body: Vec<u8>,
        close: bool,
        early: bool,
    },
    Exchanged {
        route: Option<Route>,
        method: String,
        path: String,
        status: u16,
    },
}

/// Every kind of answer the real service gives (early ones, 405 with `Allow`, 503 with
/// `Retry-After`, a forced close) and bodies large enough to fill the output limit.
struct App {
    events: Vec<Event>,
    max_body: usize,
    scratch: Vec<u8>,
}

fn wrong_method() -> Response<'static> {
    let mut r = Response::text(405, b"method not allowed");
    r.allow = Some("GET, HEAD");
    r
}

fn queue_full() -> Response<'static> {
    let mut r = Response::json(503, b"{\"message\":\"queue full\"}");
    r.retry_after = Some(1);
    r
}

fn answered(events: &mut Vec<Event>, response: &Response<'_>, early: bool) {
    events.push(Event::Answer {
        status: response.status,
        body: response.body.to_vec(),
        close: response.close,
        early,
    });
}

impl Handler for App {
    type Route = Route;

    fn route(&mut self, method: Method, path: &str, _authorization: Option<&[u8]>) -> Route {
        let route = match (method, path) {
            (Method::Get | Method::Head, "/healthz") => Route::Health,
            (_, "/healthz") => Route::WrongMethod,
            (_, "/log") => Route::Log,
            (_, "/echo") => Route::Echo,
            (_, "/close") => Route::Close,
            (_, "/full") => Route::Full,
            _ => Route::NotFound,
        };
        self.events.push(Event::Route {
            method,
            path: path.to_owned(),
            route,
        });
        route
    }

    fn early_answer(&mut self, route: Route) -> Option<Response<'_>> {
        let response = match route {
            Route::WrongMethod => wrong_method(),
            Route::Full => queue_full(),
            Route::NotFound => Response::text(404, b"not found"),
            _ => return None,
        };
        answered(&mut self.events, &response, true);
        Some(response)
    }

    fn respond(&mut self, route: Route, body: &[u8]) -> Reply<'_> {
        assert!(
            body.len() <= self.max_body,
            "the application got a {} byte body over the {} byte limit",
            body.len(),
            self.max_body
        );
        match route {
            Route::Log => self.scratch = format!("got {}", body.len()).into_bytes(),
            Route::Echo => self.scratch = body[..body.len().min(ECHO_MAX)].to_vec(),
            _ => {}
        }
        let response = match route {
            Route::Health => Response::text(200, b"OK"),
            Route::WrongMethod => wrong_method(),
            Route::Log => Response::text(201, &self.scratch),
            Route::Echo => Response::text(200, &self.scratch),
            Route::Close => {
                let mut r = Response::text(200, b"bye");
                r.close = true;
                r
            }
            Route::Full => queue_full(),
            Route::NotFound => Response::text(404, b"not found"),
        };
        answered(&mut self.events, &response, false);
        response.into()
    }

    fn exchanged(&mut self, exchange: &Exchange<'_, Route>) {
        self.events.push(Event::Exchanged {
            route: exchange.route,
            method: exchange.method.to_owned(),
            path: exchange.path.to_owned(),
            status: exchange.status,
        });
    }
}

/// What the client is last seen doing once the input runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Nothing,
    TimedOut,
    PeerClosed,
    PeerClosedThenTimedOut,
}

/// A socket that takes every byte written (or, with `short_writes`, a few at a time),
/// driving the connection the way the poll loop does.
struct Harness {
    conn: Conn<Route>,
    app: App,
    limits: Limits,
    pool: BufferPool,
    start: Instant,
    now: Instant,
    written: Vec<u8>,
    short_writes: bool,
    /// What the pool hands out fresh: the smallest any buffer can be.
    fresh_capacity: usize,
    /// The largest read fed so far.
    largest_piece: usize,
}

/// Output lengths and event counts once the connection said it is closing.
struct ClosedAt {
    written: usize,
    events: usize,
}

/// One connection's whole life, for comparing two ways of feeding it.
#[derive(Debug, PartialEq)]
struct Transcript {
    written: Vec<u8>,
    events: Vec<Event>,
    closing: bool,
}

impl Harness {
    fn new(short_writes: bool) -> Harness {
        let limits = conn_limits();
        let start = Instant::now();
        let mut pool = BufferPool::new(4);
        let fresh_capacity = pool.take().capacity();
        Harness {
            conn: Conn::new(start),
            app: App {
                events: Vec::new(),
                max_body: limits.max_body_bytes,
                scratch: Vec::new(),
            },
            limits,
            pool,
            start,
            now: start,
            written: Vec::new(),
            short_writes,
            fresh_capacity,
            largest_piece: 0,
        }
    }

    fn io(&mut self) -> (&mut Conn<Route>, Io<'_, App>) {
        let io = Io {
            handler: &mut self.app,
            limits: &self.limits,
            pool: &mut self.pool,
            now: self.now,
            date: DATE,
        };
        (&mut self.conn, io)
    }

    fn drain(&mut self) {
        while !self.conn.output().is_empty() {
            let out = self.conn.output();
            let n = if self.short_writes {
                out.len().min(700)
            } else {
                out.len()
            };
            self.written.extend_from_slice(&out[..n]);
            self.conn.consumed_output(n, &mut self.pool, self.now);
            let (conn, mut io) = self.io();
            conn.resume(&mut io);
        }
        assert!(
            !self.conn.is_stalled(),
            "stalled with nothing left to write"
        );
    }

    /// The most bytes one buffer ever has to hold, then the most capacity that means.
    ///
    /// Input: a partial request (a head is cut off at `max_head_bytes`, a body is at
    /// most `max_body_bytes`) plus the newest read. Output: processing stops once it
    /// passes `max_pending_output`, which one more response can overshoot. Decoded
    /// chunked body: `max_body_bytes`. A `Vec` at most doubles past what it must hold,
    /// and the pool hands any buffer to any role, so each buffer is bounded by the
    /// largest of these, doubled, or by a fresh pool buffer.
    fn buffer_capacity_bound(&self) -> usize {
        let l = &self.limits;
        let input = l.max_head_bytes.max(l.max_body_bytes) + self.largest_piece;
        let output = l.max_pending_output + HEAD_ALLOWANCE + ECHO_MAX;
        let body = l.max_body_bytes;
        self.fresh_capacity.max(2 * input.max(output).max(body))
    }

    fn check_memory(&self, live_buffers: usize) {
        let output_bound = self.limits.max_pending_output + HEAD_ALLOWANCE + ECHO_MAX;
        assert!(
            self.conn.output().len() <= output_bound,
            "{} output bytes pending, over the {output_bound} the limit allows",
            self.conn.output().len()
        );
        let bound = live_buffers * self.buffer_capacity_bound();
        assert!(
            self.conn.buffered_bytes() <= bound,
            "{} bytes buffered, over the bound of {bound} (largest read {})",
            self.conn.buffered_bytes(),
            self.largest_piece
        );
    }

    /// Feeds the reads one by one, then the ending, checking what holds at each step.
    /// With `end_before_drain` the ending comes while the last read's answers are
    /// still unwritten, as when a read returns 0 right after data.
    fn run(mut self, pieces: &[&[u8]], ending: Ending, end_before_drain: bool) -> Transcript {
        let mut closed_at: Option<ClosedAt> = None;
        let mut closed_in_feeds = false;
        let mut ended = false;
        for (i, piece) in pieces.iter().enumerate() {
            self.now = self.start + Duration::from_millis(i as u64);
            self.largest_piece = self.largest_piece.max(piece.len());
            let (conn, mut io) = self.io();
            conn.feed(piece, &mut io);
            // Input, output and a chunked body may all be held at once.
            self.check_memory(3);
            if closed_at.is_none() && self.conn.is_closing() {
                closed_in_feeds = true;
            }
            if end_before_drain && i + 1 == pieces.len() {
                self.end(ending);
                ended = true;
            }
            self.drain();
            // Drained output is handed back to the pool.
            self.check_memory(2);
            self.check_still_closed(&closed_at);
            if closed_at.is_none() && self.conn.is_closing() {
                closed_at = Some(ClosedAt {
                    written: self.written.len(),
                    events: self.app.events.len(),
                });
            }
        }
        if !ended {
            self.end(ending);
        }
        self.check_still_closed(&closed_at);
        if self.conn.is_closing() {
            assert_eq!(
                self.conn.output().len(),
                0,
                "output left after the final drain"
            );
        }
        let transcript = Transcript {
            written: self.written,
            events: self.app.events,
            closing: self.conn.is_closing(),
        };
        check_transcript(&transcript, closed_in_feeds);
        transcript
    }

    /// The peer's read side closing and/or the deadline passing, then a full drain.
    fn end(&mut self, ending: Ending) {
        if matches!(ending, Ending::PeerClosed | Ending::PeerClosedThenTimedOut) {
            let pending = self.conn.output().len();
            let events = self.app.events.len();
            let (conn, mut io) = self.io();
            conn.peer_closed(&mut io);
            assert_eq!(
                (self.conn.output().len(), self.app.events.len()),
                (pending, events),
                "peer_closed produced output"
            );
            self.drain();
            assert!(
                self.conn.is_closing(),
                "not closing after the peer closed and all output was written"
            );
        }
        if matches!(ending, Ending::TimedOut | Ending::PeerClosedThenTimedOut) {
            let closing = self.conn.is_closing();
            let pending = self.conn.output().len();
            let head = self.interrupted_head();
            let (conn, mut io) = self.io();
            conn.timed_out(&mut io);
            assert!(self.conn.is_closing(), "not closing after a timeout");
            let added = &self.conn.output()[pending.min(self.conn.output().len())..];
            if closing {
                assert!(added.is_empty(), "timed_out after closing wrote");
            } else if !added.is_empty() {
                let r = split_responses(added, |_| head)
                    .unwrap_or_else(|e| panic!("the timeout's answer is broken: {e}"));
                assert_eq!(
                    r.iter().map(|r| r.status).collect::<Vec<_>>(),
                    vec![408],
                    "a timeout answers 408 once"
                );
            }
            self.drain();
        }
    }

    /// Whether the request a 408 would interrupt (routed, not yet answered) is HEAD.
    fn interrupted_head(&self) -> bool {
        for event in self.app.events.iter().rev() {
            match event {
                Event::Exchanged { .. } => return false,
                Event::Route { method, .. } => return *method == Method::Head,
                Event::Answer { .. } => {}
            }
        }
        false
    }

    fn check_still_closed(&self, closed_at: &Option<ClosedAt>) {
        if let Some(at) = closed_at {
            assert!(self.conn.is_closing(), "a closing connection reopened");
            assert_eq!(
                self.written.len(),
                at.written,
                "output after is_closing(): {:?}",
                String::from_utf8_lossy(&self.written[at.written..])
            );
            assert_eq!(
                self.app.events.len(),
                at.events,
                "the application was called after is_closing(): {:?}",
                &self.app.events[at.events..]
            );
        }
    }
}

fn method_of(token: &str) -> Method {
    match token {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    }
}

/// Every request answered once, in order, with a well-formed response that says what
/// the application (or the connection, for its own errors) decided.
fn check_transcript(t: &Transcript, closed_in_feeds: bool) {
    let exchanged: Vec<(&str, &str, u16)> = t
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Exchanged {
                method,
                path,
                status,
                ..
            } => Some((method.as_str(), path.as_str(), *status)),
            _ => None,
        })
        .collect();
    // An answer is to a HEAD request when the log says so or, for an error logged
    // without the request, when the request it interrupted was routed as HEAD.
    let mut head_flags = Vec::new();
    let mut routed_head = false;
    for event in &t.events {
        match event {
            Event::Route { method, .. } => routed_head = *method == Method::Head,
            Event::Exchanged { method, .. } => {
                head_flags.push(method == "HEAD" || routed_head);
                routed_head = false;
            }
            Event::Answer { .. } => {}
        }
    }
    let responses = split_responses(&t.written, |i| head_flags.get(i).copied().unwrap_or(false))
        .unwrap_or_else(|e| {
            panic!(
                "output is not well-formed responses ({e}); exchanges {exchanged:?}; output {:?}",
                String::from_utf8_lossy(&t.written)
            )
        });
    // Interim 100s precede the final answer to their request, nothing else.
    for pair in responses.windows(2) {
        assert!(
            !(pair[0].status == 100 && pair[1].status == 100),
            "two 100 Continue in a row"
        );
    }
    let finals: Vec<&ParsedResponse> = responses.iter().filter(|r| r.status != 100).collect();
    assert_eq!(
        finals.iter().map(|r| r.status).collect::<Vec<_>>(),
        exchanged.iter().map(|e| e.2).collect::<Vec<_>>(),
        "responses and logged exchanges differ"
    );
    let routes = t
        .events
        .iter()
        .filter(|e| matches!(e, Event::Route { .. }))
        .count();
    let continues = responses.len() - finals.len();
    assert!(continues <= routes, "more 100 Continue than requests");

    let mut routed: Option<(Method, &str, Route)> = None;
    let mut answer: Option<(u16, &[u8], bool)> = None;
    let mut done = false;
    let mut index = 0;
    for event in &t.events {
        assert!(
            !done,
            "the application was called after the last answer: {event:?}"
        );
        match event {
            Event::Route {
                method,
                path,
                route,
            } => {
                assert!(
                    routed.is_none(),
                    "routed a request before answering the one before"
                );
                routed = Some((*method, path, *route));
            }
            Event::Answer {
                status,
                body,
                close,
                early,
            } => {
                assert!(
                    routed.is_some() && answer.is_none(),
                    "answer without request"
                );
                answer = Some((*status, body, *close || *early));
            }
            Event::Exchanged {
                route,
                method,
                path,
                status,
            } => {
                let response = finals[index];
                let head = head_flags[index];
                let length = response.header("content-length").unwrap_or_default();
                assert!(response.header("content-type").is_some(), "no Content-Type");
                assert_eq!(
                    response.header("date").map(str::as_bytes),
                    Some(DATE),
                    "Date header"
                );
                match answer.take() {
                    Some((answered, body, must_close)) => {
                        let (routed_method, routed_path, routed_as) =
                            routed.take().expect("answered a request never routed");
                        assert_eq!(*route, Some(routed_as), "logged route");
                        assert_eq!(*status, answered, "logged status is not the answer");
                        if method.len() < 16 {
                            assert_eq!(method_of(method), routed_method, "logged method");
                        }
                        assert!(
                            path.len() <= 64 && routed_path.starts_with(path.as_str()),
                            "logged path {path:?} for {routed_path:?}"
                        );
                        assert_eq!(length, body.len().to_string(), "Content-Length");
                        if !head {
                            assert_eq!(response.body, body, "response body");
                        }
                        if must_close {
                            assert!(response.closes(), "a closing answer without close");
                        }
                    }
                    None => {
                        let expected_route = routed.take().map(|(_, _, r)| r);
                        assert_eq!(*route, expected_route, "logged route of a {status}");
                        assert!(
                            MACHINE_STATUSES.contains(status),
                            "the connection answered {status} on its own"
                        );
                        assert!(response.closes(), "an error answer keeps the connection");
                        assert!(
                            response.body.len() <= crate::http::response::MAX_ERROR_BODY,
                            "a {} byte error body",
                            response.body.len()
                        );
                        if !head {
                            let message: serde_json::Value = serde_json::from_slice(&response.body)
                                .unwrap_or_else(|e| panic!("{status} body is not JSON ({e})"));
                            assert!(
                                message["message"].as_str().is_some_and(|m| !m.is_empty()),
                                "{status} without a message"
                            );
                        }
                    }
                }
                if response.closes() {
                    done = true;
                }
                index += 1;
            }
        }
    }
    assert!(answer.is_none(), "an answer was never logged");
    if finals.last().is_some_and(|last| last.closes()) {
        assert!(t.closing, "said close but kept the connection");
    }
    if closed_in_feeds {
        assert!(
            finals.last().is_some_and(|r| r.closes()),
            "closed without saying so in the last response"
        );
    }
}

/// First byte: bits 0-1 what ends the connection, bits 2-5 how the rest is cut into
/// reads, bit 6 whether the end comes before the last answers are written, bit 7
/// whether writes are short. The rest is what the client sends.
pub fn http_conn(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let ending = match control & 3 {
        0 => Ending::Nothing,
        1 => Ending::TimedOut,
        2 => Ending::PeerClosed,
        _ => Ending::PeerClosedThenTimedOut,
    };
    let split = Split::from_bits((control >> 2) & 0x0f);
    let end_before_drain = control & 0x40 != 0;
    let short_writes = control & 0x80 != 0;
    let whole = Harness::new(short_writes).run(&[stream], ending, end_before_drain);
    let pieces = split.pieces(stream);
    let cut = Harness::new(short_writes).run(&pieces, ending, end_before_drain);
    // A deadline passing while answers wait unwritten may drop requests still queued
    // behind them; how many depends on the reads, so only then may the two differ.
    if end_before_drain && ending != Ending::Nothing && ending != Ending::PeerClosed {
        return;
    }
    if whole != cut {
        let first_difference = whole
            .written
            .iter()
            .zip(&cut.written)
            .position(|(a, b)| a != b)
            .unwrap_or(whole.written.len().min(cut.written.len()));
        panic!(
            "cutting the input into {} reads ({split:?}) changed the outcome at output byte {first_difference}:\n\
             whole: {:?}\ncut:   {:?}\nwhole events: {:?}\ncut events:   {:?}\nclosing: {} vs {}",
            pieces.len(),
            String::from_utf8_lossy(&whole.written),
            String::from_utf8_lossy(&cut.written),
            whole.events,
            cut.events,
            whole.closing,
            cut.closing,
        );
    }
}

// ---------------------------------------------------------------------------------
// record

/// What the service accepts it forwards, so the forwarded JSON must mean the same
/// record again; what it refuses, the client must be told why.
pub fn record(data: &[u8]) {
    let first = match record::decode(data) {
        Ok(record) => record,
        Err(rejection) => {
            let message = rejection.message();
            assert!(!message.trim().is_empty(), "empty rejection: {rejection:?}");
            // An error answer quotes little of the input, however large it is.
            assert!(
                message.len() <= record::MAX_MESSAGE,
                "{} byte message",
                message.len()
            );
            let mut body = Vec::new();
            crate::http::response::write_json_message(&mut body, message);
            assert!(
                body.len() <= crate::http::response::MAX_ERROR_BODY,
                "{} byte error body",
                body.len()
            );
            if let Rejection::Malformed(m) = &rejection {
                assert!(m.starts_with("malformed JSON"), "{m}");
            }
            return;
        }
    };
    assert_ne!(first.user_id, 0, "accepted a zero user_id");
    for login in &first.meta.logins {
        assert!(
            record::is_timestamp(login.time.as_str()),
            "accepted time {:?}",
            login.time.as_str()
        );
    }
    let text = serde_json::to_string(&first).expect("an accepted record serializes");
    // What batches and dead letters carry is written by hand: byte for byte serde's.
    let mut forwarded = Vec::new();
    record::write_record(&first, &mut forwarded);
    assert_eq!(
        forwarded,
        text.as_bytes(),
        "the forwarded form differs from serde_json's"
    );
    let second = record::decode(text.as_bytes())
        .unwrap_or_else(|e| panic!("the forwarded {text} is refused: {}", e.message()));
    // Bitwise: `==` would let 0.0 stand for -0.0. No NaN comes out of JSON.
    assert_eq!(
        first.total.to_bits(),
        second.total.to_bits(),
        "total {:?} came back as {:?} from {text}",
        first.total,
        second.total
    );
    assert_eq!(first, second, "the forwarded {text} decodes differently");
    let again = serde_json::to_string(&second).expect("serializes");
    assert_eq!(text, again, "forwarding twice changes the JSON");
    // Go's encoder writes every field of the struct.
    let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    for key in ["user_id", "total", "title", "meta", "completed"] {
        assert!(value.get(key).is_some(), "{key} missing from {text}");
    }
}

// ---------------------------------------------------------------------------------
// duration

/// Durations are logged in the form they are parsed from, so printing must not
/// change a value.
pub fn duration(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let nanos = match parse_go_duration(&text) {
        Ok(nanos) => nanos,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    if text.starts_with('-') {
        assert!(nanos <= 0, "{text:?} parsed to {nanos}");
    } else {
        assert!(nanos >= 0, "{text:?} parsed to {nanos}");
    }
    let printed = format_go_duration(nanos);
    assert_eq!(
        parse_go_duration(&printed),
        Ok(nanos),
        "{text:?} parsed to {nanos}, printed as {printed:?}"
    );
}

// ---------------------------------------------------------------------------------
// chunked

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkedOutcome {
    /// The body ended after this many bytes.
    Done(usize),
    /// Every byte was used and more are needed.
    NeedMore,
    Failed(ChunkError),
}

/// An independent reading of the decoder's contract, over the whole input at once:
/// RFC 9112 chunked framing with CRLF only, sizes of at most 15 hex digits, optional
/// spaces or tabs after the size, extensions of at most `MAX_LINE_EXTRA` bytes after
/// the `;`, trailer lines of at most `MAX_TRAILER_BYTES` bytes together (CRLFs not
/// counted), and a chunk that would take the body past `max_body` refused as soon as
/// its size line ends.
fn reference_chunked(input: &[u8], max_body: usize, body: &mut Vec<u8>) -> ChunkedOutcome {
    use ChunkedOutcome::{Done, Failed, NeedMore};
    let malformed = Failed(ChunkError::Malformed);
    let mut at = 0;
    // Consumes CRLF, or says why not.
    let crlf = |at: &mut usize| -> Option<ChunkedOutcome> {
        for want in [b'\r', b'\n'] {
            match input.get(*at) {
                None => return Some(NeedMore),
                Some(&b) if b == want => *at += 1,
                Some(_) => return Some(Failed(ChunkError::Malformed)),
            }
        }
        None
    };
    loop {
        let digits_start = at;
        while input.get(at).is_some_and(u8::is_ascii_hexdigit) {
            at += 1;
            if at - digits_start > 15 {
                return Failed(ChunkError::TooLarge);
            }
        }
        if at == input.len() {
            return NeedMore;
        }
        if at == digits_start {
            return malformed;
        }
        let digits = std::str::from_utf8(&input[digits_start..at]).expect("hex is ASCII");
        let size = u64::from_str_radix(digits, 16).expect("at most 15 hex digits");
        while matches!(input.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        if input.get(at) == Some(&b';') {
            at += 1;
            let extension_start = at;
            loop {
                match input.get(at) {
                    None => return NeedMore,
                    Some(b'\r') => break,
                    Some(b'\n') => return malformed,
                    Some(_) => {
                        at += 1;
                        if at - extension_start > MAX_LINE_EXTRA {
                            return malformed;
                        }
                    }
                }
            }
        }
        if let Some(outcome) = crlf(&mut at) {
            return outcome;
        }
        if size == 0 {
            break;
        }
        if size > (max_body - body.len()) as u64 {
            return Failed(ChunkError::TooLarge);
        }
        let available = (input.len() - at) as u64;
        let take = size.min(available) as usize;
        body.extend_from_slice(&input[at..at + take]);
        at += take;
        if (take as u64) < size {
            return NeedMore;
        }
        if let Some(outcome) = crlf(&mut at) {
            return outcome;
        }
    }
    let mut trailer_bytes = 0;
    loop {
        match input.get(at) {
            None => return NeedMore,
            Some(b'\r') => {
                return match crlf(&mut at) {
                    Some(outcome) => outcome,
                    None => Done(at),
                };
            }
            Some(_) => {}
        }
        loop {
            match input.get(at) {
                None => return NeedMore,
                Some(b'\r') => break,
                Some(b'\n') => return malformed,
                Some(_) => {
                    at += 1;
                    trailer_bytes += 1;
                    if trailer_bytes > MAX_TRAILER_BYTES {
                        return malformed;
                    }
                }
            }
        }
        if let Some(outcome) = crlf(&mut at) {
            return outcome;
        }
    }
}

/// Body limits from none at all to none in practice, so both the limit check and the
/// 15-digit cap are reached.
const CHUNKED_MAX_BODY: [usize; 8] = [0, 1, 5, 16, 100, 1000, 4096, usize::MAX];

/// First byte: bits 0-2 the body limit, bits 3-7 how the rest is cut into reads. The
/// rest is the chunked body, and whatever follows it.
pub fn chunked(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let max_body = CHUNKED_MAX_BODY[usize::from(control & 7)];
    let split = Split::from_bits(control >> 3);

    let mut expected_body = Vec::new();
    let expected = reference_chunked(stream, max_body, &mut expected_body);

    let mut decoder = ChunkedDecoder::default();
    let mut body = Vec::new();
    let mut used = 0;
    let mut outcome = ChunkedOutcome::NeedMore;
    for piece in split.pieces(stream) {
        match decoder.decode(piece, &mut body, max_body) {
            Ok(n) => {
                assert!(n <= piece.len(), "used {n} of a {} byte read", piece.len());
                used += n;
                if decoder.is_done() {
                    outcome = ChunkedOutcome::Done(used);
                    assert_eq!(
                        decoder.decode(&stream[used..], &mut body, max_body),
                        Ok(0),
                        "read past the end of the body"
                    );
                } else {
                    assert_eq!(n, piece.len(), "stopped early without being done");
                }
            }
            Err(error) => outcome = ChunkedOutcome::Failed(error),
        }
        assert!(
            body.len() <= max_body,
            "body of {} bytes over the limit of {max_body}",
            body.len()
        );
        if outcome != ChunkedOutcome::NeedMore {
            break;
        }
    }
    assert_eq!(
        outcome,
        expected,
        "decoder and reference disagree ({split:?}, limit {max_body}) on {:?}",
        String::from_utf8_lossy(stream)
    );
    assert_eq!(
        body, expected_body,
        "decoder and reference decoded different bodies"
    );
}
