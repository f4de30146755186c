//! One HTTP/1.1 server connection as a sans-IO state machine.
//!
//! The socket code hands it the bytes it read and the current time; it hands back the
//! bytes to write and whether the connection should close. It never touches a socket
//! or a clock, so every rule here is tested by feeding bytes (see the tests below and
//! the `http_conn` fuzz target), and the poll loop stays a thin shell.
//!
//! Framing follows RFC 9112: `Content-Length` or `chunked` bodies, persistent
//! connections, pipelined requests answered in order, `Expect: 100-continue`, and a
//! fixed set of limits that bound what a peer can make us hold.

use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use super::chunked::{ChunkError, ChunkedDecoder};
use super::refusal::Refusal;
use super::response::{self, Persistence, Response};
use crate::text::FixedText;

/// What a peer can make one connection hold, and for how long.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// Unsent response bytes past which no further request is read or answered for
    /// this peer. One answer may cross it, so a peer that does not read holds at most
    /// this plus its largest answer.
    pub max_pending_output: usize,
    /// Refuse (415) a body with a `Content-Encoding` other than identity. The
    /// forwarder takes plain JSON only; the bundled receiver reads gzip itself.
    pub refuse_content_coding: bool,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 1024 * 1024,
            // A few dozen pipelined answers per write; small, as every connection may
            // hold it for a peer that does not read.
            max_pending_output: 4 * 1024,
            refuse_content_coding: true,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The smallest socket read. A connection holds at most a head's worth of input
/// plus one such read without a body reservation (see the connection table).
pub const MIN_READ: usize = 4096;

/// httparse needs a header array up front; this caps `--max-headers`.
pub const MAX_HEADERS_CAP: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            _ => Method::Other,
        }
    }
}

/// The application behind the connection.
pub trait Handler {
    /// A routing decision, kept while the body arrives.
    type Route: Copy;
    /// `authorization` is the value of the request's one `Authorization` header
    /// (`None` when absent or repeated), so that access is decided before the body.
    fn route(&mut self, method: Method, path: &str, authorization: Option<&[u8]>) -> Self::Route;
    /// An answer known before the body is read (for `Expect: 100-continue`); `None`
    /// means the body is wanted.
    fn early_answer(&mut self, route: Self::Route) -> Option<Response<'_>>;
    fn respond(&mut self, route: Self::Route, body: &[u8]) -> Reply<'_>;
    /// Called once per response, for the request log and metrics.
    fn exchanged(&mut self, exchange: &Exchange<'_, Self::Route>);
}

/// The application's answer to a complete request.
pub enum Reply<'a> {
    Now(Response<'a>),
    /// The answer comes later, through `Conn::answer_waiting`. Until then nothing
    /// more is read or answered on this connection, so pipelined requests wait too.
    Later,
}

impl<'a> From<Response<'a>> for Reply<'a> {
    fn from(response: Response<'a>) -> Self {
        Reply::Now(response)
    }
}

pub struct Exchange<'a, R> {
    /// `None` when the request was refused before it could be routed.
    pub route: Option<R>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// When the request's head was complete.
    pub started: Instant,
    /// How long the answer waited after the body arrived (`Reply::Later`).
    pub waited: Option<Duration>,
    /// Why this layer refused the request, when it did (the JSON message it sent).
    pub refused: Option<&'static str>,
}

/// Reusable byte buffers, so that serving a request allocates nothing once warm and
/// an idle connection holds no buffer at all.
///
/// Output buffers are kept apart: one grown by a large body must never become the
/// output a non-reading peer holds, whose size is bounded (see `max_pending_output`).
pub struct BufferPool {
    free: Vec<Vec<u8>>,
    free_output: Vec<Vec<u8>>,
    max_pooled: usize,
}

impl BufferPool {
    const FRESH_CAPACITY: usize = 4096;
    /// Room for the default `max_pending_output` plus an error answer (at most about
    /// 1.3 KiB), so that only a larger answer (`/metrics`) grows an output buffer.
    pub const OUTPUT_CAPACITY: usize = 6 * 1024;
    /// Larger buffers (a big body) are freed rather than kept.
    const KEEP_CAPACITY: usize = 64 * 1024;

