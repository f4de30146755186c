//! stderr shared by the loop and the worker: whole lines, in turn, never waiting
//! where the caller must not wait.
//!
//! Both threads write their own buffers. A thread writes only while it holds the
//! turn; it writes whole lines, at most `WRITE_CHUNK` bytes at a time (a pipe takes
//! that much at once), so another thread's lines never land inside one of its own.
//! A line longer than that goes in pieces of that size; the thread keeps the turn
//! until the line is finished, however many calls that takes. The turn is taken without waiting by the loop (its
//! lines wait in its buffer instead) and with a bounded wait before exit and for
//! records written here as a last resort. Writes go to descriptor 2 directly, not
//! through the standard library's stderr, whose lock a blocked writer would hold.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most bytes one write hands stderr: a pipe that says it is writable takes a page.
pub const WRITE_CHUNK: usize = 4096;
/// How often a thread waiting for the turn looks again.
const TURN_RETRY: Duration = Duration::from_millis(1);

/// The thread whose turn it is to write (its `token`), or 0: nobody's.
static TURN: AtomicU64 = AtomicU64::new(0);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
/// A thread gave up the turn in the middle of a line: the next write ends that line
/// first, so what follows starts on a line of its own.
static LINE_OPEN: AtomicBool = AtomicBool::new(false);

thread_local! {
    static TOKEN: Cell<u64> = const { Cell::new(0) };
}

fn token() -> u64 {
    TOKEN.with(|cell| {
        if cell.get() == 0 {
            cell.set(NEXT_TOKEN.fetch_add(1, Ordering::Relaxed));
        }
        cell.get()
    })
}

/// Takes the turn, or keeps it if this thread holds it, waiting at most `patience`.
pub fn take_turn(patience: Duration) -> bool {
    let me = token();
    let deadline = Instant::now() + patience;
    loop {
        match TURN.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(holder) if holder == me => return true,
            Err(_) if Instant::now() >= deadline => return false,
            Err(_) => std::thread::sleep(TURN_RETRY),
        }
    }
}

/// Gives the turn back. Only its holder may.
pub fn give_turn() {
    let _ = TURN.compare_exchange(token(), 0, Ordering::Release, Ordering::Relaxed);
}

/// Gives the turn back with a line left part-written (stderr stalled too long): the
/// next write ends it with a newline. The broken line is lost; nothing lands in it.
pub fn abandon_turn() {
    LINE_OPEN.store(true, Ordering::Relaxed);
    give_turn();
}

/// How a write of lines ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    All,
    /// stderr took nothing more within the patience given.
    Stalled,
    /// stderr fails (closed, EPIPE): nothing will ever take these bytes.
    Gone,
}

/// Where the next write of `bytes[from..]` ends: after the last whole line within
/// `WRITE_CHUNK`, or, inside a line longer than that, `WRITE_CHUNK` on. A piece is
/// never longer: a pipe that says it is writable takes that much without blocking,
/// and more could block until a reader takes it.
fn piece_end(bytes: &[u8], from: usize) -> usize {
    let end = bytes.len().min(from + WRITE_CHUNK);
    match bytes[from..end].iter().rposition(|&b| b == b'\n') {
        Some(last) => from + last + 1,
        None => end,
    }
}

/// Writes `bytes[*written..]` in whole-line pieces, advancing `written`, while
/// stderr takes them; waits up to `patience` for it each time it takes nothing. The
/// caller holds the turn.
pub fn write_lines(bytes: &[u8], written: &mut usize, patience: Duration) -> Wrote {
    if *written < bytes.len() && LINE_OPEN.load(Ordering::Relaxed) {
        let mut newline = 0;
        match write_lines_after_open(b"\n", &mut newline, patience) {
            Wrote::All => LINE_OPEN.store(false, Ordering::Relaxed),
            other => return other,
        }
    }
    write_lines_after_open(bytes, written, patience)
}

