//! The poll loop: one thread, one `mio::Poll`, every socket non-blocking.
//!
//! Read it top to bottom in `Server::run`: wait for readiness or the next deadline,
//! handle each event (sockets, the worker's wake-up, SIGTERM/SIGINT), hand the worker
//! its next due batch, expire slow connections, write the log when it is due. The
//! poll timeout is the nearest of the batch deadline, the connection deadlines and
//! the log's, so an idle service sleeps in `epoll_wait` and uses no CPU at all.
//!
//! The worker shares the core under load, so the loop hands it a batch as soon as it
//! is free and yields the core once per batch and once per busy turn (see
//! `dispatch_batch`); shutdown is the `Lifecycle` below.
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

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::Config;
use crate::deadletter::{self, Replay};
use crate::forwarder::{Forwarder, ForwarderSettings, Outcome};
use crate::http::{BufferPool, Conn, Io, Limits};
use crate::metrics::WorkerStats;
use crate::record::Record;
use crate::service::{App, Peer, Queue, Route};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM or SIGINT, and every accepted record was delivered.
    Drained,
    /// A batch could not be delivered after every retry; what was left is dead-lettered.
    DeliveryFailed,
    /// A second signal cut the drain short; what was left is dead-lettered.
    Forced,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Serving,
    /// First signal: no new connections or requests; queued records go out.
    Draining,
    /// Second signal: the batch in flight is abandoned as soon as the worker allows.
    Forced,
}

/// The batch the worker holds.
struct InFlight {
    records: usize,
    /// Taken from the replay file rather than the ring.
    from_replay: bool,
}

/// A client connection and its socket.
struct Client {
    stream: TcpStream,
    /// The peer's address, formatted once for every log line it will appear in.
    remote: PeerName,
    conn: Conn<Route>,
    /// Registered for WRITABLE too (only while output is pending).
    wants_writable: bool,
    /// The socket has nothing more to read now; the next readiness event will say
    /// when it has.
    read_drained: bool,
    /// An event reported the peer's FIN or an error: read until EOF, not until a short read.
    eof_pending: bool,
    /// Set once the response is written and our side is shut: waiting for the peer's
    /// FIN, until this deadline, so unread request bytes do not turn into an RST
    /// that destroys the response before the client reads it.
    linger_until: Option<Instant>,
}

pub struct Server {
    poll: Poll,
    /// Dropped (closed) when shutdown begins.
    listener: Option<TcpListener>,
    signals: Signals,
    lifecycle: Lifecycle,
    forwarder: Forwarder,
    in_flight: Option<InFlight>,
    dead_letter: std::path::PathBuf,
    replay: Option<Replay>,
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
    /// When buffered log lines must be written.
    log_due: Option<Instant>,
    /// Set where the loop must stop but cannot return at once (records already
    /// dead-lettered); the end of the turn returns it.
    stop_with: Option<Exit>,
}

