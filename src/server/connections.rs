//! The connection table: the listener, the client sockets and their HTTP machines.
//!
//! It accepts (and knows when it may), moves bytes between each socket and its
//! `http::Conn`, lingers after a closing response, and expires connections past their
//! deadlines. It knows sockets and deadlines, not batches: each request is handed to
//! the service through a `Peer` built for the call.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::clock::HttpDateCache;
use crate::http::{BufferPool, Conn, Io, Limits, MIN_READ};
use crate::pipeline::{Pipeline, Ticket};
use crate::service::{ConnectionGauges, Peer, Route, Service, WaitOutcome};
use crate::text::FixedText;

/// One socket read; also the most a connection can add to its input in one go.
const READ_CHUNK: usize = 64 * 1024;
/// Reads per connection per turn, so one busy peer cannot starve the others.
const READS_PER_TURN: usize = 16;
/// How long a closing connection may keep sending before we drop it (see `linger`).
const LINGER: Duration = Duration::from_secs(2);
/// Connection deadlines are checked at most this often.
const SWEEP_GRANULARITY: Duration = Duration::from_millis(100);
/// At the connection limit, a quiet connection is closed for a new one only once it
/// has been quiet this long, so that one just accepted gets its request read first.
const EVICT_AFTER: Duration = Duration::from_millis(100);
/// After EMFILE and friends, try accepting again after this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// After this many connections closed, the memory they held is handed back to the
/// kernel (malloc_trim), at most once per `TRIM_INTERVAL`, so a burst does not
/// leave the process at its peak.
const TRIM_AFTER_CLOSES: usize = 64;
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Whether new connections are taken, and if not, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepting {
    Open,
    /// `--max-connections` are open; resumed when one closes. The backlog waits in
    /// the kernel meanwhile.
    AtCapacity,
    /// Out of descriptors or memory: try again at this time. Logged once per episode.
    Backoff(Instant),
    /// Shutdown began; the listener is closed.
    Closed,
}

/// A client connection and its socket.
struct Client {
    stream: TcpStream,
    /// Tells this connection from a later one in the same slot (see `Ticket`).
    serial: u64,
    /// The peer's address, formatted once for every log line it will appear in.
    remote: FixedText<64>,
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
    /// Bytes of the global body budget held for the body being received.
    reserved: usize,
}

impl Client {
    fn ticket(&self, slot: usize) -> Ticket {
        Ticket {
            slot,
            serial: self.serial,
        }
    }
}

/// The quiet connections (see `Conn::quiet_since`), longest quiet first: a list
/// linked through the slots, so that keeping it and finding whom to evict at the
/// connection limit are O(1).
#[derive(Default)]
struct QuietList {
    links: Vec<Link>,
    head: Option<usize>,
    tail: Option<usize>,
}

#[derive(Clone, Copy, Default)]
struct Link {
    prev: Option<usize>,
    next: Option<usize>,
    /// `Some` while listed: the connection's `quiet_since` and when it was listed.
    listed: Option<(Instant, Instant)>,
}

impl QuietList {
    /// Lists `slot` as quiet since `since`, at the back when that is news; unlists it
    /// when `since` is `None`.
    fn update(&mut self, slot: usize, since: Option<Instant>, now: Instant) {
        if self.links.len() <= slot {
            self.links.resize(slot + 1, Link::default());
        }
        let listed = self.links[slot].listed;
        if since.is_some() && listed.map(|(s, _)| s) == since {
            return;
        }
        self.remove(slot);
        let Some(since) = since else { return };
        self.links[slot] = Link {
            prev: self.tail,
            next: None,
            listed: Some((since, now)),
        };
        match self.tail {
            Some(tail) => self.links[tail].next = Some(slot),
            None => self.head = Some(slot),
        }
        self.tail = Some(slot);
    }

    fn remove(&mut self, slot: usize) {
        let Some(link) = self.links.get(slot).copied() else {
            return;
        };
        if link.listed.is_none() {
            return;
        }
        match link.prev {
            Some(prev) => self.links[prev].next = link.next,
            None => self.head = link.next,
        }
        match link.next {
            Some(next) => self.links[next].prev = link.prev,
            None => self.tail = link.prev,
        }
        self.links[slot] = Link::default();
    }

