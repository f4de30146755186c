//! The application behind the HTTP layer: routes, records decoded and handed to the
//! pipeline, answers, request metrics and the request log.
//!
//! Everything here runs on the poll loop's thread, between a request's last byte and
//! its response: route, decode, validate, queue, answer. It never blocks and, once
//! warm, allocates nothing but the record itself.

use std::sync::Arc;
use std::time::Instant;

use log::info;

use crate::http::response::{self, Response};
use crate::http::{Exchange, Handler, Method, Reply};
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
}

impl Route {
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
}

/// Connection figures the connection table owns, copied in for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionGauges {
    pub open: usize,
    pub accepted_total: u64,
}

impl Service {
    pub fn new(worker_stats: Arc<WorkerStats>, max_record_bytes: usize, now: Instant) -> Service {
        Service {
            metrics: Metrics::default(),
            max_record_bytes,
            worker_stats,
            now,
            scratch: Vec::with_capacity(256),
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

const QUEUE_FULL: &[u8] = br#"{"message":"queue full, retry later"}"#;
const SHUTTING_DOWN: &[u8] = br#"{"message":"shutting down"}"#;

fn queue_full() -> Response<'static> {
    let mut r = Response::json(503, QUEUE_FULL);
    r.retry_after = Some(1);
    r
}

impl Peer<'_> {
    /// Every answer but a record's: those are `accept_record`'s.
    fn answer_now(&mut self, route: Route) -> Response<'_> {
        let draining = self.pipeline.is_draining();
        let mut answer = if !route.method_allowed {
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
            capacity: self.pipeline.capacity(),
            open_connections: self.connections.open,
            accepted_connections: self.connections.accepted_total,
            waiting_requests: self.pipeline.waiting_requests(),
            delivery: self.pipeline.totals(),
        };
        let service = &mut *self.service;
        service.scratch.clear();
        service
            .metrics
            .render(&mut service.scratch, &gauges, &service.worker_stats);
        let mut r = Response::text(200, &service.scratch);
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        r
    }

    fn queue_full(&mut self) -> Response<'static> {
        self.service.metrics.count_rejected(Rejected::QueueFull);
        queue_full()
    }

    /// The deferred answer to a request that waited for room.
    pub fn after_wait(&mut self, outcome: WaitOutcome) -> Response<'static> {
        let mut answer = match outcome {
            WaitOutcome::Admitted => Response::text(201, b"accepted"),
            WaitOutcome::GaveUp => self.queue_full(),
            WaitOutcome::Stopping => {
                self.service.metrics.count_rejected(Rejected::QueueFull);
                let mut r = Response::json(503, SHUTTING_DOWN);
                r.close = true;
                r
            }
        };
        answer.close |= self.pipeline.is_draining();
        answer
    }

    fn shutting_down(&mut self) -> Response<'static> {
        let mut r = Response::json(503, SHUTTING_DOWN);
        r.close = true;
        r
    }

    fn error(&mut self, status: u16, message: &str) -> Response<'_> {
        let scratch = &mut self.service.scratch;
        scratch.clear();
        response::write_json_message(scratch, message);
        Response::json(status, scratch)
    }
}

impl Handler for Peer<'_> {
    type Route = Route;

    fn route(&mut self, method: Method, path: &str) -> Route {
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
        Route {
            endpoint,
            method_allowed,
            admitted: !self.pipeline.is_draining(),
        }
    }

    fn early_answer(&mut self, route: Route) -> Option<Response<'_>> {
        let wants_body = route.method_allowed
            && route.admitted
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
        if route.endpoint == Endpoint::Log && route.method_allowed && route.admitted {
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
        match exchange.waited {
            None => info!(
                method = exchange.method,
                path = exchange.path,
                status = exchange.status,
                duration_us = duration_us,
                remote = self.remote;
                "request"
            ),
            Some(waited) => info!(
                method = exchange.method,
                path = exchange.path,
                status = exchange.status,
                duration_us = duration_us,
                waited_ms = waited.as_millis() as u64,
                remote = self.remote;
                "request"
            ),
        }
    }
}
