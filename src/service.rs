//! The application behind the HTTP layer: routes, records decoded and handed to the
//! pipeline, answers, request metrics and the request log.
//!
//! Everything here runs on the poll loop's thread, between a request's last byte and
//! its response: route, decode, validate, queue, answer. It never blocks and, once
//! warm, allocates nothing but the record itself.

use std::sync::Arc;
use std::time::Instant;

use crate::auth::{Access, BearerToken};
use crate::http::response::{self, Response};
use crate::http::{Exchange, Handler, Method, Reply};
use crate::logging::RequestLine;
use crate::metrics::{Endpoint, Gauges, Metrics, Rejected, WorkerStats};
use crate::pipeline::{Offer, Pipeline, Ticket};
use crate::record::{self, Rejection};

/// Where a request goes, decided from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    endpoint: Endpoint,
    method_allowed: bool,
    /// False for requests whose head arrived after shutdown began: they are refused,
    /// while requests already under way are still served.
    admitted: bool,
    /// Decided from the head, so a refused request's body is never decoded.
    access: Access,
}

impl Route {
    fn granted(self) -> bool {
        matches!(self.access, Access::Open | Access::Granted)
    }

    fn allow(self) -> &'static str {
        match self.endpoint {
            Endpoint::Log => "POST",
            _ => "GET, HEAD",
        }
    }
}

/// The service's own state, kept across requests.
pub struct Service {
    pub metrics: Metrics,
    /// A record whose forwarded JSON would be larger than this is refused (413), so
    /// what a client sends bounds what we hold and post (`--max-body-bytes`).
    max_record_bytes: usize,
    worker_stats: Arc<WorkerStats>,
    /// The loop turn's time, so a request costs no clock read for its arrival.
    pub now: Instant,
    /// Error bodies and metrics are built here, reused from request to request.
    scratch: Vec<u8>,
    /// The token `POST /log` and `GET /metrics` require, if any.
    auth: Option<BearerToken>,
    reason: Reason,
}

/// Connection figures the connection table owns, copied in for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionGauges {
    pub open: usize,
    pub accepted_total: u64,
    pub evicted_total: u64,
}

impl Service {
    pub fn new(
        worker_stats: Arc<WorkerStats>,
        max_record_bytes: usize,
        now: Instant,
        auth: Option<BearerToken>,
    ) -> Service {
        Service {
            metrics: Metrics::default(),
            max_record_bytes,
            worker_stats,
            now,
            scratch: Vec::with_capacity(256),
            auth,
            reason: Reason::new(),
        }
    }
}

/// The service as one connection's requests see it: the pipeline records go to, the
/// connection's ticket should its request have to wait, and the peer for the log line.
pub struct Peer<'a> {
    pub service: &'a mut Service,
    pub pipeline: &'a mut Pipeline,
    pub ticket: Ticket,
    pub remote: &'a str,
    pub connections: ConnectionGauges,
}

/// How a request that waited for room ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Its record is in the ring: 201.
    Admitted,
    /// `--queue-wait` ran out: 503 with `Retry-After`, the record dropped.
    GaveUp,
    /// The service stops before room freed up: 503, the record dropped.
    Stopping,
}

/// A fixed error answer: its JSON body, and the same words for the request log.
struct Fixed {
    json: &'static [u8],
    words: &'static str,
}

/// The words must need no JSON escaping.
macro_rules! fixed {
    ($words:literal) => {
        Fixed {
            json: concat!("{\"message\":\"", $words, "\"}").as_bytes(),
            words: $words,
        }
    };
}

const QUEUE_FULL: Fixed = fixed!("queue full, retry later");
const SHUTTING_DOWN: Fixed = fixed!("shutting down");
const TOKEN_MISSING: Fixed = fixed!("a bearer token is required: Authorization: Bearer <token>");
const TOKEN_WRONG: Fixed = fixed!("wrong bearer token");

/// Longest reason kept for a request log line.
const REASON_MAX: usize = 100;

/// The words of the error answer being written, for its request log line. Copied
/// when the answer is built (into a fixed array: no allocation), logged and cleared
/// by `exchanged`, which runs right after the answer is written.
struct Reason {
    bytes: [u8; REASON_MAX + 3],
    len: usize,
}

impl Reason {
    const fn new() -> Reason {
        Reason {
            bytes: [0; REASON_MAX + 3],
            len: 0,
        }
    }