    pub fn new(max_pooled: usize) -> Self {
        BufferPool {
            free: Vec::with_capacity(max_pooled),
            free_output: Vec::with_capacity(max_pooled),
            max_pooled,
        }
    }

    /// A buffer for answers: only ever grown by answers, exactly (`response::write`).
    pub fn take_output(&mut self) -> Vec<u8> {
        reuse(&mut self.free_output, Self::OUTPUT_CAPACITY)
    }

    pub fn give_output(&mut self, buffer: Vec<u8>) {
        keep(&mut self.free_output, self.max_pooled, buffer);
    }

    pub fn take(&mut self) -> Vec<u8> {
        reuse(&mut self.free, Self::FRESH_CAPACITY)
    }

    pub fn give(&mut self, buffer: Vec<u8>) {
        keep(&mut self.free, self.max_pooled, buffer);
    }

    pub fn pooled(&self) -> usize {
        self.free.len() + self.free_output.len()
    }
}

/// A pooled buffer, or a fresh one of `fresh` bytes.
fn reuse(free: &mut Vec<Vec<u8>>, fresh: usize) -> Vec<u8> {
    free.pop().unwrap_or_else(|| Vec::with_capacity(fresh))
}

/// Pools `buffer` emptied, unless it holds nothing, grew large (a big body is freed
/// rather than kept), or the pool is full.
fn keep(free: &mut Vec<Vec<u8>>, max_pooled: usize, mut buffer: Vec<u8>) {
    if buffer.capacity() == 0
        || buffer.capacity() > BufferPool::KEEP_CAPACITY
        || free.len() >= max_pooled
    {
        return;
    }
    buffer.clear();
    free.push(buffer);
}

/// Everything outside the connection that a step needs.
pub struct Io<'a, H> {
    pub handler: &'a mut H,
    pub limits: &'a Limits,
    pub pool: &'a mut BufferPool,
    pub now: Instant,
    /// The current `Date` header value (empty to omit it).
    pub date: &'a [u8],
}

#[derive(Clone, Copy)]
enum Framing {
    Length(usize),
    Chunked(ChunkedDecoder),
}

/// A request whose head is parsed and whose body is still arriving.
#[derive(Clone, Copy)]
struct Pending<R> {
    route: R,
    /// Kept for the log line after the head's bytes are gone.
    method: FixedText<16>,
    path: FixedText<64>,
    head_only: bool,
    persistence: Persistence,
    framing: Framing,
    started: Instant,
    /// Set when the application deferred its answer.
    waiting_since: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Phase<R> {
    /// Between requests: nothing of the next one has arrived.
    Idle,
    /// Part of a request head has arrived.
    Head,
    Body(Pending<R>),
    /// The request is complete and the application will answer it later.
    Waiting(Pending<R>),
}

pub struct Conn<R> {
    /// Received bytes not yet consumed (a partial request, or requests held back
    /// while output is over its limit). Empty and unallocated most of the time.
    inbuf: Vec<u8>,
    machine: Machine<R>,
}

struct Machine<R> {
    out: Vec<u8>,
    /// Decoded chunked body; used only for chunked requests.
    body: Vec<u8>,
    phase: Phase<R>,
    /// When the current phase began: the base of its timeout.
    since: Instant,
    served_any: bool,
    /// Close once the output is written; nothing more is read or produced.
    closing: bool,
    peer_closed: bool,
    /// Processing stopped at the output limit with input left over.
    stalled: bool,
    /// When output last started or made progress: the base of the send timeout.
    output_since: Instant,
}

impl<R: Copy> Conn<R> {
    pub fn new(now: Instant) -> Self {
        Conn {
            inbuf: Vec::new(),
            machine: Machine {
                out: Vec::new(),
                body: Vec::new(),
                phase: Phase::Idle,
                since: now,
                served_any: false,
                closing: false,
                peer_closed: false,
                stalled: false,
                output_since: now,
            },
        }
    }

