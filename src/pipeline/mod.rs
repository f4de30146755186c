//! The delivery pipeline: accepted records on their way to the worker and back, and
//! the shutdown lifecycle that decides when the service stops.
//!
//! It is plain state driven by the poll loop: records in (`offer`), the next batch out
//! (`next_batch`), the worker's outcome in (`delivered`, `failed`), signals in, and a
//! `Stop` out once the service must end, naming the records the dead-letter file
//! must take. A record that finds the ring full waits with its request (as the Go
//! reference's handler waits on its channel) until room frees (`admit_waiter`) or
//! `--queue-wait` runs out (`expire_waiter`). It touches no socket, thread or file, so every decision below is unit
//! tested; the loop does the I/O each answer asks for.
//!
//! Each fact has one owner here: the batches in flight (`in_flight`), the lifecycle,
//! the replayed records, the waiting requests, and the ring's capacity, which counts
//! the batches in flight so that the ring's size bounds every accepted record in memory.
//!
//! The worker may hold two batches (`MAX_IN_FLIGHT`): the one it posts and the next,
//! handed over as soon as it is due, so that the next POST starts the moment an answer
//! comes instead of after a round trip through the loop. Batches are posted and come
//! back in order. Once one fails, nothing more is handed over, and the service stops
//! when the worker has given back everything it held.

mod lifecycle;
mod queue;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use lifecycle::{Exit, Lifecycle, SignalEffect};
use queue::Queue;

use crate::deadletter::Replay;
pub use crate::metrics::Totals;
use crate::record::Record;

/// Batches the worker may hold at once: the one it posts and the next. More would not
/// help: the ring (two batches) would hold nothing for a third.
pub const MAX_IN_FLIGHT: usize = 2;

/// A batch the worker holds.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    records: usize,
    /// Taken from the replay file rather than the ring: such records stay in their
    /// file until delivered, so they never count against the ring or go to the
    /// dead-letter file.
    from_replay: bool,
}

/// Which request waits for room: its connection's slot, and a serial that tells a
/// reused slot from the connection that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub slot: usize,
    pub serial: u64,
}

/// Records that came back undelivered after a failure, in the order they were
/// accepted: the worker's, oldest first, then a batch that never reached it (the
/// newest of all).
#[derive(Default)]
struct GivenBack {
    by_worker: Vec<Record>,
    never_handed_over: Vec<Record>,
}

/// A decoded record whose request waits for room in the ring.
struct Waiter {
    ticket: Ticket,
    record: Record,
    /// The request body's size, the stand-in for what the record holds in memory.
    size: usize,
    since: Instant,
}

/// What became of a record offered by a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// In the ring: answer 201.
    Accepted,
    /// No room: the request waits, unanswered, until `admit_waiter` or `expire_waiter`
    /// names its ticket.
    Waiting,
    /// No room and no waiting allowed (`--queue-wait 0`): answer 503.
    Full,
}

/// The service must end: the records to dead-letter, and why.
#[derive(Debug)]
pub struct Stop {
    pub exit: Exit,
    /// Accepted and not delivered, oldest first.
    pub undelivered: Vec<Record>,
    /// Requests still waiting for room: they get 503, never 201, and their records
    /// are dropped, as refused records must be.
    pub refused: Vec<Ticket>,
    /// A replay file whose records were not all delivered: it stays in place.
    pub replay_left: Option<(PathBuf, usize)>,
}

/// A replay file all of whose records were delivered: the loop renames it.
#[derive(Debug)]
pub struct ReplayDone {
    pub path: PathBuf,
    pub records: usize,
    /// The file's length when it was read: what follows was appended since.
    pub length: u64,
}

