//! How the worker tells the loop an outcome is ready: with a system call only when
//! the loop sleeps.
//!
//! The loop looks for outcomes after every event it handles, so while it is busy,
//! which under load is always, a `mio::Waker` write (an eventfd write, and one more
//! event for the next poll) tells it nothing, once per POST. The worker counts the
//! outcomes it has sent instead, and wakes the loop only when the loop has said it is
//! about to sleep. Each side stores its word, then loads the other's, all
//! sequentially consistent: in whatever order they run, either the loop sees the
//! count moved and does not sleep, or the worker sees the loop asleep and wakes it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

pub struct Doorbell {
    waker: mio::Waker,
    /// Outcomes the worker has sent, ever.
    rung: AtomicU64,
    /// The loop is in `poll` with a timeout, or about to be.
    loop_asleep: AtomicBool,
}

impl Doorbell {
    pub fn new(waker: mio::Waker) -> Doorbell {
        Doorbell {
            waker,
            rung: AtomicU64::new(0),
            loop_asleep: AtomicBool::new(false),
        }
    }

    /// The worker's side, once an outcome is sent: wakes the loop if it sleeps.
    pub fn ring(&self) {
        self.rung.fetch_add(1, SeqCst);
        if self.loop_asleep.load(SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// The loop's side, before a `poll` that may sleep, having taken `taken`
    /// outcomes: false if one has been sent that it has not taken, in which case it
    /// must not sleep. After the poll, `awake`.
    pub fn may_sleep(&self, taken: u64) -> bool {
        self.loop_asleep.store(true, SeqCst);
        if self.rung.load(SeqCst) == taken {
            return true;
        }
        self.awake();
        false
    }

    pub fn awake(&self) {
        self.loop_asleep.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const WAKER: Token = Token(7);

    fn doorbell() -> (Poll, Arc<Doorbell>) {
        let poll = Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), WAKER).unwrap();
        (poll, Arc::new(Doorbell::new(waker)))
    }

    fn woken(poll: &mut Poll) -> bool {
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        events.iter().any(|e| e.token() == WAKER)
    }

    #[test]
    fn an_awake_loop_is_not_woken_and_a_sleeping_one_is() {
        let (mut poll, bell) = doorbell();
        bell.ring();
        assert!(!woken(&mut poll), "the loop was awake: no wake-up");
        assert!(!bell.may_sleep(0), "one outcome not taken: do not sleep");
        assert!(bell.may_sleep(1));
        bell.ring();
        assert!(woken(&mut poll), "the loop said it sleeps: woken");
        bell.awake();
        bell.ring();
        assert!(!woken(&mut poll));
    }

    /// A worker rings at every moment of the loop's cycle; a lost wake-up would leave
    /// the loop asleep for its ten-second timeout and fail the deadline.
    #[test]
    fn no_outcome_is_missed_whatever_the_timing() {
        let (mut poll, bell) = doorbell();
        let (tx, rx) = std::sync::mpsc::channel();
        const OUTCOMES: u64 = 20_000;
        let worker_bell = Arc::clone(&bell);
        let worker = std::thread::spawn(move || {
            for n in 0..OUTCOMES {
                tx.send(n).unwrap();
                worker_bell.ring();
                if n % 7 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut events = Events::with_capacity(4);
        let mut taken = 0;
        while taken < OUTCOMES {
            assert!(Instant::now() < deadline, "stalled after {taken} outcomes");
            let timeout = if bell.may_sleep(taken) {
                Some(Duration::from_secs(10))
            } else {
                Some(Duration::ZERO)
            };
            let started = Instant::now();
            poll.poll(&mut events, timeout).unwrap();
            bell.awake();
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "slept through an outcome after {taken}"
            );
            while rx.try_recv().is_ok() {
                taken += 1;
            }
        }
        worker.join().unwrap();
    }
}
