//! What the loop has sent the worker: batches, in order, and perhaps an abort.
//!
//! The worker sleeps here between batches, in one `ppoll` on the loop's doorbell and
//! on the pooled connection's socket: an endpoint that closes an idle connection, or
//! says something nobody asked for, wakes it, and the connection is not used again
//! (see `transport::IdleWatch`). No call of its own, before the next batch, looks at
//! the connection: the wait that looks is the one the worker makes anyway.
//!
//! The loop may hand over the next batch while the worker posts the last (see
//! `pipeline::MAX_IN_FLIGHT`), so whatever the worker reads from the channel while it
//! waits between retries or checks for an abort may be a batch: it is kept here, in
//! order, never dropped. An abort (a forced stop) stays in force: every batch after it
//! goes back unattempted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use super::doorbell::Doorbell;
use super::transport::IdleWatch;
use crate::os::EventFd;
use crate::record::Record;

pub enum Job {
    Batch(Vec<Record>),
    /// Give up on the batch in hand (shutdown was forced); skip the remaining retries.
    Abort,
}

pub struct Inbox {
    jobs: Receiver<Job>,
    /// Rung by the loop after each job it sends, and once it has gone.
    bell: Arc<Doorbell<EventFd>>,
    watch: Arc<IdleWatch>,
    queued: VecDeque<Vec<Record>>,
    aborted: bool,
    /// The loop has gone: nothing more will come.
    closed: bool,
}

impl Inbox {
    pub fn new(jobs: Receiver<Job>, bell: Arc<Doorbell<EventFd>>, watch: Arc<IdleWatch>) -> Inbox {
        Inbox {
            jobs,
            bell,
            watch,
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

    /// Takes in what the loop has sent, without waiting; true if anything came (or
    /// the loop went).
    fn collect(&mut self) -> bool {
        let mut news = false;
        while !self.closed {
            match self.jobs.try_recv() {
                Ok(job) => self.take(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.closed = true,
            }
            news = true;
        }
        news
    }

    /// Takes in what the loop has sent, and if nothing, sleeps until it sends
    /// something, `until` passes, or the pooled connection stirs.
    fn wait(&mut self, until: Option<Instant>) {
        let seen = self.bell.rung();
        if self.collect() || !self.bell.may_sleep(seen) {
            return;
        }
        let timeout = until.map(|u| u.saturating_duration_since(Instant::now()));
        let woken = crate::os::wait_for_either(self.bell.waker(), self.watch.watched(), timeout);
        self.bell.awake();
        if woken.socket_stirred {
            self.watch.stir();
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
            if Instant::now() >= deadline {
                return false;
            }
            self.wait(Some(deadline));
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
            let due = crate::logging::flush_due(Instant::now());
            self.wait(due);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// The loop's side of an inbox: what it sends rings the bell, as `Worker::send` does.
    struct Loop {
        jobs: mpsc::Sender<Job>,
        bell: Arc<Doorbell<EventFd>>,
    }

    impl Loop {
        fn send(&self, job: Job) {
            self.jobs.send(job).unwrap();
            self.bell.ring();
        }

        fn leave(self) {
            let bell = self.bell;
            drop(self.jobs);
            bell.ring();
        }
    }

    fn inbox() -> (Loop, Inbox) {
        let (jobs, rx) = mpsc::channel();
        let bell = Arc::new(Doorbell::new(EventFd::new().unwrap()));
        let inbox = Inbox::new(rx, Arc::clone(&bell), Arc::default());
        (Loop { jobs, bell }, inbox)
    }

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
        let (tx, mut inbox) = inbox();
        tx.send(Job::Batch(batch(1)));
        assert_eq!(first_id(&inbox.next_batch().unwrap()), 1);
        tx.send(Job::Batch(batch(2)));
        tx.send(Job::Batch(batch(3)));
        assert!(!inbox.wait_unless_given_up(Duration::from_millis(20)));
        assert!(!inbox.must_give_up());
        assert_eq!(first_id(&inbox.next_batch().unwrap()), 2);
        assert_eq!(first_id(&inbox.next_batch().unwrap()), 3);
    }

    #[test]
    fn an_abort_ends_the_wait_and_stays_in_force() {
        let (tx, mut inbox) = inbox();
        tx.send(Job::Batch(batch(1)));
        tx.send(Job::Abort);
        let started = Instant::now();
        assert!(inbox.wait_unless_given_up(Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(5));
        // The batch that came before the abort is still handed out (to go back).
        assert_eq!(first_id(&inbox.next_batch().unwrap()), 1);
        assert!(inbox.must_give_up());
    }

    #[test]
    fn a_gone_loop_gives_up_and_ends_once_the_queue_is_empty() {
        let (tx, mut inbox) = inbox();
        tx.send(Job::Batch(batch(1)));
        tx.leave();
        assert!(inbox.wait_unless_given_up(Duration::from_secs(10)));
        assert_eq!(first_id(&inbox.next_batch().unwrap()), 1);
        assert!(inbox.next_batch().is_none());
    }

    /// Runs `work` on its own thread and fails if it has not finished within
    /// `limit`: a worker asleep for good would otherwise hang the test, not fail it.
    fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(work());
        });
        finished
            .recv_timeout(limit)
            .expect("the worker slept through a wake-up")
    }

    /// The loop sends at every moment of the worker's cycle; a lost wake-up would leave
    /// the worker asleep for good (`next_batch` waits without a timeout here).
    #[test]
    fn no_batch_is_missed_whatever_the_timing() {
        let (tx, mut inbox) = inbox();
        const BATCHES: i64 = 20_000;
        let sender = std::thread::spawn(move || {
            for n in 0..BATCHES {
                tx.send(Job::Batch(batch(n)));
                if n % 7 == 0 {
                    std::thread::yield_now();
                }
            }
            tx.leave();
        });
        within(Duration::from_secs(30), move || {
            for n in 0..BATCHES {
                let next = inbox.next_batch().expect("a batch, not the end");
                assert_eq!(first_id(&next), n);
            }
            assert!(inbox.next_batch().is_none(), "the loop left: the end");
        });
        sender.join().unwrap();
    }

    #[test]
    fn a_batch_or_an_abort_wakes_a_sleeping_worker_at_once() {
        let (tx, mut inbox) = inbox();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(Job::Batch(batch(9)));
            std::thread::sleep(Duration::from_millis(50));
            tx.send(Job::Abort);
            tx
        });
        let (first, given_up) = within(Duration::from_secs(10), move || {
            let first = inbox.next_batch().map(|b| first_id(&b));
            // The abort ends a retry wait long before it is over (`within`'s limit).
            (first, inbox.wait_unless_given_up(Duration::from_secs(20)))
        });
        assert_eq!(first, Some(9));
        assert!(given_up);
        drop(sender.join().unwrap());
    }
}
