//! Where accepted records go when they cannot be delivered, and how they come back.
//!
//! A record answered `201` is a promise: when the service must stop without
//! delivering it (retries exhausted, forced shutdown), the record is appended to the
//! dead-letter file as one NDJSON line, the same JSON that would have been posted,
//! and the file is `fsync`ed before the process exits. `--replay` reads such a file
//! back at startup and sends its records ahead of new ones.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use log::{error, info, warn};

use crate::record::{self, Record};

/// Appends records to the dead-letter file and syncs it; if that fails, writes them
/// to stderr so they still reach the operator's logs. Returns where they went.
pub fn write_records<'a>(
    path: &Path,
    records: impl IntoIterator<Item = &'a Record>,
) -> Destination {
    let mut lines = Vec::new();
    let mut count = 0usize;
    for record in records {
        record::write_record(record, &mut lines);
        lines.push(b'\n');
        count += 1;
    }
    if count == 0 {
        return Destination::Nothing;
    }
    match append_whole(path, &lines) {
        Ok(()) => {
            info!(records = count, path:% = path.display(); "records written to the dead-letter file");
            Destination::File(count)
        }
        Err(Failed::Nothing(e)) => {
            error!(records = count, path:% = path.display(), error:% = e; "cannot write the dead-letter file; writing the records to stderr as NDJSON");
            to_stderr(&lines, count)
        }
        Err(Failed::RolledBack(e)) => {
            error!(records = count, path:% = path.display(), error:% = e; "writing the dead-letter file failed part-way; it was cut back to its previous length, and the records go to stderr as NDJSON instead");
            to_stderr(&lines, count)
        }
        Err(Failed::Torn { write, truncate }) => {
            error!(records = count, path:% = path.display(), error:% = write, truncate_error:% = truncate; "writing the dead-letter file failed part-way and it could not be cut back: its last line may be torn, and some of these records may be in it as well as on stderr; writing them all to stderr as NDJSON");
            to_stderr(&lines, count)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Nothing,
    File(usize),
    /// The file failed: `written` records went to stderr, `lost` went nowhere.
    Stderr {
        written: usize,
        lost: usize,
    },
}

impl Destination {
    pub fn count(self) -> usize {
        match self {
            Destination::Nothing => 0,
            Destination::File(n) | Destination::Stderr { written: n, .. } => n,
        }
    }
}

/// How long stderr may take nothing before records meant for it are given up: the
/// last place they can go, so worth a wait the loop would never make (it waits
/// only at exit; the worker's wait holds back its next batch, not requests).
const STDERR_PATIENCE: Duration = Duration::from_secs(10);

fn to_stderr(lines: &[u8], count: usize) -> Destination {
    let written = crate::logging::write_records(lines, STDERR_PATIENCE);
    // Only whole lines count: a record cut short is as lost as one never written.
    let whole = lines[..written].iter().filter(|&&b| b == b'\n').count();
    let lost = count - whole;
    if lost > 0 {
        error!(records = lost, written = whole; "records lost: neither the dead-letter file nor stderr took them");
    }
    Destination::Stderr {
        written: whole,
        lost,
    }
}

/// Why an append did not land, and what it left in the file.
#[derive(Debug)]
enum Failed {
    /// The file could not be opened or read: nothing was written.
    Nothing(io::Error),
    /// Writing or syncing failed and the file was cut back to where it was.
    RolledBack(io::Error),
    /// Writing failed and cutting back failed too: part of the batch may be there.
    Torn {
        write: io::Error,
        truncate: io::Error,
    },
}

/// The worker (refused records) and the loop (at exit, and when it retires a replay
/// file) both change dead-letter files: the length noted for a rollback, or for a
/// replay file's tail, must not move under another append.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static CHANGING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CHANGING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Appends `bytes` as a whole or not at all: on a write or sync error (a full disk)
/// the file is truncated back to its length before, so it never ends in a torn line
/// and no record is both there and on stderr. The append starts on a line of its own,
/// even after a torn last line left by an older version or a crash, so that line
/// cannot swallow the first record.
fn append_whole(path: &Path, bytes: &[u8]) -> Result<(), Failed> {
    let _one_at_a_time = one_at_a_time();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(Failed::Nothing)?;
    append_to(&mut file, bytes)
}

/// The file operations an append needs; a trait so that a test can fill the disk.
trait AppendFile: Write {
    fn length(&self) -> io::Result<u64>;
    fn byte_at(&self, offset: u64) -> io::Result<u8>;
    fn sync(&self) -> io::Result<()>;
    fn cut_to(&self, length: u64) -> io::Result<()>;
}

impl AppendFile for File {
    fn length(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn byte_at(&self, offset: u64) -> io::Result<u8> {
        use std::os::unix::fs::FileExt;
        let mut byte = [0u8; 1];
        self.read_exact_at(&mut byte, offset)?;
        Ok(byte[0])
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_all()
    }

    fn cut_to(&self, length: u64) -> io::Result<()> {
        self.set_len(length)?;
        self.sync_all()
    }
}

fn append_to(file: &mut impl AppendFile, bytes: &[u8]) -> Result<(), Failed> {
    let before = file.length().map_err(Failed::Nothing)?;
    let needs_newline = before > 0 && file.byte_at(before - 1).map_err(Failed::Nothing)? != b'\n';
    let mut written = || {
        if needs_newline {
            file.write_all(b"\n")?;
        }
        file.write_all(bytes)?;
        file.sync()
    };
    let Err(write) = written() else {
        return Ok(());
    };
    match file.cut_to(before) {
        Ok(()) => Err(Failed::RolledBack(write)),
        Err(truncate) => Err(Failed::Torn { write, truncate }),
    }
}

fn append_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Records read back from a dead-letter file, waiting to be sent before new ones.
pub struct Replay {
    pub path: PathBuf,
    pub records: std::collections::VecDeque<Record>,
    pub total: usize,
    /// The bytes read: whatever is appended to the file after them (dead letters,
    /// when it is also the dead-letter file) is not part of the replay.
    pub length: u64,
}

/// Reads `path` for replay. A line that does not decode is reported with its number
/// and copied to `PATH.rejected`; it is never dropped. A missing file means there is
/// nothing to replay (a restart after a completed replay), not an error.
pub fn load_replay(path: &Path) -> io::Result<Option<Replay>> {
    recover(path)?;
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            info!(path:% = path.display(); "nothing to replay: the file does not exist");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    // Through a symlink, the file itself is rewritten and retired, not the link.
    let canonical = std::fs::canonicalize(path)?;
    let path = canonical.as_path();
    let mut length = file.metadata()?.len();
    let mut records = std::collections::VecDeque::new();
    let mut rejected = Vec::new();
    let mut kept = Vec::new();
    for (index, line) in BufReader::new(io::Read::take(file, length))
        .split(b'\n')
        .enumerate()
    {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match record::decode(&line) {
            Ok(record) => {
                records.push_back(record);
                kept.extend_from_slice(&line);
                kept.push(b'\n');
            }
            Err(why) => {
                warn!(path:% = path.display(), line = index + 1, reason = why.message(); "replay: line not valid, moved to the .rejected file");
                rejected.extend_from_slice(&line);
                rejected.push(b'\n');
            }
        }
    }
    if !rejected.is_empty() {
        append_synced(&sibling(path, ".rejected"), &rejected)?;
        // Moved, not copied: a replay that fails leaves its file for the next one,
        // which must not put the same lines in PATH.rejected again.
        rewrite_synced(path, &kept)?;
        length = kept.len() as u64;
    }
    let total = records.len();
    info!(path:% = path.display(), records = total; "replaying records ahead of new ones");
    Ok(Some(Replay {
        path: path.to_owned(),
        records,
        total,
        length,
    }))
}

/// Replaces `path`'s contents whole: written beside it, synced, then renamed over it,
/// so a crash leaves either the old file or the new one.
fn rewrite_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = sibling(path, ".rewriting");
    let permissions = std::fs::metadata(path)?.permissions();
    copy_synced(&mut &bytes[..], &temporary, permissions)?;
    std::fs::rename(&temporary, path)
}

/// A replay file set aside once all its records were delivered.
#[derive(Debug)]
pub struct Retired {
    pub renamed_to: PathBuf,
    /// Bytes appended to the file after it was read (dead letters, when it is also
    /// the dead-letter file), which stay in it.
    pub kept_bytes: u64,
}

/// Marks a fully delivered replay file, so a second `--replay` sends nothing twice:
/// renames it to `PATH.replayed-<timestamp>`. If anything was appended after the
/// `length` bytes replayed (when the replay file is also the dead-letter file, the
/// records refused meanwhile), those must stay where the next replay reads them:
/// they are first copied to `PATH.retiring` (synced, with the file's permissions),
/// then the file is renamed and the copy renamed to `PATH`, and the set-aside file
/// is cut back to what was replayed. Only the appended part is copied, so this costs
/// little time and space however large the replay was. A crash between the two
/// renames leaves the copy, which the next `load_replay` puts back (`recover`).
pub fn retire_replayed(path: &Path, length: u64) -> io::Result<Retired> {
    let mut stamp = Vec::new();
    crate::clock::write_rfc3339_millis(&mut stamp, SystemTime::now());
    let stamp: String = String::from_utf8_lossy(&stamp)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let target = sibling(path, &format!(".replayed-{stamp}"));
    // No append of ours may land in the file while it is looked at and replaced.
    let _one_at_a_time = one_at_a_time();
    let mut file = File::open(path)?;
    let metadata = file.metadata()?;
    let now = metadata.len();
    if now <= length {
        std::fs::rename(path, &target)?;
        return Ok(Retired {
            renamed_to: target,
            kept_bytes: 0,
        });
    }
    io::Seek::seek(&mut file, io::SeekFrom::Start(length))?;
    let copy = sibling(path, RETIRING);
    if let Err(e) = copy_synced(&mut file, &copy, metadata.permissions()) {
        // A full disk: leave nothing behind; the file is retired another time.
        let _ = std::fs::remove_file(&copy);
        return Err(e);
    }
    std::fs::rename(path, &target)?;
    std::fs::rename(&copy, path)?;
    // The set-aside file keeps only what was replayed. If this fails, the appended
    // records are in both files; the live one is what a replay reads.
    let _ = OpenOptions::new()
        .write(true)
        .open(&target)
        .and_then(|f| f.set_len(length).and_then(|()| f.sync_all()));
    Ok(Retired {
        renamed_to: target,
        kept_bytes: now - length,
    })
}

/// Where `retire_replayed` copies the records appended during a replay.
const RETIRING: &str = ".retiring";

/// Puts back what a stop in `retire_replayed` left behind: a `PATH.retiring` holds
/// records dead-lettered during the last replay. With no `PATH` it becomes `PATH`;
/// with one (a start without `--replay` may have made it since), it is appended to
/// it, which at worst repeats records (the copy may have been unfinished while
/// `PATH` still held them all). A `PATH.rewriting` (from `rewrite_synced`) holds
/// nothing `PATH` lacks and is removed.
fn recover(path: &Path) -> io::Result<()> {
    let rewriting = sibling(path, ".rewriting");
    if rewriting.exists() && path.exists() {
        std::fs::remove_file(&rewriting)?;
    }
    let copy = sibling(path, RETIRING);
    if !copy.exists() {
        return Ok(());
    }
    if path.exists() {
        let bytes = std::fs::read(&copy)?;
        append_whole(path, &bytes).map_err(|failed| match failed {
            Failed::Nothing(e) | Failed::RolledBack(e) | Failed::Torn { write: e, .. } => e,
        })?;
        std::fs::remove_file(&copy)?;
    } else {
        std::fs::rename(&copy, path)?;
    }
    warn!(path:% = path.display(); "put back in PATH the records dead-lettered during the last replay, which a stop had left in PATH.retiring");
    Ok(())
}

/// Copies `from` into a new file at `to`, a buffer at a time, with `permissions`
/// (the records are no more readable than in the file they came from), and syncs it.
fn copy_synced(
    from: &mut impl io::Read,
    to: &Path,
    permissions: std::fs::Permissions,
) -> io::Result<()> {
    let mut out = File::create(to)?;
    out.set_permissions(permissions)?;
    io::copy(from, &mut out)?;
    out.sync_all()
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wf-deadletter-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn rec(id: i64) -> Record {
        Record {
            user_id: id,
            ..Record::default()
        }
    }

    #[test]
    fn appends_and_reads_back() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("dl.ndjson");
        assert_eq!(
            write_records(&path, &[rec(1), rec(2)]),
            Destination::File(2)
        );
        assert_eq!(write_records(&path, &[rec(3)]), Destination::File(1));
        assert_eq!(write_records(&path, &[]), Destination::Nothing);
        let replay = load_replay(&path).unwrap().unwrap();
        let ids: Vec<i64> = replay.records.iter().map(|r| r.user_id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
        let retired = retire_replayed(&path, replay.length).unwrap();
        assert_eq!(retired.kept_bytes, 0);
        let renamed = retired.renamed_to;
        assert!(!path.exists() && renamed.exists());
        assert!(renamed.to_string_lossy().contains(".replayed-"));
        assert!(load_replay(&path).unwrap().is_none());
    }

    /// The replay file is also the dead-letter file (the image's setting): records
    /// refused during the replay are appended to it, and must stay in the live file
    /// when the replayed one is set aside.
    #[test]
    fn dead_letters_appended_during_a_replay_stay_in_the_live_file() {
        let dir = temp_dir("same-file");
        let path = dir.join("dl.ndjson");
        // An older version's torn last line: the first append starts a line anyway.
        let mut first = Vec::new();
        for id in [1, 2, 3] {
            record::write_record(&rec(id), &mut first);
            first.push(b'\n');
        }
        first.extend_from_slice(b"{\"user_id\":");
        std::fs::write(&path, &first).unwrap();
        let replay = load_replay(&path).unwrap().unwrap();
        let replayed_bytes = std::fs::read(&path).unwrap();
        assert_eq!(replay.length, replayed_bytes.len() as u64);
        // The records are no more readable after than before.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Refused while the replay runs.
        assert_eq!(write_records(&path, &[rec(2)]), Destination::File(1));
        assert_eq!(write_records(&path, &[rec(9)]), Destination::File(1));
        let appended = std::fs::metadata(&path).unwrap().len() - replay.length;
        let retired = retire_replayed(&path, replay.length).unwrap();
        assert_eq!(retired.kept_bytes, appended);
        assert_eq!(
            std::fs::read(&retired.renamed_to).unwrap(),
            replayed_bytes,
            "the set-aside file holds only what was replayed"
        );
        for file in [&path, &retired.renamed_to] {
            let mode = std::fs::metadata(file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        let live = load_replay(&path).unwrap().unwrap();
        let ids: Vec<i64> = live.records.iter().map(|r| r.user_id).collect();
        assert_eq!(ids, vec![2, 9]);
    }

    /// What a stop between `retire_replayed`'s renames leaves is put back at the next
    /// load: alone, or appended to a dead-letter file made since; never dropped.
    #[test]
    fn a_retire_cut_short_loses_nothing_at_the_next_load() {
        let dir = temp_dir("retire-cut-short");
        let path = dir.join("dl.ndjson");
        let line = |id| {
            let mut out = Vec::new();
            record::write_record(&rec(id), &mut out);
            out.push(b'\n');
            out
        };
        // Stopped between the renames: only the copy is there.
        std::fs::write(sibling(&path, RETIRING), line(7)).unwrap();
        let ids = |replay: Replay| replay.records.iter().map(|r| r.user_id).collect::<Vec<_>>();
        assert_eq!(ids(load_replay(&path).unwrap().unwrap()), vec![7]);
        assert!(!sibling(&path, RETIRING).exists());
        // A start without --replay dead-lettered into a new file meanwhile.
        std::fs::write(&path, line(8)).unwrap();
        std::fs::write(sibling(&path, RETIRING), line(7)).unwrap();
        assert_eq!(ids(load_replay(&path).unwrap().unwrap()), vec![8, 7]);
        // A rewrite's leftover holds nothing the file lacks.
        std::fs::write(sibling(&path, ".rewriting"), line(8)).unwrap();
        assert_eq!(ids(load_replay(&path).unwrap().unwrap()), vec![8, 7]);
        assert!(!sibling(&path, ".rewriting").exists());
        assert!(!sibling(&path, RETIRING).exists());
    }

    #[test]
    fn bad_lines_are_kept_aside_not_dropped() {
        let dir = temp_dir("rejected");
        let path = dir.join("dl.ndjson");
        std::fs::write(
            &path,
            "{\"user_id\":1}\nnot json\n\n{\"user_id\":0}\n{\"user_id\":2}\n",
        )
        .unwrap();
        let replay = load_replay(&path).unwrap().unwrap();
        assert_eq!(
            replay.records.iter().map(|r| r.user_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let rejected = std::fs::read_to_string(dir.join("dl.ndjson.rejected")).unwrap();
        assert_eq!(rejected, "not json\n{\"user_id\":0}\n");
        // A second load (the first replay failed and left its file) rejects nothing
        // again: each rejected line is in PATH.rejected once.
        let again = load_replay(&path).unwrap().unwrap();
        assert_eq!(again.total, 2);
        let rejected = std::fs::read_to_string(dir.join("dl.ndjson.rejected")).unwrap();
        assert_eq!(rejected, "not json\n{\"user_id\":0}\n");
    }

    #[test]
    fn an_append_after_a_torn_line_starts_on_a_new_line() {
        let dir = temp_dir("torn");
        let path = dir.join("dl.ndjson");
        std::fs::write(
            &path,
            "{\"user_id\":1}\n{\"user_id\":27,\"total\":0.0,\"title",
        )
        .unwrap();
        assert_eq!(write_records(&path, &[rec(2)]), Destination::File(1));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"title\n{\"user_id\":2,"), "{text}");
        // Replay keeps the torn line aside and reads the next one.
        let replay = load_replay(&path).unwrap().unwrap();
        assert_eq!(
            replay.records.iter().map(|r| r.user_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        let rejected = std::fs::read_to_string(dir.join("dl.ndjson.rejected")).unwrap();
        assert_eq!(rejected, "{\"user_id\":27,\"total\":0.0,\"title\n");
        // A file that ends cleanly gets no blank line.
        let clean = dir.join("clean.ndjson");
        write_records(&clean, &[rec(1)]);
        write_records(&clean, &[rec(2)]);
        let text = std::fs::read_to_string(&clean).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains("\n\n"));
    }

    /// A file on a disk with `room` bytes left.
    struct Filling {
        data: std::cell::RefCell<Vec<u8>>,
        room: usize,
        truncate_fails: bool,
    }

    impl Filling {
        fn new(data: &[u8], room: usize, truncate_fails: bool) -> Filling {
            Filling {
                data: std::cell::RefCell::new(data.to_vec()),
                room,
                truncate_fails,
            }
        }
    }

    impl Write for Filling {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.room);
            self.data.borrow_mut().extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl AppendFile for Filling {
        fn length(&self) -> io::Result<u64> {
            Ok(self.data.borrow().len() as u64)
        }

        fn byte_at(&self, offset: u64) -> io::Result<u8> {
            Ok(self.data.borrow()[offset as usize])
        }

        fn sync(&self) -> io::Result<()> {
            Ok(())
        }

        fn cut_to(&self, length: u64) -> io::Result<()> {
            if self.truncate_fails {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.data.borrow_mut().truncate(length as usize);
            Ok(())
        }
    }

    #[test]
    fn a_failed_append_is_cut_back_to_the_previous_length() {
        let lines = b"{\"user_id\":1}\n{\"user_id\":2}\n";
        let torn = b"{\"user_id\":0,\"ti";
        // Room for the newline and part of the first record.
        let mut file = Filling::new(torn, 8, false);
        match append_to(&mut file, lines) {
            Err(Failed::RolledBack(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC)),
            other => panic!("{other:?}"),
        }
        assert_eq!(&file.data.borrow()[..], torn);
        // When cutting back fails too, the caller is told so.
        let mut file = Filling::new(torn, 8, true);
        assert!(matches!(
            append_to(&mut file, lines),
            Err(Failed::Torn { .. })
        ));
        // With room, the append lands whole, on a line of its own.
        let mut file = Filling::new(torn, 1024, true);
        append_to(&mut file, lines).unwrap();
        assert_eq!(&file.data.borrow()[..], [&torn[..], b"\n", lines].concat());
        let mut file = Filling::new(b"{\"user_id\":0}\n", 1024, true);
        append_to(&mut file, lines).unwrap();
        assert_eq!(
            &file.data.borrow()[..],
            [&b"{\"user_id\":0}\n"[..], lines].concat()
        );
        let mut file = Filling::new(b"", 1024, true);
        append_to(&mut file, lines).unwrap();
        assert_eq!(&file.data.borrow()[..], lines);
    }

    #[test]
    fn an_unwritable_path_falls_back_to_stderr() {
        let path = Path::new("/nonexistent-dir/for/sure/dl.ndjson");
        assert_eq!(
            write_records(path, &[rec(1)]),
            Destination::Stderr {
                written: 1,
                lost: 0
            }
        );
    }
}
