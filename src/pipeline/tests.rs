use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

fn rec(id: i64) -> Record {
    Record {
        user_id: id,
        ..Record::default()
    }
}

fn ids(records: &[Record]) -> Vec<i64> {
    records.iter().map(|r| r.user_id).collect()
}

const SECOND: Duration = Duration::from_secs(1);

/// Batch size 3, ring 6, interval 1 s, no waiting for room.
fn pipeline() -> Pipeline {
    Pipeline::new(6, 3, Some(SECOND), Duration::ZERO, None)
}

fn ticket(slot: usize) -> Ticket {
    Ticket {
        slot,
        serial: slot as u64,
    }
}

fn fill(p: &mut Pipeline, ids: std::ops::Range<i64>, now: Instant) {
    for id in ids {
        assert_eq!(p.offer(rec(id), 10, ticket(0), now), Offer::Accepted);
    }
}

fn replay(ids: std::ops::Range<i64>) -> Replay {
    let records: std::collections::VecDeque<Record> = ids.map(rec).collect();
    Replay {
        path: PathBuf::from("/nowhere/replay.ndjson"),
        total: records.len(),
        length: 0,
        records,
    }
}

#[test]
fn a_full_batch_is_due_at_once_and_a_partial_one_is_not() {
    let t0 = Instant::now();
    let mut p = pipeline();
    fill(&mut p, 1..3, t0);
    assert!(p.next_batch(t0).is_none(), "2 of 3: not due by size");
    assert_eq!(
        p.due(t0),
        Some(t0 + SECOND),
        "due by age after the interval"
    );
    fill(&mut p, 3..4, t0);
    assert_eq!(p.due(t0), Some(t0));
    let batch = p.next_batch(t0).expect("a full batch");
    assert_eq!(ids(&batch), [1, 2, 3]);
    assert!(p.is_busy());
    assert_eq!(p.in_flight(), 3);
}

#[test]
fn the_oldest_record_makes_its_batch_due_after_the_interval() {
    let t0 = Instant::now();
    let mut p = pipeline();
    fill(&mut p, 1..2, t0);
    fill(&mut p, 2..3, t0 + Duration::from_millis(500));
    assert!(p.next_batch(t0 + Duration::from_millis(999)).is_none());
    let batch = p.next_batch(t0 + SECOND).expect("due by age");
    assert_eq!(ids(&batch), [1, 2]);
}

#[test]
fn batch_size_zero_sends_everything_by_age_only() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(100, 0, Some(SECOND), Duration::ZERO, None);
    fill(&mut p, 1..51, t0);
    assert!(p.next_batch(t0).is_none(), "no size trigger");
    let batch = p.next_batch(t0 + SECOND).expect("due by age");
    assert_eq!(batch.len(), 50);
}

#[test]
fn no_interval_means_no_age_trigger() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(6, 3, None, Duration::ZERO, None);
    fill(&mut p, 1..3, t0);
    assert_eq!(p.due(t0), None);
    assert!(p.next_batch(t0 + Duration::from_secs(3600)).is_none());
}

#[test]
fn records_in_flight_count_against_capacity() {
    let t0 = Instant::now();
    let mut p = pipeline();
    fill(&mut p, 1..4, t0);
    let first = p.next_batch(t0).expect("due");
    fill(&mut p, 4..7, t0);
    assert!(!p.has_room(), "3 in flight + 3 waiting fill a ring of 6");
    assert_eq!(p.offer(rec(7), 10, ticket(1), t0), Offer::Full);
    let second = p
        .next_batch(t0)
        .expect("the next goes while the first is posted");
    assert_eq!(ids(&second), [4, 5, 6]);
    assert_eq!(p.in_flight(), 6);
    assert_eq!(p.oldest_in_flight(), 3);
    assert!(!p.has_room(), "handed over, still held: no room freed");
    assert!(p.next_batch(t0 + SECOND * 10).is_none());
    assert!(p.delivered(first, 0).is_none());
    assert!(p.has_room());
    assert_eq!(p.totals().delivered, 3);
    fill(&mut p, 7..10, t0);
    assert!(
        p.next_batch(t0).is_some(),
        "one in flight again: the next may go"
    );
    assert!(p.next_batch(t0).is_none(), "at most two in flight");
    assert!(p.delivered(second, 0).is_none());
    assert_eq!(p.totals().delivered, 6);
}

