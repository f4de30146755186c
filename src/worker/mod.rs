//! The worker thread that POSTs batches, so the poll loop never waits on the network.
//!
//! The loop hands over batches in order, the next one while the last is posted (see
//! `pipeline::MAX_IN_FLIGHT`), and keeps serving; the worker serializes each (off the
//! loop thread), posts it with a keep-alive `ureq` agent, retries per the contract,
//! and wakes the loop through a `mio::Waker` with each outcome, in order. Whether a batch is in flight is the pipeline's to know, not this handle's:
//! the loop asks for an outcome only while the pipeline says one is owed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use log::{error, info, warn};

mod doorbell;
mod inbox;
mod proxy;
mod resolver;
mod transport;
mod turns;

use crate::config::{Outbound, PostCompression};
use crate::gzip::GzipEncoder;
use crate::metrics::WorkerStats;
use crate::record::Record;
use doorbell::Doorbell;
use inbox::{Inbox, Job};
use resolver::CachingResolver;
use std::sync::atomic::Ordering;
use turns::{Leftover, TurnsConnector};
use ureq::http::{HeaderName, HeaderValue, Uri, header};
use ureq::unversioned::transport::Connector;

/// The serialized-batch buffer is kept between batches up to this size.
const MAX_KEPT_BODY: usize = 1024 * 1024;

/// The endpoint's answer is read through this much buffer, and its head must fit.
const ANSWER_BUFFER: usize = 64 * 1024;

/// Request head and body go out through this much buffer at a time.
const REQUEST_BUFFER: usize = 32 * 1024;

/// Retries after the first attempt fails.
pub const RETRIES: u32 = 3;

#[derive(Debug)]
pub enum Outcome {
    /// Delivered, but for `set_aside` records the endpoint refused (400, 413, 422),
    /// which are in the dead-letter file now. The batch comes back as it went, for
    /// the loop to drop its records and reuse the vector: they were allocated on the
    /// loop's thread, and freed there they go back to its allocator cache (freed here
    /// they cost several times as much, and the loop's next ones as well).
    Delivered {
        batch: Vec<Record>,
        set_aside: usize,
    },
    /// Every attempt failed, or the post was aborted; the records not delivered come
    /// back untouched, in order.
    Failed { batch: Vec<Record>, reason: String },
}

/// Statuses by which an endpoint refuses the content, not the moment: such an answer
/// is not retried; the batch is split to find the records it refuses.
fn refuses_content(status: u16) -> bool {
    matches!(status, 400 | 413 | 422)
}

/// What became of one set of records posted with the retry rule.
enum Posted {
    Delivered,
    /// The endpoint refused the content (see `refuses_content`).
    Refused(u16),
    /// Retries ran out, or the post was given up (see `Inbox::must_give_up`).
    Failed(String),
}

/// Where each record of a batch being split stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pending,
    Delivered,
    Refused,
}

/// The loop's handle on the worker thread.
pub struct Worker {
    jobs: Sender<Job>,
    outcomes: Receiver<Outcome>,
    doorbell: Arc<Doorbell>,
    /// Outcomes taken, for `may_sleep`.
    taken: u64,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// `dead_letter`: where records the endpoint refuses are set aside.
    pub fn spawn(
        settings: Outbound,
        dead_letter: PathBuf,
        waker: mio::Waker,
        stats: Arc<WorkerStats>,
    ) -> std::io::Result<Worker> {
        let (jobs, job_rx) = mpsc::channel();
        let (outcome_tx, outcomes) = mpsc::channel();
        let doorbell = Arc::new(Doorbell::new(waker));
        let ring = Arc::clone(&doorbell);
        let thread = std::thread::Builder::new()
            .name("forwarder".into())
            .spawn(move || {
                Poster::new(settings, dead_letter, stats).run(job_rx, outcome_tx, &ring)
            })?;
        Ok(Worker {
            jobs,
            outcomes,
            doorbell,
            taken: 0,
            thread: Some(thread),
        })
    }

    /// Before a poll that may sleep: false if an outcome is ready, so the loop must
    /// not sleep. Otherwise the worker wakes the loop with its next outcome, until
    /// `awake`.
    pub fn may_sleep(&self) -> bool {
        self.doorbell.may_sleep(self.taken)
    }

