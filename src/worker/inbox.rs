//! What the loop has sent the worker: batches, in order, and perhaps an abort.
//!
//! The loop may hand over the next batch while the worker posts the last (see
//! `pipeline::MAX_IN_FLIGHT`), so whatever the worker reads from the channel while it
//! waits between retries or checks for an abort may be a batch: it is kept here, in
//! order, never dropped. An abort (a forced stop) stays in force: every batch after it
//! goes back unattempted.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use crate::record::Record;

pub enum Job {
    Batch(Vec<Record>),
    /// Give up on the batch in hand (shutdown was forced); skip the remaining retries.
    Abort,
}

pub struct Inbox {
    jobs: Receiver<Job>,
    queued: VecDeque<Vec<Record>>,
    aborted: bool,
    /// The loop has gone: nothing more will come.
    closed: bool,
}

impl Inbox {
    pub fn new(jobs: Receiver<Job>) -> Inbox {
        Inbox {
            jobs,
            queued: VecDeque::new(),
            aborted: false,
            closed: false,
        }
    }

    fn take(&mut self, job: Job) {
        match job {
            Job::Batch(batch) => self.queued.push_back(batch),
            Job::Abort => self.aborted = true,
        }
    }

    /// Takes in what the loop has sent, without waiting.
    fn collect(&mut self) {
        while !self.closed {
            match self.jobs.try_recv() {
                Ok(job) => self.take(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Whether the batch in hand must be given up now: a forced stop, or no loop left
    /// to hear about it.
    pub fn must_give_up(&mut self) -> bool {
        self.collect();
        self.aborted || self.closed
    }

    /// Waits `wait` (between retries) unless the batch in hand must be given up first;
    /// true if so. Batches that arrive meanwhile are kept for later.
    pub fn wait_unless_given_up(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.must_give_up() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.jobs.recv_timeout(left) {
                Ok(job) => self.take(job),
                Err(RecvTimeoutError::Timeout) => return false,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }

    /// The next batch, waiting for one and writing this thread's log lines when they
    /// are due (the worker writes its own, so it never waits on the loop for a log
    /// line, nor the loop on it). `None` once the loop has gone and nothing is left.
    pub fn next_batch(&mut self) -> Option<Vec<Record>> {
        loop {
            if let Some(batch) = self.queued.pop_front() {
                return Some(batch);
            }
            if self.closed {
                return None;
            }
            let received = match crate::logging::flush_due(Instant::now()) {
                None => self.jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(due) => self
                    .jobs
                    .recv_timeout(due.saturating_duration_since(Instant::now())),
            };
            match received {
                Ok(job) => self.take(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn batch(id: i64) -> Vec<Record> {
        vec![Record {
            user_id: id,
            ..Record::default()
        }]
    }

    fn first_id(batch: &[Record]) -> i64 {
        batch[0].user_id
    }

    #[test]
    fn batches_that_arrive_during_a_retry_wait_are_kept_in_order() {
        let (tx, rx) = mpsc::channel();
        let mut inbox = Inbox::new(rx);
        tx.send(Job::Batch(batch(1))).unwrap();
        assert_eq!(first_id(&inbox.next_batch().unwrap()), 1);
        tx.send(Job::Batch(batch(2))).unwrap();
        tx.send(Job::Batch(batch(3))).unwrap();
        assert!(!inbox.wait_unless_given_up(Duration::from_millis(20)));
        assert!(!inbox.must_give_up());
        assert_eq!(first_id(&inbox.next_batch().unwrap()), 2);
        assert_eq!(first_id(&inbox.next_batch().unwrap()), 3);
    }

    #[test]
    fn an_abort_ends_the_wait_and_stays_in_force() {
        let (tx, rx) = mpsc::channel();
        let mut inbox = Inbox::new(rx);
        tx.send(Job::Batch(batch(1))).unwrap();
        tx.send(Job::Abort).unwrap();
        let started = Instant::now();
        assert!(inbox.wait_unless_given_up(Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(5));
        // The batch that came before the abort is still handed out (to go back).
        assert_eq!(first_id(&inbox.next_batch().unwrap()), 1);
        assert!(inbox.must_give_up());
    }

    #[test]
    fn a_gone_loop_gives_up_and_ends_once_the_queue_is_empty() {
        let (tx, rx) = mpsc::channel();
        let mut inbox = Inbox::new(rx);
        tx.send(Job::Batch(batch(1))).unwrap();
        drop(tx);
        assert!(inbox.wait_unless_given_up(Duration::from_secs(10)));
        assert_eq!(first_id(&inbox.next_batch().unwrap()), 1);
        assert!(inbox.next_batch().is_none());
    }
}