    /// Takes bytes read from the peer and answers every complete request in them.
    pub fn feed<H: Handler<Route = R>>(&mut self, data: &[u8], io: &mut Io<'_, H>) {
        if self.machine.closing {
            return;
        }
        if self.inbuf.is_empty() {
            // The common case: whole requests in one read, parsed in place.
            let used = self.machine.process(data, io);
            if used < data.len() && !self.machine.closing {
                if self.inbuf.capacity() == 0 {
                    self.inbuf = io.pool.take();
                }
                self.buffer_input(&data[used..], io.limits);
            }
        } else {
            self.buffer_input(data, io.limits);
            let used = self.machine.process(&self.inbuf, io);
            self.inbuf.drain(..used);
        }
        self.settle(io);
    }

    /// Appends to `inbuf`. Within a head's worth plus a read it grows straight to that
    /// size, never doubling past it: every connection may hold this much.
    fn buffer_input(&mut self, data: &[u8], limits: &Limits) {
        let (len, needed) = (self.inbuf.len(), self.inbuf.len() + data.len());
        let allowance = limits.max_head_bytes + MIN_READ;
        if needed > self.inbuf.capacity() && needed <= allowance {
            self.inbuf.reserve_exact(allowance - len);
        }
        self.inbuf.extend_from_slice(data);
    }

    /// Continues with buffered requests after the output drained below its limit.
    pub fn resume<H: Handler<Route = R>>(&mut self, io: &mut Io<'_, H>) {
        if !self.inbuf.is_empty() && !self.machine.closing {
            let used = self.machine.process(&self.inbuf, io);
            self.inbuf.drain(..used);
        }
        self.settle(io);
    }

    /// The peer will send nothing more (read returned 0).
    pub fn peer_closed<H: Handler<Route = R>>(&mut self, io: &mut Io<'_, H>) {
        self.machine.peer_closed = true;
        self.settle(io);
    }

    /// The deadline passed: answer 408 if a request is half-received, then close.
    pub fn timed_out<H: Handler<Route = R>>(&mut self, io: &mut Io<'_, H>) {
        if self.machine.closing {
            return;
        }
        match self.machine.phase {
            // The request is whole; the application bounds its own wait.
            Phase::Waiting(_) => return,
            Phase::Idle => self.machine.closing = true,
            Phase::Head => self.machine.fail(Refusal::TIMEOUT, io, None),
            // The head is known: the answer and the log line belong to that request.
            Phase::Body(pending) => self.machine.fail(Refusal::TIMEOUT, io, Some(&pending)),
        }
        self.settle(io);
    }

    fn settle<H: Handler<Route = R>>(&mut self, io: &mut Io<'_, H>) {
        let m = &mut self.machine;
        // Once the peer stopped sending and nothing buffered can make progress, the
        // rest (a partial request at most) will never complete.
        let waiting = matches!(m.phase, Phase::Waiting(_));
        if m.peer_closed && !waiting && m.out.len() < io.limits.max_pending_output {
            m.closing = true;
        }
        if m.closing {
            self.inbuf.clear();
        }
        self.release_idle_buffers(io.pool);
    }