impl Server {
    pub fn bind(config: &Config, replay: Option<Replay>) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = bind_first(&config.listen)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let worker_stats = Arc::new(WorkerStats::default());
        let forwarder = Forwarder::spawn(
            ForwarderSettings {
                endpoint: config.post_endpoint.clone(),
                post_timeout: config.post_timeout,
                retry_wait: config.retry_wait,
                headers: config.post_headers.clone(),
                extra_roots: config.extra_roots.clone(),
                proxy: config.proxy.clone(),
            },
            waker,
            Arc::clone(&worker_stats),
        )?;
        let now = Instant::now();
        let queue = Queue::new(
            config.ring_capacity(),
            config.batch_size,
            config.batch_interval,
        );
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            lifecycle: Lifecycle::Serving,
            forwarder,
            in_flight: None,
            dead_letter: config.dead_letter.clone(),
            replay,
            local_addr,
            clients: Vec::new(),
            free_slots: Vec::new(),
            max_connections: config.max_connections,
            accept_paused_until: None,
            accept_starved: false,
            limits: config.limits.clone(),
            pool: BufferPool::new(64),
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            app: App::new(queue, worker_stats, now),
            date: HttpDate::default(),
            next_sweep: None,
            last_sweep: now,
            unfinished: Vec::new(),
            log_due: None,
            stop_with: None,
        }
        .with_empty_replay_retired())
    }

    fn with_empty_replay_retired(mut self) -> Server {
        self.retire_replay_if_done();
        self
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
                    SIGNALS => self.on_signals(now),
                    Token(slot) => {
                        let closed = event.is_read_closed() || event.is_error();
                        self.on_client_event(slot, event.is_readable() || closed, closed);
                    }
                }
                // A turn can take a millisecond under load; hand the worker its next
                // batch as soon as it is free rather than at the end of the turn.
                if let Some(exit) = self.forward(now) {
                    crate::logging::flush();
                    return exit;
                }
            }
            self.continue_unfinished();
            if self.forwarder.is_busy() {
                // The endpoint's answer may be waiting for this core: one yield per
                // turn (tens of requests under load) keeps the POST cycle short.
                std::thread::yield_now();
            }
            let exit = self.forward(now).or_else(|| {
                self.sweep(now);
                self.resume_accepting(now);
                self.finished_draining()
            });
            if let Some(exit) = exit {
                crate::logging::flush();
                return exit;
            }
            self.log_due = crate::logging::flush_due(now);
        }
    }

    /// The nearest thing the loop must do without an event.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.unfinished.is_empty() || self.batch_ready_now() {
            return Some(Duration::ZERO);
        }
        let batch = if self.forwarder.is_busy() {
            None
        } else {
            self.app.queue.time_deadline()
        };
        let sweep = self
            .next_sweep
            .map(|at| at.max(self.last_sweep + SWEEP_GRANULARITY));
        let deadline = [batch, sweep, self.accept_paused_until, self.log_due]
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
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
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
            if slot < self.clients.len() {
                self.free_slots.push(slot);
            }
            return;
        }
        // Responses are written whole; waiting for more to coalesce only adds latency.
        let _ = stream.set_nodelay(true);
        let client = Client {
            stream,
            remote: PeerName::new(remote),
            conn: Conn::new(now),
            wants_writable: false,
            read_drained: false,
            eof_pending: false,
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

    fn on_client_event(&mut self, slot: usize, readable: bool, peer_closed: bool) {
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
        client.eof_pending |= peer_closed;
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
        let Client {
            stream,
            remote,
            conn,
            read_drained,
            eof_pending,
            ..
        } = client;
        let mut peer = Peer {
            app,
            remote: remote.as_str(),
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
            if write_pending(stream, conn, io.pool, now).is_err() {
                broken = true;
                break;
            }
            if conn.output().is_empty() && conn.is_stalled() {
                conn.resume(&mut io);
                continue;
            }
            if !conn.wants_read(io.limits) || *read_drained {
                break;
            }
            if reads == READS_PER_TURN {
                unfinished.push(slot);
                break;
            }
            reads += 1;
            match stream.read(read_buf) {
                Ok(0) => conn.peer_closed(&mut io),
                Ok(n) => {
                    // A short read emptied the socket; more data will raise a new edge
                    // (Linux reports every arrival), so skip the read that would
                    // only return EAGAIN. Not when the peer's FIN may be queued:
                    // that edge may already be spent.
                    *read_drained = n < read_buf.len() && !*eof_pending;
                    conn.feed(&read_buf[..n], &mut io);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *read_drained = true,
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
        if self.app.draining && client.conn.is_idle() {
            // Its last answer went out before shutdown began; nothing more will come.
            self.close(slot);
            return;
        }
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
            // Lingering past its time, or owing output the peer has not read for a
            // whole idle timeout: give up on the peer. A 408 could not reach it.
            if client.linger_until.is_some()
                || client.conn.is_closing()
                || !client.conn.output().is_empty()
            {
                self.close(slot);
                continue;
            }
            let mut peer = Peer {
                app: &mut self.app,
                remote: client.remote.as_str(),
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

    /// Takes the worker's outcome if there is one, then gives it the next due batch.
    /// Cheap when there is nothing to do: one channel poll, one comparison.
    fn forward(&mut self, now: Instant) -> Option<Exit> {
        if self.forwarder.is_busy()
            && let Some(exit) = self.collect_outcome()
        {
            return Some(exit);
        }
        self.dispatch_batch(now);
        self.stop_with.take()
    }

    /// A batch can go out without waiting for any deadline.
    fn batch_ready_now(&self) -> bool {
        !self.forwarder.is_busy()
            && (self.replay.as_ref().is_some_and(|r| !r.records.is_empty())
                || (self.lifecycle != Lifecycle::Serving && self.app.queue.waiting() > 0))
    }

    /// Hands the worker its next batch: replayed records first, then the ring's
    /// records once a batch is due (at once while draining).
    fn dispatch_batch(&mut self, now: Instant) {
        if self.forwarder.is_busy() || self.lifecycle == Lifecycle::Forced {
            return;
        }
        let limit = self.app.queue.batch_limit();
        let (batch, from_replay) = match &mut self.replay {
            Some(replay) if !replay.records.is_empty() => {
                let mut batch = self.app.queue.empty_batch();
                let count = replay.records.len().min(limit);
                batch.extend(replay.records.drain(..count));
                (batch, true)
            }
            _ => {
                let draining =
                    self.lifecycle == Lifecycle::Draining && self.app.queue.waiting() > 0;
                if !draining && !self.app.queue.batch_due(now) {
                    return;
                }
                (self.app.queue.take_batch(), false)
            }
        };
        let records = batch.len();
        match self.forwarder.send(batch) {
            Ok(()) => {
                self.in_flight = Some(InFlight {
                    records,
                    from_replay,
                });
                // On a shared core, let the worker start the POST now rather than
                // after this thread's time slice: one syscall per batch, not per request.
                std::thread::yield_now();
            }
            // The worker cannot vanish by design; if it did, keep the records safe.
            Err(batch) => {
                error!(batch_size = records; "forwarder thread is gone");
                self.app.queue.delivered(Vec::new());
                self.stop_with = Some(self.dead_letter_and_stop(batch, from_replay));
            }
        }
    }

    fn collect_outcome(&mut self) -> Option<Exit> {
        let outcome = self.forwarder.poll_outcome()?;
        let in_flight = self.in_flight.take()?;
        match outcome {
            Outcome::Delivered { batch } => {
                self.app.metrics.forwarded += in_flight.records as u64;
                self.app.metrics.batches_delivered += 1;
                if in_flight.from_replay {
                    self.app.queue.delivered_replay(batch);
                    self.retire_replay_if_done();
                } else {
                    self.app.queue.delivered(batch);
                }
                if self.lifecycle == Lifecycle::Forced {
                    return Some(self.dead_letter_and_stop(Vec::new(), false));
                }
                None
            }
            Outcome::Failed { batch, reason } => {
                self.app.metrics.batches_failed += 1;
                error!(batch_size = in_flight.records, waiting = self.app.queue.waiting(), reason = reason.as_str(); "giving up on the batch");
                self.app.queue.delivered(Vec::new());
                Some(self.dead_letter_and_stop(batch, in_flight.from_replay))
            }
        }
    }

    fn retire_replay_if_done(&mut self) {
        let Some(replay) = &self.replay else { return };
        if !replay.records.is_empty() {
            return;
        }
        match deadletter::retire_replayed(&replay.path) {
            Ok(to) => info!(records = replay.total, renamed_to:% = to.display(); "replay complete"),
            Err(e) => {
                warn!(path:% = replay.path.display(), error:% = e; "replay complete, but the file could not be renamed; replaying it again would resend its records")
            }
        }
        self.replay = None;
    }

    /// Writes every undelivered record to the dead-letter file and picks the exit.
    /// Replayed records stay in their replay file, which is left in place.
    fn dead_letter_and_stop(&mut self, failed_batch: Vec<Record>, batch_from_replay: bool) -> Exit {
        let mut undelivered = if batch_from_replay {
            Vec::new()
        } else {
            failed_batch
        };
        undelivered.extend(self.app.queue.drain_waiting());
        let written = deadletter::write_records(&self.dead_letter, &undelivered).count();
        self.app.metrics.dead_lettered += written as u64;
        if let Some(replay) = &self.replay {
            warn!(path:% = replay.path.display(), left = replay.records.len(); "replay unfinished: its file stays in place for the next --replay");
        }
        let exit = if self.lifecycle == Lifecycle::Forced {
            Exit::Forced
        } else {
            Exit::DeliveryFailed
        };
        self.log_summary(exit);
        exit
    }

    fn log_summary(&self, exit: Exit) {
        let m = &self.app.metrics;
        info!(
            exit:? = exit,
            accepted = m.accepted,
            delivered = m.forwarded,
            dead_lettered = m.dead_lettered;
            "stopped"
        );
    }

    fn on_signals(&mut self, now: Instant) {
        let count = self.signals.pending().count();
        for _ in 0..count {
            match self.lifecycle {
                Lifecycle::Serving => self.start_draining(now),
                Lifecycle::Draining => {
                    warn!(
                        "second signal: abandoning the drain, undelivered records go to the dead-letter file"
                    );
                    self.lifecycle = Lifecycle::Forced;
                    self.forwarder.abort();
                }
                Lifecycle::Forced => {}
            }
        }
    }

    /// First signal: stop accepting, refuse new requests, let those under way finish,
    /// and send every waiting record.
    fn start_draining(&mut self, now: Instant) {
        info!(waiting = self.app.queue.waiting(), in_flight = self.in_flight.as_ref().map_or(0, |b| b.records), open_connections = self.open(); "signal received: draining");
        self.lifecycle = Lifecycle::Draining;
        self.app.draining = true;
        // Closing the listener refuses new connections at once instead of leaving
        // them in the backlog until we exit.
        self.listener = None;
        self.accept_paused_until = None;
        let idle: Vec<usize> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                c.as_ref()
                    .filter(|c| c.linger_until.is_none() && c.conn.is_idle())
                    .map(|_| slot)
            })
            .collect();
        for slot in idle {
            self.close(slot);
        }
        self.dispatch_batch(now);
    }

    /// After a second signal with the worker idle, or a drain with nothing left.
    fn finished_draining(&mut self) -> Option<Exit> {
        if let Some(exit) = self.stop_with.take() {
            return Some(exit);
        }
        match self.lifecycle {
            Lifecycle::Serving => None,
            Lifecycle::Forced if !self.forwarder.is_busy() => {
                Some(self.dead_letter_and_stop(Vec::new(), false))
            }
            Lifecycle::Forced => None,
            Lifecycle::Draining => {
                let requests_under_way = self
                    .clients
                    .iter()
                    .flatten()
                    .any(|c| c.linger_until.is_none());
                let done = !self.forwarder.is_busy()
                    && self.app.queue.waiting() == 0
                    && self.replay.is_none()
                    && !requests_under_way;
                done.then(|| {
                    self.log_summary(Exit::Drained);
                    Exit::Drained
                })
            }
        }
    }
}

/// Writes as much pending output as the socket takes.
fn write_pending(
    stream: &mut TcpStream,
    conn: &mut Conn<Route>,
    pool: &mut BufferPool,
    now: Instant,
) -> io::Result<()> {
    while !conn.output().is_empty() {
        match stream.write(conn.output()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => conn.consumed_output(n, pool, now),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Discards what a closing peer still sends; true once it is gone (EOF or error).
fn drain_lingering(client: &mut Client, buf: &mut [u8]) -> bool {
    // Bounded like any read turn; a peer still sending after that is dropped when
    // its linger time ends.
    for _ in 0..READS_PER_TURN {
        match client.stream.read(buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    false
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

/// A socket address as text, without a heap allocation per connection.
struct PeerName {
    bytes: [u8; 64],
    len: usize,
}

impl PeerName {
    fn new(addr: SocketAddr) -> PeerName {
        let mut name = PeerName {
            bytes: [0; 64],
            len: 0,
        };
        let mut cursor = io::Cursor::new(&mut name.bytes[..]);
        // The longest IPv6 socket address with a scope id fits in 64 bytes.
        let _ = write!(cursor, "{addr}");
        name.len = cursor.position() as usize;
        name
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("-")
    }
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