    /// The slot quiet longest, and when it was listed.
    fn front(&self) -> Option<(usize, Instant)> {
        let slot = self.head?;
        Some((slot, self.links[slot].listed?.1))
    }
}

/// What serving a connection's bytes ended with.
enum Served {
    Open,
    Broken,
}

/// The two halves of the application one request reaches.
pub struct App<'a> {
    pub service: &'a mut Service,
    pub pipeline: &'a mut Pipeline,
}

pub struct Connections {
    listener: Option<TcpListener>,
    accepting: Accepting,
    slots: Vec<Option<Client>>,
    free_slots: Vec<usize>,
    open: usize,
    accepted_total: u64,
    /// Quiet connections closed to make room at the limit.
    evicted_total: u64,
    quiet: QuietList,
    /// A connection accepted at the limit, waiting for a quiet one to be closed (it
    /// would otherwise wait in the backlog, where we could not know of it).
    parked: Option<(TcpStream, SocketAddr)>,
    max_connections: usize,
    limits: Limits,
    pool: BufferPool,
    read_buf: Box<[u8]>,
    date: HttpDateCache,
    next_sweep: Option<Instant>,
    last_sweep: Instant,
    /// Clients with input left to read after their per-turn budget ran out.
    unfinished: Vec<usize>,
    /// Connections closed since memory was last handed back, and when that was.
    closed_since_trim: usize,
    last_trim: Instant,
    /// `--max-buffered-bytes`: bodies held at once, across all connections.
    max_buffered: usize,
    /// The budget reserved by bodies being received (see `may_read`).
    reserved: usize,
    /// Connections with a body to read that wait for budget, oldest first.
    held: std::collections::VecDeque<usize>,
}

impl Connections {
    pub fn new(
        listener: TcpListener,
        max_connections: usize,
        limits: Limits,
        max_buffered: usize,
        now: Instant,
    ) -> Connections {
        Connections {
            listener: Some(listener),
            accepting: Accepting::Open,
            slots: Vec::new(),
            free_slots: Vec::new(),
            open: 0,
            accepted_total: 0,
            evicted_total: 0,
            quiet: QuietList::default(),
            parked: None,
            max_connections,
            limits,
            pool: BufferPool::new(64),
            read_buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
            date: HttpDateCache::default(),
            next_sweep: None,
            last_sweep: now,
            unfinished: Vec::new(),
            closed_since_trim: 0,
            last_trim: now,
            max_buffered,
            reserved: 0,
            held: std::collections::VecDeque::new(),
        }
    }

    pub fn gauges(&self) -> ConnectionGauges {
        ConnectionGauges {
            open: self.open,
            accepted_total: self.accepted_total,
            evicted_total: self.evicted_total,
        }
    }

    /// Called once per loop turn: the `Date` header changes once a second.
    pub fn refresh_date(&mut self) {
        self.date.refresh();
    }

    /// True when some connection must be served again without waiting for an event.
    pub fn has_unfinished(&self) -> bool {
        !self.unfinished.is_empty()
    }

    /// The nearest connection deadline or accept retry.
    pub fn deadline(&self) -> Option<Instant> {
        let sweep = self
            .next_sweep
            .map(|at| at.max(self.last_sweep + SWEEP_GRANULARITY));
        let backoff = match self.accepting {
            Accepting::Backoff(at) => Some(at),
            _ => None,
        };
        // A parked connection waits for the longest quiet one to become evictable.
        let evict = match self.parked {
            Some(_) => self.quiet.front().map(|(_, listed)| listed + EVICT_AFTER),
            None => None,
        };
        [sweep, backoff, evict].into_iter().flatten().min()
    }

    /// When memory freed by closed connections should next be handed back.
    pub fn trim_deadline(&self) -> Option<Instant> {
        (self.closed_since_trim >= TRIM_AFTER_CLOSES).then_some(self.last_trim + TRIM_INTERVAL)
    }