    fn release_idle_buffers(&mut self, pool: &mut BufferPool) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            pool.give(std::mem::take(&mut self.inbuf));
        }
        let m = &mut self.machine;
        if m.out.is_empty() && m.out.capacity() > 0 {
            pool.give_output(std::mem::take(&mut m.out));
        }
        if m.body.is_empty() && m.body.capacity() > 0 {
            pool.give(std::mem::take(&mut m.body));
        }
    }

    /// Bytes to write to the peer.
    pub fn output(&self) -> &[u8] {
        &self.machine.out
    }

    /// `n` bytes of `output()` were written at `now`.
    pub fn consumed_output(&mut self, n: usize, pool: &mut BufferPool, now: Instant) {
        let m = &mut self.machine;
        // The peer is reading. A request it is sending may have been held up by our
        // own back-pressure, so its clock restarts too.
        m.output_since = now;
        if matches!(m.phase, Phase::Head | Phase::Body(_)) {
            m.since = now;
        }
        let out = &mut m.out;
        let n = n.min(out.len());
        if n == out.len() {
            out.clear();
            pool.give_output(std::mem::take(out));
        } else {
            out.drain(..n);
        }
    }

    /// Whether reading more from the socket is useful now. Not while requests already
    /// read wait for the output to drain: reading on would only grow the input.
    pub fn wants_read(&self, limits: &Limits) -> bool {
        let m = &self.machine;
        !m.closing
            && !m.peer_closed
            && !m.stalled
            && !matches!(m.phase, Phase::Waiting(_))
            && m.out.len() < limits.max_pending_output
    }

    /// Request bytes held now (a partial request, a body being received).
    pub fn buffered_len(&self) -> usize {
        self.inbuf.len() + self.machine.body.len()
    }

    /// Body bytes the request being received may still need to hold: its declared
    /// length, or the body limit for a chunked one; 0 outside a body. The connection
    /// table reserves this much of its global budget before reading on.
    pub fn body_reservation(&self, limits: &Limits) -> usize {
        match self.machine.phase {
            Phase::Body(Pending {
                framing: Framing::Length(length),
                ..
            }) => length,
            Phase::Body(_) => limits.max_body_bytes,
            _ => 0,
        }
    }

    /// A request's answer was deferred and is still owed.
    pub fn is_waiting(&self) -> bool {
        matches!(self.machine.phase, Phase::Waiting(_)) && !self.machine.closing
    }

    /// Writes the deferred answer, then goes on with requests buffered behind it.
    pub fn answer_waiting<H: Handler<Route = R>>(
        &mut self,
        answer: Response<'_>,
        io: &mut Io<'_, H>,
    ) {
        let Phase::Waiting(pending) = self.machine.phase else {
            return;
        };
        if self.machine.closing {
            return;
        }
        self.machine.write_answer(&pending, answer, io);
        self.resume(io);
    }

    /// Buffered requests wait because the output is over its limit: once the output
    /// drains, `resume` answers them.
    pub fn is_stalled(&self) -> bool {
        self.machine.stalled && !self.machine.closing
    }

    /// Between requests with nothing buffered either way: closing it loses nothing.
    pub fn is_idle(&self) -> bool {
        let m = &self.machine;
        matches!(m.phase, Phase::Idle) && m.out.is_empty() && self.inbuf.is_empty()
    }

    /// When this connection last started waiting for a request, if it has none under
    /// way (no head complete, no body, no answer owed or unsent): closing it then
    /// loses nothing the client was promised.
    pub fn quiet_since(&self) -> Option<Instant> {
        let m = &self.machine;
        let quiet = matches!(m.phase, Phase::Idle | Phase::Head)
            && m.out.is_empty()
            && !m.stalled
            && !m.closing;
        quiet.then_some(m.since)
    }

    /// True once the connection should be closed after its output is written.
    pub fn is_closing(&self) -> bool {
        self.machine.closing
    }

    /// Capacity of the output buffer, for the memory-bound tests.
    pub fn output_capacity(&self) -> usize {
        self.machine.out.capacity()
    }

    /// Bytes held for this connection, for the memory-bound tests.
    pub fn buffered_bytes(&self) -> usize {
        self.inbuf.capacity() + self.machine.out.capacity() + self.machine.body.capacity()
    }

    /// When this connection times out in its current phase; `None` while its answer
    /// is deferred (the application bounds that wait).
    pub fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let m = &self.machine;
        if !m.out.is_empty() {
            // Waiting for the peer to read what we owe it.
            return Some(m.output_since + limits.idle_timeout);
        }
        let allowed = match m.phase {
            Phase::Idle if m.served_any => limits.idle_timeout,
            Phase::Idle | Phase::Head => limits.header_timeout,
            Phase::Body(_) => limits.body_timeout,
            Phase::Waiting(_) => return None,
        };
        Some(m.since + allowed)
    }
}

enum BodyStep {
    /// The whole body is in the input, starting at this offset.
    InPlace(usize),
    /// The chunked body is complete in `Machine::body`.
    Decoded,
    NeedMore,
    Broken(ChunkError),
}

enum HeadOutcome {
    /// The head was `n` bytes and has been dealt with.
    Consumed(usize),
    /// More bytes are needed.
    Partial,
    /// The connection is closing.
    Failed,
}