#[test]
fn a_failure_waits_for_the_other_batch_in_flight_and_dead_letters_both_in_order() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(9, 3, Some(SECOND), Duration::ZERO, None);
    fill(&mut p, 1..7, t0);
    let first = p.next_batch(t0).expect("due");
    let second = p.next_batch(t0).expect("due");
    fill(&mut p, 7..9, t0);
    assert!(
        p.failed(first).is_none(),
        "the worker still holds the second"
    );
    assert!(
        p.next_batch(t0 + SECOND * 10).is_none(),
        "nothing new after a failure"
    );
    // The failed batch's room is not offered: the service is stopping.
    assert!(!p.has_room());
    assert_eq!(p.offer(Record::default(), 10, ticket(1), t0), Offer::Full);
    assert!(p.tick(false).is_none());
    let stop = p.failed(second).expect("now nothing is in flight");
    assert_eq!(stop.exit, Exit::DeliveryFailed);
    assert_eq!(ids(&stop.undelivered), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(p.totals().batches_failed, 2);
}

#[test]
fn a_forced_stop_waits_for_both_batches_in_flight() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(9, 3, Some(SECOND), Duration::ZERO, None);
    fill(&mut p, 1..8, t0);
    let first = p.next_batch(t0).expect("due");
    let second = p.next_batch(t0).expect("due");
    p.on_signal();
    assert_eq!(p.on_signal(), SignalEffect::Force);
    assert!(p.delivered(first, 0).is_none(), "the second is still out");
    assert!(p.tick(false).is_none());
    let stop = p.failed(second).expect("both back");
    assert_eq!(stop.exit, Exit::Forced);
    assert_eq!(ids(&stop.undelivered), [4, 5, 6, 7]);
    assert_eq!(p.totals().delivered, 3);
}

#[test]
fn a_batch_that_never_reached_the_worker_is_the_newest_not_the_oldest() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(6, 3, Some(SECOND), Duration::ZERO, Some(replay(100..103)));
    fill(&mut p, 1..4, t0);
    let replayed = p.next_batch(t0).expect("replay first");
    let ring = p.next_batch(t0).expect("then the ring");
    assert!(
        p.not_handed_over(ring).is_none(),
        "the replay batch is still out"
    );
    let stop = p.failed(replayed).expect("both back");
    assert_eq!(
        ids(&stop.undelivered),
        [1, 2, 3],
        "the ring's, not the replay's"
    );
    assert!(stop.replay_left.is_some());
}

#[test]
fn draining_sends_what_waits_at_once_then_stops_when_empty() {
    let t0 = Instant::now();
    let mut p = pipeline();
    fill(&mut p, 1..3, t0);
    assert_eq!(p.on_signal(), SignalEffect::BeginDrain);
    assert!(p.is_draining());
    assert!(p.tick(false).is_none(), "records still wait");
    let batch = p.next_batch(t0).expect("draining sends a partial batch");
    assert_eq!(ids(&batch), [1, 2]);
    assert!(p.tick(false).is_none(), "a batch is in flight");
    assert!(p.delivered(batch, 0).is_none());
    assert!(p.tick(true).is_none(), "a request is under way");
    let stop = p.tick(false).expect("drained");
    assert_eq!(stop.exit, Exit::Drained);
    assert!(stop.undelivered.is_empty());
}

