//! What the service keeps for itself so that nothing accepted is lost: descriptors
//! for the endpoint, a dead-letter file that is whole or untouched, and every signal.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn sorted_dead_letter_ids(path: &Path) -> Vec<u64> {
    let mut ids = dead_letter_ids(path);
    ids.sort();
    ids
}

/// Reads one value of `/metrics` over a connection the service already holds.
fn metric_on(client: &mut RawClient, name: &str) -> f64 {
    client.send("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = client.response(false);
    String::from_utf8_lossy(&response.body)
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

#[test]
fn idle_clients_cannot_take_the_descriptors_the_endpoint_needs() {
    let sink = Sink::start(&[]);
    let dead = temp_path("descriptors.ndjson");
    // Soft and hard limit 256: raising the soft limit gains nothing here, the reserve
    // is what keeps a descriptor for the endpoint.
    let mut fwd = Forwarder::start_limited(
        &[
            "--post-endpoint",
            &sink.endpoint(),
            "--batch-size",
            "1",
            "--retry-wait",
            "100ms",
            "--header-timeout",
            "1m",
            "--idle-timeout",
            "1m",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
        &[],
        Some(256),
    );
    let mut first = RawClient::connect(fwd.addr);
    first.send(HEALTH);
    assert_eq!(first.response(false).status, 200);
    // The kernel's backlog (often 128) holds what the service does not accept; past
    // it a connect hangs, so connect in parallel and keep what got through.
    let addr = fwd.addr;
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..50)
                    .filter_map(|_| {
                        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    // Wait until the service has taken all it will take.
    let mut open = metric_on(&mut first, "webhook_open_connections");
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = metric_on(&mut first, "webhook_open_connections");
        if now == open {
            break;
        }
        open = now;
    }
    assert!(
        idle.len() as f64 > open,
        "{} idle clients connected",
        idle.len()
    );
    first.send(post_log(&record(1)));
    assert_eq!(first.response(false).status, 201);
    assert_eq!(user_ids(&sink.wait_delivered_records(1, SOON)), vec![1]);
    drop(idle);
    fwd.proc.signal("TERM");
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(0));
    let text = fwd.proc.text();
    assert!(!text.contains("Too many open files"), "{text}");
    assert!(!text.contains("batch post failed"), "{text}");
    assert!(sorted_dead_letter_ids(&dead).is_empty());
    let startup = fwd.proc.wait_line("msg=listening", SOON).text;
    assert_eq!(field(&startup, "max_connections"), (256 - 32).to_string());
    assert_eq!(open, (256 - 32) as f64);
}

/// A tmpfs of 64 KiB, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = temp_path("tmpfs");
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            return Some(SmallDisk(dir));
        }
        assert!(
            !in_ci(),
            "cannot mount a tmpfs (the tests run as root in CI)"
        );
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_dead_letter_append_that_fills_the_disk_is_undone_and_goes_to_stderr() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let dead = disk.0.join("dead.ndjson");
    let kept = "{\"user_id\":1000}\n";
    std::fs::write(&dead, kept).unwrap();
    // Fill the disk, then free one page: room for a part of the batch, not all of it.
    let filler = disk.0.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let page = [b'x'; 4096];
    while file.write_all(&page).is_ok() {}
    let full = file.metadata().unwrap().len();
    file.set_len(full - full % 4096 - 4096).unwrap();
    drop(file);

    let records = 60;
    let mut fwd = Forwarder::start(
        &[
            "--post-endpoint",
            &format!("http://127.0.0.1:{}/in", closed_port()),
            "--batch-size",
            &records.to_string(),
            "--retry-wait",
            "10ms",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
        &[],
    );
    for n in 1..=records {
        assert_eq!(fwd.post(&record(n)).status, 201);
    }
    assert_eq!(fwd.proc.wait_exit(SOON).code(), Some(3));
    let text = fwd.proc.text();
    assert_eq!(
        std::fs::read_to_string(&dead).unwrap(),
        kept,
        "the file holds a part of the batch:\n{text}"
    );
    assert!(text.contains("cut back to its previous length"), "{text}");
    let on_stderr: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("{\"user_id\":"))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["user_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(on_stderr, (1..=records).collect::<Vec<_>>(), "{text}");
}

#[test]
fn sighup_drains_like_sigterm() {
    let sink = Sink::start(&[]);
    let mut fwd = Forwarder::to(&sink, &["--batch-size", "10", "--batch-interval", "1h"]);
    for n in 1..=3 {
        assert_eq!(fwd.post(&record(n)).status, 201);
    }
    fwd.proc.signal("HUP");
    assert_eq!(
        fwd.proc.wait_exit(SOON).code(),
        Some(0),
        "{}",
        fwd.proc.text()
    );
    assert_eq!(user_ids(&sink.delivered_records()), vec![1, 2, 3]);
    fwd.proc.wait_line("signal received: draining", SOON);
}

/// A signal the service does not use must not kill it with records in hand (their
/// default action would): it keeps serving, and SIGQUIT, nginx's graceful stop, drains.
#[test]
fn stray_signals_are_ignored_and_sigquit_drains() {
    let sink = Sink::start(&[]);
    let mut fwd = Forwarder::to(&sink, &["--batch-size", "10", "--batch-interval", "1h"]);
    for n in 1..=3 {
        assert_eq!(fwd.post(&record(n)).status, 201);
    }
    for signal in [
        "USR1", "USR2", "ALRM", "VTALRM", "PROF", "IO", "XFSZ", "RTMIN+5",
    ] {
        fwd.proc.signal(signal);
        // Still alive and serving after each one.
        assert_eq!(fwd.post(&record(4)).status, 201, "after SIG{signal}");
    }
    fwd.proc.signal("QUIT");
    assert_eq!(
        fwd.proc.wait_exit(SOON).code(),
        Some(0),
        "{}",
        fwd.proc.text()
    );
    assert_eq!(
        user_ids(&sink.delivered_records()),
        vec![1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4]
    );
}

#[test]
fn two_sigterms_back_to_back_force_the_stop() {
    let sink = Sink::start(&["--delay", "10s"]);
    let dead = temp_path("two-signals.ndjson");
    let mut fwd = Forwarder::to(
        &sink,
        &[
            "--batch-size",
            "2",
            "--batch-interval",
            "1h",
            "--post-timeout",
            "2s",
            "--retry-wait",
            "100ms",
            "--dead-letter",
            dead.to_str().unwrap(),
        ],
    );
    for n in 1..=3 {
        assert_eq!(fwd.post(&record(n)).status, 201);
    }
    // The receiver now holds the first batch.
    let deadline = Instant::now() + SOON;
    while metric(fwd.addr, "webhook_batch_in_flight") < 1.0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    // Back to back, with one wait the kernel imposes: a signal sent while the same
    // one is still pending is folded into it before any handler runs, so the second
    // goes as soon as the first has left the pending set (SIGTERM is bit 15).
    let pid = fwd.proc.pid();
    let sent = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "kill -TERM {pid}; \
             while [ $(( 0x$(sed -n 's/^ShdPnd:[[:space:]]*//p' /proc/{pid}/status) & 0x4000 )) -ne 0 ]; do :; done; \
             kill -TERM {pid}"
        ))
        .status()
        .unwrap();
    assert!(sent.success());
    let status = fwd.proc.wait_exit(SOON);
    assert_eq!(status.code(), Some(4), "{}", fwd.proc.text());
    assert_eq!(
        sorted_dead_letter_ids(&dead),
        vec![1, 2, 3],
        "{}",
        fwd.proc.text()
    );
}
