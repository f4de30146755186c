//! Counters the loop and the worker keep anyway, rendered by hand in the Prometheus
//! text format for `GET /metrics`.
//!
//! The loop's counters are plain integers (one thread owns them); the worker's are
//! atomics it bumps once per attempt. Rendering is a few microseconds of formatting on
//! the loop thread, so a scrape never stalls `/log` for longer than one request.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::http::response::{STATUSES, status_index};
use crate::process::Process;
use crate::text::push_decimal;

/// What a request was for, as far as metrics care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Log,
    Metrics,
    Unknown,
}

impl Endpoint {
    const ALL: [Endpoint; 5] = [
        Endpoint::Health,
        Endpoint::Ready,
        Endpoint::Log,
        Endpoint::Metrics,
        Endpoint::Unknown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Health => "/healthz",
            Endpoint::Ready => "/readyz",
            Endpoint::Log => "/log",
            Endpoint::Metrics => "/metrics",
            Endpoint::Unknown => "other",
        }
    }

    /// The codes this route can be answered with, shown at 0 from the start so that
    /// rates and alerts work before the first such answer. Every routed request can
    /// also meet the HTTP layer's refusals (framing, size, time, expectations).
    fn possible_codes(self) -> &'static [u16] {
        match self {
            Endpoint::Health => &[200, 400, 405, 408, 413, 417, 501],
            Endpoint::Ready => &[200, 400, 405, 408, 413, 417, 501, 503],
            Endpoint::Log => &[201, 400, 401, 405, 408, 413, 417, 501, 503],
            Endpoint::Metrics => &[200, 400, 401, 405, 408, 413, 417, 501],
            // Unknown paths, and requests refused before they could be routed.
            Endpoint::Unknown => &[400, 404, 408, 413, 417, 431, 501, 505],
        }
    }
}

/// The statuses a request can be counted under (`STATUSES`), and `other` last.
const CODES: usize = STATUSES.len();

#[derive(Debug, Clone, Copy)]
pub enum Rejected {
    Malformed,
    Invalid,
    TooLarge,
    QueueFull,
}

/// Upper bounds (seconds) of the POST duration histogram.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Kept by the worker thread.
#[derive(Default)]
pub struct WorkerStats {
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_sum_us: AtomicU64,
    /// Batch bodies as sent (compressed, when they are), every attempt counted.
    batch_body_bytes: AtomicU64,
    /// Unix time in milliseconds of the last 2xx; 0 before any.
    last_delivery_ms: AtomicU64,
}

fn bucket_of(took: Duration) -> usize {
    let seconds = took.as_secs_f64();
    DURATION_BUCKETS
        .iter()
        .position(|&le| seconds <= le)
        .unwrap_or(DURATION_BUCKETS.len())
}

impl WorkerStats {
    pub fn observe_post(&self, took: Duration) {
        self.buckets[bucket_of(took)].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// A batch body of `bytes` went out to the endpoint.
    pub fn observe_sent(&self, bytes: usize) {
        self.batch_body_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The endpoint answered 2xx at `at`.
    pub fn observe_delivery(&self, at: SystemTime) {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.last_delivery_ms.store(ms, Ordering::Relaxed);
    }
}

/// A duration histogram kept by one thread (the loop's counterpart of `WorkerStats`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Histogram {
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    sum_us: u64,
}

impl Histogram {
    pub fn observe(&mut self, took: Duration) {
        self.buckets[bucket_of(took)] += 1;
        self.sum_us += took.as_micros() as u64;
    }
}

/// Delivery and queue-wait totals; the pipeline keeps them, `/metrics` shows them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub accepted: u64,
    pub delivered: u64,
    /// Records the endpoint refused (400, 413, 422), set aside in the dead-letter file.
    pub set_aside: u64,
    pub batches_delivered: u64,
    pub batches_failed: u64,
    /// Requests that found the queue full and waited for room.
    pub waited: u64,
    /// Of those, the ones answered 503 after `--queue-wait`.
    pub gave_up: u64,
    pub wait: Histogram,
}

/// Kept by the loop thread.
pub struct Metrics {
    requests: [[u64; CODES + 1]; Endpoint::ALL.len()],
    rejected: [u64; 4],
    /// 401s, by endpoint: a missing or wrong bearer token.
    unauthorized: [u64; Endpoint::ALL.len()],
    /// Bodies of `POST /log` requests received, whatever their answer.
    request_body_bytes: u64,
    pub dead_lettered: u64,
    start_time: SystemTime,
}