    /// After the poll: outcomes no longer need a wake-up.
    pub fn awake(&self) {
        self.doorbell.awake();
    }

    /// Hands a batch to the worker; the records come back if it is gone.
    pub fn send(&self, batch: Vec<Record>) -> Result<(), Vec<Record>> {
        match self.jobs.send(Job::Batch(batch)) {
            Ok(()) => Ok(()),
            Err(mpsc::SendError(Job::Batch(batch))) => Err(batch),
            Err(_) => Err(Vec::new()),
        }
    }

    /// Asks the worker to stop retrying the batch in hand and to give back the ones
    /// after it unattempted.
    pub fn abort(&self) {
        let _ = self.jobs.send(Job::Abort);
    }

    /// The outcome of the oldest batch in flight, if it is known yet. Call it only while a
    /// batch is in flight: a vanished worker then reads as a failed batch.
    pub fn poll_outcome(&mut self) -> Option<Outcome> {
        match self.outcomes.try_recv() {
            Ok(outcome) => {
                self.taken += 1;
                Some(outcome)
            }
            Err(mpsc::TryRecvError::Empty) => None,
            // The worker is gone (it cannot panic by design, but be sure): report the
            // batch as failed rather than wait for it forever.
            Err(mpsc::TryRecvError::Disconnected) => Some(Outcome::Failed {
                batch: Vec::new(),
                reason: "forwarder thread stopped".into(),
            }),
        }
    }
}

