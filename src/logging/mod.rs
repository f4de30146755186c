//! One line per event, logfmt or JSON, to stderr, without a syscall per line and
//! without ever blocking the thread that logs.
//!
//! Each thread formats into its own buffer and writes it itself, so the poll loop
//! and the worker never wait on each other for a log line. A buffer is written when
//! it is due (`flush_due`): once 16 KiB have gathered, or when its oldest line has
//! waited 20 ms; under load one write carries hundreds of lines. Warnings and
//! errors are written at once. Writes never block: stderr is asked first whether it
//! would take them (`os::stderr_writable`), and what it will not take waits in the
//! buffer. Past `MAX_BACKLOG` new lines are dropped and counted, and once writing
//! works again one line says how many were lost. The threads take turns at stderr
//! and write whole lines (`stderr`), so neither tears the other's lines and the loop
//! never waits for the worker's writes.

mod format;
mod stderr;

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use log::LevelFilter;

use crate::clock::StampCache;
pub use format::{LogFormat, RequestLine, format_line};

/// Write the buffer once it holds this much...
const FLUSH_SOON_BYTES: usize = 16 * 1024;
/// ...or once its oldest line has waited this long.
pub const FLUSH_DELAY: Duration = Duration::from_millis(20);
/// Lines a thread keeps while stderr takes nothing. Past this, lines are dropped.
const MAX_BACKLOG: usize = 1024 * 1024;
/// How long the last flush before exit waits for a stderr that takes nothing.
const EXIT_FLUSH_WAIT: Duration = Duration::from_secs(1);

/// `--log-format json`, for the request line, which is written without the logger.
static JSON: AtomicBool = AtomicBool::new(false);

/// Lines dropped because stderr was not taking them, since start.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Of those, the ones a "dropped" line has already reported.
static REPORTED: AtomicU64 = AtomicU64::new(0);

/// One thread's formatted lines waiting to be written.
struct Pending {
    lines: Vec<u8>,
    stamps: StampCache,
    /// When the oldest unwritten line was added.
    oldest: Option<Instant>,
    /// The last write stopped inside a line: this thread keeps stderr's turn until
    /// the rest of it is written.
    mid_line: bool,
}

thread_local! {
    static PENDING: RefCell<Pending> = const {
        RefCell::new(Pending {
            lines: Vec::new(),
            stamps: StampCache::new(),
            oldest: None,
            mid_line: false,
        })
    };
}

/// Installs the logger. Chatty dependencies are held to warnings, by `append` rather
/// than fern's per-module levels: those walk the target's module path for every line,
/// the request line included, at about 450 instructions a time.
pub fn init(level: LevelFilter, format: LogFormat) -> Result<(), log::SetLoggerError> {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
    fern::Dispatch::new()
        .level(level)
        .chain(fern::Output::call(move |record| append(record, format)))
        .apply()
}

/// A line below warning from a dependency that would flood the log at info or debug.
fn chatty(record: &log::Record<'_>) -> bool {
    record.level() > log::Level::Warn && {
        let target = record.target();
        target.starts_with("ureq") || target.starts_with("rustls")
    }
}

/// Lines dropped since start because stderr took nothing (for `/metrics`).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

fn append(record: &log::Record<'_>, format: LogFormat) {
    if chatty(record) {
        return;
    }
    let written_at_once = record.level() <= log::Level::Warn;
    add_line(written_at_once, |lines, stamps| {
        format_line(lines, stamps, SystemTime::now(), record, format)
    });
}

/// The line of one request, at info level like `info!` would write it (see
/// `format_request_line`), but straight into this thread's buffer.
pub fn request(line: &RequestLine<'_>) {
    if log::max_level() < LevelFilter::Info {
        return;
    }
    let format = if JSON.load(Ordering::Relaxed) {
        LogFormat::Json
    } else {
        LogFormat::Logfmt
    };
    add_line(false, |lines, stamps| {
        format::format_request_line(lines, stamps, SystemTime::now(), line, format)
    });
}