impl<R: Copy> Machine<R> {
    /// Answers every complete request at the start of `input`; returns the bytes used.
    fn process<H: Handler<Route = R>>(&mut self, input: &[u8], io: &mut Io<'_, H>) -> usize {
        let mut pos = 0;
        while !self.closing && self.out.len() < io.limits.max_pending_output {
            match self.phase {
                Phase::Idle | Phase::Head => {
                    let rest = &input[pos..];
                    if rest.is_empty() {
                        break;
                    }
                    if matches!(self.phase, Phase::Idle) {
                        self.phase = Phase::Head;
                        self.since = io.now;
                    }
                    match self.parse_head(rest, io) {
                        HeadOutcome::Consumed(n) => pos += n,
                        HeadOutcome::Partial => {
                            if rest.len() > io.limits.max_head_bytes {
                                self.fail(Refusal::HEAD_TOO_LARGE, io, None);
                            }
                            break;
                        }
                        HeadOutcome::Failed => break,
                    }
                }
                Phase::Waiting(_) => break,
                Phase::Body(mut pending) => {
                    let step = match &mut pending.framing {
                        Framing::Length(length) => {
                            let length = *length;
                            if input.len() - pos < length {
                                break;
                            }
                            pos += length;
                            BodyStep::InPlace(pos - length)
                        }
                        Framing::Chunked(decoder) => {
                            if self.body.capacity() == 0 {
                                self.body = io.pool.take();
                            }
                            match decoder.decode(
                                &input[pos..],
                                &mut self.body,
                                io.limits.max_body_bytes,
                            ) {
                                Ok(used) => {
                                    pos += used;
                                    if decoder.is_done() {
                                        BodyStep::Decoded
                                    } else {
                                        BodyStep::NeedMore
                                    }
                                }
                                Err(error) => BodyStep::Broken(error),
                            }
                        }
                    };
                    match step {
                        BodyStep::InPlace(start) => self.complete(&pending, &input[start..pos], io),
                        BodyStep::Decoded => {
                            let body = std::mem::take(&mut self.body);
                            self.complete(&pending, &body, io);
                            self.body = body;
                            self.body.clear();
                        }
                        BodyStep::NeedMore => {
                            self.phase = Phase::Body(pending);
                            break;
                        }
                        BodyStep::Broken(error) => {
                            let refusal = match error {
                                ChunkError::Malformed => Refusal::MALFORMED_CHUNKED,
                                ChunkError::TooLarge => Refusal::BODY_TOO_LARGE,
                                ChunkError::LinesTooLong => Refusal::CHUNK_LINES,
                            };
                            self.fail(refusal, io, Some(&pending));
                        }
                    }
                }
            }
        }
        self.stalled =
            !self.closing && pos < input.len() && self.out.len() >= io.limits.max_pending_output;
        pos
    }

    fn parse_head<H: Handler<Route = R>>(
        &mut self,
        input: &[u8],
        io: &mut Io<'_, H>,
    ) -> HeadOutcome {
        let mut headers =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
        let allowed = io.limits.max_headers.clamp(1, MAX_HEADERS_CAP);
        let mut request = httparse::Request::new(&mut []);
        // Parse no further than the limit, so a long head is judged the same (431)
        // however its bytes were split, even when something past the limit is malformed.
        let window = &input[..input.len().min(io.limits.max_head_bytes + 1)];
        match request.parse_with_uninit_headers(window, &mut headers[..allowed]) {
            Ok(httparse::Status::Partial) => HeadOutcome::Partial,
            Ok(httparse::Status::Complete(n)) if n > io.limits.max_head_bytes => {
                self.fail(Refusal::HEAD_TOO_LARGE, io, None);
                HeadOutcome::Failed
            }
            Ok(httparse::Status::Complete(n)) if has_bare_lf(&window[..n]) => {
                self.fail(Refusal::BARE_LF, io, None);
                HeadOutcome::Failed
            }
            Ok(httparse::Status::Complete(n)) => {
                if self.start_request(&request, io) {
                    HeadOutcome::Consumed(n)
                } else {
                    HeadOutcome::Failed
                }
            }
            Err(httparse::Error::TooManyHeaders) => {
                self.fail(Refusal::TOO_MANY_HEADERS, io, None);
                HeadOutcome::Failed
            }
            Err(httparse::Error::Version) => {
                self.fail(Refusal::VERSION, io, None);
                HeadOutcome::Failed
            }
            Err(_) => {
                self.fail(Refusal::MALFORMED_HEAD, io, None);
                HeadOutcome::Failed
            }
        }
    }

