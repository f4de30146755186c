//! The application behind the HTTP layer: routes, the record queue, and metrics.
//!
//! Everything here runs on the poll loop's thread, between a request's last byte and
//! its response: route, decode, validate, queue, answer. It never blocks and, once
//! warm, allocates nothing but the record itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;

use crate::http::response::{self, Response};
use crate::http::{Exchange, Handler, Method};
use crate::metrics::{Endpoint, Metrics, QueueGauges, Rejected, WorkerStats};
use crate::record::{self, Record, Rejection};
use crate::ring::Ring;

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

struct Queued {
    record: Record,
    arrived: Instant,
}

/// The records between `POST /log` and a delivered batch.
pub struct Queue {
    ring: Ring<Queued>,
    /// Records handed to the worker and not yet confirmed; they count against capacity
    /// so the ring's size bounds all records in memory.
    in_flight: usize,
    batch_size: usize,
    interval: Option<Duration>,
    /// The emptied vector of the last delivered batch, reused for the next.
    spare_batch: Vec<Record>,
}

impl Queue {
    pub fn new(capacity: usize, batch_size: usize, interval: Option<Duration>) -> Queue {
        Queue {
            ring: Ring::with_capacity(capacity),
            in_flight: 0,
            batch_size,
            interval,
            spare_batch: Vec::new(),
        }
    }

    fn has_room(&self) -> bool {
        self.ring.len() + self.in_flight < self.ring.capacity()
    }

    pub fn waiting(&self) -> usize {
        self.ring.len()
    }

    /// Most records in one batch: batch size, or all the ring holds when that is 0.
    pub fn batch_limit(&self) -> usize {
        if self.batch_size == 0 {
            self.ring.capacity()
        } else {
            self.batch_size
        }
    }

    /// When the oldest waiting record's batch becomes due by time.
    pub fn time_deadline(&self) -> Option<Instant> {
        Some(self.ring.front()?.arrived + self.interval?)
    }

    pub fn batch_due(&self, now: Instant) -> bool {
        let by_size = self.batch_size > 0 && self.ring.len() >= self.batch_size;
        by_size || self.time_deadline().is_some_and(|due| now >= due)
    }

    /// Takes the next batch out of the ring; it stays counted until `delivered`.
    pub fn take_batch(&mut self) -> Vec<Record> {
        let mut batch = self.empty_batch();
        let count = self.ring.len().min(self.batch_limit());
        batch.extend((0..count).filter_map(|_| self.ring.pop()).map(|q| q.record));
        self.in_flight = batch.len();
        batch
    }

    /// A cleared vector for a batch, reusing the last one's allocation.
    pub fn empty_batch(&mut self) -> Vec<Record> {
        let mut batch = std::mem::take(&mut self.spare_batch);
        batch.clear();
        batch
    }

    /// The batch taken from the ring was delivered; its records leave memory.
    pub fn delivered(&mut self, emptied: Vec<Record>) {
        self.in_flight = 0;
        self.spare_batch = emptied;
    }

    /// A batch of replayed records was delivered; only its allocation comes back.
    pub fn delivered_replay(&mut self, emptied: Vec<Record>) {
        self.spare_batch = emptied;
    }

    /// Every waiting record, oldest first (for the dead-letter file).
    pub fn drain_waiting(&mut self) -> Vec<Record> {
        std::iter::from_fn(|| self.ring.pop())
            .map(|q| q.record)
            .collect()
    }
}

/// The application state the handler works on.
pub struct App {
    pub queue: Queue,
    pub metrics: Metrics,
    pub worker_stats: Arc<WorkerStats>,
    /// Shutdown began: new requests are refused and every answer closes its connection.
    pub draining: bool,
    /// The loop turn's time, so a request costs no clock read for its arrival.
    pub now: Instant,
    /// Error bodies and metrics are built here, reused from request to request.
    scratch: Vec<u8>,
}

impl App {
    pub fn new(queue: Queue, worker_stats: Arc<WorkerStats>, now: Instant) -> App {
        App {
            queue,
            metrics: Metrics::default(),
            worker_stats,
            draining: false,
            now,
            scratch: Vec::with_capacity(256),
        }
    }