/// Figures other owners keep (the pipeline, the connection table), read at render time.
pub struct Gauges {
    pub queued: usize,
    pub in_flight: usize,
    pub batches_in_flight: usize,
    pub capacity: usize,
    pub open_connections: usize,
    pub accepted_connections: u64,
    pub evicted_connections: u64,
    /// Requests waiting for queue room now.
    pub waiting_requests: usize,
    pub delivery: Totals,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: [[0; CODES + 1]; Endpoint::ALL.len()],
            rejected: [0; 4],
            unauthorized: [0; Endpoint::ALL.len()],
            request_body_bytes: 0,
            dead_lettered: 0,
            start_time: SystemTime::now(),
        }
    }
}

impl Metrics {
    pub fn count_request(&mut self, endpoint: Endpoint, status: u16) {
        let code = status_index(status).unwrap_or(CODES);
        self.requests[endpoint as usize][code] += 1;
    }

    pub fn count_rejected(&mut self, why: Rejected) {
        self.rejected[why as usize] += 1;
    }

    pub fn count_unauthorized(&mut self, endpoint: Endpoint) {
        self.unauthorized[endpoint as usize] += 1;
    }

    pub fn count_request_body(&mut self, bytes: usize) {
        self.request_body_bytes += bytes as u64;
    }

    /// `process` is passed in (read from `/proc` by the caller) so that tests can
    /// render known figures.
    pub fn render(
        &self,
        out: &mut Vec<u8>,
        gauges: &Gauges,
        worker: &WorkerStats,
        process: &Process,
    ) {
        self.render_requests(out);
        self.render_delivery(out, gauges, worker);
        self.render_process(out, process);
    }

    /// Build info, requests by route and status, bodies received, refusals.
    fn render_requests(&self, out: &mut Vec<u8>) {
        header(
            out,
            "webhook_build_info",
            "gauge",
            "Always 1; the version of the running binary is in its label.",
        );
        labelled(
            out,
            "webhook_build_info",
            "version",
            env!("CARGO_PKG_VERSION"),
            1,
        );
        header(
            out,
            "webhook_http_requests_total",
            "counter",
            "HTTP requests answered, by route and status code.",
        );
        for endpoint in Endpoint::ALL {
            for (i, &count) in self.requests[endpoint as usize].iter().enumerate() {
                let possible = STATUSES
                    .get(i)
                    .is_some_and(|(code, _)| endpoint.possible_codes().contains(code));
                if count == 0 && !possible {
                    continue;
                }
                out.extend_from_slice(b"webhook_http_requests_total{route=\"");
                out.extend_from_slice(endpoint.label().as_bytes());
                out.extend_from_slice(b"\",code=\"");
                match STATUSES.get(i) {
                    Some(&(code, _)) => push_decimal(out, u64::from(code)),
                    None => out.extend_from_slice(b"other"),
                }
                out.extend_from_slice(b"\"} ");
                push_decimal(out, count);
                out.push(b'\n');
            }
        }
        counter(
            out,
            "webhook_request_body_bytes_total",
            "Bytes of POST /log request bodies received.",
            self.request_body_bytes,
        );
    }

    /// Records, batches, POSTs, the queue and its waits, connections, the log.
    fn render_delivery(&self, out: &mut Vec<u8>, gauges: &Gauges, worker: &WorkerStats) {
        counter(
            out,
            "webhook_records_accepted_total",
            "Records answered 201 and queued.",
            gauges.delivery.accepted,
        );
        header(
            out,
            "webhook_records_rejected_total",
            "counter",
            "Records not accepted, by reason.",
        );
        for (reason, count) in ["malformed", "invalid", "too_large", "queue_full"]
            .iter()
            .zip(self.rejected)
        {
            labelled(
                out,
                "webhook_records_rejected_total",
                "reason",
                reason,
                count,
            );
        }
        header(
            out,
            "webhook_unauthorized_requests_total",
            "counter",
            "Requests answered 401 for a missing or wrong bearer token, by route.",
        );
        for endpoint in [Endpoint::Log, Endpoint::Metrics] {
            labelled(
                out,
                "webhook_unauthorized_requests_total",
                "route",
                endpoint.label(),
                self.unauthorized[endpoint as usize],
            );
        }
        counter(
            out,
            "webhook_records_forwarded_total",
            "Records delivered to the endpoint.",
            gauges.delivery.delivered,
        );
        counter(
            out,
            "webhook_records_refused_by_endpoint_total",
            "Records the endpoint refused (400, 413, 422), set aside in the dead-letter file.",
            gauges.delivery.set_aside,
        );
        counter(
            out,
            "webhook_records_dead_lettered_total",
            "Records written to the dead-letter file.",
            self.dead_lettered,
        );
        header(
            out,
            "webhook_batches_total",
            "counter",
            "Batches finished, by result.",
        );
        labelled(
            out,
            "webhook_batches_total",
            "result",
            "delivered",
            gauges.delivery.batches_delivered,
        );
        labelled(
            out,
            "webhook_batches_total",
            "result",
            "failed",
            gauges.delivery.batches_failed,
        );
        counter(
            out,
            "webhook_post_attempts_total",
            "POST attempts, first tries and retries.",
            worker.attempts.load(Ordering::Relaxed),
        );
        counter(
            out,
            "webhook_post_retries_total",
            "POST attempts that were retries.",
            worker.retries.load(Ordering::Relaxed),
        );
        counter(
            out,
            "webhook_batch_body_bytes_total",
            "Bytes of batch bodies posted to the endpoint, as sent, retries included.",
            worker.batch_body_bytes.load(Ordering::Relaxed),
        );
        header(
            out,
            "webhook_last_delivery_timestamp_seconds",
            "gauge",
            "When the endpoint last answered a batch with 2xx, Unix seconds; 0 before any.",
        );
        let last_ms = worker.last_delivery_ms.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "webhook_last_delivery_timestamp_seconds {}",
            last_ms as f64 / 1000.0
        );