    /// Checks a complete head and sets up reading its body. Returns false when the
    /// connection is closing because of it.
    fn start_request<H: Handler<Route = R>>(
        &mut self,
        request: &httparse::Request<'_, '_>,
        io: &mut Io<'_, H>,
    ) -> bool {
        let method_text = request.method.unwrap_or("");
        let target = request.path.unwrap_or("/");
        let http11 = request.version == Some(1);
        let method = Method::from_token(method_text);
        let path = route_path(target);
        let head = HeadFields::read(request.headers, io.limits.refuse_content_coding);
        let authorization = head.as_ref().ok().and_then(HeadFields::authorization);
        let route = io.handler.route(method, path, authorization);
        let refuse = |machine: &mut Self, refusal: Refusal, io: &mut Io<'_, H>| {
            let subject = Subject {
                route: Some(route),
                method: method_text,
                path,
                started: io.now,
            };
            machine.write_failure(refusal, io, subject);
            false
        };
        let head = match head {
            Ok(head) => head,
            Err(refusal) => return refuse(self, refusal, io),
        };
        if !http11 && head.chunked {
            return refuse(self, Refusal::CODING_IN_HTTP10, io);
        }
        if http11 && head.hosts != 1 {
            return refuse(self, Refusal::HOST, io);
        }
        let framing = if head.chunked {
            // Chunk-size lines may cost as much as a head, once per body: past that a
            // peer would make us parse framing rather than data.
            Framing::Chunked(ChunkedDecoder::new(io.limits.max_head_bytes))
        } else {
            match head.content_length {
                Some(n) if n > io.limits.max_body_bytes as u64 => {
                    return refuse(self, Refusal::BODY_TOO_LARGE, io);
                }
                Some(n) => Framing::Length(n as usize),
                None => Framing::Length(0),
            }
        };
        let has_body = !matches!(framing, Framing::Length(0));
        // Only a body that would be read is refused for its coding: a health check
        // carrying the header gets its answer.
        if head.content_coded && has_body {
            return refuse(self, Refusal::CONTENT_CODING, io);
        }
        if head.unknown_expectation && http11 {
            return refuse(self, Refusal::EXPECTATION, io);
        }
        let keep_alive = if http11 {
            !head.close
        } else {
            head.keep_alive && !head.close
        };
        let persistence = match (keep_alive, http11) {
            (false, _) => Persistence::Close,
            (true, true) => Persistence::KeepAlive,
            (true, false) => Persistence::KeepAliveHttp10,
        };
        let pending = Pending {
            route,
            method: FixedText::new(method_text),
            path: FixedText::new(path),
            head_only: method == Method::Head,
            persistence,
            framing,
            started: io.now,
            waiting_since: None,
        };
        if head.expect_continue && http11 && has_body {
            self.begin_output(io);
            let early = io.handler.early_answer(route).map(|r| {
                // The body is not read, so the connection cannot be reused.
                let status = r.status;
                response::write(
                    &mut self.out,
                    &r,
                    pending.head_only,
                    Persistence::Close,
                    io.date,
                );
                status
            });
            if let Some(status) = early {
                self.closing = true;
                self.log(&pending, status, io);
                return false;
            }
            response::write_continue(&mut self.out);
        }
        self.phase = Phase::Body(pending);
        self.since = io.now;
        true
    }

    /// Makes the output buffer ready for a response.
    fn begin_output<H: Handler<Route = R>>(&mut self, io: &mut Io<'_, H>) {
        self.begin_output_at(io.now, io.pool);
    }

    fn begin_output_at(&mut self, now: Instant, pool: &mut BufferPool) {
        if self.out.capacity() == 0 {
            self.out = pool.take_output();
        }
        if self.out.is_empty() {
            self.output_since = now;
        }
    }

    fn complete<H: Handler<Route = R>>(
        &mut self,
        pending: &Pending<R>,
        body: &[u8],
        io: &mut Io<'_, H>,
    ) {
        match io.handler.respond(pending.route, body) {
            Reply::Now(answer) => {
                // `answer` borrows the handler; write it before anything else uses it.
                let status = answer.status;
                let persistence = self.write_response(pending, &answer, io.now, io.pool, io.date);
                self.finish_exchange(pending, status, persistence, io);
            }
            Reply::Later => {
                self.phase = Phase::Waiting(Pending {
                    waiting_since: Some(io.now),
                    ..*pending
                });
            }
        }
    }

    /// Writes the answer to a request whose answer was deferred.
    fn write_answer<H: Handler<Route = R>>(
        &mut self,
        pending: &Pending<R>,
        answer: Response<'_>,
        io: &mut Io<'_, H>,
    ) {
        let persistence = self.write_response(pending, &answer, io.now, io.pool, io.date);
        self.finish_exchange(pending, answer.status, persistence, io);
    }

    /// Writes `answer` to `pending`'s request into the output; says whether the
    /// connection stays open. Takes `Io`'s parts, since an answer may borrow its
    /// handler.
    fn write_response(
        &mut self,
        pending: &Pending<R>,
        answer: &Response<'_>,
        now: Instant,
        pool: &mut BufferPool,
        date: &[u8],
    ) -> Persistence {
        self.begin_output_at(now, pool);
        let persistence = if answer.close {
            Persistence::Close
        } else {
            pending.persistence
        };
        response::write(&mut self.out, answer, pending.head_only, persistence, date);
        persistence
    }

    fn finish_exchange<H: Handler<Route = R>>(
        &mut self,
        pending: &Pending<R>,
        status: u16,
        persistence: Persistence,
        io: &mut Io<'_, H>,
    ) {
        self.log(pending, status, io);
        self.closing |= persistence == Persistence::Close;
        self.phase = Phase::Idle;
        self.since = io.now;
        self.served_any = true;
    }

    fn log<H: Handler<Route = R>>(&self, pending: &Pending<R>, status: u16, io: &mut Io<'_, H>) {
        io.handler.exchanged(&Exchange {
            route: Some(pending.route),
            method: pending.method.as_str(),
            path: pending.path.as_str(),
            status,
            started: pending.started,
            waited: pending.waiting_since.map(|since| io.now - since),
            refused: None,
        });
    }

    /// Answers a broken request with a JSON error and closes: after a framing error
    /// we cannot know where the next request would start.
    fn fail<H: Handler<Route = R>>(
        &mut self,
        refusal: Refusal,
        io: &mut Io<'_, H>,
        pending: Option<&Pending<R>>,
    ) {
        let subject = match pending {
            Some(p) => Subject {
                route: Some(p.route),
                method: p.method.as_str(),
                path: p.path.as_str(),
                started: p.started,
            },
            None => Subject {
                route: None,
                method: "-",
                path: "-",
                started: io.now,
            },
        };
        self.write_failure(refusal, io, subject);
    }

    fn write_failure<H: Handler<Route = R>>(
        &mut self,
        refusal: Refusal,
        io: &mut Io<'_, H>,
        subject: Subject<'_, R>,
    ) {
        self.begin_output(io);
        // A response to HEAD never has a body, even an error.
        let head_only = subject.method == "HEAD";
        response::write_static_error(
            &mut self.out,
            refusal.status,
            refusal.message,
            head_only,
            io.date,
        );
        self.body.clear();
        io.handler.exchanged(&Exchange {
            route: subject.route,
            method: subject.method,
            path: subject.path,
            status: refusal.status,
            started: subject.started,
            waited: None,
            refused: Some(refusal.message),
        });
        self.closing = true;
        self.phase = Phase::Idle;
    }
}

