//! The TCP socket under ureq, costing one write and one read per batch once it is up.
//!
//! ureq's own TCP transport is built for any caller; per request it sets SO_SNDTIMEO
//! and SO_RCVTIMEO again from the shrinking global timeout, probes a pooled connection
//! with four FIONBIO ioctls around a read (twice: when it is pooled and when it is
//! taken out), and sends the request head and the body in two writes. That is nine
//! system calls per batch beyond the write and the read the POST needs. This one:
//!
//! - sets a socket timeout only when the one already set could let a read or write run
//!   more than `SLACK` past its deadline, and on a timeout before the deadline sets the
//!   time left and tries again: on a steady connection the timeouts are set once;
//! - checks a pooled connection without a call of its own. An endpoint that speaks
//!   out of turn (a second answer, a TLS close_notify) or closes must not have its
//!   bytes taken for the next batch's answer, nor cost that batch a failed attempt:
//!   - each read reports whether anything waits behind the bytes read, so a
//!     connection goes back to the pool only if nothing followed its answer;
//!   - while the worker waits for work it watches the pooled connection (see
//!     `IdleWatch`), and one that stirs is not taken out again;
//!   - each read reports when its bytes arrived, and bytes that arrived before the
//!     request was sent are an error, not an answer: what stirs in the moment between
//!     the worker's last look and its write costs a failed attempt, never a record;
//! - holds what ureq transmits (the head, the body, TLS records) until it waits for
//!   the answer or `COALESCE_LIMIT` bytes are held, and sends it in one write. The
//!   time that takes counts against the wait for the answer, a peer that takes a
//!   little at a time cannot stretch a write past its deadline, and a connection
//!   with anything still held is never used again.
//!
//! Where the kernel reports neither (SO_TIMESTAMPNS, TCP_INQ), a pooled connection
//! is probed with one `recv(MSG_PEEK | MSG_DONTWAIT)` when it is taken out instead.
//!
//! TLS, CONNECT proxies and the absolute-form rewrite chain onto it as onto ureq's.

use std::io::{self, IoSlice, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use ureq::Timeout;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
    Transport,
};

/// How far past its deadline a read or write may run before shortening the socket's
/// timeout is worth a system call.
const SLACK: Duration = Duration::from_millis(100);

/// Output held for one write up to this size; beyond it, what is held goes out with
/// the next piece in one vectored write.
const COALESCE_LIMIT: usize = 16 * 1024;

/// The pooled connection, as the worker sees it while it waits for work: it watches
/// the socket, and marks it stirred if bytes or a close arrive. Only the worker's
/// thread touches it (ureq runs the transport on the caller's thread); the atomics
/// are there because a connector must be `Sync`.
#[derive(Debug)]
pub struct IdleWatch {
    /// The socket of the connection in the pool; -1: none.
    pooled: AtomicI32,
    stirred: AtomicBool,
}

impl Default for IdleWatch {
    fn default() -> IdleWatch {
        IdleWatch {
            pooled: AtomicI32::new(-1),
            stirred: AtomicBool::new(false),
        }
    }
}

impl IdleWatch {
    /// The socket to watch while waiting: the pooled connection's, until it stirs.
    pub fn watched(&self) -> Option<RawFd> {
        let fd = self.pooled.load(Relaxed);
        (fd >= 0 && !self.stirred.load(Relaxed)).then_some(fd)
    }

    /// Bytes, a close or an error came on the watched socket.
    pub fn stir(&self) {
        self.stirred.store(true, Relaxed);
    }

    fn pool(&self, fd: RawFd) {
        self.stirred.store(false, Relaxed);
        self.pooled.store(fd, Relaxed);
    }

    /// As `fd` is taken out of the pool: `Some(quiet)` if it was the one watched.
    fn take_out(&self, fd: RawFd) -> Option<bool> {
        if self.pooled.load(Relaxed) != fd {
            return None;
        }
        self.pooled.store(-1, Relaxed);
        Some(!self.stirred.load(Relaxed))
    }

    /// `fd` is being closed: its number may soon belong to another file.
    fn forget(&self, fd: RawFd) {
        let _ = self.pooled.compare_exchange(fd, -1, Relaxed, Relaxed);
    }
}

