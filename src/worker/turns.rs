//! A second answer behind the first on a reused connection: which of them answers
//! this request cannot be told, so the attempt fails.
//!
//! The probe as a pooled connection is taken out (see `transport`) sees what an
//! endpoint sent out of turn until then. A stray answer that comes after it, while
//! the batch goes out, can be read in one piece with the real answer behind it; ureq
//! then parses the first as this request's answer and closes the connection for the
//! bytes left over. So an answer with another HTTP answer left behind it fails the
//! attempt (retried: a batch may go twice, never be lost). Other bytes left behind
//! (a stray CRLF, noise) leave the answer standing, and on a connection's first
//! request nothing earlier can stray in; either way the connection is not reused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// Set when a reused connection is dropped with another answer behind its last one;
/// taken by the worker once it has read an answer to its end.
#[derive(Debug, Default)]
pub struct Leftover(AtomicBool);

impl Leftover {
    /// Whether the answer just read came with another behind it on a reused
    /// connection; clears it.
    pub fn take(&self) -> bool {
        self.0.swap(false, Relaxed)
    }
}

/// The last connector of the chain: wraps the transport ureq reads answers from.
#[derive(Debug, Default)]
pub struct TurnsConnector {
    pub leftover: Arc<Leftover>,
}

impl<In: Transport> Connector<In> for TurnsConnector {
    type Out = Turns<In>;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        Ok(chained.map(|inner| Turns {
            inner,
            requests: 0,
            answering: true,
            leftover: Arc::clone(&self.leftover),
        }))
    }
}

#[derive(Debug)]
pub struct Turns<T: Transport> {
    inner: T,
    /// Requests begun on this connection.
    requests: u32,
    /// The last call read: the next write begins a request.
    answering: bool,
    leftover: Arc<Leftover>,
}

impl<T: Transport> Transport for Turns<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        if std::mem::take(&mut self.answering) {
            self.requests = self.requests.saturating_add(1);
        }
        self.inner.transmit_output(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.answering = true;
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

impl<T: Transport> Drop for Turns<T> {
    fn drop(&mut self) {
        if self.requests > 1 && starts_an_answer(self.inner.buffers().input()) {
            self.leftover.0.store(true, Relaxed);
        }
    }
}

/// Whether bytes left over after an answer begin another (blank lines before it
/// allowed): `HTTP/`, or as much of it as came.
fn starts_an_answer(leftover: &[u8]) -> bool {
    let first = leftover.iter().position(|b| !matches!(b, b'\r' | b'\n'));
    let Some(first) = first else {
        return false;
    };
    let rest = &leftover[first..];
    let compared = rest.len().min(5);
    rest[..compared].eq_ignore_ascii_case(&b"HTTP/"[..compared])
}

#[cfg(test)]
mod tests {
    use super::starts_an_answer;

    #[test]
    fn only_the_start_of_another_answer_counts() {
        let cases: [(&[u8], bool); 11] = [
            (b"HTTP/1.1 200 OK\r\n\r\n", true),
            (b"\r\nHTTP/1.1 500 No\r\n", true),
            (b"HTTP/", true),
            (b"HTT", true),
            (b"http/1.0 201", true),
            (b"", false),
            (b"\r\n", false),
            (b"\r\n\r\n", false),
            (b"junk", false),
            (b"0\r\n\r\n", false),
            (b"HTXP/1.1", false),
        ];
        for (leftover, another_answer) in cases {
            assert_eq!(starts_an_answer(leftover), another_answer, "{leftover:?}");
        }
    }
}
