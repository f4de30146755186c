//! The delivery pipeline: accepted records on their way to the worker and back, and
//! the shutdown lifecycle that decides when the service stops.
//!
//! It is plain state driven by the poll loop: records in (`push`), the next batch out
//! (`next_batch`), the worker's outcome in (`delivered`, `failed`), signals in, and a
//! `Stop` out once the service must end, naming the records the dead-letter file
//! must take. It touches no socket, thread or file, so every decision below is unit
//! tested; the loop does the I/O each answer asks for.
//!
//! Each fact has one owner here: the batch in flight (`in_flight`), the lifecycle,
//! the replayed records, and the ring's capacity, which counts the batch in flight so
//! that the ring's size bounds every accepted record in memory.

mod lifecycle;
mod queue;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use lifecycle::{Exit, Lifecycle, SignalEffect};
use queue::Queue;

use crate::deadletter::Replay;
use crate::record::Record;

/// The batch the worker holds.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    records: usize,
    /// Taken from the replay file rather than the ring: such records stay in their
    /// file until delivered, so they never count against the ring or go to the
    /// dead-letter file.
    from_replay: bool,
}

/// Delivery totals, for metrics and the last log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub accepted: u64,
    pub delivered: u64,
    pub batches_delivered: u64,
    pub batches_failed: u64,
}

/// The service must end: the records to dead-letter, and why.
#[derive(Debug)]
pub struct Stop {
    pub exit: Exit,
    /// Accepted and not delivered, oldest first.
    pub undelivered: Vec<Record>,
    /// A replay file whose records were not all delivered: it stays in place.
    pub replay_left: Option<(PathBuf, usize)>,
}

/// A replay file all of whose records were delivered: the loop renames it.
#[derive(Debug)]
pub struct ReplayDone {
    pub path: PathBuf,
    pub records: usize,
}

pub struct Pipeline {
    queue: Queue,
    replay: Option<Replay>,
    in_flight: Option<InFlight>,
    lifecycle: Lifecycle,
    /// The emptied vector of the last delivered batch, reused for the next.
    spare_batch: Vec<Record>,
    totals: Totals,
}

impl Pipeline {
    /// `capacity` records fit in the ring, the batch in flight included.
    pub fn new(
        capacity: usize,
        batch_size: usize,
        interval: Option<Duration>,
        replay: Option<Replay>,
    ) -> Pipeline {
        Pipeline {
            queue: Queue::new(capacity, batch_size, interval),
            replay,
            in_flight: None,
            lifecycle: Lifecycle::Serving,
            spare_batch: Vec::new(),
            totals: Totals::default(),
        }
    }

    /// Records from the ring that the worker holds (replayed ones are not counted).
    fn ring_records_in_flight(&self) -> usize {
        self.in_flight
            .filter(|b| !b.from_replay)
            .map_or(0, |b| b.records)
    }

    pub fn has_room(&self) -> bool {
        self.queue.waiting() + self.ring_records_in_flight() < self.queue.capacity()
    }

    /// Accepts a record; hands it back when there is no room.
    pub fn push(&mut self, record: Record, now: Instant) -> Result<(), Record> {
        if !self.has_room() {
            return Err(record);
        }
        self.queue.push(record, now)?;
        self.totals.accepted += 1;
        Ok(())
    }

    pub fn waiting(&self) -> usize {
        self.queue.waiting()
    }

    /// Records the worker holds now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.map_or(0, |b| b.records)
    }

    pub fn is_busy(&self) -> bool {
        self.in_flight.is_some()
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
    /// the worker is busy or nothing waits.
    pub fn due(&self, now: Instant) -> Option<Instant> {
        if self.in_flight.is_some() || self.lifecycle == Lifecycle::Forced {
            return None;
        }
        let draining = self.lifecycle == Lifecycle::Draining && self.queue.waiting() > 0;
        if self.replay_pending() || draining || self.queue.batch_due(now) {
            return Some(now);
        }
        self.queue.time_deadline()
    }

    /// The batch to hand the worker now, if one is due and the worker is free:
    /// replayed records first, then the ring's (all that wait, once draining).
    pub fn next_batch(&mut self, now: Instant) -> Option<Vec<Record>> {
        if self.due(now).is_none_or(|at| at > now) {
            return None;
        }
        let mut batch = std::mem::take(&mut self.spare_batch);
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
        self.in_flight = Some(InFlight {
            records: batch.len(),
            from_replay,
        });
        Some(batch)
    }

    /// The worker delivered the batch in flight; `emptied` is its vector, reused.
    /// A forced stop that was waiting for the worker ends here.
    pub fn delivered(&mut self, emptied: Vec<Record>) -> Option<Stop> {
        let batch = self.in_flight.take()?;
        self.totals.delivered += batch.records as u64;
        self.totals.batches_delivered += 1;
        self.spare_batch = emptied;
        (self.lifecycle == Lifecycle::Forced).then(|| self.stop(Exit::Forced, Vec::new()))
    }

    /// The worker gave up on the batch in flight (retries exhausted, aborted, or the
    /// worker is gone): the service stops, and every accepted record it still holds
    /// goes to the dead-letter file. Replayed records stay in their file.
    pub fn failed(&mut self, batch: Vec<Record>) -> Stop {
        let from_replay = self.in_flight.take().is_some_and(|b| b.from_replay);
        self.totals.batches_failed += 1;
        let exit = if self.lifecycle == Lifecycle::Forced {
            Exit::Forced
        } else {
            Exit::DeliveryFailed
        };
        self.stop(exit, if from_replay { Vec::new() } else { batch })
    }

    /// The replay file, once every one of its records is delivered.
    pub fn take_finished_replay(&mut self) -> Option<ReplayDone> {
        let replay_in_flight = self.in_flight.is_some_and(|b| b.from_replay);
        if self.replay_pending() || replay_in_flight {
            return None;
        }
        let replay = self.replay.take()?;
        Some(ReplayDone {
            path: replay.path,
            records: replay.total,
        })
    }

    /// SIGTERM, SIGINT or SIGHUP arrived.
    pub fn on_signal(&mut self) -> SignalEffect {
        self.lifecycle.on_signal()
    }

    /// Whether the service is done: after a forced stop once the worker is free, or
    /// after a drain once nothing is left to send and no request is under way.
    pub fn tick(&mut self, requests_under_way: bool) -> Option<Stop> {
        match self.lifecycle {
            Lifecycle::Serving => None,
            Lifecycle::Forced if self.in_flight.is_none() => {
                Some(self.stop(Exit::Forced, Vec::new()))
            }
            Lifecycle::Forced => None,
            Lifecycle::Draining => {
                let done = self.in_flight.is_none()
                    && self.queue.waiting() == 0
                    && self.replay.is_none()
                    && !requests_under_way;
                done.then(|| self.stop(Exit::Drained, Vec::new()))
            }
        }
    }

    fn stop(&mut self, exit: Exit, mut undelivered: Vec<Record>) -> Stop {
        self.queue.drain_into(&mut undelivered);
        let replay_left = self
            .replay
            .as_ref()
            .map(|r| (r.path.clone(), r.records.len()));
        Stop {
            exit,
            undelivered,
            replay_left,
        }
    }
}

#[cfg(test)]
mod tests;