        let mut post = Histogram::default();
        for (count, bucket) in post.buckets.iter_mut().zip(&worker.buckets) {
            *count = bucket.load(Ordering::Relaxed);
        }
        post.sum_us = worker.duration_sum_us.load(Ordering::Relaxed);
        histogram(
            out,
            "webhook_post_duration_seconds",
            "Duration of one POST attempt.",
            &post,
        );
        gauge(
            out,
            "webhook_requests_waiting",
            "POST /log requests waiting for queue room now.",
            gauges.waiting_requests as u64,
        );
        counter(
            out,
            "webhook_requests_waited_total",
            "POST /log requests that found the queue full and waited for room.",
            gauges.delivery.waited,
        );
        counter(
            out,
            "webhook_requests_wait_expired_total",
            "Requests answered 503 after waiting --queue-wait for room.",
            gauges.delivery.gave_up,
        );
        histogram(
            out,
            "webhook_queue_wait_seconds",
            "How long requests waited for queue room (admitted or not).",
            &gauges.delivery.wait,
        );

        gauge(
            out,
            "webhook_records_queued",
            "Records waiting for a batch.",
            gauges.queued as u64,
        );
        gauge(
            out,
            "webhook_records_in_flight",
            "Records in the batches the worker holds.",
            gauges.in_flight as u64,
        );
        gauge(
            out,
            "webhook_batch_in_flight",
            "Batches the worker holds: the one being posted, and perhaps the next.",
            gauges.batches_in_flight as u64,
        );
        gauge(
            out,
            "webhook_queue_capacity",
            "Records the ring can hold, in flight included.",
            gauges.capacity as u64,
        );
        gauge(
            out,
            "webhook_open_connections",
            "Client connections open now.",
            gauges.open_connections as u64,
        );
        counter(
            out,
            "webhook_connections_accepted_total",
            "Client connections accepted.",
            gauges.accepted_connections,
        );
        counter(
            out,
            "webhook_connections_evicted_total",
            "Idle client connections closed to make room for a new one at the connection limit.",
            gauges.evicted_connections,
        );
        counter(
            out,
            "webhook_log_lines_dropped_total",
            "Log lines dropped because stderr was not taking them.",
            crate::logging::dropped_lines(),
        );
    }

    /// The standard `process_*` series.
    fn render_process(&self, out: &mut Vec<u8>, process: &Process) {
        let start = self
            .start_time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        header(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        let _ = writeln!(out, "process_start_time_seconds {start}");
        if let Some(seconds) = process.cpu_seconds {
            header(
                out,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
            );
            let _ = writeln!(out, "process_cpu_seconds_total {seconds}");
        }
        let figures = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                process.resident_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                process.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                process.max_fds,
            ),
        ];
        for (name, help, value) in figures {
            if let Some(value) = value {
                gauge(out, name, help, value);
            }
        }
    }
}

fn format_float(x: f64) -> String {
    // Prometheus takes Go-style floats; Rust's shortest round-trip form is valid.
    format!("{x}")
}

fn histogram(out: &mut Vec<u8>, name: &str, help: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    let mut cumulative = 0;
    for (i, count) in h.buckets.iter().enumerate() {
        cumulative += count;
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"_bucket{le=\"");
        match DURATION_BUCKETS.get(i) {
            Some(le) => out.extend_from_slice(format_float(*le).as_bytes()),
            None => out.extend_from_slice(b"+Inf"),
        }
        out.extend_from_slice(b"\"} ");
        push_decimal(out, cumulative);
        out.push(b'\n');
    }
    let sum = h.sum_us as f64 / 1e6;
    out.extend_from_slice(format!("{name}_sum {}\n", format_float(sum)).as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"_count ");
    push_decimal(out, cumulative);
    out.push(b'\n');
}