impl Worker {
    /// Ends the worker thread once it is idle, its last log lines written.
    pub fn stop(&mut self) {
        // Closing the job channel ends the worker's loop.
        let (closed, _) = mpsc::channel();
        self.jobs = closed;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The worker thread's side: the agent and the reusable body buffer.
struct Poster {
    settings: Outbound,
    /// The endpoint and the headers every POST carries, parsed once.
    endpoint: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    dead_letter: PathBuf,
    agent: ureq::Agent,
    /// The endpoint's address, kept between requests; forgotten when a connection fails.
    resolver: CachingResolver,
    /// The serialized batch, reused from one batch to the next.
    body: Vec<u8>,
    /// Raised when a reused connection's answer came with another behind it.
    leftover: Arc<Leftover>,
    stats: Arc<WorkerStats>,
    /// With `--post-compression gzip`: made at the first batch, then reused.
    gzip: Option<GzipEncoder>,
    /// The batch in hand went through gzip and is sent from `gzip`.
    gzipped: bool,
}

/// One attempt's result: a status code, or why no status came back.
enum Attempt {
    Status(u16),
    Error(String),
}

impl Poster {
    fn new(settings: Outbound, dead_letter: PathBuf, stats: Arc<WorkerStats>) -> Poster {
        // Chosen by config::proxy_for, per the endpoint's scheme. An http:// endpoint
        // behind an HTTP proxy gets absolute-form requests (see `proxy`), not ureq's
        // CONNECT tunnel.
        let proxy = settings
            .proxy
            .as_deref()
            .and_then(|p| ureq::Proxy::new(p).ok());
        let absolute = proxy
            .as_ref()
            .and_then(|p| proxy::AbsoluteForm::for_endpoint(&settings.endpoint, p));
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(settings.post_timeout))
            .http_status_as_error(false)
            // A redirect is a failed attempt like any non-2xx: following it would send
            // the batch (or, after a 303, nothing) and the headers to another host.
            .max_redirects(0)
            .user_agent(concat!("webhook-forwarder/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(1)
            // ureq's 128 KiB buffers are zero-filled when first used: 256 KiB of
            // resident memory for one connection whose answer is a few hundred
            // bytes. An answer's head may still take ureq's usual 64 KiB (refusing
            // a larger one would fail, and so repeat, batches the endpoint took);
            // a body larger than the output buffer goes out in pieces.
            .input_buffer_size(ANSWER_BUFFER)
            .max_response_header_size(ANSWER_BUFFER)
            .output_buffer_size(REQUEST_BUFFER)
            .proxy(if absolute.is_some() { None } else { proxy });
        // Always our own list: ureq's built-in one is compiled out, which keeps a second
        // copy of the same roots out of the binary.
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(trusted_roots(&settings.extra_roots))
            .build();
        config = config.tls_config(tls);
        // ureq's default chain with our TCP transport in place of its own (see
        // `transport`); SOCKS proxies are refused when the settings are read.
        use ureq::unversioned::transport::{ConnectProxyConnector, RustlsConnector};
        let connector =
            ().chain(ConnectProxyConnector::default())
                .chain(transport::LeanTcpConnector)
                .chain(RustlsConnector::default());
        let leftover = Arc::new(Leftover::default());
        let turns = TurnsConnector {
            leftover: Arc::clone(&leftover),
        };
        let (resolver, agent) = match absolute {
            Some((rewrite, proxy_uri)) => {
                let resolver = CachingResolver::via(proxy_uri);
                let agent = ureq::Agent::with_parts(
                    config.build(),
                    connector.chain(rewrite).chain(turns),
                    resolver.clone(),
                );
                (resolver, agent)
            }
            None => {
                let resolver = CachingResolver::default();
                let agent = ureq::Agent::with_parts(
                    config.build(),
                    connector.chain(turns),
                    resolver.clone(),
                );
                (resolver, agent)
            }
        };
        let endpoint = settings.endpoint.parse().unwrap_or_default();
        let headers = request_headers(&settings);
        Poster {
            settings,
            endpoint,
            headers,
            dead_letter,
            agent,
            resolver,
            body: Vec::with_capacity(16 * 1024),
            leftover,
            stats,
            gzip: None,
            gzipped: false,
        }
    }

    fn run(mut self, jobs: Receiver<Job>, outcomes: Sender<Outcome>, doorbell: &Doorbell) {
        crate::os::defer_wakeups_to_the_loop();
        let mut inbox = Inbox::new(jobs);
        // After a failure the service is stopping: later batches go back unattempted,
        // so that none is delivered after records sent before it were given up on.
        let mut given_up: Option<&str> = None;
        while let Some(mut batch) = inbox.next_batch() {
            if given_up.is_none() && inbox.must_give_up() {
                given_up = Some("not attempted: the stop was forced");
            }
            if let Some(reason) = given_up {
                let outcome = Outcome::Failed {
                    batch,
                    reason: reason.into(),
                };
                if outcomes.send(outcome).is_err() {
                    break;
                }
                doorbell.ring();
                continue;
            }
            // A panic in the HTTP or TLS stack must not take the batch with it: the
            // records come back and go to the dead-letter file like any failure.
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.deliver(&mut batch, &mut inbox)
            }));
            if !matches!(attempt, Ok(Ok(_))) {
                given_up = Some("not attempted: an earlier batch was given up");
            }
            let outcome = match attempt {
                Ok(Ok(set_aside)) => Outcome::Delivered { batch, set_aside },
                Ok(Err(reason)) => Outcome::Failed { batch, reason },
                Err(_) => Outcome::Failed {
                    batch,
                    reason: "the forwarder thread panicked".into(),
                },
            };
            // A rare huge batch must not keep its buffer for good.
            if self.body.capacity() > MAX_KEPT_BODY {
                self.body = Vec::with_capacity(16 * 1024);
            }
            if outcomes.send(outcome).is_err() {
                break;
            }
            doorbell.ring();
        }
        crate::logging::flush();
    }