    /// Keeps `text`, cut at a character boundary past `REASON_MAX` bytes, marked `...`.
    fn set(&mut self, text: &str) {
        let mut len = text.len().min(REASON_MAX);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        self.bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        if len < text.len() {
            self.bytes[len..len + 3].copy_from_slice(b"...");
            len += 3;
        }
        self.len = len;
    }

    fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes[..self.len])
            .ok()
            .filter(|s| !s.is_empty())
    }
}

impl Peer<'_> {
    /// Every answer but a record's: those are `accept_record`'s.
    fn answer_now(&mut self, route: Route) -> Response<'_> {
        let draining = self.pipeline.is_draining();
        let mut answer = if !route.granted() {
            self.unauthorized(route)
        } else if !route.method_allowed {
            let mut r = self.error(405, "method not allowed");
            r.allow = Some(route.allow());
            r
        } else {
            match route.endpoint {
                Endpoint::Health => Response::text(200, b"OK"),
                // Readiness: a load balancer stops sending once the drain begins.
                Endpoint::Ready if draining => Response::text(503, b"draining"),
                Endpoint::Ready => Response::text(200, b"OK"),
                Endpoint::Log if !route.admitted => self.shutting_down(),
                // Asked before the body (Expect: 100-continue) with no room and no
                // waiting allowed.
                Endpoint::Log => self.queue_full(),
                Endpoint::Metrics => self.render_metrics(),
                Endpoint::Unknown => self.error(404, "not found"),
            }
        };
        answer.close |= draining;
        answer
    }

    /// Decodes the record and offers it to the pipeline: 201, a deferred answer while
    /// it waits for room, 503 when it may not wait, 400 when it is not a record, 413
    /// when what would be forwarded is larger than a body may be.
    fn accept_record(&mut self, body: &[u8]) -> Reply<'_> {
        let draining = self.pipeline.is_draining();
        let mut answer = match record::decode_within(body, self.service.max_record_bytes) {
            Ok(record) => {
                match self
                    .pipeline
                    .offer(record, body.len(), self.ticket, self.service.now)
                {
                    Offer::Accepted => Response::text(201, b"accepted"),
                    Offer::Waiting => return Reply::Later,
                    Offer::Full => self.queue_full(),
                }
            }
            // `exchanged` counts every 413 on /log as too large.
            Err(rejection @ Rejection::TooLarge(_)) => self.error(413, rejection.message()),
            Err(rejection) => {
                let reason = match rejection {
                    Rejection::Malformed(_) => Rejected::Malformed,
                    _ => Rejected::Invalid,
                };
                self.service.metrics.count_rejected(reason);
                self.error(400, rejection.message())
            }
        };
        answer.close |= draining;
        Reply::Now(answer)
    }

    fn render_metrics(&mut self) -> Response<'_> {
        let gauges = Gauges {
            queued: self.pipeline.waiting(),
            in_flight: self.pipeline.in_flight(),
            batches_in_flight: self.pipeline.batches_in_flight(),
            capacity: self.pipeline.capacity(),
            open_connections: self.connections.open,
            accepted_connections: self.connections.accepted_total,
            evicted_connections: self.connections.evicted_total,
            waiting_requests: self.pipeline.waiting_requests(),
            delivery: self.pipeline.totals(),
        };
        let service = &mut *self.service;
        service.scratch.clear();
        service.metrics.render(
            &mut service.scratch,
            &gauges,
            &service.worker_stats,
            &crate::process::read(),
        );
        let mut r = Response::text(200, &service.scratch);
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        r
    }

    fn queue_full(&mut self) -> Response<'static> {
        self.service.metrics.count_rejected(Rejected::QueueFull);
        let mut r = self.fixed(503, &QUEUE_FULL);
        r.retry_after = Some(1);
        r
    }

    fn fixed(&mut self, status: u16, answer: &Fixed) -> Response<'static> {
        self.service.reason.set(answer.words);
        Response::json(status, answer.json)
    }

    /// The deferred answer to a request that waited for room.
    pub fn after_wait(&mut self, outcome: WaitOutcome) -> Response<'static> {
        let mut answer = match outcome {
            WaitOutcome::Admitted => Response::text(201, b"accepted"),
            WaitOutcome::GaveUp => self.queue_full(),
            WaitOutcome::Stopping => {
                self.service.metrics.count_rejected(Rejected::QueueFull);
                self.shutting_down()
            }
        };
        answer.close |= self.pipeline.is_draining();
        answer
    }

    /// 401 before anything else is looked at: no hint of what the route would do.
    fn unauthorized(&mut self, route: Route) -> Response<'static> {
        self.service.metrics.count_unauthorized(route.endpoint);
        let answer = match route.access {
            Access::Wrong => &TOKEN_WRONG,
            _ => &TOKEN_MISSING,
        };
        let mut r = self.fixed(401, answer);
        r.www_authenticate = Some("Bearer");
        r
    }

    fn shutting_down(&mut self) -> Response<'static> {
        let mut r = self.fixed(503, &SHUTTING_DOWN);
        r.close = true;
        r
    }

    fn error(&mut self, status: u16, message: &str) -> Response<'_> {
        self.service.reason.set(message);
        let scratch = &mut self.service.scratch;
        scratch.clear();
        response::write_json_message(scratch, message);
        Response::json(status, scratch)
    }
}