/// Opens the TCP connection; the next connectors (TLS, the proxy rewrite) wrap it.
#[derive(Debug, Default)]
pub struct LeanTcpConnector {
    pub watch: Arc<IdleWatch>,
}

impl<In: Transport> Connector<In> for LeanTcpConnector {
    type Out = Either<In, LeanTcpTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        // A CONNECT tunnel (already open to the proxy) takes the place of ours.
        if let Some(tunnel) = chained {
            return Ok(Some(Either::A(tunnel)));
        }
        let deadline = deadline(details.timeout, Instant::now());
        let stream = connect_first(&details.addrs, deadline, details.timeout.reason)?;
        if details.config.no_delay() {
            stream.set_nodelay(true)?;
        }
        let transport = LeanTcpTransport::new(
            stream,
            LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            Arc::clone(&self.watch),
        );
        (details.register_shutdown)(Arc::downgrade(&transport.stream) as Weak<dyn ShutdownHandle>)?;
        Ok(Some(Either::B(transport)))
    }
}

/// The remaining time of a ureq timeout; `None`: no deadline.
fn limit(timeout: NextTimeout) -> Option<Duration> {
    if timeout.after.is_not_happening() {
        None
    } else {
        Some(*timeout.after)
    }
}

/// When a ureq timeout computed at `start` runs out; `None`: never.
fn deadline(timeout: NextTimeout, start: Instant) -> Option<Instant> {
    limit(timeout).and_then(|r| start.checked_add(r))
}

/// The time left until `deadline`, or the timeout error once none is left.
fn time_left(deadline: Option<Instant>, reason: Timeout) -> Result<Option<Duration>, ureq::Error> {
    match deadline {
        None => Ok(None),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(Some(left)),
            _ => Err(ureq::Error::Timeout(reason)),
        },
    }
}

/// Connects to the first address that answers, giving each but the last half the
/// time left, so a dead first address leaves time for the next.
fn connect_first(
    addrs: &[SocketAddr],
    deadline: Option<Instant>,
    reason: Timeout,
) -> Result<TcpStream, ureq::Error> {
    let mut last = None;
    for (i, addr) in addrs.iter().enumerate() {
        let left = time_left(deadline, reason)?;
        let budget = match left {
            Some(l) if i + 1 < addrs.len() => Some((l / 2).max(Duration::from_millis(10))),
            other => other,
        };
        let attempt = match budget {
            Some(b) => TcpStream::connect_timeout(addr, b),
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) if worth_the_next_address(&e) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    match last {
        Some(e) if e.kind() == io::ErrorKind::TimedOut => {
            Err(ureq::Error::Timeout(Timeout::Connect))
        }
        Some(e) => Err(e.into()),
        None => Err(ureq::Error::Io(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "no address to connect to",
        ))),
    }
}

/// Failures that concern one address only: another may still answer.
fn worth_the_next_address(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::TimedOut
    )
}

/// One socket's timeout as last set, so it is set again only when it must be.
#[derive(Debug, Default, Clone, Copy)]
struct SocketTimeout {
    set: Option<Duration>,
}

impl SocketTimeout {
    /// Whether an operation with `remaining` time left needs a new timeout first:
    /// none is set (it could block forever), or the one set could run more than
    /// `SLACK` past the deadline. A shorter one is fine: its expiry before the
    /// deadline is retried with the time left.
    fn needs(self, remaining: Option<Duration>) -> Option<Duration> {
        let remaining = remaining?;
        match self.set {
            Some(set) if set <= remaining.saturating_add(SLACK) => None,
            _ => Some(remaining.max(Duration::from_millis(1))),
        }
    }
}

/// Which of the socket's two timeouts an operation uses.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Read,
    Write,
}

#[derive(Debug)]
pub struct LeanTcpTransport {
    /// Shared (weakly) with the agent's shutdown handle.
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    read_timeout: SocketTimeout,
    write_timeout: SocketTimeout,
    /// Output transmitted by ureq and not yet written (see `COALESCE_LIMIT`).
    held: Vec<u8>,
    /// An answer was read since the last look: the connection is going back to the
    /// pool, not being taken out.
    read_since_probe: bool,
    /// The kernel reports arrivals on this socket (see `os::report_arrivals`).
    reports_arrivals: bool,
    /// When the request now going out was first written to the socket; bytes that
    /// arrived before then are not its answer. Cleared by each read.
    asked_at: Option<SystemTime>,
    /// The last read left something behind it: bytes or the peer's close.
    more_waiting: bool,
    watch: Arc<IdleWatch>,
}