    /// Delivers the batch: the whole of it with the retry rule, and when the endpoint
    /// refuses the content, halves of it, recursively, until the refused records
    /// stand alone; those are set aside in the dead-letter file and the rest is
    /// delivered. Returns how many were set aside. When it fails, says why and leaves
    /// in `batch` only the records not delivered.
    fn deliver(&mut self, batch: &mut Vec<Record>, inbox: &mut Inbox) -> Result<usize, String> {
        let status = match self.post_with_retries(batch, inbox, false) {
            Posted::Delivered => return Ok(0),
            Posted::Failed(reason) => return Err(reason),
            Posted::Refused(status) => status,
        };
        // The rare path: one fate per record, to find the ones refused.
        let mut fates = vec![Fate::Pending; batch.len()];
        let split = self.split(batch, 0, &mut fates, inbox);
        if let Err(reason) = split {
            keep_undelivered(batch, &fates);
            return Err(reason);
        }
        if fates.iter().all(|&f| f == Fate::Refused) {
            // Refusing every record on its own is the endpoint's fault, not the
            // records': the ordinary rule applies, retries and then the dead letters.
            warn!(batch_size = batch.len(), status = status; "the endpoint refuses every record of the batch");
            return match self.post_with_retries(batch, inbox, true) {
                Posted::Delivered => Ok(0),
                Posted::Failed(reason) => Err(reason),
                Posted::Refused(status) => Err(format!("status {status}")),
            };
        }
        let mut refused = Vec::new();
        let mut fate = fates.iter();
        batch.retain_mut(|record| {
            if fate.next() == Some(&Fate::Refused) {
                refused.push(std::mem::take(record));
            }
            true
        });
        let written = crate::deadletter::write_records(&self.dead_letter, &refused);
        error!(records = refused.len(), status = status, dead_letter:% = self.dead_letter.display(), written_to:? = written; "the endpoint refused these records; set aside, the rest delivered");
        Ok(refused.len())
    }

    /// Posts `batch[start..start + fates.len()]`'s halves, splitting further those the
    /// endpoint refuses, and marks each record's fate.
    fn split(
        &mut self,
        batch: &[Record],
        start: usize,
        fates: &mut [Fate],
        inbox: &mut Inbox,
    ) -> Result<(), String> {
        if fates.len() == 1 {
            fates[0] = Fate::Refused;
            return Ok(());
        }
        let middle = fates.len() / 2;
        let (low, high) = fates.split_at_mut(middle);
        for (offset, half) in [(0, low), (middle, high)] {
            let records = &batch[start + offset..start + offset + half.len()];
            match self.post_with_retries(records, inbox, false) {
                Posted::Delivered => half.fill(Fate::Delivered),
                Posted::Refused(_) => self.split(batch, start + offset, half, inbox)?,
                Posted::Failed(reason) => return Err(reason),
            }
        }
        Ok(())
    }

    /// Posts `records` with the retry rule: up to RETRIES more attempts, `retry_wait`
    /// apart. A refusal of the content ends it at once, unless `refusals_retried`
    /// (then it counts as a failure, and the first attempt is taken as made).
    fn post_with_retries(
        &mut self,
        records: &[Record],
        inbox: &mut Inbox,
        refusals_retried: bool,
    ) -> Posted {
        self.body.clear();
        crate::record::write_batch(records, &mut self.body);
        let size = records.len();
        self.gzipped = self.compress();
        let mut last = String::new();
        let first = if refusals_retried { 2 } else { 1 };
        for attempt in first..=RETRIES + 1 {
            if attempt > 1 {
                warn!(batch_size = size, attempt = attempt, wait_ms = self.settings.retry_wait.as_millis() as u64, last = last.as_str(); "retrying batch");
                if inbox.wait_unless_given_up(self.settings.retry_wait) {
                    return Posted::Failed(format!("aborted during retries; last: {last}"));
                }
            }
            let started = Instant::now();
            let result = self.post_once(started);
            let took = started.elapsed();
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            if attempt > 1 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.observe_post(took);
            let duration_ms = took.as_secs_f64() * 1000.0;
            match result {
                Attempt::Status(status) if (200..300).contains(&status) => {
                    info!(batch_size = size, status = status, duration_ms = duration_ms, attempt = attempt; "batch sent");
                    return Posted::Delivered;
                }
                Attempt::Status(status) if refuses_content(status) && !refusals_retried => {
                    warn!(batch_size = size, status = status, duration_ms = duration_ms, attempt = attempt; "the endpoint refuses the content");
                    return Posted::Refused(status);
                }
                Attempt::Status(status) => {
                    warn!(batch_size = size, status = status, duration_ms = duration_ms, attempt = attempt; "batch post failed");
                    last = format!("status {status}");
                }
                Attempt::Error(reason) => {
                    warn!(batch_size = size, error = reason.as_str(), duration_ms = duration_ms, attempt = attempt; "batch post failed");
                    last = reason;
                }
            }
            // An abort that arrived during the post stops us before the next wait.
            if inbox.must_give_up() {
                return Posted::Failed(format!("aborted; last: {last}"));
            }
        }
        error!(batch_size = size, attempts = RETRIES + 1, last = last.as_str(); "batch delivery failed after all retries");
        Posted::Failed(last)
    }

