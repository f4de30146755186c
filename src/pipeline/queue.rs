//! The ring of accepted records and the two batch triggers (size and age).

use std::time::{Duration, Instant};

use crate::record::Record;
use crate::ring::Ring;

struct Queued {
    record: Record,
    arrived: Instant,
}

/// Accepted records waiting for their batch, oldest first.
pub struct Queue {
    ring: Ring<Queued>,
    batch_size: usize,
    interval: Option<Duration>,
}

impl Queue {
    pub fn new(capacity: usize, batch_size: usize, interval: Option<Duration>) -> Queue {
        Queue {
            ring: Ring::with_capacity(capacity),
            batch_size,
            interval,
        }
    }

    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    pub fn waiting(&self) -> usize {
        self.ring.len()
    }

    /// Most records in one batch: batch size, or all the ring holds when that is 0.
    pub fn batch_limit(&self) -> usize {
        if self.batch_size == 0 {
            self.ring.capacity()
        } else {
            self.batch_size
        }
    }

    /// Hands the record back when the ring is full.
    pub fn push(&mut self, record: Record, now: Instant) -> Result<(), Record> {
        self.ring
            .push(Queued {
                record,
                arrived: now,
            })
            .map_err(|q| q.record)
    }

    /// When the oldest waiting record's batch becomes due by time.
    pub fn time_deadline(&self) -> Option<Instant> {
        Some(self.ring.front()?.arrived + self.interval?)
    }

    pub fn batch_due(&self, now: Instant) -> bool {
        let by_size = self.batch_size > 0 && self.ring.len() >= self.batch_size;
        by_size || self.time_deadline().is_some_and(|due| now >= due)
    }

    /// Moves up to one batch of the oldest records into `batch`.
    pub fn take_batch_into(&mut self, batch: &mut Vec<Record>) {
        let count = self.ring.len().min(self.batch_limit());
        batch.extend((0..count).filter_map(|_| self.ring.pop()).map(|q| q.record));
    }

    /// Every waiting record, oldest first (for the dead-letter file).
    pub fn drain_into(&mut self, out: &mut Vec<Record>) {
        out.extend(std::iter::from_fn(|| self.ring.pop()).map(|q| q.record));
    }
}
