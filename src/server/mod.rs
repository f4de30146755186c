//! The poll loop: one thread, one `mio::Poll`, every socket non-blocking.
//!
//! It only dispatches. Each turn it waits for readiness or the nearest deadline,
//! hands socket events to the connection table, the worker's outcome and signals to
//! the pipeline, gives the worker its next due batch, and does the I/O the pipeline's
//! answers ask for (renaming a finished replay file, writing dead letters at the end).
//! The poll timeout is the nearest of the batch deadline, the connection deadlines and
//! the log's, so an idle service sleeps in `epoll_wait` and uses no CPU at all.
//!
//! The worker shares the core under load and does not preempt the loop when it wakes
//! (see `os::defer_wakeups_to_the_loop`), so the loop yields the core once per batch
//! it hands over: the worker then reads the answer to the batch before and sends the
//! new one in a single run.

mod connections;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libc::{SIGHUP, SIGINT, SIGPWR, SIGQUIT, SIGTERM, SIGXCPU};
use log::{error, info, warn};
use mio::net::TcpListener;
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::Config;
use crate::deadletter::{self, Replay};
use crate::metrics::WorkerStats;
use crate::pipeline::{Exit, Pipeline, SignalEffect, Stop, Ticket};
use crate::service::{Service, WaitOutcome};
use crate::worker::{Outcome, Worker};
use connections::{App, Connections};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

pub struct Server {
    poll: Poll,
    /// One byte arrives per signal delivery (see `watch_signals`).
    signals: UnixStream,
    local_addr: SocketAddr,
    connections: Connections,
    service: Service,
    pipeline: Pipeline,
    worker: Worker,
    dead_letter: std::path::PathBuf,
    /// When buffered log lines must be written.
    log_due: Option<Instant>,
    /// Requests admitted to the ring by a delivery, to be answered 201 once the
    /// worker has its next batch (see `forward`); kept to reuse its allocation.
    admitted: Vec<Ticket>,
}