#[test]
fn a_second_signal_waits_for_the_worker_then_dead_letters_what_waits() {
    let t0 = Instant::now();
    let mut p = pipeline();
    fill(&mut p, 1..6, t0);
    let batch = p.next_batch(t0).expect("due");
    p.on_signal();
    assert_eq!(p.on_signal(), SignalEffect::Force);
    assert_eq!(p.lifecycle(), Lifecycle::Forced);
    assert!(
        p.next_batch(t0).is_none(),
        "nothing new goes out once forced"
    );
    assert!(p.tick(false).is_none(), "the worker still holds a batch");
    let stop = p.failed(batch).expect("the worker holds nothing else");
    assert_eq!(stop.exit, Exit::Forced);
    assert_eq!(ids(&stop.undelivered), [1, 2, 3, 4, 5]);
    assert_eq!(p.on_signal(), SignalEffect::Nothing);
}

#[test]
fn a_forced_stop_after_a_delivery_keeps_only_the_undelivered() {
    let t0 = Instant::now();
    let mut p = pipeline();
    fill(&mut p, 1..6, t0);
    let batch = p.next_batch(t0).expect("due");
    p.on_signal();
    p.on_signal();
    let stop = p
        .delivered(batch, 0)
        .expect("forced: stop once the worker is free");
    assert_eq!(stop.exit, Exit::Forced);
    assert_eq!(ids(&stop.undelivered), [4, 5]);
}

#[test]
fn a_failed_batch_goes_to_the_dead_letters_ahead_of_what_waits() {
    let t0 = Instant::now();
    let mut p = pipeline();
    fill(&mut p, 1..6, t0);
    let batch = p.next_batch(t0).expect("due");
    let stop = p.failed(batch).expect("the worker holds nothing else");
    assert_eq!(stop.exit, Exit::DeliveryFailed);
    assert_eq!(ids(&stop.undelivered), [1, 2, 3, 4, 5]);
    assert_eq!(p.totals().batches_failed, 1);
}

#[test]
fn a_worker_that_vanished_still_fails_the_drain() {
    let t0 = Instant::now();
    let mut p = pipeline();
    fill(&mut p, 1..2, t0);
    p.on_signal();
    let _lost = p.next_batch(t0).expect("draining");
    let stop = p.failed(Vec::new()).expect("the worker holds nothing else");
    assert_eq!(
        stop.exit,
        Exit::DeliveryFailed,
        "never Drained after a failure"
    );
}

#[test]
fn replayed_records_go_first_then_the_ring() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(6, 3, Some(SECOND), Duration::ZERO, Some(replay(100..105)));
    fill(&mut p, 1..4, t0);
    let first = p.next_batch(t0).expect("replay is due at once");
    assert_eq!(ids(&first), [100, 101, 102]);
    assert!(p.has_room(), "replayed records do not take ring room");
    assert!(p.take_finished_replay().is_none());
    assert!(p.delivered(first, 0).is_none());
    let second = p.next_batch(t0).expect("rest of the replay");
    assert_eq!(ids(&second), [103, 104]);
    assert!(
        p.take_finished_replay().is_none(),
        "its last batch is in flight"
    );
    p.delivered(second, 0);
    let done = p.take_finished_replay().expect("retire the file");
    assert_eq!(done.records, 5);
    assert!(p.take_finished_replay().is_none(), "retired once");
    assert_eq!(ids(&p.next_batch(t0).expect("then the ring")), [1, 2, 3]);
}

#[test]
fn an_empty_replay_file_is_retired_at_once() {
    let mut p = Pipeline::new(6, 3, Some(SECOND), Duration::ZERO, Some(replay(0..0)));
    assert_eq!(p.take_finished_replay().expect("done").records, 0);
}

#[test]
fn a_failed_replay_batch_stays_in_its_file_not_in_the_dead_letters() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(6, 3, Some(SECOND), Duration::ZERO, Some(replay(100..105)));
    fill(&mut p, 1..3, t0);
    let batch = p.next_batch(t0).expect("replay first");
    let stop = p.failed(batch).expect("the worker holds nothing else");
    assert_eq!(stop.exit, Exit::DeliveryFailed);
    assert_eq!(ids(&stop.undelivered), [1, 2], "only the ring's records");
    let (_, left) = stop.replay_left.expect("the replay file stays");
    assert_eq!(left, 2);
}