    /// Whether to hand freed memory back now; resets the count when it says yes.
    pub fn trim_due(&mut self, now: Instant) -> bool {
        if self.trim_deadline().is_none_or(|at| now < at) {
            return false;
        }
        self.closed_since_trim = 0;
        self.last_trim = now;
        true
    }

    /// Some request is under way: its head arrived and its answer is not yet out.
    pub fn any_under_way(&self) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|c| c.linger_until.is_none())
    }

    /// The listener is readable: take every connection waiting in the backlog. At
    /// the limit, take one, to close a quiet connection for it (see `make_room`).
    pub fn accept(&mut self, registry: &Registry, now: Instant) {
        if matches!(self.accepting, Accepting::Open | Accepting::AtCapacity) {
            self.accept_waiting(registry, now, false);
        }
    }

    /// Tries accepting again once a backoff has passed or room has been made.
    pub fn resume_accepting(&mut self, registry: &Registry, now: Instant) {
        match self.accepting {
            Accepting::Backoff(at) if now >= at => self.accept_waiting(registry, now, true),
            Accepting::AtCapacity
                if self.open < self.max_connections
                    || (self.parked.is_some() && self.evictable(now).is_some()) =>
            {
                self.accept_waiting(registry, now, false)
            }
            _ => {}
        }
    }

    /// `starved`: the last attempt ran out of resources, which was logged once; say
    /// when accepting works again rather than warn on every retry.
    fn accept_waiting(&mut self, registry: &Registry, now: Instant, starved: bool) {
        self.accepting = Accepting::Open;
        let mut starved = starved;
        loop {
            let full = self.open >= self.max_connections;
            if full && self.parked.is_some() && !self.make_room(now) {
                self.accepting = Accepting::AtCapacity;
                return;
            }
            if self.open < self.max_connections
                && let Some((stream, remote)) = self.parked.take()
            {
                self.add_client(registry, stream, remote, now);
                continue;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, remote)) => {
                    if starved {
                        info!(open = self.open; "accepting again");
                        starved = false;
                    }
                    if full {
                        self.parked = Some((stream, remote));
                    } else {
                        self.add_client(registry, stream, remote, now)
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if full {
                        self.accepting = Accepting::AtCapacity;
                    }
                    return;
                }
                Err(e) if crate::os::is_resource_exhaustion(&e) => {
                    if !starved {
                        warn!(error:% = e, open = self.open; "cannot accept: out of resources, pausing");
                    }
                    self.accepting = Accepting::Backoff(now + ACCEPT_BACKOFF);
                    return;
                }
                // A peer that reset before we accepted, EINTR, and the like: next one.
                Err(e) => debug!(error:% = e; "accept failed"),
            }
        }
    }

    /// The quiet connection to close for a waiting one, once quiet `EVICT_AFTER`.
    fn evictable(&self, now: Instant) -> Option<usize> {
        let (slot, listed) = self.quiet.front()?;
        (listed + EVICT_AFTER <= now).then_some(slot)
    }

    /// At the limit with a connection waiting: closes the one quiet longest, as
    /// nginx reuses idle keep-alive connections, so that idle clients cannot keep a
    /// liveness probe out until their header timeout. A connection with a request
    /// under way is never chosen.
    fn make_room(&mut self, now: Instant) -> bool {
        while let Some(slot) = self.evictable(now) {
            // The list is kept by `serve`, which every change of state goes through.
            let quiet = matches!(self.slots.get(slot), Some(Some(c))
                if c.linger_until.is_none() && c.conn.quiet_since().is_some());
            debug_assert!(quiet, "slot {slot} listed as quiet");
            if let (true, Some(Some(client))) = (quiet, self.slots.get(slot)) {
                debug!(remote = client.remote.as_str(), open = self.open; "closed a quiet connection to make room for a new one");
                self.close(slot);
                self.evicted_total += 1;
                return true;
            }
            self.quiet.remove(slot);
        }
        false
    }

    fn add_client(
        &mut self,
        registry: &Registry,
        mut stream: TcpStream,
        remote: SocketAddr,
        now: Instant,
    ) {
        let slot = self.free_slots.pop().unwrap_or(self.slots.len());
        if let Err(e) = registry.register(&mut stream, Token(slot), Interest::READABLE) {
            warn!(error:% = e; "cannot register connection");
            if slot < self.slots.len() {
                self.free_slots.push(slot);
            }
            return;
        }
        // Responses are written whole; waiting for more to coalesce only adds latency.
        let _ = stream.set_nodelay(true);
        let client = Client {
            stream,
            serial: self.accepted_total,
            // The longest IPv6 socket address with a scope id fits in 64 bytes.
            remote: FixedText::display(remote),
            conn: Conn::new(now),
            wants_writable: false,
            read_drained: false,
            eof_pending: false,
            linger_until: None,
            reserved: 0,
        };
        let deadline = client.conn.deadline(&self.limits);
        self.quiet.update(slot, client.conn.quiet_since(), now);
        if slot == self.slots.len() {
            self.slots.push(Some(client));
        } else {
            self.slots[slot] = Some(client);
        }
        self.open += 1;
        self.accepted_total += 1;
        self.note_deadline(deadline);
    }

    fn note_deadline(&mut self, deadline: Option<Instant>) {
        if let Some(deadline) = deadline
            && self.next_sweep.is_none_or(|at| deadline < at)
        {
            self.next_sweep = Some(deadline);
        }
    }

    /// A readiness event for the connection in `slot`.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        slot: usize,
        readable: bool,
        peer_closed: bool,
        app: &mut App<'_>,
    ) {
        let Some(Some(client)) = self.slots.get_mut(slot) else {
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
        self.serve(registry, slot, app);
    }

    /// Serves connections held for lack of body budget, oldest first, while the
    /// budget has room for them.
    pub fn release_held(&mut self, registry: &Registry, app: &mut App<'_>) {
        while let Some(&slot) = self.held.front() {
            let Some(Some(client)) = self.slots.get(slot) else {
                self.held.pop_front();
                continue;
            };
            let needed = client.conn.body_reservation(&self.limits);
            let in_use = self.reserved - client.reserved + app.pipeline.waiting_bytes();
            if needed > client.reserved && in_use + needed > self.max_buffered {
                return;
            }
            self.held.pop_front();
            self.serve(registry, slot, app);
        }
    }

    /// Serves the connections whose read budget ran out last turn.
    pub fn continue_unfinished(&mut self, registry: &Registry, app: &mut App<'_>) {
        let mut slots = std::mem::take(&mut self.unfinished);
        for &slot in &slots {
            if matches!(self.slots.get(slot), Some(Some(c)) if c.linger_until.is_none()) {
                self.serve(registry, slot, app);
            }
        }
        slots.clear();
        if self.unfinished.is_empty() {
            self.unfinished = slots;
        }
    }

    /// Moves bytes both ways, then settles the connection's interest and whether it
    /// closes.
    fn serve(&mut self, registry: &Registry, slot: usize, app: &mut App<'_>) {
        match self.exchange_bytes(slot, app) {
            None => return,
            Some(Served::Broken) => {
                self.close(slot);
                return;
            }
            Some(Served::Open) => {}
        }
        let Some(Some(client)) = self.slots.get_mut(slot) else {
            return;
        };
        // The body is in (or the request was answered): its budget goes back.
        if client.reserved > 0 && client.conn.body_reservation(&self.limits) == 0 {
            self.reserved -= client.reserved;
            client.reserved = 0;
        }
        if app.pipeline.is_draining() && client.conn.is_idle() {
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
            if registry
                .reregister(&mut client.stream, Token(slot), interest)
                .is_err()
            {
                self.close(slot);
                return;
            }
            client.wants_writable = pending;
        }
        let deadline = client.conn.deadline(&self.limits);
        self.quiet
            .update(slot, client.conn.quiet_since(), app.service.now);
        self.note_deadline(deadline);
    }

    /// Writes and reads until the socket would block, the read budget is spent, or the
    /// connection is done. `None` when the slot is empty.
    fn exchange_bytes(&mut self, slot: usize, app: &mut App<'_>) -> Option<Served> {
        let gauges = self.gauges();
        let app_waiting_bytes = app.pipeline.waiting_bytes();
        // What a connection may hold without a reservation: a request head's worth.
        let free = self.limits.max_head_bytes;
        let client = self.slots.get_mut(slot)?.as_mut()?;
        let now = app.service.now;
        let mut peer = peer_of(app, client.ticket(slot), &client.remote, gauges);
        let mut io = Io {
            handler: &mut peer,
            limits: &self.limits,
            pool: &mut self.pool,
            now,
            date: self.date.value(),
        };
        let read_buf = &mut self.read_buf;
        let (stream, conn) = (&mut client.stream, &mut client.conn);
        let mut reads = 0;
        loop {
            // Write first: pending output holds back both reading and buffered requests.
            if write_pending(stream, conn, io.pool, now).is_err() {
                return Some(Served::Broken);
            }
            if conn.output().is_empty() && conn.is_stalled() {
                conn.resume(&mut io);
                continue;
            }
            if !conn.wants_read(io.limits) || client.read_drained {
                return Some(Served::Open);
            }
            if reads == READS_PER_TURN {
                self.unfinished.push(slot);
                return Some(Served::Open);
            }
            // A body past what any connection may hold freely reads on only with
            // its share of the global budget reserved.
            let needed = conn.body_reservation(io.limits);
            if needed > client.reserved {
                let in_use = self.reserved - client.reserved + app_waiting_bytes;
                if in_use + needed <= self.max_buffered {
                    self.reserved += needed - client.reserved;
                    client.reserved = needed;
                } else if conn.buffered_len() >= free {
                    if !self.held.contains(&slot) {
                        self.held.push_back(slot);
                    }
                    return Some(Served::Open);
                }
            }
            reads += 1;
            // Without a reservation a connection holds at most a head's worth (plus
            // what the machine consumes at once); with one, it reads in full chunks.
            // The smallest read still makes progress on a request it can finish (a
            // head, a small body) once its budget is granted.
            let window = if needed > 0 && client.reserved >= needed {
                read_buf.len()
            } else {
                free.saturating_sub(conn.buffered_len())
                    .clamp(MIN_READ, read_buf.len())
            };
            let read_buf = &mut read_buf[..window];
            match stream.read(read_buf) {
                Ok(0) => conn.peer_closed(&mut io),
                Ok(n) => {
                    // A short read emptied the socket; more data will raise a new edge
                    // (Linux reports every arrival), so skip the read that would
                    // only return EAGAIN. Not when the peer's FIN may be queued:
                    // that edge may already be spent.
                    client.read_drained = n < read_buf.len() && !client.eof_pending;
                    conn.feed(&read_buf[..n], &mut io);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => client.read_drained = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some(Served::Broken),
            }
        }
    }

    /// The response is out; close our side and wait briefly for the peer's FIN.
    fn start_closing(&mut self, slot: usize) {
        let Some(Some(client)) = self.slots.get_mut(slot) else {
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
        self.quiet.remove(slot);
        self.note_deadline(Some(until));
    }

    fn close(&mut self, slot: usize) {
        if let Some(entry) = self.slots.get_mut(slot)
            && let Some(client) = entry.take()
        {
            self.reserved -= client.reserved;
            self.quiet.remove(slot);
            if !self.held.is_empty() {
                self.held.retain(|&held| held != slot);
            }
            // Dropping the stream closes the socket, which also removes it from epoll.
            drop(client);
            self.free_slots.push(slot);
            self.open -= 1;
            self.closed_since_trim += 1;
        }
    }

    /// Answers 408 to connections past their deadline and drops expired lingerers.
    pub fn sweep(&mut self, registry: &Registry, now: Instant, app: &mut App<'_>) {
        match self.next_sweep {
            Some(at) if now >= at && now >= self.last_sweep + SWEEP_GRANULARITY => {}
            _ => return,
        }
        self.last_sweep = now;
        self.next_sweep = None;
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (slot, entry) in self.slots.iter().enumerate() {
            let Some(client) = entry else { continue };
            let Some(deadline) = client
                .linger_until
                .or_else(|| client.conn.deadline(&self.limits))
            else {
                continue;
            };
            if deadline <= now {
                expired.push(slot);
            } else if next.is_none_or(|n| deadline < n) {
                next = Some(deadline);
            }
        }
        self.next_sweep = next;
        let gauges = self.gauges();
        for slot in expired {
            let Some(Some(client)) = self.slots.get_mut(slot) else {
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
            let mut peer = peer_of(app, client.ticket(slot), &client.remote, gauges);
            let mut io = Io {
                handler: &mut peer,
                limits: &self.limits,
                pool: &mut self.pool,
                now,
                date: self.date.value(),
            };
            client.conn.timed_out(&mut io);
            self.serve(registry, slot, app);
        }
    }

    /// The connection `ticket` names is open and its request still waits for room.
    pub fn is_waiting(&self, ticket: Ticket) -> bool {
        matches!(self.slots.get(ticket.slot), Some(Some(c)) if c.serial == ticket.serial && c.conn.is_waiting())
    }

    /// Gives the request that waited for room its answer, then serves what the
    /// connection buffered behind it.
    pub fn answer_waiting(
        &mut self,
        registry: &Registry,
        ticket: Ticket,
        outcome: WaitOutcome,
        app: &mut App<'_>,
    ) {
        if !self.is_waiting(ticket) {
            return;
        }
        let gauges = self.gauges();
        let now = app.service.now;
        let Some(Some(client)) = self.slots.get_mut(ticket.slot) else {
            return;
        };
        let mut peer = Peer {
            service: app.service,
            pipeline: app.pipeline,
            ticket,
            remote: client.remote.as_str(),
            connections: gauges,
        };
        let answer = peer.after_wait(outcome);
        let mut io = Io {
            handler: &mut peer,
            limits: &self.limits,
            pool: &mut self.pool,
            now,
            date: self.date.value(),
        };
        client.conn.answer_waiting(answer, &mut io);
        // Input buffered behind it may now be answered, and the socket read again.
        client.read_drained = false;
        self.serve(registry, ticket.slot, app);
    }

    /// Shutdown began: refuse new connections at once (instead of leaving them in the
    /// backlog until we exit) and close the ones with nothing under way.
    pub fn stop_accepting(&mut self) {
        self.listener = None;
        self.parked = None;
        self.accepting = Accepting::Closed;
        let idle: Vec<usize> = self
            .slots
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
    }
}

/// The service as a request on the connection `ticket` names sees it.
fn peer_of<'a>(
    app: &'a mut App<'_>,
    ticket: Ticket,
    remote: &'a FixedText<64>,
    connections: ConnectionGauges,
) -> Peer<'a> {
    Peer {
        service: app.service,
        pipeline: app.pipeline,
        ticket,
        remote: remote.as_str(),
        connections,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn order(list: &QuietList) -> Vec<usize> {
        let mut slots = Vec::new();
        let mut at = list.head;
        while let Some(slot) = at {
            slots.push(slot);
            at = list.links[slot].next;
        }
        slots
    }

    #[test]
    fn the_quiet_list_keeps_the_longest_quiet_first() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut list = QuietList::default();
        for slot in [3, 0, 5] {
            list.update(slot, Some(t), t);
        }
        assert_eq!(order(&list), [3, 0, 5]);
        // Bytes of a head still arriving: no news, the place is kept.
        list.update(3, Some(t), ms(5));
        assert_eq!(list.front(), Some((3, t)));
        // A request began: off the list; done: back, at the end.
        list.update(3, None, ms(6));
        assert_eq!(order(&list), [0, 5]);
        list.update(3, Some(ms(7)), ms(7));
        assert_eq!(order(&list), [0, 5, 3]);
        list.remove(5);
        list.remove(5);
        assert_eq!(order(&list), [0, 3]);
        list.remove(0);
        list.remove(3);
        assert_eq!(list.front(), None);
        assert_eq!((list.head, list.tail), (None, None));
    }
}