/// The request a refusal answers, as far as it is known, for the log line.
struct Subject<'a, R> {
    route: Option<R>,
    method: &'a str,
    path: &'a str,
    started: Instant,
}

/// What the headers of one request say about framing, the connection and access.
#[derive(Default)]
struct HeadFields<'h> {
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    unknown_expectation: bool,
    hosts: usize,
    /// Borrowed from the head: no copy of a credential is made.
    authorization: Option<&'h [u8]>,
    authorizations: usize,
    /// A `Content-Encoding` other than identity (only looked for when refused).
    content_coded: bool,
}

impl<'h> HeadFields<'h> {
    fn read(
        headers: &[httparse::Header<'h>],
        refuse_content_coding: bool,
    ) -> Result<HeadFields<'h>, Refusal> {
        let mut fields = HeadFields::default();
        let mut transfer_codings = 0usize;
        let mut chunked_codings = 0usize;
        let mut last_is_chunked = false;
        for header in headers {
            let name = header.name;
            let value = header.value;
            if name.eq_ignore_ascii_case("content-length") {
                if fields.content_length.is_some() {
                    return Err(Refusal::REPEATED_LENGTH);
                }
                fields.content_length =
                    Some(parse_content_length(value).ok_or(Refusal::BAD_LENGTH)?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in value.split(|&b| b == b',') {
                    let coding = coding.trim_ascii();
                    if coding.is_empty() {
                        continue;
                    }
                    transfer_codings += 1;
                    last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
                    chunked_codings += usize::from(last_is_chunked);
                }
                if transfer_codings == 0 {
                    return Err(Refusal::EMPTY_CODING);
                }
            } else if name.eq_ignore_ascii_case("connection") {
                for option in value.split(|&b| b == b',') {
                    let option = option.trim_ascii();
                    fields.close |= option.eq_ignore_ascii_case(b"close");
                    fields.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name.eq_ignore_ascii_case("expect") {
                if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    fields.expect_continue = true;
                } else {
                    fields.unknown_expectation = true;
                }
            } else if refuse_content_coding && name.eq_ignore_ascii_case("content-encoding") {
                fields.content_coded |= !value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case(b"identity"));
            } else if name.eq_ignore_ascii_case("host") {
                fields.hosts += 1;
            } else if name.eq_ignore_ascii_case("authorization") {
                fields.authorizations += 1;
                fields.authorization = Some(value);
            }
        }
        if transfer_codings > 0 {
            if fields.content_length.is_some() {
                return Err(Refusal::LENGTH_AND_CODING);
            }
            if !last_is_chunked || chunked_codings > 1 {
                return Err(Refusal::CHUNKED_NOT_LAST);
            }
            if transfer_codings > chunked_codings {
                return Err(Refusal::UNKNOWN_CODING);
            }
            fields.chunked = true;
        }
        Ok(fields)
    }

    /// A repeated header is ambiguous, so it counts as none.
    fn authorization(&self) -> Option<&'h [u8]> {
        self.authorization.filter(|_| self.authorizations == 1)
    }
}