pub struct Pipeline {
    queue: Queue,
    replay: Option<Replay>,
    /// Oldest first; the worker's outcomes come back in this order.
    in_flight: VecDeque<InFlight>,
    /// A batch failed: what has come back undelivered so far, held until the worker
    /// holds nothing more.
    giving_up: Option<GivenBack>,
    /// A `Stop` has been made: nothing more is accepted, since its dead letters are
    /// already counted.
    stopped: bool,
    lifecycle: Lifecycle,
    /// Emptied vectors of delivered batches, reused for the next ones.
    spare_batches: Vec<Vec<Record>>,
    /// Requests that found no room, oldest first. At most one per connection, since
    /// a connection reads nothing more while its request waits.
    waiters: VecDeque<Waiter>,
    /// `--queue-wait`: how long a request may wait for room before its 503.
    queue_wait: Duration,
    /// The waiters' `size`s added up: part of the global buffered-bytes budget.
    waiting_bytes: usize,
    totals: Totals,
}

impl Pipeline {
    /// `capacity` records fit in the ring, the batch in flight included.
    pub fn new(
        capacity: usize,
        batch_size: usize,
        interval: Option<Duration>,
        queue_wait: Duration,
        replay: Option<Replay>,
    ) -> Pipeline {
        Pipeline {
            queue: Queue::new(capacity, batch_size, interval),
            replay,
            in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT),
            giving_up: None,
            stopped: false,
            lifecycle: Lifecycle::Serving,
            spare_batches: Vec::with_capacity(MAX_IN_FLIGHT),
            waiters: VecDeque::new(),
            queue_wait,
            waiting_bytes: 0,
            totals: Totals::default(),
        }
    }

    /// Records from the ring that the worker holds (replayed ones are not counted).
    fn ring_records_in_flight(&self) -> usize {
        self.in_flight
            .iter()
            .filter(|b| !b.from_replay)
            .map(|b| b.records)
            .sum()
    }

    /// After a failure nothing more is accepted: the service stops as soon as the
    /// worker has given back what it holds.
    fn ring_has_room(&self) -> bool {
        !self.stopped
            && self.giving_up.is_none()
            && self.queue.waiting() + self.ring_records_in_flight() < self.queue.capacity()
    }

    /// A new record would be accepted at once. Room that frees up goes to the
    /// requests already waiting first, so a newcomer never overtakes them.
    pub fn has_room(&self) -> bool {
        self.waiters.is_empty() && self.ring_has_room()
    }

    /// A request that would wait rather than be refused when there is no room.
    pub fn may_wait(&self) -> bool {
        !self.queue_wait.is_zero()
    }

    /// A decoded record from `ticket`'s request, whose body was `size` bytes.
    pub fn offer(&mut self, record: Record, size: usize, ticket: Ticket, now: Instant) -> Offer {
        if self.stopped {
            // Nothing would admit it, and the dead letters are already counted.
            return Offer::Full;
        }
        if self.has_room() {
            return match self.queue.push(record, now) {
                Ok(()) => {
                    self.totals.accepted += 1;
                    Offer::Accepted
                }
                Err(_) => Offer::Full,
            };
        }
        if !self.may_wait() {
            return Offer::Full;
        }
        self.totals.waited += 1;
        self.waiting_bytes += size;
        self.waiters.push_back(Waiter {
            ticket,
            record,
            size,
            since: now,
        });
        Offer::Waiting
    }

    /// Requests waiting for room now.
    pub fn waiting_requests(&self) -> usize {
        self.waiters.len()
    }

    /// What the waiting requests hold, counted against `--max-buffered-bytes`.
    pub fn waiting_bytes(&self) -> usize {
        self.waiting_bytes
    }

    fn pop_waiter(&mut self) -> Option<Waiter> {
        let waiter = self.waiters.pop_front()?;
        self.waiting_bytes -= waiter.size;
        Some(waiter)
    }

    /// Moves the oldest waiting request's record into the ring if there is room, and
    /// names the request so it can be answered 201. Waiters whose connection is gone
    /// (`is_alive` says no) are dropped on the way: nobody was told their record was
    /// accepted.
    pub fn admit_waiter(
        &mut self,
        now: Instant,
        is_alive: impl Fn(Ticket) -> bool,
    ) -> Option<Ticket> {
        while let Some(front) = self.waiters.front() {
            if !is_alive(front.ticket) {
                self.pop_waiter();
                continue;
            }
            if !self.ring_has_room() {
                return None;
            }
            let waiter = self.pop_waiter()?;
            self.totals.wait.observe(now - waiter.since);
            if self.queue.push(waiter.record, now).is_err() {
                // ring_has_room() said there was a slot; never reached.
                return None;
            }
            self.totals.accepted += 1;
            return Some(waiter.ticket);
        }
        None
    }

    /// The oldest waiting request once it has waited `--queue-wait`: it gets 503 and
    /// its record is dropped.
    pub fn expire_waiter(&mut self, now: Instant) -> Option<Ticket> {
        let front = self.waiters.front()?;
        if now < front.since + self.queue_wait {
            return None;
        }
        let waiter = self.pop_waiter()?;
        self.totals.gave_up += 1;
        self.totals.wait.observe(now - waiter.since);
        Some(waiter.ticket)
    }

    /// When the oldest waiting request gives up.
    pub fn wait_deadline(&self) -> Option<Instant> {
        Some(self.waiters.front()?.since + self.queue_wait)
    }

    pub fn waiting(&self) -> usize {
        self.queue.waiting()
    }

    /// Records the worker holds now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().map(|b| b.records).sum()
    }

    pub fn batches_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Records of the batch whose outcome comes next.
    pub fn oldest_in_flight(&self) -> usize {
        self.in_flight.front().map_or(0, |b| b.records)
    }

    /// The worker holds a batch: an outcome is owed.
    pub fn is_busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle
    }

    pub fn is_draining(&self) -> bool {
        !self.lifecycle.is_serving()
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    fn replay_pending(&self) -> bool {
        self.replay.as_ref().is_some_and(|r| !r.records.is_empty())
    }

    /// When `next_batch` will next have something: `now` if it has now, `None` while
    /// the worker holds all it may, after a failure, or while nothing waits.
    pub fn due(&self, now: Instant) -> Option<Instant> {
        if self.in_flight.len() >= MAX_IN_FLIGHT
            || self.giving_up.is_some()
            || self.stopped
            || self.lifecycle == Lifecycle::Forced
        {
            return None;
        }
        let draining = self.lifecycle == Lifecycle::Draining && self.queue.waiting() > 0;
        if self.replay_pending() || draining || self.queue.batch_due(now) {
            return Some(now);
        }
        self.queue.time_deadline()
    }

    /// The batch to hand the worker now, if one is due and the worker may take it:
    /// replayed records first, then the ring's (all that wait, once draining).
    pub fn next_batch(&mut self, now: Instant) -> Option<Vec<Record>> {
        if self.due(now).is_none_or(|at| at > now) {
            return None;
        }
        let mut batch = self.spare_batches.pop().unwrap_or_default();
        batch.clear();
        let limit = self.queue.batch_limit();
        let from_replay = match &mut self.replay {
            Some(replay) if !replay.records.is_empty() => {
                let count = replay.records.len().min(limit);
                batch.extend(replay.records.drain(..count));
                true
            }
            _ => {
                self.queue.take_batch_into(&mut batch);
                false
            }
        };
        self.in_flight.push_back(InFlight {
            records: batch.len(),
            from_replay,
        });
        Some(batch)
    }

    /// The worker delivered its oldest batch but for `set_aside` records the endpoint
    /// refused (now in the dead-letter file). `sent` is the batch: its records are
    /// dropped here and its vector reused. A stop that was waiting for the worker
    /// ends once it holds nothing more.
    pub fn delivered(&mut self, mut sent: Vec<Record>, set_aside: usize) -> Option<Stop> {
        sent.clear();
        let batch = self.in_flight.pop_front()?;
        let set_aside = set_aside.min(batch.records);
        self.totals.delivered += (batch.records - set_aside) as u64;
        self.totals.set_aside += set_aside as u64;
        self.totals.batches_delivered += 1;
        if self.spare_batches.len() < MAX_IN_FLIGHT {
            self.spare_batches.push(sent);
        }
        self.stop_when_worker_empty()
    }

    /// The worker gave back its oldest batch undelivered (retries exhausted, aborted,
    /// not attempted after an earlier failure, or the worker is gone): the service
    /// stops once the worker holds nothing more, and every accepted record it still
    /// holds goes to the dead-letter file, oldest first. Replayed records stay in
    /// their file.
    pub fn failed(&mut self, batch: Vec<Record>) -> Option<Stop> {
        let from_replay = self.in_flight.pop_front().is_some_and(|b| b.from_replay);
        self.give_back(batch, from_replay, false)
    }

    /// The batch just taken from `next_batch` could not be handed to the worker: it
    /// is the newest in flight, not the oldest.
    pub fn not_handed_over(&mut self, batch: Vec<Record>) -> Option<Stop> {
        let from_replay = self.in_flight.pop_back().is_some_and(|b| b.from_replay);
        self.give_back(batch, from_replay, true)
    }

    fn give_back(&mut self, batch: Vec<Record>, from_replay: bool, newest: bool) -> Option<Stop> {
        self.totals.batches_failed += 1;
        let given_back = self.giving_up.get_or_insert_with(GivenBack::default);
        if !from_replay {
            if newest {
                given_back.never_handed_over.extend(batch);
            } else {
                given_back.by_worker.extend(batch);
            }
        }
        self.stop_when_worker_empty()
    }

    /// After a failure or a forced stop, the `Stop` once the worker holds nothing.
    fn stop_when_worker_empty(&mut self) -> Option<Stop> {
        if !self.in_flight.is_empty() {
            return None;
        }
        let exit = if self.lifecycle == Lifecycle::Forced {
            Exit::Forced
        } else if self.giving_up.is_some() {
            Exit::DeliveryFailed
        } else {
            return None;
        };
        let given_back = self.giving_up.take().unwrap_or_default();
        let mut undelivered = given_back.by_worker;
        undelivered.extend(given_back.never_handed_over);
        Some(self.stop(exit, undelivered))
    }

    /// The replay file, once every one of its records is delivered.
    pub fn take_finished_replay(&mut self) -> Option<ReplayDone> {
        let replay_in_flight = self.in_flight.iter().any(|b| b.from_replay);
        if self.replay_pending() || replay_in_flight {
            return None;
        }
        let replay = self.replay.take()?;
        Some(ReplayDone {
            path: replay.path,
            records: replay.total,
            length: replay.length,
        })
    }

    /// A stop signal (SIGTERM, SIGINT, SIGHUP, SIGQUIT, ...) arrived.
    pub fn on_signal(&mut self) -> SignalEffect {
        self.lifecycle.on_signal()
    }

    /// Whether the service is done: after a forced stop once the worker is free, or
    /// after a drain once nothing is left to send and no request is under way.
    pub fn tick(&mut self, requests_under_way: bool) -> Option<Stop> {
        match self.lifecycle {
            Lifecycle::Serving => None,
            Lifecycle::Forced => self.stop_when_worker_empty(),
            Lifecycle::Draining => {
                let done = self.in_flight.is_empty()
                    && self.queue.waiting() == 0
                    && self.waiters.is_empty()
                    && self.replay.is_none()
                    && !requests_under_way;
                done.then(|| self.stop(Exit::Drained, Vec::new()))
            }
        }
    }

    fn stop(&mut self, exit: Exit, mut undelivered: Vec<Record>) -> Stop {
        self.stopped = true;
        self.queue.drain_into(&mut undelivered);
        let replay_left = self
            .replay
            .as_ref()
            .map(|r| (r.path.clone(), r.records.len()));
        self.waiting_bytes = 0;
        let refused = self.waiters.drain(..).map(|w| w.ticket).collect();
        Stop {
            exit,
            undelivered,
            refused,
            replay_left,
        }
    }
}

#[cfg(test)]
mod tests;