    fn respond(&mut self, route: Route, body: &[u8]) -> Response<'_> {
        let draining = self.draining;
        let mut answer = if !route.method_allowed {
            let mut r = self.error(405, "method not allowed");
            r.allow = Some(route.allow());
            r
        } else {
            match route.endpoint {
                Endpoint::Health => Response::text(200, b"OK"),
                Endpoint::Log if !route.admitted => self.shutting_down(),
                Endpoint::Log => self.accept_record(body),
                Endpoint::Metrics => self.render_metrics(),
                Endpoint::Unknown => self.error(404, "not found"),
            }
        };
        answer.close |= draining;
        answer
    }

    fn accept_record(&mut self, body: &[u8]) -> Response<'_> {
        if !self.queue.has_room() {
            return self.queue_full();
        }
        // TODO(issue14): pass limits.max_body_bytes; the default stands in until then.
        match record::decode_within(body, crate::http::Limits::default().max_body_bytes) {
            Ok(record) => {
                let queued = Queued {
                    record,
                    arrived: self.now,
                };
                // has_room() above guarantees the ring has a free slot.
                if self.queue.ring.push(queued).is_err() {
                    return self.queue_full();
                }
                self.metrics.accepted += 1;
                Response::text(201, b"accepted")
            }
            Err(rejection) => {
                let reason = match rejection {
                    Rejection::Malformed(_) => Rejected::Malformed,
                    Rejection::Invalid(_) => Rejected::Invalid,
                    // `exchanged` counts every 413 on /log as too large.
                    Rejection::TooLarge(_) => return self.error(413, rejection.message()),
                };
                self.metrics.count_rejected(reason);
                self.error(400, rejection.message())
            }
        }
    }

    fn render_metrics(&mut self) -> Response<'_> {
        self.scratch.clear();
        let gauges = QueueGauges {
            queued: self.queue.ring.len(),
            in_flight: self.queue.in_flight,
            capacity: self.queue.ring.capacity(),
        };
        self.metrics
            .render(&mut self.scratch, &gauges, &self.worker_stats);
        let mut r = Response::text(200, &self.scratch);
        r.content_type = "text/plain; version=0.0.4; charset=utf-8";
        r
    }

    fn queue_full(&mut self) -> Response<'_> {
        self.metrics.count_rejected(Rejected::QueueFull);
        let mut r = self.error(503, "queue full, retry later");
        r.retry_after = Some(1);
        r
    }

    fn shutting_down(&mut self) -> Response<'_> {
        let mut r = self.error(503, "shutting down");
        r.close = true;
        r
    }

    fn error(&mut self, status: u16, message: &str) -> Response<'_> {
        self.scratch.clear();
        response::write_json_message(&mut self.scratch, message);
        Response::json(status, &self.scratch)
    }
}

/// The application as seen by one connection's requests (adds the peer for the log).
pub struct Peer<'a> {
    pub app: &'a mut App,
    pub remote: &'a str,
}

impl Handler for Peer<'_> {
    type Route = Route;

    fn route(&mut self, method: Method, path: &str) -> Route {
        let endpoint = match path {
            "/healthz" => Endpoint::Health,
            "/log" => Endpoint::Log,
            "/metrics" => Endpoint::Metrics,
            _ => Endpoint::Unknown,
        };
        let method_allowed = match endpoint {
            Endpoint::Log => method == Method::Post,
            Endpoint::Health | Endpoint::Metrics => matches!(method, Method::Get | Method::Head),
            Endpoint::Unknown => true,
        };
        Route {
            endpoint,
            method_allowed,
            admitted: !self.app.draining,
        }
    }

    fn early_answer(&mut self, route: Route) -> Option<Response<'_>> {
        let wants_body = route.method_allowed
            && route.admitted
            && match route.endpoint {
                Endpoint::Log => self.app.queue.has_room(),
                Endpoint::Health => true,
                Endpoint::Metrics | Endpoint::Unknown => false,
            };
        if wants_body {
            None
        } else {
            Some(self.app.respond(route, b""))
        }
    }

    fn respond(&mut self, route: Route, body: &[u8]) -> Response<'_> {
        self.app.respond(route, body)
    }

    fn exchanged(&mut self, exchange: &Exchange<'_, Route>) {
        let endpoint = exchange.route.map_or(Endpoint::Unknown, |r| r.endpoint);
        self.app.metrics.count_request(endpoint, exchange.status);
        if endpoint == Endpoint::Log && exchange.status == 413 {
            self.app.metrics.count_rejected(Rejected::TooLarge);
        }
        let duration_us = exchange.started.elapsed().as_micros() as u64;
        info!(
            method = exchange.method,
            path = exchange.path,
            status = exchange.status,
            duration_us = duration_us,
            remote = self.remote;
            "request"
        );
    }
}
