//! The shutdown lifecycle: serving, draining after the first signal, forced after the
//! second. Only the pipeline holds it, so "are we draining" has one answer.

/// Where the service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Serving,
    /// First signal: no new connections or requests; queued records go out.
    Draining,
    /// Second signal: the batch being posted is abandoned as soon as the worker allows,
    /// the one behind it goes back unattempted,
    /// and what is left goes to the dead-letter file.
    Forced,
}

/// What a signal asks the loop to do besides changing the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEffect {
    /// Close the listener and idle connections, refuse new requests, send what waits.
    BeginDrain,
    /// Stop retrying the batch being posted; give back the one behind it.
    Force,
    /// Already forced: nothing more to do.
    Nothing,
}

impl Lifecycle {
    /// Every delivery of a stop signal counts, so two in a row force.
    pub fn on_signal(&mut self) -> SignalEffect {
        match self {
            Lifecycle::Serving => {
                *self = Lifecycle::Draining;
                SignalEffect::BeginDrain
            }
            Lifecycle::Draining => {
                *self = Lifecycle::Forced;
                SignalEffect::Force
            }
            Lifecycle::Forced => SignalEffect::Nothing,
        }
    }

    pub fn is_serving(self) -> bool {
        self == Lifecycle::Serving
    }
}

/// Why the service stopped; the exit status follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A signal, and every accepted record was delivered.
    Drained,
    /// A batch could not be delivered after every retry; what was left is dead-lettered.
    DeliveryFailed,
    /// A second signal cut the drain short; what was left is dead-lettered.
    Forced,
}

impl Exit {
    /// The process exit status documented in the README.
    pub fn status(self) -> u8 {
        match self {
            Exit::Drained => 0,
            Exit::DeliveryFailed => 3,
            Exit::Forced => 4,
        }
    }
}
