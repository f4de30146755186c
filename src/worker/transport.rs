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
//! - probes a connection only when it is taken out of the pool, with one
//!   `recv(MSG_PEEK | MSG_DONTWAIT)`; as it goes back, right after an answer was read
//!   to its end, the next probe would see the same things;
//! - holds what ureq transmits (the head, the body, TLS records) until it waits for
//!   the answer or `COALESCE_LIMIT` bytes are held, and sends it in one write. The
//!   time that takes counts against the wait for the answer, a peer that takes a
//!   little at a time cannot stretch a write past its deadline, and a connection
//!   with anything still held is never used again.
//!
//! TLS, CONNECT proxies and the absolute-form rewrite chain onto it as onto ureq's.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ureq::Timeout;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
    Transport,
};

use crate::os::IdleConnection;

/// How far past its deadline a read or write may run before shortening the socket's
/// timeout is worth a system call.
const SLACK: Duration = Duration::from_millis(100);

/// Output held for one write up to this size; beyond it, what is held goes out with
/// the next piece in one vectored write.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Opens the TCP connection; the next connectors (TLS, the proxy rewrite) wrap it.
#[derive(Debug, Default)]
pub struct LeanTcpConnector;

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
    /// An answer was read since the last probe: the connection is going back to the
    /// pool, and the probe when it is taken out will tell all there is to tell.
    read_since_probe: bool,
}

impl LeanTcpTransport {
    fn new(stream: TcpStream, buffers: LazyBuffers) -> LeanTcpTransport {
        LeanTcpTransport {
            stream: Arc::new(stream),
            buffers,
            read_timeout: SocketTimeout::default(),
            write_timeout: SocketTimeout::default(),
            held: Vec::new(),
            read_since_probe: false,
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
        let amount = loop {
            match (&*self.stream).read(self.buffers.input_append_buf()) {
                Ok(n) => break n,
                Err(e) if interrupted_or_timed_out(&e) => {
                    if !self.try_again(Direction::Read, deadline)? {
                        return Err(ureq::Error::Timeout(timeout.reason));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.buffers.input_appended(amount);
        // Only bytes read count: after an end of stream, the probe must see it.
        self.read_since_probe |= amount > 0;
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // Bytes ureq handed over and never saw sent would go out ahead of the next
        // request: such a connection is not used again.
        if !self.held.is_empty() {
            return false;
        }
        if std::mem::take(&mut self.read_since_probe) {
            return true;
        }
        match crate::os::look_at_idle_connection(self.stream.as_raw_fd()) {
            IdleConnection::Quiet => true,
            IdleConnection::Closed => false,
            // Plain HTTP: an answer that came after the last one was read. If it is
            // that request's own, the one taken for it was a stray, and the batch may
            // not have been delivered: say so (over TLS the bytes cannot be read).
            IdleConnection::Spoke(b'H' | b'h') => {
                log::error!(
                    "the endpoint sent an answer nobody asked for after its last one: it answers twice, or the last batch took a stray answer for its own and may not have been delivered"
                );
                false
            }
            IdleConnection::Spoke(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        LeanTcpTransport::new(stream, LazyBuffers::new(16 * 1024, output))
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
        LeanTcpTransport::new(stream, LazyBuffers::new(1024, 1024))
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

    #[test]
    fn a_pooled_connection_the_peer_closed_is_not_taken_out() {
        let mut t = to_a_peer_answering(vec![Some(b"answer"), None]);
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