impl Handler for Peer<'_> {
    type Route = Route;

    fn route(&mut self, method: Method, path: &str, authorization: Option<&[u8]>) -> Route {
        let endpoint = match path {
            "/healthz" => Endpoint::Health,
            "/readyz" => Endpoint::Ready,
            "/log" => Endpoint::Log,
            "/metrics" => Endpoint::Metrics,
            _ => Endpoint::Unknown,
        };
        let method_allowed = match endpoint {
            Endpoint::Log => method == Method::Post,
            Endpoint::Health | Endpoint::Ready | Endpoint::Metrics => {
                matches!(method, Method::Get | Method::Head)
            }
            Endpoint::Unknown => true,
        };
        // Only what carries records or tells about them is guarded; probes stay open.
        let access = match (&self.service.auth, endpoint) {
            (Some(token), Endpoint::Log | Endpoint::Metrics) => token.check(authorization),
            _ => Access::Open,
        };
        Route {
            endpoint,
            method_allowed,
            admitted: !self.pipeline.is_draining(),
            access,
        }
    }

    fn early_answer(&mut self, route: Route) -> Option<Response<'_>> {
        let wants_body = route.method_allowed
            && route.admitted
            && route.granted()
            && match route.endpoint {
                // A request that may wait for room is read while it waits.
                Endpoint::Log => self.pipeline.has_room() || self.pipeline.may_wait(),
                Endpoint::Health | Endpoint::Ready => true,
                Endpoint::Metrics | Endpoint::Unknown => false,
            };
        if wants_body {
            None
        } else {
            Some(self.answer_now(route))
        }
    }

    fn respond(&mut self, route: Route, body: &[u8]) -> Reply<'_> {
        if route.endpoint == Endpoint::Log && route.method_allowed {
            self.service.metrics.count_request_body(body.len());
        }
        if route.endpoint == Endpoint::Log
            && route.method_allowed
            && route.admitted
            && route.granted()
        {
            self.accept_record(body)
        } else {
            Reply::Now(self.answer_now(route))
        }
    }

    fn exchanged(&mut self, exchange: &Exchange<'_, Route>) {
        let endpoint = exchange.route.map_or(Endpoint::Unknown, |r| r.endpoint);
        self.service
            .metrics
            .count_request(endpoint, exchange.status);
        if endpoint == Endpoint::Log && exchange.status == 413 {
            self.service.metrics.count_rejected(Rejected::TooLarge);
        }
        let duration_us = exchange.started.elapsed().as_micros() as u64;
        // An error's line says why, in the words its answer gave.
        let reason = match exchange.refused {
            Some(refused) => Some(refused),
            None => self.service.reason.as_str(),
        }
        .filter(|_| exchange.status >= 400);
        crate::logging::request(&RequestLine {
            method: exchange.method,
            path: exchange.path,
            status: exchange.status,
            duration_us,
            waited_ms: exchange.waited.map(|w| w.as_millis() as u64),
            remote: self.remote,
            reason,
        });
        self.service.reason.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary_and_marked() {
        let mut reason = Reason::new();
        assert_eq!(reason.as_str(), None);
        reason.set("user_id: missing");
        assert_eq!(reason.as_str(), Some("user_id: missing"));
        let long = format!("{}é{}", "a".repeat(REASON_MAX - 1), "b".repeat(50));
        reason.set(&long);
        let kept = reason.as_str().unwrap();
        assert_eq!(kept, format!("{}...", "a".repeat(REASON_MAX - 1)));
        assert_eq!(QUEUE_FULL.json, br#"{"message":"queue full, retry later"}"#);
    }
}