fn write_lines_after_open(bytes: &[u8], written: &mut usize, patience: Duration) -> Wrote {
    let mut deadline = Instant::now() + patience;
    while *written < bytes.len() {
        let wait = deadline.saturating_duration_since(Instant::now());
        if !crate::os::stderr_writable(wait) {
            return Wrote::Stalled;
        }
        let end = piece_end(bytes, *written);
        match crate::os::write_stderr(&bytes[*written..end]) {
            Ok(0) => return Wrote::Gone,
            Ok(n) => {
                *written += n;
                deadline = Instant::now() + patience;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A descriptor another process set non-blocking and then filled: as a
            // full pipe, though poll said otherwise (it asks for less room).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Wrote::Stalled;
                }
                std::thread::sleep(TURN_RETRY.min(wait));
            }
            Err(_) => return Wrote::Gone,
        }
    }
    Wrote::All
}

/// Whether writing `bytes[..written]` leaves a line part-written: `None` when nothing
/// was written, which changes nothing.
pub fn ends_mid_line(bytes: &[u8], written: usize) -> Option<bool> {
    (written > 0).then(|| bytes[written - 1] != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_end_on_whole_lines() {
        let short = b"a\nbb\nccc\n";
        assert_eq!(piece_end(short, 0), short.len());
        assert_eq!(piece_end(short, 2), short.len());
        // Lines of 1000 bytes: four fit in a piece, the fifth starts the next one.
        let line = [vec![b'x'; 999], vec![b'\n']].concat();
        let many = line.repeat(10);
        assert_eq!(piece_end(&many, 0), 4000);
        assert_eq!(piece_end(&many, 4000), 8000);
        assert_eq!(piece_end(&many, 8000), 10_000);
        // A line longer than a piece goes a piece at a time, then what follows.
        let long = [vec![b'y'; 10_000], b"\nz\n".to_vec()].concat();
        assert_eq!(piece_end(&long, 0), 4096);
        assert_eq!(piece_end(&long, 4096), 8192);
        assert_eq!(piece_end(&long, 8192), long.len());
        // A last line without its newline is written as it is.
        assert_eq!(piece_end(b"abc", 0), 3);
    }

    #[test]
    fn no_piece_is_longer_than_a_pipe_takes_at_once() {
        let mut bytes = Vec::new();
        for n in 0..500usize {
            bytes.extend(std::iter::repeat_n(b'a', (n * 37) % 9000));
            bytes.push(b'\n');
        }
        let mut from = 0;
        while from < bytes.len() {
            let end = piece_end(&bytes, from);
            assert!(end > from && end - from <= WRITE_CHUNK);
            // It ends a line, or is a full piece of a line too long for one.
            assert!(bytes[end - 1] == b'\n' || end - from == WRITE_CHUNK);
            from = end;
        }
    }

    #[test]
    fn the_turn_is_one_threads_at_a_time() {
        // Process-wide: other tests' flushes may hold it for a moment.
        assert!(take_turn(Duration::from_secs(5)));
        assert!(take_turn(Duration::ZERO), "its holder keeps it");
        let other = std::thread::spawn(|| take_turn(Duration::from_millis(20)))
            .join()
            .unwrap();
        assert!(!other, "another thread waits, then gives up");
        give_turn();
        let other = std::thread::spawn(|| {
            let took = take_turn(Duration::from_secs(5));
            give_turn();
            took
        })
        .join()
        .unwrap();
        assert!(other, "free once given back");
    }

    #[test]
    fn a_write_that_stops_inside_a_line_says_so() {
        assert_eq!(ends_mid_line(b"ab\ncd\n", 0), None);
        assert_eq!(ends_mid_line(b"ab\ncd\n", 3), Some(false));
        assert_eq!(ends_mid_line(b"ab\ncd\n", 4), Some(true));
        assert_eq!(ends_mid_line(b"ab\ncd\n", 6), Some(false));
    }
}