fn header(out: &mut Vec<u8>, name: &str, kind: &str, help: &str) {
    out.extend_from_slice(format!("# HELP {name} {help}\n# TYPE {name} {kind}\n").as_bytes());
}

fn counter(out: &mut Vec<u8>, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    sample(out, name, value);
}

fn gauge(out: &mut Vec<u8>, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    sample(out, name, value);
}

fn sample(out: &mut Vec<u8>, name: &str, value: u64) {
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    push_decimal(out, value);
    out.push(b'\n');
}

fn labelled(out: &mut Vec<u8>, name: &str, label: &str, value: &str, count: u64) {
    out.extend_from_slice(format!("{name}{{{label}=\"{value}\"}} ").as_bytes());
    push_decimal(out, count);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let mut m = Metrics::default();
        m.count_request(Endpoint::Log, 201);
        m.count_request(Endpoint::Log, 201);
        m.count_request(Endpoint::Unknown, 404);
        m.count_request(Endpoint::Health, 299);
        m.count_rejected(Rejected::QueueFull);
        let worker = WorkerStats::default();
        worker.observe_post(Duration::from_millis(3));
        worker.observe_post(Duration::from_millis(30));
        worker.observe_post(Duration::from_secs(60));
        worker.observe_sent(1500);
        worker.observe_sent(500);
        m.count_request_body(230);
        let process = Process {
            resident_bytes: Some(5 << 20),
            cpu_seconds: Some(1.25),
            open_fds: Some(12),
            max_fds: None,
        };
        let mut out = Vec::new();
        m.render(
            &mut out,
            &Gauges {
                queued: 3,
                in_flight: 0,
                batches_in_flight: 0,
                capacity: 20,
                open_connections: 1,
                accepted_connections: 4,
                evicted_connections: 2,
                waiting_requests: 2,
                delivery: Totals {
                    accepted: 2,
                    ..Totals::default()
                },
            },
            &worker,
            &process,
        );
        let text = String::from_utf8(out).unwrap();
        for line in [
            "webhook_http_requests_total{route=\"/log\",code=\"201\"} 2",
            "webhook_http_requests_total{route=\"other\",code=\"404\"} 1",
            "webhook_http_requests_total{route=\"/healthz\",code=\"other\"} 1",
            "webhook_records_rejected_total{reason=\"queue_full\"} 1",
            "webhook_records_accepted_total 2",
            "webhook_post_duration_seconds_bucket{le=\"0.005\"} 1",
            "webhook_post_duration_seconds_bucket{le=\"0.05\"} 2",
            "webhook_post_duration_seconds_bucket{le=\"10\"} 2",
            "webhook_post_duration_seconds_bucket{le=\"+Inf\"} 3",
            "webhook_post_duration_seconds_count 3",
            "webhook_records_queued 3",
            "webhook_requests_waiting 2",
            "webhook_queue_wait_seconds_count 0",
            "webhook_open_connections 1",
            "webhook_connections_accepted_total 4",
            "webhook_connections_evicted_total 2",
            "# TYPE webhook_post_duration_seconds histogram",
            concat!(
                "webhook_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
            "webhook_request_body_bytes_total 230",
            "webhook_batch_body_bytes_total 2000",
            "webhook_last_delivery_timestamp_seconds 0",
            "process_resident_memory_bytes 5242880",
            "process_cpu_seconds_total 1.25",
            "# TYPE process_cpu_seconds_total counter",
            "process_open_fds 12",
            // Known routes and codes are there before their first request.
            "webhook_http_requests_total{route=\"/metrics\",code=\"401\"} 0",
            "webhook_http_requests_total{route=\"/log\",code=\"503\"} 0",
            "webhook_http_requests_total{route=\"/readyz\",code=\"200\"} 0",
            "webhook_http_requests_total{route=\"other\",code=\"431\"} 0",
            "webhook_unauthorized_requests_total{route=\"/log\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // An unreadable figure is left out, not shown as 0; impossible pairs too.
        for absent in [
            "process_max_fds",
            "webhook_http_requests_total{route=\"/healthz\",code=\"201\"}",
            "webhook_http_requests_total{route=\"/log\",code=\"other\"}",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }

        worker.observe_delivery(UNIX_EPOCH + Duration::from_millis(1_764_489_600_250));
        let mut out = Vec::new();
        m.render(&mut out, &gauges(), &worker, &Process::default());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\nwebhook_last_delivery_timestamp_seconds 1764489600.25\n"),
            "{text}"
        );
        assert!(!text.contains("process_cpu"), "no /proc figures given");
    }

    fn gauges() -> Gauges {
        Gauges {
            queued: 0,
            in_flight: 0,
            batches_in_flight: 0,
            capacity: 20,
            open_connections: 0,
            accepted_connections: 0,
            evicted_connections: 0,
            waiting_requests: 0,
            delivery: Totals::default(),
        }
    }
}