#[test]
fn a_drain_waits_for_the_replay_to_finish() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(6, 3, Some(SECOND), Duration::ZERO, Some(replay(100..102)));
    p.on_signal();
    let batch = p.next_batch(t0).expect("replay");
    p.delivered(batch, 0);
    assert!(p.tick(false).is_none(), "the replay is not retired yet");
    assert!(p.take_finished_replay().is_some());
    assert_eq!(p.tick(false).expect("done").exit, Exit::Drained);
}

/// Batch size 2, ring 4, interval 1 s, requests wait up to 5 s for room.
fn waiting_pipeline() -> Pipeline {
    Pipeline::new(4, 2, Some(SECOND), 5 * SECOND, None)
}

#[test]
fn a_full_ring_makes_requests_wait_and_frees_room_oldest_first() {
    let t0 = Instant::now();
    let mut p = waiting_pipeline();
    fill(&mut p, 1..3, t0);
    let batch = p.next_batch(t0).expect("due");
    fill(&mut p, 3..5, t0);
    assert_eq!(p.offer(rec(5), 10, ticket(5), t0), Offer::Waiting);
    assert_eq!(p.offer(rec(6), 10, ticket(6), t0), Offer::Waiting);
    assert_eq!(p.waiting_requests(), 2);
    assert!(p.admit_waiter(t0, |_| true).is_none(), "no room yet");
    p.delivered(batch, 0);
    assert!(
        !p.has_room(),
        "freed room goes to the waiters, not to newcomers"
    );
    let later = t0 + Duration::from_millis(300);
    assert_eq!(p.admit_waiter(later, |_| true), Some(ticket(5)));
    assert_eq!(p.admit_waiter(later, |_| true), Some(ticket(6)));
    assert_eq!(p.admit_waiter(later, |_| true), None);
    assert_eq!(p.totals().accepted, 6);
    assert_eq!(p.totals().waited, 2);
    assert_eq!(ids(&p.next_batch(later).expect("full")), [3, 4]);
}

#[test]
fn a_request_that_waits_too_long_is_refused_and_its_record_dropped() {
    let t0 = Instant::now();
    let mut p = waiting_pipeline();
    fill(&mut p, 1..5, t0);
    assert_eq!(p.offer(rec(5), 10, ticket(5), t0), Offer::Waiting);
    assert_eq!(p.wait_deadline(), Some(t0 + 5 * SECOND));
    assert!(p.expire_waiter(t0 + 4 * SECOND).is_none());
    assert_eq!(p.expire_waiter(t0 + 5 * SECOND), Some(ticket(5)));
    assert_eq!(p.totals().gave_up, 1);
    assert_eq!(
        p.totals().accepted,
        4,
        "the refused record was never accepted"
    );
    assert!(p.has_room() || p.waiting_requests() == 0);
}

#[test]
fn a_waiter_whose_connection_closed_is_skipped() {
    let t0 = Instant::now();
    let mut p = waiting_pipeline();
    fill(&mut p, 1..3, t0);
    let batch = p.next_batch(t0).expect("due");
    fill(&mut p, 3..5, t0);
    p.offer(rec(5), 10, ticket(5), t0);
    p.offer(rec(6), 10, ticket(6), t0);
    p.delivered(batch, 0);
    assert_eq!(p.admit_waiter(t0, |t| t != ticket(5)), Some(ticket(6)));
    assert_eq!(p.totals().accepted, 5);
}

