//! `--post-compression gzip` end to end: the forwarder compresses, the bundled
//! receiver inflates (within its bound), and the records arrive intact.

mod common;

use common::*;
use webhook_forwarder::gzip::GzipEncoder;

#[test]
fn gzip_batches_arrive_intact_through_the_receiver() {
    let sink = Sink::start(&[]);
    let fwd = Forwarder::to(&sink, &["--batch-size", "5", "--post-compression", "gzip"]);
    let startup = fwd.proc.wait_line("msg=listening", SOON).text;
    assert_eq!(field(&startup, "post_compression"), "gzip");
    let sent: Vec<String> = (1..=10).map(record).collect();
    for body in &sent {
        fwd.post_accepted(body);
    }
    let records = sink.wait_delivered_records(10, SOON);
    let expected: Vec<serde_json::Value> = sent
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    assert_eq!(records, expected);
    let lines: Vec<String> = sink
        .proc
        .lines()
        .into_iter()
        .map(|l| l.text)
        .filter(|t| t.starts_with("batch "))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" delayed=false encoding=gzip body=[")),
        "{lines:?}"
    );
    // What went over the wire is the compressed size, well under the JSON's.
    let json_bytes: usize = lines
        .iter()
        .map(|l| l.split_once(" body=").unwrap().1.len())
        .sum();
    let sent_bytes = metric(fwd.addr, "webhook_batch_body_bytes_total") as usize;
    assert!(
        sent_bytes > 0 && sent_bytes * 2 < json_bytes,
        "{sent_bytes} bytes sent for {json_bytes} bytes of JSON"
    );
}

#[test]
fn the_receiver_refuses_a_body_that_inflates_past_its_bound() {
    let sink = Sink::start(&["--max-inflated-bytes", "4096"]);
    let post = |body: &[u8]| {
        let mut raw = format!(
            "POST /ingest HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        let bytes = exchange(sink.addr, &raw);
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let mut encoder = GzipEncoder::default();
    let bomb = encoder.encode(&vec![b' '; 1 << 20]).unwrap().to_vec();
    assert!(post(&bomb).starts_with("HTTP/1.1 413 "));
    let fits = encoder.encode(b"[{\"user_id\":1}]").unwrap().to_vec();
    assert!(post(&fits).starts_with("HTTP/1.1 200 "));
    assert!(post(b"\x1f\x8b broken").starts_with("HTTP/1.1 400 "));
    let batches = sink.wait_batches(1, SOON);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].records, vec![serde_json::json!({"user_id": 1})]);
    // Its own line for each refusal, which the batch parser skips.
    sink.proc.wait_for("two refusals", SOON, |lines| {
        (lines
            .iter()
            .filter(|l| l.text.ends_with(" refused"))
            .count()
            == 2)
            .then_some(())
    });
}
