//! An answer followed by more bytes, on a connection that carried a request before:
//! which of them answers this request cannot be told, so the attempt fails.
//!
//! The transport catches bytes that arrive before a request is sent (see
//! `transport`), except when they are read in one piece with the answer that came
//! after them: a stray answer to an earlier request, then the real one. ureq then
//! parses the first as this request's answer and closes the connection for the
//! bytes left over. On a connection's first request nothing earlier can stray in,
//! so there the leftover is the endpoint's noise after its answer, and the answer
//! stands; the connection is not reused either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// Set when a reused connection is dropped with bytes past its last answer; taken by
/// the worker once it has read an answer to its end.
#[derive(Debug, Default)]
pub struct Leftover(AtomicBool);

impl Leftover {
    /// Whether the answer just read came with more bytes behind it on a reused
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
        if self.requests > 1 && !self.inner.buffers().input().is_empty() {
            self.leftover.0.store(true, Relaxed);
        }
    }
}