#[test]
fn a_drain_admits_waiters_before_it_ends() {
    let t0 = Instant::now();
    let mut p = waiting_pipeline();
    fill(&mut p, 1..5, t0);
    p.offer(rec(5), 10, ticket(5), t0);
    p.on_signal();
    let batch = p.next_batch(t0).expect("draining");
    p.delivered(batch, 0);
    assert!(p.tick(false).is_none(), "a request still waits");
    assert_eq!(p.admit_waiter(t0, |_| true), Some(ticket(5)));
    while let Some(batch) = p.next_batch(t0) {
        p.delivered(batch, 0);
    }
    assert_eq!(p.tick(false).expect("drained").exit, Exit::Drained);
    assert_eq!(p.totals().delivered, 5);
}

#[test]
fn a_failure_refuses_every_waiter_and_dead_letters_only_the_accepted() {
    let t0 = Instant::now();
    let mut p = waiting_pipeline();
    fill(&mut p, 1..3, t0);
    let batch = p.next_batch(t0).expect("due");
    fill(&mut p, 3..5, t0);
    p.offer(rec(5), 10, ticket(5), t0);
    p.offer(rec(6), 10, ticket(6), t0);
    let stop = p.failed(batch).expect("the worker holds nothing else");
    assert_eq!(stop.exit, Exit::DeliveryFailed);
    assert_eq!(ids(&stop.undelivered), [1, 2, 3, 4]);
    assert_eq!(stop.refused, [ticket(5), ticket(6)]);
}

#[test]
fn records_the_endpoint_refused_count_as_set_aside_not_delivered() {
    let t0 = Instant::now();
    let mut p = pipeline();
    fill(&mut p, 1..4, t0);
    let batch = p.next_batch(t0).expect("due");
    assert!(p.delivered(batch, 1).is_none(), "the service keeps running");
    assert_eq!(p.totals().delivered, 2);
    assert_eq!(p.totals().set_aside, 1);
    assert!(p.has_room());
}

#[test]
fn waiting_requests_count_their_bodies_until_answered() {
    let t0 = Instant::now();
    let mut p = waiting_pipeline();
    fill(&mut p, 1..5, t0);
    p.offer(rec(5), 1000, ticket(5), t0);
    p.offer(rec(6), 300, ticket(6), t0);
    assert_eq!(p.waiting_bytes(), 1300);
    assert_eq!(p.expire_waiter(t0 + 5 * SECOND), Some(ticket(5)));
    assert_eq!(p.waiting_bytes(), 300);
    let stop = p.failed(Vec::new()).expect("the worker holds nothing else");
    assert_eq!(stop.refused, [ticket(6)]);
    assert_eq!(p.waiting_bytes(), 0);
}

#[test]
fn a_batch_that_never_reached_the_worker_is_dead_lettered_after_the_ones_it_held() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(9, 3, Some(SECOND), Duration::ZERO, None);
    fill(&mut p, 1..8, t0);
    let first = p.next_batch(t0).expect("due");
    let second = p.next_batch(t0).expect("due");
    // The second could not be handed over (the worker is gone); the first comes back
    // after it, and still goes first.
    assert!(p.not_handed_over(second).is_none());
    let stop = p.failed(first).expect("nothing left in flight");
    assert_eq!(ids(&stop.undelivered), [1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn nothing_is_accepted_once_the_stop_is_made() {
    let t0 = Instant::now();
    let mut p = Pipeline::new(4, 2, Some(SECOND), SECOND, None);
    fill(&mut p, 1..3, t0);
    let batch = p.next_batch(t0).expect("due");
    let stop = p.failed(batch).expect("stop");
    assert_eq!(ids(&stop.undelivered), [1, 2]);
    // The ring is empty again, but the dead letters are counted: a request arriving
    // now (say, pipelined behind one just answered) is refused, not kept and lost.
    assert!(!p.has_room());
    assert_eq!(p.offer(Record::default(), 10, ticket(1), t0), Offer::Full);
    assert_eq!(p.admit_waiter(t0, |_| true), None);
    assert!(p.next_batch(t0 + SECOND * 10).is_none());
}