/// Adds a line to this thread's buffer (`write` formats it), and writes the buffer
/// at once when asked.
fn add_line(written_at_once: bool, write: impl FnOnce(&mut Vec<u8>, &mut StampCache)) {
    let added = PENDING.with(|cell| {
        // Only a log call from inside formatting could find it borrowed; drop that
        // line rather than panic.
        let Ok(mut pending) = cell.try_borrow_mut() else {
            return false;
        };
        if pending.lines.len() >= MAX_BACKLOG {
            return false;
        }
        let Pending {
            lines,
            stamps,
            oldest,
            ..
        } = &mut *pending;
        if lines.is_empty() {
            *oldest = Some(Instant::now());
        }
        write(lines, stamps);
        true
    });
    if !added {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if written_at_once {
        write_due();
    }
}

/// Writes this thread's lines if they are due; otherwise says when they will be, so
/// the caller can wake for it. `None`: nothing is waiting.
pub fn flush_due(now: Instant) -> Option<Instant> {
    let due = PENDING.with(|cell| {
        let pending = cell.try_borrow().ok()?;
        let due = pending.oldest? + FLUSH_DELAY;
        Some(if pending.lines.len() >= FLUSH_SOON_BYTES {
            now
        } else {
            due
        })
    })?;
    if now < due {
        return Some(due);
    }
    write_due();
    // Whatever stderr did not take is tried again a little later.
    PENDING.with(|cell| {
        let pending = cell.try_borrow().ok()?;
        (!pending.lines.is_empty()).then(|| now + FLUSH_DELAY)
    })
}

/// Writes this thread's lines now, waiting a little for a stderr that is full or
/// for the other thread's turn (before exit). The turn is given back even if a
/// line is left half written: its rest is dropped and the next writer ends it.
pub fn flush() {
    if stderr::take_turn(EXIT_FLUSH_WAIT) {
        if write_pending(EXIT_FLUSH_WAIT) {
            abandon_part_written_line();
        } else {
            stderr::give_turn();
        }
    }
}

/// stderr stalled in the middle of one of this thread's lines and the turn must go
/// back: the rest of that line is dropped (and counted), and the next writer ends
/// the broken line, so no other line lands in it.
fn abandon_part_written_line() {
    PENDING.with(|cell| {
        let Ok(mut pending) = cell.try_borrow_mut() else {
            return;
        };
        let rest = pending
            .lines
            .iter()
            .position(|&b| b == b'\n')
            .map_or(pending.lines.len(), |at| at + 1);
        pending.lines.drain(..rest);
        pending.mid_line = false;
        if pending.lines.is_empty() {
            pending.oldest = None;
        }
    });
    DROPPED.fetch_add(1, Ordering::Relaxed);
    stderr::abandon_turn();
}

/// Writes `records` (NDJSON) to stderr as the last place they can go, after this
/// thread's pending lines, which are older. Waits for the turn and for a stderr
/// that takes nothing for up to `patience` each time; returns how many bytes of
/// `records` were written.
pub fn write_records(records: &[u8], patience: Duration) -> usize {
    if !stderr::take_turn(patience) {
        return 0;
    }
    if write_pending(patience) {
        // stderr took nothing for `patience` in the middle of a log line: records
        // written now would land inside it, and would stall as long anyway.
        abandon_part_written_line();
        return 0;
    }
    let mut written = 0;
    stderr::write_lines(records, &mut written, patience);
    if stderr::ends_mid_line(records, written) == Some(true) {
        // A record cut short counts as lost; the next writer ends its line.
        stderr::abandon_turn();
    } else {
        stderr::give_turn();
    }
    written
}

/// Writes this thread's lines while stderr takes them, waiting up to `patience`
/// when it is full, when this thread has the turn; otherwise they wait. Lines are
/// written whole, or a line too long for one write is finished before the turn is
/// given back. Then reports lines dropped meanwhile.
fn write_due() {
    if !stderr::take_turn(Duration::ZERO) {
        return;
    }
    let mid_line = write_pending(Duration::ZERO);
    if !mid_line {
        stderr::give_turn();
    }
}

/// Hands stderr as much of this thread's buffer as it takes; the caller holds the
/// turn. Returns whether a line was left half written.
fn write_pending(patience: Duration) -> bool {
    let mut mid_line = false;
    let emptied = PENDING.with(|cell| {
        let Ok(mut pending) = cell.try_borrow_mut() else {
            return false;
        };
        let Pending {
            lines,
            mid_line: part_written,
            ..
        } = &mut *pending;
        let mut written = 0;
        if stderr::write_lines(lines, &mut written, patience) == stderr::Wrote::Gone {
            // stderr is gone (closed, EPIPE): nothing will ever take these lines.
            let lost = lines[written..].iter().filter(|&&b| b == b'\n').count();
            DROPPED.fetch_add(lost as u64, Ordering::Relaxed);
            written = lines.len();
        }
        if let Some(inside) = stderr::ends_mid_line(lines, written) {
            *part_written = inside;
        }
        mid_line = *part_written;
        lines.drain(..written);
        if lines.is_empty() {
            pending.oldest = None;
            // A burst of lines leaves a large buffer; give most of it back.
            if pending.lines.capacity() > 4 * FLUSH_SOON_BYTES {
                pending.lines.shrink_to(FLUSH_SOON_BYTES);
            }
            true
        } else {
            false
        }
    });
    if emptied {
        report_dropped();
    }
    mid_line
}

/// One line for the lines lost while stderr took nothing, once it takes them again.
fn report_dropped() {
    let dropped = DROPPED.load(Ordering::Relaxed);
    let reported = REPORTED.swap(dropped, Ordering::Relaxed);
    if dropped > reported {
        log::warn!(dropped = dropped - reported, total = dropped; "log lines dropped: stderr was not taking them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_lines_are_due_after_the_delay() {
        // A thread of its own: the buffer is per thread.
        std::thread::spawn(|| {
            let start = Instant::now();
            assert_eq!(flush_due(start), None, "nothing waiting");
            append(
                &log::Record::builder()
                    .level(log::Level::Info)
                    .args(format_args!("x"))
                    .build(),
                LogFormat::Logfmt,
            );
            let due = flush_due(Instant::now()).expect("a line waits");
            assert!(due >= start + FLUSH_DELAY && due <= Instant::now() + FLUSH_DELAY);
            // Written once due; a test holding stderr's turn can put it off a little.
            let give_up = Instant::now() + Duration::from_secs(5);
            let mut now = due;
            while let Some(again) = flush_due(now) {
                assert_eq!(again, now + FLUSH_DELAY, "tried again after the delay");
                assert!(Instant::now() < give_up, "never written");
                std::thread::sleep(Duration::from_millis(5));
                now = again;
            }
            assert_eq!(flush_due(now + FLUSH_DELAY), None, "and nothing left");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn dependencies_are_held_to_warnings() {
        let line = |target: &'static str, level| {
            chatty(
                &log::Record::builder()
                    .target(target)
                    .level(level)
                    .args(format_args!("x"))
                    .build(),
            )
        };
        assert!(line("ureq::pool", log::Level::Info));
        assert!(line("ureq_proto::client", log::Level::Debug));
        assert!(line("rustls::conn", log::Level::Info));
        assert!(!line("rustls::conn", log::Level::Warn));
        assert!(!line("ureq", log::Level::Error));
        assert!(!line("webhook_forwarder::service", log::Level::Info));
        assert!(!line("webhook_forwarder::worker", log::Level::Debug));
    }

    #[test]
    fn each_thread_keeps_its_own_lines() {
        std::thread::spawn(|| {
            append(
                &log::Record::builder()
                    .level(log::Level::Info)
                    .args(format_args!("worker line"))
                    .build(),
                LogFormat::Logfmt,
            );
            let other = std::thread::spawn(|| flush_due(Instant::now()))
                .join()
                .unwrap();
            assert_eq!(other, None, "another thread sees none of these lines");
            assert!(flush_due(Instant::now()).is_some());
            flush();
        })
        .join()
        .unwrap();
    }
}
