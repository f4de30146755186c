//! The poll loop: one thread, one `mio::Poll`, every socket non-blocking.
//!
//! Read it top to bottom in `Server::run`: wait for readiness or the next deadline,
//! handle each event, collect the worker's outcome, send the next due batch, expire
//! slow connections, flush the log. The poll timeout is the nearest of the batch
//! deadline and the connection deadlines, so an idle service sleeps in `epoll_wait`
//! and uses no CPU at all.
//!
//! The HTTP rules live in `http::Conn`; this file moves bytes between sockets and
//! connections and decides when to stop reading, write, linger and close.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::Config;
use crate::forwarder::{Forwarder, ForwarderSettings, Outcome};
use crate::http::response::{self, Response};
use crate::http::{BufferPool, Conn, Exchange, Handler, Io, Limits, Method};
use crate::metrics::{Endpoint, Metrics, QueueGauges, Rejected, WorkerStats};
use crate::record::{self, Record, Rejection};
use crate::ring::Ring;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// One socket read; also the most a connection can add to its input in one go.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per connection per turn, so one busy peer cannot starve the others.
const READS_PER_TURN: usize = 16;
/// How long a closing connection may keep sending before we drop it (see `linger`).
const LINGER: Duration = Duration::from_secs(2);
/// Connection deadlines are checked at most this often.
const SWEEP_GRANULARITY: Duration = Duration::from_millis(100);
/// After EMFILE and friends, try accepting again after this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// A batch could not be delivered after every retry.
    DeliveryFailed,
}

/// Where the request goes, decided from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    endpoint: Endpoint,
    method_allowed: bool,
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
struct Queue {
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
    fn has_room(&self) -> bool {
        self.ring.len() + self.in_flight < self.ring.capacity()
    }

    fn batch_limit(&self) -> usize {
        if self.batch_size == 0 {
            self.ring.capacity()
        } else {
            self.batch_size
        }
    }

    /// When the oldest waiting record's batch becomes due by time.
    fn time_deadline(&self) -> Option<Instant> {
        Some(self.ring.front()?.arrived + self.interval?)
    }

    fn batch_due(&self, now: Instant) -> bool {
        let by_size = self.batch_size > 0 && self.ring.len() >= self.batch_size;
        by_size || self.time_deadline().is_some_and(|due| now >= due)
    }

    fn take_batch(&mut self) -> Vec<Record> {
        let mut batch = std::mem::take(&mut self.spare_batch);
        let count = self.ring.len().min(self.batch_limit());
        batch.reserve(count);
        for _ in 0..count {
            if let Some(queued) = self.ring.pop() {
                batch.push(queued.record);
            }
        }
        self.in_flight = batch.len();
        batch
    }
}

/// The application: routes, the queue, and the worker.
struct App {
    queue: Queue,
    forwarder: Forwarder,
    /// Error bodies and metrics are built here, reused from request to request.
    scratch: Vec<u8>,
    now: Instant,
    metrics: Metrics,
    worker_stats: Arc<WorkerStats>,
}

/// The application as seen by one connection's requests (adds the peer for the log).
struct Peer<'a> {
    app: &'a mut App,
    remote: SocketAddr,
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
        }
    }

    fn early_answer(&mut self, route: Route) -> Option<Response<'_>> {
        match route {
            Route {
                endpoint: Endpoint::Log,
                method_allowed: true,
            } if !self.app.queue.has_room() => {
                self.app.metrics.count_rejected(Rejected::QueueFull);
                Some(self.app.queue_full())
            }
            Route {
                endpoint: Endpoint::Log | Endpoint::Health,
                method_allowed: true,
            } => None,
            other => Some(self.app.respond(other, b"")),
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
            remote:% = self.remote;
            "request"
        );
    }
}

impl App {
    fn respond(&mut self, route: Route, body: &[u8]) -> Response<'_> {
        if !route.method_allowed {
            let mut r = self.error(405, "method not allowed");
            r.allow = Some(route.allow());
            return r;
        }
        match route.endpoint {
            Endpoint::Health => Response::text(200, b"OK"),
            Endpoint::Log => self.accept_record(body),
            Endpoint::Metrics => self.render_metrics(),
            Endpoint::Unknown => self.error(404, "not found"),
        }
    }

    fn accept_record(&mut self, body: &[u8]) -> Response<'_> {
        if !self.queue.has_room() {
            self.metrics.count_rejected(Rejected::QueueFull);
            return self.queue_full();
        }
        match record::decode(body) {
            Ok(record) => {
                let queued = Queued {
                    record,
                    arrived: self.now,
                };
                // has_room() above guarantees the ring has a free slot.
                if self.queue.ring.push(queued).is_err() {
                    self.metrics.count_rejected(Rejected::QueueFull);
                    return self.queue_full();
                }
                self.metrics.accepted += 1;
                Response::text(201, b"accepted")
            }
            Err(rejection) => {
                let reason = match rejection {
                    Rejection::Malformed(_) => Rejected::Malformed,
                    Rejection::Invalid(_) => Rejected::Invalid,
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
        let mut r = self.error(503, "queue full, retry later");
        r.retry_after = Some(1);
        r
    }

    fn error(&mut self, status: u16, message: &str) -> Response<'_> {
        self.scratch.clear();
        response::write_json_message(&mut self.scratch, message);
        Response::json(status, &self.scratch)
    }
}

