//! Records the endpoint refuses (400, 413, 422) are set aside in the dead-letter
//! file and the rest is delivered; the service keeps running.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn sorted(mut ids: Vec<u64>) -> Vec<u64> {
    ids.sort();
    ids
}

#[test]
fn one_refused_record_is_set_aside_and_the_rest_delivered() {
    for status in ["400", "413", "422"] {
        let dead = temp_path("refused.ndjson");
        let sink = Sink::start(&["--refuse-user-id", "13", "--refuse-status", status]);
        let mut fwd = Forwarder::to(
            &sink,
            &[
                "--batch-size",
                "8",
                "--batch-interval",
                "1h",
                "--retry-wait",
                "2s",
                "--dead-letter",
                dead.to_str().unwrap(),
            ],
        );
        let started = Instant::now();
        for n in 10..18 {
            assert_eq!(fwd.post(&record(n)).status, 201);
        }
        let delivered = sink.wait_delivered_records(7, SOON);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a refusal is not retried ({status}): took {:?}",
            started.elapsed()
        );
        assert_eq!(
            sorted(user_ids(&delivered)),
            [10, 11, 12, 14, 15, 16, 17],
            "{status}"
        );
        fwd.proc
            .wait_line("the endpoint refused these records", SOON);
        assert_eq!(dead_letter_ids(&dead), [13], "{status}: set aside once");
        // The service keeps running and delivering.
        for n in 20..28 {
            assert_eq!(fwd.post(&record(n)).status, 201);
        }
        sink.wait_delivered_records(15, SOON);
        assert_eq!(
            metric(fwd.addr, "webhook_records_refused_by_endpoint_total"),
            1.0
        );
        fwd.proc.signal("TERM");
        assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(0), "{status}");
        assert_eq!(dead_letter_ids(&dead), [13]);
    }
}

#[test]
fn an_endpoint_that_refuses_every_record_is_a_failure() {
    let dead = temp_path("refuses-all.ndjson");
    let sink = Sink::start(&["--refuse-multiple-of", "1"]);
    let mut fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "4",
            "--batch-interval",
            "1h",
            "--retry-wait",
            "50ms",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
    );
    for n in 1..=4 {
        assert_eq!(fwd.post(&record(n)).status, 201);
    }
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(3));
    assert_eq!(
        sorted(dead_letter_ids(&dead)),
        [1, 2, 3, 4],
        "each dead-lettered once"
    );
    assert!(sink.delivered_records().is_empty());
}

/// Replays records 1 to 6 from `replay` to a receiver that refuses record 4, with
/// `dead` as the dead-letter file, until the replay is complete. Returns the
/// service, its "replay complete" line and the replay file's text.
fn replay_refusing_four(replay: &Path, dead: &Path) -> (Forwarder, Line, String) {
    let lines: String = (1..=6)
        .map(|n| record(n).replace('\n', "") + "\n")
        .collect();
    std::fs::write(replay, &lines).unwrap();
    let sink = Sink::start(&["--refuse-user-id", "4"]);
    let fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "10",
            "--replay",
            replay.to_str().unwrap(),
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
    );
    let delivered = sink.wait_delivered_records(5, SOON);
    assert_eq!(sorted(user_ids(&delivered)), [1, 2, 3, 5, 6]);
    let done = fwd.proc.wait_line("replay complete", SOON);
    (fwd, done, lines)
}

#[test]
fn a_replay_file_with_a_refused_record_is_delivered_but_for_it_and_retired() {
    let replay = temp_path("replay-with-bad.ndjson");
    let dead = temp_path("replay-dead.ndjson");
    let (mut fwd, _, _) = replay_refusing_four(&replay, &dead);
    assert!(
        !replay.exists(),
        "the replay file is retired, not replayed again"
    );
    assert_eq!(dead_letter_ids(&dead), [4]);
    fwd.proc.signal("TERM");
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(0));
}

/// The container's setting: one path for both. A record refused during the replay
/// is appended to that file; it must stay there, for the next replay, and not leave
/// with the replayed records in the file said to be safe to delete.
#[test]
fn a_refused_record_stays_in_a_dead_letter_file_that_is_also_the_replay_file() {
    let file = temp_path("replay-and-dead-letter.ndjson");
    let (mut fwd, done, lines) = replay_refusing_four(&file, &file);
    fwd.proc.signal("TERM");
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(0));
    assert_eq!(dead_letter_ids(&file), [4], "{}", fwd.proc.text());
    let renamed = field(&done.text, "renamed_to");
    assert_eq!(
        std::fs::read_to_string(renamed).unwrap(),
        lines,
        "the retired file holds what was replayed, nothing more"
    );
}