impl Server {
    pub fn bind(config: &Config, replay: Option<Replay>) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = bind_first(&config.listen)?;
        if let Err(e) = crate::os::widen_backlog(&listener) {
            warn!(error:% = e; "the listen backlog stays at the standard library's 128");
        }
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = watch_signals()?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let worker_stats = Arc::new(WorkerStats::default());
        let worker = Worker::spawn(
            config.outbound.clone(),
            config.dead_letter.clone(),
            waker,
            Arc::clone(&worker_stats),
        )?;
        let now = Instant::now();
        let mut server = Server {
            poll,
            signals,
            local_addr,
            connections: Connections::new(
                listener,
                config.max_connections,
                config.limits.clone(),
                config.max_buffered_bytes,
                now,
            ),
            service: Service::new(
                worker_stats,
                config.limits.max_body_bytes,
                now,
                config.auth.clone(),
            ),
            pipeline: Pipeline::new(
                config.ring_capacity(),
                config.batch_size,
                config.batch_interval,
                config.queue_wait,
                replay,
            ),
            worker,
            dead_letter: config.dead_letter.clone(),
            log_due: None,
            admitted: Vec::new(),
        };
        server.retire_finished_replay();
        Ok(server)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn run(&mut self) -> Exit {
        let mut events = Events::with_capacity(1024);
        loop {
            let mut timeout = self.poll_timeout();
            if timeout != Some(Duration::ZERO) && !self.worker.may_sleep() {
                timeout = Some(Duration::ZERO);
            }
            let polled = self.poll.poll(&mut events, timeout);
            self.worker.awake();
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    error!(error:% = e; "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let now = Instant::now();
            self.service.now = now;
            self.connections.refresh_date();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.connections.accept(self.poll.registry(), now),
                    WAKER => {}
                    SIGNALS => self.on_signals(),
                    Token(slot) => {
                        let closed = event.is_read_closed() || event.is_error();
                        let readable = event.is_readable() || closed;
                        let mut app = App {
                            service: &mut self.service,
                            pipeline: &mut self.pipeline,
                        };
                        self.connections.on_event(
                            self.poll.registry(),
                            slot,
                            readable,
                            closed,
                            &mut app,
                        );
                    }
                }
                // A turn can take a millisecond under load; hand the worker its next
                // batch as soon as it is free rather than at the end of the turn.
                if let Some(stop) = self.forward(now) {
                    return self.finish(stop);
                }
            }
            self.settle_waiting_requests(now);
            let mut app = App {
                service: &mut self.service,
                pipeline: &mut self.pipeline,
            };
            self.connections
                .continue_unfinished(self.poll.registry(), &mut app);
            self.connections
                .release_held(self.poll.registry(), &mut app);
            if let Some(stop) = self.forward(now) {
                return self.finish(stop);
            }
            let mut app = App {
                service: &mut self.service,
                pipeline: &mut self.pipeline,
            };
            self.connections.sweep(self.poll.registry(), now, &mut app);
            self.connections.resume_accepting(self.poll.registry(), now);
            if let Some(stop) = self.pipeline.tick(self.connections.any_under_way()) {
                return self.finish(stop);
            }
            if self.connections.trim_due(now) {
                crate::os::trim_free_memory();
            }
            self.log_due = crate::logging::flush_due(now);
        }
    }

    /// The nearest thing the loop must do without an event.
    fn poll_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        if self.connections.has_unfinished() {
            return Some(Duration::ZERO);
        }
        let deadline = [
            self.pipeline.due(now),
            self.pipeline.wait_deadline(),
            self.connections.deadline(),
            self.connections.trim_deadline(),
            self.log_due,
        ]
        .into_iter()
        .flatten()
        .min()?;
        if deadline <= now {
            return Some(Duration::ZERO);
        }
        // Round up so that we wake at or after the deadline, never just before it.
        Some(deadline - now + Duration::from_micros(500))
    }

    /// Takes the worker's outcomes that are ready, then hands it the batches that are
    /// due. Cheap when there is nothing to do: one channel poll, one comparison.
    ///
    /// Room that a delivery frees goes to waiting requests at once, and the batch they
    /// complete goes to the worker before they are answered, followed by a yield: the
    /// worker then reads the answer to the batch it is posting and sends this one in
    /// the same run, rather than waking once for each.
    fn forward(&mut self, now: Instant) -> Option<Stop> {
        let mut room_freed = false;
        while self.pipeline.is_busy() {
            let Some(outcome) = self.worker.poll_outcome() else {
                break;
            };
            let stop = match outcome {
                Outcome::Delivered { batch, set_aside } => {
                    self.service.metrics.dead_lettered += set_aside as u64;
                    room_freed = true;
                    let stop = self.pipeline.delivered(batch, set_aside);
                    self.retire_finished_replay();
                    stop
                }
                Outcome::Failed { batch, reason } => {
                    error!(batch_size = self.pipeline.oldest_in_flight(), waiting = self.pipeline.waiting(), reason = reason.as_str(); "giving up on the batch");
                    self.pipeline.failed(batch)
                }
            };
            if stop.is_some() {
                return stop;
            }
        }
        let mut admitted = std::mem::take(&mut self.admitted);
        if room_freed {
            let connections = &self.connections;
            while let Some(ticket) = self
                .pipeline
                .admit_waiter(now, |t| connections.is_waiting(t))
            {
                admitted.push(ticket);
            }
        }
        let mut handed_over = false;
        let mut stop = None;
        while let Some(batch) = self.pipeline.next_batch(now) {
            handed_over = true;
            if let Err(batch) = self.worker.send(batch) {
                // The worker cannot vanish by design; if it did, keep the records safe.
                error!(batch_size = batch.len(); "forwarder thread is gone");
                stop = self.pipeline.not_handed_over(batch);
                break;
            }
        }
        for ticket in admitted.drain(..) {
            self.answer_waiting(ticket, WaitOutcome::Admitted);
        }
        self.admitted = admitted;
        if stop.is_none() && handed_over {
            // The worker's wake-ups wait for the loop: this is where it gets the core,
            // to send the batch, and first to read the answer to the one before if it
            // has come. A yield with nothing else to run costs one cheap syscall.
            std::thread::yield_now();
        }
        stop
    }

    /// Answers the requests that waited for room: 201 for each one room was found
    /// for, oldest first, and 503 for each one whose `--queue-wait` ran out.
    fn settle_waiting_requests(&mut self, now: Instant) {
        loop {
            let connections = &self.connections;
            let Some(ticket) = self
                .pipeline
                .admit_waiter(now, |t| connections.is_waiting(t))
            else {
                break;
            };
            self.answer_waiting(ticket, WaitOutcome::Admitted);
        }
        while let Some(ticket) = self.pipeline.expire_waiter(now) {
            self.answer_waiting(ticket, WaitOutcome::GaveUp);
        }
    }

    fn answer_waiting(&mut self, ticket: Ticket, outcome: WaitOutcome) {
        let mut app = App {
            service: &mut self.service,
            pipeline: &mut self.pipeline,
        };
        self.connections
            .answer_waiting(self.poll.registry(), ticket, outcome, &mut app);
    }

    fn retire_finished_replay(&mut self) {
        let Some(done) = self.pipeline.take_finished_replay() else {
            return;
        };
        match deadletter::retire_replayed(&done.path, done.length) {
            Ok(retired) if retired.kept_bytes > 0 => {
                info!(records = done.records, renamed_to:% = retired.renamed_to.display(), kept_bytes = retired.kept_bytes; "replay complete; the records dead-lettered meanwhile stay in the file")
            }
            Ok(retired) => {
                info!(records = done.records, renamed_to:% = retired.renamed_to.display(); "replay complete")
            }
            Err(e) => {
                warn!(path:% = done.path.display(), error:% = e; "replay complete, but retiring its file failed (if it was not renamed, replaying it again would resend its records)")
            }
        }
    }

    fn on_signals(&mut self) {
        let mut count = 0;
        let mut bytes = [0u8; 64];
        loop {
            match io::Read::read(&mut self.signals, &mut bytes) {
                Ok(0) => break,
                Ok(n) => count += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        for _ in 0..count {
            match self.pipeline.on_signal() {
                SignalEffect::BeginDrain => {
                    info!(waiting = self.pipeline.waiting(), in_flight = self.pipeline.in_flight(), open_connections = self.connections.gauges().open; "signal received: draining");
                    self.connections.stop_accepting();
                }
                SignalEffect::Force => {
                    warn!(
                        "second signal: abandoning the drain, undelivered records go to the dead-letter file"
                    );
                    self.worker.abort();
                }
                SignalEffect::Nothing => {}
            }
        }
    }

    /// Writes what the pipeline could not deliver to the dead-letter file, logs the
    /// summary, and says why the loop ended.
    fn finish(&mut self, stop: Stop) -> Exit {
        // Requests still waiting for room are refused, never accepted, before we go.
        for &ticket in &stop.refused {
            self.answer_waiting(ticket, WaitOutcome::Stopping);
        }
        let written = deadletter::write_records(&self.dead_letter, &stop.undelivered).count();
        self.service.metrics.dead_lettered += written as u64;
        if let Some((path, left)) = &stop.replay_left {
            warn!(path:% = path.display(), left = left; "replay unfinished: its file stays in place for the next --replay");
        }
        // The worker is idle here (every stop waits for its outcome): end it, so its
        // last lines come before the summary.
        self.worker.stop();
        let totals = self.pipeline.totals();
        info!(
            exit_status = stop.exit.status(),
            reason = exit_reason(stop.exit),
            accepted = totals.accepted,
            delivered = totals.delivered,
            dead_lettered = self.service.metrics.dead_lettered;
            "stopped"
        );
        crate::logging::flush();
        stop.exit
    }
}

/// The stop signals (`STOP_SIGNALS`) each write one byte to a socket the loop polls.
///
/// Every delivery counts: two signals sent back to back are two steps (drain, then
/// force), where a pending flag per signal would fold them into one. The handler
/// (signal-hook's) only `send`s a byte, which is async-signal-safe. SIGHUP drains like
/// SIGTERM instead of killing the process when its terminal goes away. The signals
/// whose default would end the process on the spot are ignored (`os::ignore_stray_signals`):
/// a stray `kill -USR1` must not take accepted records with it.
/// Each drains, and a second one forces, like SIGTERM. SIGQUIT is nginx's graceful
/// stop; SIGXCPU comes before the kernel's SIGKILL at a CPU limit, SIGPWR before a
/// power cut: both leave time to drain.
const STOP_SIGNALS: [libc::c_int; 6] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGXCPU, SIGPWR];

fn watch_signals() -> io::Result<UnixStream> {
    let (read, write) = std::os::unix::net::UnixStream::pair()?;
    read.set_nonblocking(true)?;
    for signal in STOP_SIGNALS {
        signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
    }
    crate::os::ignore_stray_signals();
    Ok(UnixStream::from_std(read))
}

/// Why the run ended, in the words an operator reads in the last log line.
fn exit_reason(exit: Exit) -> &'static str {
    match exit {
        Exit::Drained => "drained",
        Exit::DeliveryFailed => "delivery failed after retries",
        Exit::Forced => "second signal",
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Signals raised before the loop reads are each one byte, where a pending flag
    /// per signal would read as one. (The kernel itself folds a signal into one still
    /// pending, so two `kill`s count as two once the first has been delivered.)
    #[test]
    fn every_signal_delivery_is_counted() {
        let mut signals = watch_signals().unwrap();
        for _ in 0..3 {
            // Delivered to this thread, and its handler run, before raise returns.
            signal_hook::low_level::raise(SIGHUP).unwrap();
        }
        let mut bytes = [0u8; 16];
        assert_eq!(io::Read::read(&mut signals, &mut bytes).unwrap(), 3);
    }
}