impl LeanTcpTransport {
    fn new(stream: TcpStream, buffers: LazyBuffers, watch: Arc<IdleWatch>) -> LeanTcpTransport {
        let reports_arrivals = crate::os::report_arrivals(stream.as_raw_fd()).is_ok();
        LeanTcpTransport {
            stream: Arc::new(stream),
            buffers,
            read_timeout: SocketTimeout::default(),
            write_timeout: SocketTimeout::default(),
            held: Vec::new(),
            read_since_probe: false,
            reports_arrivals,
            asked_at: None,
            more_waiting: false,
            watch,
        }
    }

    /// Sets the socket's timeout for `direction` if `remaining` calls for it.
    fn prepare(&mut self, direction: Direction, remaining: Option<Duration>) -> io::Result<()> {
        let slot = match direction {
            Direction::Read => &mut self.read_timeout,
            Direction::Write => &mut self.write_timeout,
        };
        if let Some(timeout) = slot.needs(remaining) {
            match direction {
                Direction::Read => self.stream.set_read_timeout(Some(timeout))?,
                Direction::Write => self.stream.set_write_timeout(Some(timeout))?,
            }
            slot.set = Some(timeout);
        }
        Ok(())
    }

    /// After a socket timeout or a signal: whether to try again, the socket's timeout
    /// set to the time left first. False once the deadline has passed.
    fn try_again(&mut self, direction: Direction, deadline: Option<Instant>) -> io::Result<bool> {
        let left = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            // No deadline, yet a timeout fired: one set for an earlier request.
            None => Duration::ZERO,
        };
        if deadline.is_some() && left.is_zero() {
            return Ok(false);
        }
        let timeout = deadline.map(|_| left);
        match direction {
            Direction::Read => {
                self.stream.set_read_timeout(timeout)?;
                self.read_timeout.set = timeout;
            }
            Direction::Write => {
                self.stream.set_write_timeout(timeout)?;
                self.write_timeout.set = timeout;
            }
        }
        Ok(true)
    }

    /// Writes what is held and then `more`, all of it, in as few writes as the socket
    /// takes, by the deadline of `timeout` as computed at `start`.
    fn write_out(
        &mut self,
        more: Range,
        timeout: NextTimeout,
        start: Instant,
    ) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        let deadline = deadline(timeout, start);
        let left = time_left(deadline, timeout.reason)?;
        self.prepare(Direction::Write, left)?;
        if self.asked_at.is_none() {
            self.asked_at = Some(SystemTime::now());
        }
        let mut held = std::mem::take(&mut self.held);
        let result = self.write_pieces(&held, more, deadline, timeout.reason);
        held.clear();
        self.held = held;
        result
    }

    fn write_pieces(
        &mut self,
        held: &[u8],
        more: Range,
        deadline: Option<Instant>,
        reason: Timeout,
    ) -> Result<(), ureq::Error> {
        let mut sent = 0;
        loop {
            let more_bytes = &self.buffers.output()[more.0..more.1];
            let total = held.len() + more_bytes.len();
            if sent >= total {
                return Ok(());
            }
            let result = if sent < held.len() {
                (&*self.stream)
                    .write_vectored(&[IoSlice::new(&held[sent..]), IoSlice::new(more_bytes)])
            } else {
                (&*self.stream).write(&more_bytes[sent - held.len()..])
            };
            match result {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => {
                    sent += n;
                    // A peer that takes a little at a time keeps each write short of
                    // the socket's timeout: the deadline is checked between writes.
                    if sent < total {
                        let left = time_left(deadline, reason)?;
                        self.prepare(Direction::Write, left)?;
                    }
                }
                Err(e) if interrupted_or_timed_out(&e) => {
                    if !self.try_again(Direction::Write, deadline)? {
                        return Err(ureq::Error::Timeout(reason));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A range of ureq's output buffer.
#[derive(Debug, Clone, Copy)]
struct Range(usize, usize);

/// A socket timeout expiring (EAGAIN with SO_RCVTIMEO/SO_SNDTIMEO) or a signal.
fn interrupted_or_timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl Transport for LeanTcpTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let output = self
            .buffers
            .output()
            .get(..amount)
            .ok_or_else(|| io::Error::other("output past the buffer"))?;
        if self.held.len() + output.len() <= COALESCE_LIMIT {
            self.held.extend_from_slice(output);
            return Ok(());
        }
        self.write_out(Range(0, amount), timeout, Instant::now())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        // The time spent sending what is held counts against the read's deadline:
        // both come out of the one timeout ureq computed before this call.
        let start = Instant::now();
        if !self.held.is_empty() {
            self.write_out(Range(0, 0), timeout, start)?;
        }
        let timeout = timeout.for_read();
        let deadline = deadline(timeout, start);
        let left = time_left(deadline, timeout.reason)?;
        self.prepare(Direction::Read, left)?;
        let fd = self.stream.as_raw_fd();
        let arrival = loop {
            match crate::os::read_with_arrival(fd, self.buffers.input_append_buf()) {
                Ok(arrival) => break arrival,
                Err(e) if interrupted_or_timed_out(&e) => {
                    if !self.try_again(Direction::Read, deadline)? {
                        return Err(ureq::Error::Timeout(timeout.reason));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        let asked_at = self.asked_at.take();
        if let (Some(asked_at), Some(arrived)) = (asked_at, arrival.arrived)
            && arrival.read > 0
            && arrived < asked_at
        {
            // Said before it was asked: a stray answer to an earlier request, or a
            // TLS alert. The request may have reached the endpoint all the same, so
            // this is a failed attempt (and the connection is not used again).
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the endpoint sent bytes before it was asked",
            )
            .into());
        }
        self.more_waiting = arrival.more_waiting.unwrap_or(false);
        self.buffers.input_appended(arrival.read);
        // Only bytes read count: after an end of stream, the probe must see it.
        self.read_since_probe |= arrival.read > 0;
        Ok(arrival.read > 0)
    }

    fn is_open(&mut self) -> bool {
        // Bytes ureq handed over and never saw sent would go out ahead of the next
        // request: such a connection is not used again.
        if !self.held.is_empty() {
            return false;
        }
        let fd = self.stream.as_raw_fd();
        if std::mem::take(&mut self.read_since_probe) {
            // Going back to the pool, its answer read: fit unless something followed.
            if self.reports_arrivals {
                if self.more_waiting {
                    return false;
                }
                self.watch.pool(fd);
            }
            return true;
        }
        if self.reports_arrivals
            && let Some(quiet) = self.watch.take_out(fd)
        {
            return quiet;
        }
        crate::os::idle_connection_usable(fd)
    }
}

impl Drop for LeanTcpTransport {
    fn drop(&mut self) {
        self.watch.forget(self.stream.as_raw_fd());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn within(after: Duration) -> NextTimeout {
        NextTimeout {
            after: after.into(),
            reason: Timeout::Global,
            per_read: None,
            per_write: None,
        }
    }

    /// A transport to a peer that waits `pause`, then reads 1 KiB every `pace` and
    /// never answers, with socket buffers of a few KiB on both sides, so that writes
    /// block almost at once.
    fn to_a_slow_reader(output: usize, pause: Duration, pace: Duration) -> LeanTcpTransport {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        crate::os::shrink_socket_buffers(listener.as_raw_fd(), 1024);
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            std::thread::sleep(pause);
            let mut chunk = [0u8; 1024];
            while matches!(peer.read(&mut chunk), Ok(n) if n > 0) {
                std::thread::sleep(pace);
            }
        });
        let stream = TcpStream::connect(addr).unwrap();
        crate::os::shrink_socket_buffers(stream.as_raw_fd(), 1024);
        LeanTcpTransport::new(stream, LazyBuffers::new(16 * 1024, output), Arc::default())
    }

    fn transmit(
        t: &mut LeanTcpTransport,
        amount: usize,
        after: Duration,
    ) -> Result<(), ureq::Error> {
        t.buffers().output()[..amount].fill(b'x');
        t.transmit_output(amount, within(after))
    }

    #[test]
    fn a_peer_that_reads_a_little_at_a_time_cannot_stretch_a_write_past_its_deadline() {
        let mut t = to_a_slow_reader(256 * 1024, Duration::ZERO, Duration::from_millis(50));
        let started = Instant::now();
        let result = transmit(&mut t, 256 * 1024, Duration::from_millis(500));
        let took = started.elapsed();
        assert!(matches!(result, Err(ureq::Error::Timeout(_))), "{result:?}");
        assert!(took < Duration::from_millis(500) + SLACK * 2, "{took:?}");
    }

    #[test]
    fn sending_what_is_held_counts_against_the_wait_for_the_answer() {
        // The peer takes nothing for 300 ms, then all of it at once.
        let mut t = to_a_slow_reader(64 * 1024, Duration::from_millis(300), Duration::ZERO);
        // Held, not sent: it goes out when the answer is awaited.
        transmit(&mut t, COALESCE_LIMIT, Duration::from_millis(500)).unwrap();
        assert!(
            !t.is_open(),
            "unsent bytes: not fit to carry another request"
        );
        let started = Instant::now();
        let result = t.await_input(within(Duration::from_millis(500)));
        let took = started.elapsed();
        assert!(matches!(result, Err(ureq::Error::Timeout(_))), "{result:?}");
        // Sending took about 300 ms of the 500; the answer gets what is left.
        assert!(took < Duration::from_millis(500) + SLACK * 2, "{took:?}");
    }

    /// A transport to a peer that answers each request with `answers[i]` (or closes
    /// the connection, for `None`), reading one request's bytes first.
    fn to_a_peer_answering(answers: Vec<Option<&'static [u8]>>) -> LeanTcpTransport {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let mut request = [0u8; 64];
            for answer in answers {
                if !matches!(peer.read(&mut request), Ok(n) if n > 0) {
                    return;
                }
                match answer {
                    Some(bytes) => peer.write_all(bytes).unwrap(),
                    None => return,
                }
            }
        });
        let stream = TcpStream::connect(addr).unwrap();
        LeanTcpTransport::new(stream, LazyBuffers::new(1024, 1024), Arc::default())
    }

    /// One request and its whole answer, as ureq drives the transport, ending with
    /// the connection back in the pool.
    fn exchange(t: &mut LeanTcpTransport) {
        transmit(t, 8, Duration::from_secs(5)).unwrap();
        assert!(t.await_input(within(Duration::from_secs(5))).unwrap());
        let answered = t.buffers().input().len();
        t.buffers().input_consume(answered);
        assert!(t.is_open(), "back to the pool after a whole answer");
    }

    /// The worker's wait between batches, `wait` long, watching the pooled connection.
    fn wait_between_batches(t: &LeanTcpTransport, wait: Duration) {
        let (_jobs, rx) = std::sync::mpsc::channel();
        let bell = Arc::new(super::super::doorbell::Doorbell::new(
            crate::os::EventFd::new().unwrap(),
        ));
        let mut inbox = super::super::inbox::Inbox::new(rx, bell, Arc::clone(&t.watch));
        assert!(!inbox.wait_unless_given_up(wait));
    }

    #[test]
    fn a_pooled_connection_that_stirs_while_the_worker_waits_is_not_taken_out() {
        for (stir, answers) in [
            ("a close", vec![Some(&b"answer"[..]), None]),
            (
                "a stray answer",
                vec![Some(b"answer"), Some(b"HTTP/1.1 200 OK\r\n")],
            ),
        ] {
            let mut t = to_a_peer_answering(answers);
            assert!(t.reports_arrivals, "this kernel reports arrivals");
            exchange(&mut t);
            // A quiet wait leaves it fit to be taken out.
            wait_between_batches(&t, Duration::from_millis(50));
            assert!(t.is_open(), "{stir}: nothing stirred, yet not taken out");
            // Back to the pool, as after an answer.
            t.read_since_probe = true;
            assert!(t.is_open());
            // The peer reads bytes sent around the transport and then stirs, while
            // the connection sits in the pool and the worker waits.
            (&*t.stream).write_all(b"request!").unwrap();
            wait_between_batches(&t, Duration::from_millis(300));
            assert!(!t.is_open(), "{stir} while pooled, yet taken out");
        }
    }

    #[test]
    fn a_connection_whose_answer_is_followed_by_a_close_does_not_go_back_to_the_pool() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed, has_closed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let mut request = [0u8; 64];
            let _ = peer.read(&mut request);
            peer.write_all(b"answer").unwrap();
            drop(peer);
            closed.send(()).unwrap();
        });
        let stream = TcpStream::connect(addr).unwrap();
        let mut t = LeanTcpTransport::new(stream, LazyBuffers::new(1024, 1024), Arc::default());
        transmit(&mut t, 8, Duration::from_secs(5)).unwrap();
        t.write_out(Range(0, 0), within(Duration::from_secs(5)), Instant::now())
            .unwrap();
        has_closed.recv().unwrap();
        // The close is on its way over loopback; let it land behind the answer.
        std::thread::sleep(Duration::from_millis(50));
        assert!(t.await_input(within(Duration::from_secs(5))).unwrap());
        let answered = t.buffers().input().len();
        t.buffers().input_consume(answered);
        assert!(!t.is_open(), "the peer closed behind its answer");
    }

    /// Waits until the kernel stamps arrivals: it turns stamping on from a work queue
    /// a moment after the first socket asks for it.
    fn kernel_stamps_arrivals() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let receiver = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        crate::os::report_arrivals(receiver.as_raw_fd()).unwrap();
        let (mut sender, _) = listener.accept().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut byte = [0u8; 1];
        loop {
            sender.write_all(b"x").unwrap();
            let arrival = crate::os::read_with_arrival(receiver.as_raw_fd(), &mut byte).unwrap();
            if arrival.arrived.is_some() {
                // Held open until the test ends, so stamping stays on.
                std::mem::forget(receiver);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the kernel never stamped an arrival"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn bytes_that_came_before_the_request_are_not_its_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (spoke, has_spoken) = std::sync::mpsc::channel();
        let (go, speak) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            speak.recv().unwrap();
            peer.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
            spoke.send(()).unwrap();
            // Reads the request and holds its answer, so the read can only be the
            // stray one (one read of both is `turns`' to catch).
            let mut request = [0u8; 64];
            let _ = peer.read(&mut request);
            std::thread::sleep(Duration::from_secs(2));
        });
        let stream = TcpStream::connect(addr).unwrap();
        let mut t = LeanTcpTransport::new(stream, LazyBuffers::new(1024, 1024), Arc::default());
        kernel_stamps_arrivals();
        go.send(()).unwrap();
        has_spoken.recv().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        transmit(&mut t, 8, Duration::from_secs(5)).unwrap();
        let read = t.await_input(within(Duration::from_secs(5)));
        assert!(read.is_err(), "a stray answer was taken: {read:?}");
    }

    #[test]
    fn without_arrival_reports_a_pooled_connection_is_probed() {
        let mut t = to_a_peer_answering(vec![Some(b"answer"), None]);
        t.reports_arrivals = false;
        exchange(&mut t);
        // The next request's bytes, sent around the transport: the peer reads them
        // and closes while the connection sits in the pool.
        (&*t.stream).write_all(b"request!").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while t.is_open() {
            assert!(Instant::now() < deadline, "the probe never saw the close");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_timeout_is_set_only_when_the_deadline_could_be_overrun() {
        let ms = Duration::from_millis;
        let unset = SocketTimeout::default();
        assert_eq!(unset.needs(Some(ms(5000))), Some(ms(5000)));
        assert_eq!(unset.needs(None), None);
        let set = SocketTimeout {
            set: Some(ms(5000)),
        };
        // The next request, or the same one a little later: left alone.
        assert_eq!(set.needs(Some(ms(5000))), None);
        assert_eq!(set.needs(Some(ms(4950))), None);
        assert_eq!(set.needs(Some(ms(9000))), None);
        // Close to the deadline the timeout must come down.
        assert_eq!(set.needs(Some(ms(4800))), Some(ms(4800)));
        assert_eq!(set.needs(Some(Duration::ZERO)), Some(ms(1)));
    }
}