    /// Compresses the serialized batch, once for all its attempts, when asked to.
    /// False: it goes as it is (gzip cannot fail on a buffer, but if it did, a plain
    /// body is still a correct POST).
    fn compress(&mut self) -> bool {
        if self.settings.compression != PostCompression::Gzip {
            return false;
        }
        let gzip = self.gzip.get_or_insert_with(GzipEncoder::default);
        // Like `body`: a rare huge batch must not keep its buffer for good.
        gzip.release_buffer_above(MAX_KEPT_BODY);
        match gzip.encode(&self.body) {
            Ok(_) => true,
            Err(e) => {
                warn!(error = e.as_str(); "sending the batch uncompressed");
                false
            }
        }
    }

    fn post_once(&mut self, attempt_began: Instant) -> Attempt {
        let mut request = self.agent.post(self.endpoint.clone());
        let body = match &self.gzip {
            Some(gzip) if self.gzipped => {
                request =
                    request.header(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                gzip.output()
            }
            _ => &self.body[..],
        };
        for (name, value) in &self.headers {
            request = request.header(name.clone(), value.clone());
        }
        self.stats.observe_sent(body.len());
        self.leftover.take();
        match request.send(body) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                // Read the (small) answer so the connection can be reused; into a
                // small stack buffer and away (std::io::copy would zero 8 KiB per
                // read), so a batch costs no allocation here.
                let mut answer = response.body_mut().with_config().limit(64 * 1024).reader();
                let mut scratch = [0u8; 1024];
                let read_to_end = loop {
                    match std::io::Read::read(&mut answer, &mut scratch) {
                        Ok(0) => break true,
                        Ok(_) => {}
                        Err(_) => break false,
                    }
                };
                // The connection went (or back to the pool) as the answer ended.
                if read_to_end && self.leftover.take() {
                    return Attempt::Error(
                        "the endpoint sent a second answer behind the first on a reused connection"
                            .into(),
                    );
                }
                if (200..300).contains(&status) {
                    self.stats.observe_delivery(std::time::SystemTime::now());
                }
                Attempt::Status(status)
            }
            Err(e) => {
                // The endpoint may have moved: look its name up again next time,
                // unless this attempt has just done so.
                self.resolver.forget_unless_looked_up_since(attempt_began);
                // The message may quote the URL, userinfo and all.
                Attempt::Error(crate::config::redact_urls_in(&e.to_string()))
            }
        }
    }
}

/// The headers of every POST: ours, then the operator's. An operator's Content-Type
/// replaces ours rather than going out twice. The settings were checked when read;
/// a header that does not parse anyway is left out with a warning, not a panic.
fn request_headers(settings: &Outbound) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(settings.headers.len() + 1);
    let own_type = settings
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    if !own_type {
        headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
    }
    for (name, value) in &settings.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => headers.push((name, value)),
            // The value may be a secret: name the header only.
            _ => warn!(header = name.as_str(); "a --post-header does not parse; left out"),
        }
    }
    headers
}

/// Leaves in `batch` only the records not delivered, in order.
fn keep_undelivered(batch: &mut Vec<Record>, fates: &[Fate]) {
    let mut fate = fates.iter();
    batch.retain(|_| fate.next() != Some(&Fate::Delivered));
}

/// The bundled web PKI roots plus the operator's own CAs.
fn trusted_roots(extra: &[Vec<u8>]) -> ureq::tls::RootCerts {
    use ureq::tls::Certificate;
    let web_pki = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()));
    let own = extra
        .iter()
        .map(|der| Certificate::from_der(der).to_owned());
    web_pki.chain(own).collect::<Vec<_>>().into()
}