/// A client connection and its socket.
struct Client {
    stream: TcpStream,
    remote: SocketAddr,
    conn: Conn<Route>,
    /// Registered for WRITABLE too (only while output is pending).
    wants_writable: bool,
    /// The last read returned WouldBlock, so the next readiness event will come.
    read_drained: bool,
    /// Set once the response is written and our side is shut: waiting for the peer's
    /// FIN, until this deadline, so unread request bytes do not turn into an RST
    /// that destroys the response before the client reads it.
    linger_until: Option<Instant>,
}

pub struct Server {
    poll: Poll,
    listener: TcpListener,
    local_addr: SocketAddr,
    clients: Vec<Option<Client>>,
    free_slots: Vec<usize>,
    max_connections: usize,
    accept_paused_until: Option<Instant>,
    /// Accepting failed for lack of descriptors or memory; logged once per episode.
    accept_starved: bool,
    limits: Limits,
    pool: BufferPool,
    read_buf: Box<[u8]>,
    app: App,
    date: HttpDate,
    next_sweep: Option<Instant>,
    last_sweep: Instant,
    /// Clients with input left to read after their per-turn budget ran out.
    unfinished: Vec<usize>,
}

impl Server {
    pub fn bind(config: &Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = bind_first(&config.listen)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let worker_stats = Arc::new(WorkerStats::default());
        let forwarder = Forwarder::spawn(
            ForwarderSettings {
                endpoint: config.post_endpoint.clone(),
                post_timeout: config.post_timeout,
                retry_wait: config.retry_wait,
            },
            waker,
            Arc::clone(&worker_stats),
        )?;
        let now = Instant::now();
        let app = App {
            queue: Queue {
                ring: Ring::with_capacity(config.ring_capacity()),
                in_flight: 0,
                batch_size: config.batch_size,
                interval: config.batch_interval,
                spare_batch: Vec::new(),
            },
            forwarder,
            scratch: Vec::with_capacity(256),
            now,
            metrics: Metrics::default(),
            worker_stats,
        };
        Ok(Server {
            poll,
            listener,
            local_addr,
            clients: Vec::new(),
            free_slots: Vec::new(),
            max_connections: config.max_connections,
            accept_paused_until: None,
            accept_starved: false,
            limits: config.limits.clone(),
            pool: BufferPool::new(64),
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            app,
            date: HttpDate::default(),
            next_sweep: None,
            last_sweep: now,
            unfinished: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn open(&self) -> usize {
        self.app.metrics.open_connections as usize
    }

    pub fn run(&mut self) -> Exit {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!(error:% = e; "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let now = Instant::now();
            self.app.now = now;
            self.date.refresh();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    Token(slot) => {
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        self.on_client_event(slot, readable);
                    }
                }
            }
            self.continue_unfinished();
            if let Some(exit) = self.collect_outcome() {
                crate::logging::flush();
                return exit;
            }
            self.dispatch_batch(now);
            self.sweep(now);
            self.resume_accepting(now);
            crate::logging::flush();
        }
    }

    /// The nearest thing the loop must do without an event.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.unfinished.is_empty() {
            return Some(Duration::ZERO);
        }
        let batch = if self.app.forwarder.is_busy() {
            None
        } else {
            self.app.queue.time_deadline()
        };
        let sweep = self
            .next_sweep
            .map(|at| at.max(self.last_sweep + SWEEP_GRANULARITY));
        let deadline = [batch, sweep, self.accept_paused_until]
            .into_iter()
            .flatten()
            .min()?;
        // Round up so that we wake at or after the deadline, never just before it.
        Some(deadline.saturating_duration_since(Instant::now()) + Duration::from_micros(500))
    }

    fn accept(&mut self, now: Instant) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            if self.open() >= self.max_connections {
                // Resumed when a connection closes; the backlog waits in the kernel.
                self.accept_paused_until = Some(now + Duration::from_secs(3600));
                return;
            }
            match self.listener.accept() {
                Ok((stream, remote)) => {
                    if self.accept_starved {
                        info!(open = self.open(); "accepting again");
                        self.accept_starved = false;
                    }
                    self.add_client(stream, remote, now)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_resource_exhaustion(&e) => {
                    if !self.accept_starved {
                        warn!(error:% = e, open = self.open(); "cannot accept: out of resources, pausing");
                        self.accept_starved = true;
                    }
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
                // A peer that reset before we accepted, EINTR, and the like: next one.
                Err(e) => debug!(error:% = e; "accept failed"),
            }
        }
    }

    fn add_client(&mut self, mut stream: TcpStream, remote: SocketAddr, now: Instant) {
        let slot = self.free_slots.pop().unwrap_or(self.clients.len());
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(slot), Interest::READABLE)
        {
            warn!(error:% = e; "cannot register connection");
            return;
        }
        // Responses are written whole; waiting for more to coalesce only adds latency.
        let _ = stream.set_nodelay(true);
        let client = Client {
            stream,
            remote,
            conn: Conn::new(now),
            wants_writable: false,
            read_drained: false,
            linger_until: None,
        };
        let deadline = client.conn.deadline(&self.limits);
        if slot == self.clients.len() {
            self.clients.push(Some(client));
        } else {
            self.clients[slot] = Some(client);
        }
        self.app.metrics.open_connections += 1;
        self.app.metrics.accepted_connections += 1;
        self.note_deadline(deadline);
    }

    fn note_deadline(&mut self, deadline: Instant) {
        if self.next_sweep.is_none_or(|at| deadline < at) {
            self.next_sweep = Some(deadline);
        }
    }

    fn on_client_event(&mut self, slot: usize, readable: bool) {
        let Some(Some(client)) = self.clients.get_mut(slot) else {
            return;
        };
        if client.linger_until.is_some() {
            if drain_lingering(client, &mut self.read_buf) {
                self.close(slot);
            }
            return;
        }
        // A readable edge means there is something new to read (data, EOF or an error).
        if readable {
            client.read_drained = false;
        }
        self.serve(slot);
    }

    fn continue_unfinished(&mut self) {
        let slots = std::mem::take(&mut self.unfinished);
        for &slot in &slots {
            if matches!(self.clients.get(slot), Some(Some(c)) if c.linger_until.is_none()) {
                self.serve(slot);
            }
        }
        let mut slots = slots;
        slots.clear();
        if self.unfinished.is_empty() {
            self.unfinished = slots;
        }
    }

    /// Moves bytes both ways until the socket would block, the budget is spent, or
    /// the connection is done; then settles its interest and whether it closes.
    fn serve(&mut self, slot: usize) {
        let Server {
            clients,
            app,
            pool,
            limits,
            read_buf,
            date,
            unfinished,
            ..
        } = self;
        let Some(Some(client)) = clients.get_mut(slot) else {
            return;
        };
        let now = app.now;
        let mut peer = Peer {
            app,
            remote: client.remote,
        };
        let mut io = Io {
            handler: &mut peer,
            limits,
            pool,
            now,
            date: date.value(),
        };
        let mut reads = 0;
        let mut broken = false;
        loop {
            // Write first: pending output holds back both reading and buffered requests.
            match write_pending(client, io.pool) {
                Ok(()) => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
            if client.conn.output().is_empty() && client.conn.is_stalled() {
                client.conn.resume(&mut io);
                continue;
            }
            if !client.conn.wants_read(io.limits) || client.read_drained {
                break;
            }
            if reads == READS_PER_TURN {
                unfinished.push(slot);
                break;
            }
            reads += 1;
            match client.stream.read(read_buf) {
                Ok(0) => client.conn.peer_closed(&mut io),
                Ok(n) => client.conn.feed(&read_buf[..n], &mut io),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => client.read_drained = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            self.close(slot);
            return;
        }
        let Some(Some(client)) = self.clients.get_mut(slot) else {
            return;
        };
        let pending = !client.conn.output().is_empty();
        if client.conn.is_closing() && !pending {
            self.start_closing(slot);
            return;
        }
        if pending != client.wants_writable {
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut client.stream, Token(slot), interest)
                .is_err()
            {
                self.close(slot);
                return;
            }
            client.wants_writable = pending;
        }
        let deadline = client.conn.deadline(&self.limits);
        self.note_deadline(deadline);
    }

    /// The response is out; close our side and wait briefly for the peer's FIN.
    fn start_closing(&mut self, slot: usize) {
        let Some(Some(client)) = self.clients.get_mut(slot) else {
            return;
        };
        if client.stream.shutdown(Shutdown::Write).is_err()
            || drain_lingering(client, &mut self.read_buf)
        {
            self.close(slot);
            return;
        }
        let until = Instant::now() + LINGER;
        client.linger_until = Some(until);
        self.note_deadline(until);
    }

    fn close(&mut self, slot: usize) {
        if let Some(entry) = self.clients.get_mut(slot)
            && let Some(client) = entry.take()
        {
            // Dropping the stream closes the socket, which also removes it from epoll.
            drop(client);
            self.free_slots.push(slot);
            self.app.metrics.open_connections -= 1;
            if self.accept_paused_until.is_some() && self.open() < self.max_connections {
                self.accept_paused_until = Some(Instant::now());
            }
        }
    }

    /// Answers 408 to connections past their deadline and drops expired lingerers.
    fn sweep(&mut self, now: Instant) {
        match self.next_sweep {
            Some(at) if now >= at && now >= self.last_sweep + SWEEP_GRANULARITY => {}
            _ => return,
        }
        self.last_sweep = now;
        self.next_sweep = None;
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (slot, entry) in self.clients.iter().enumerate() {
            let Some(client) = entry else { continue };
            let deadline = client
                .linger_until
                .unwrap_or_else(|| client.conn.deadline(&self.limits));
            if deadline <= now {
                expired.push(slot);
            } else if next.is_none_or(|n| deadline < n) {
                next = Some(deadline);
            }
        }
        self.next_sweep = next;
        for slot in expired {
            let Some(Some(client)) = self.clients.get_mut(slot) else {
                continue;
            };
            if client.linger_until.is_some() {
                self.close(slot);
                continue;
            }
            let mut peer = Peer {
                app: &mut self.app,
                remote: client.remote,
            };
            let mut io = Io {
                handler: &mut peer,
                limits: &self.limits,
                pool: &mut self.pool,
                now,
                date: self.date.value(),
            };
            client.conn.timed_out(&mut io);
            self.serve(slot);
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        if let Some(at) = self.accept_paused_until
            && now >= at
            && self.open() < self.max_connections
        {
            self.accept_paused_until = None;
            self.accept(now);
        }
    }

    fn collect_outcome(&mut self) -> Option<Exit> {
        match self.app.forwarder.poll_outcome()? {
            Outcome::Delivered { batch } => {
                self.app.metrics.forwarded += self.app.queue.in_flight as u64;
                self.app.metrics.batches_delivered += 1;
                self.app.queue.in_flight = 0;
                self.app.queue.spare_batch = batch;
                None
            }
            Outcome::Failed { batch, reason } => {
                self.app.metrics.batches_failed += 1;
                let waiting = self.app.queue.ring.len();
                error!(batch_size = batch.len(), waiting = waiting, reason = reason.as_str(); "giving up: batch could not be delivered");
                Some(Exit::DeliveryFailed)
            }
        }
    }

    fn dispatch_batch(&mut self, now: Instant) {
        let queue = &mut self.app.queue;
        if self.app.forwarder.is_busy() || !queue.batch_due(now) {
            return;
        }
        let batch = queue.take_batch();
        if let Err(batch) = self.app.forwarder.send(batch) {
            // Only if the worker died; put nothing back silently: log and keep count.
            error!(batch_size = batch.len(); "forwarder is gone; batch not sent");
        }
    }
}

/// Writes as much pending output as the socket takes.
fn write_pending(client: &mut Client, pool: &mut BufferPool) -> io::Result<()> {
    while !client.conn.output().is_empty() {
        match client.stream.write(client.conn.output()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => client.conn.consumed_output(n, pool),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Discards what a closing peer still sends; true once it is gone (EOF or error).
fn drain_lingering(client: &mut Client, buf: &mut [u8]) -> bool {
    loop {
        match client.stream.read(buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The errno values we treat as "out of resources" (Linux numbering).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

fn bind_first(addrs: &[SocketAddr]) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on");
    for addr in addrs {
        match TcpListener::bind(*addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The `Date` header value, formatted once per second rather than once per response.
#[derive(Default)]
struct HttpDate {
    second: u64,
    text: Vec<u8>,
}

impl HttpDate {
    fn refresh(&mut self) {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text.clear();
            crate::clock::write_http_date(&mut self.text, now);
        }
    }

    fn value(&self) -> &[u8] {
        &self.text
    }
}