/// Whether a line of a complete head ends in LF without CR: an LF first, or after
/// anything but CR. Pairs of bytes are compared a block at a time without branches,
/// which the compiler turns into vector compares; a byte-at-a-time search was most
/// of the loop's time on heads of a few KiB.
fn has_bare_lf(head: &[u8]) -> bool {
    const BLOCK: usize = 64;
    fn any_bare(before: &[u8], at: &[u8]) -> bool {
        before.iter().zip(at).fold(false, |found, (&b, &a)| {
            found | ((a == b'\n') & (b != b'\r'))
        })
    }
    if head.first() == Some(&b'\n') {
        return true;
    }
    let Some(at) = head.get(1..) else {
        return false;
    };
    let before = &head[..at.len()];
    let (blocks_before, blocks_at) = (before.chunks_exact(BLOCK), at.chunks_exact(BLOCK));
    let (rest_before, rest_at) = (blocks_before.remainder(), blocks_at.remainder());
    blocks_before.zip(blocks_at).any(|(b, a)| any_bare(b, a)) || any_bare(rest_before, rest_at)
}

/// Digits only: no sign, no spaces inside, no list (`5, 5`); overflow is invalid.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The path used for routing: the absolute-form's authority dropped, query cut off.
fn route_path(target: &str) -> &str {
    let lower_prefix = |prefix: &str| {
        target
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    let path = if lower_prefix("http://") || lower_prefix("https://") {
        let after_scheme = &target[target.find("//").map_or(0, |i| i + 2)..];
        after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
    } else {
        target
    };
    path.split(['?', '#']).next().unwrap_or(path)
}

#[cfg(test)]
mod tests;
