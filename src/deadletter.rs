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
use std::time::SystemTime;

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
        // A record is plain data: serializing it into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut lines, record);
        lines.push(b'\n');
        count += 1;
    }
    if count == 0 {
        return Destination::Nothing;
    }
    match append_synced(path, &lines) {
        Ok(()) => {
            info!(records = count, path:% = path.display(); "records written to the dead-letter file");
            Destination::File(count)
        }
        Err(e) => {
            error!(records = count, path:% = path.display(), error:% = e; "cannot write the dead-letter file; writing the records to stderr as NDJSON");
            crate::logging::flush();
            let _ = io::stderr().lock().write_all(&lines);
            Destination::Stderr(count)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Nothing,
    File(usize),
    Stderr(usize),
}

impl Destination {
    pub fn count(self) -> usize {
        match self {
            Destination::Nothing => 0,
            Destination::File(n) | Destination::Stderr(n) => n,
        }
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
}

/// Reads `path` for replay. A line that does not decode is reported with its number
/// and copied to `PATH.rejected`; it is never dropped. A missing file means there is
/// nothing to replay (a restart after a completed replay), not an error.
pub fn load_replay(path: &Path) -> io::Result<Option<Replay>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            info!(path:% = path.display(); "nothing to replay: the file does not exist");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut records = std::collections::VecDeque::new();
    let mut rejected = Vec::new();
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match record::decode(&line) {
            Ok(record) => records.push_back(record),
            Err(why) => {
                warn!(path:% = path.display(), line = index + 1, reason = why.message(); "replay: line not valid, kept in the .rejected file");
                rejected.extend_from_slice(&line);
                rejected.push(b'\n');
            }
        }
    }
    if !rejected.is_empty() {
        append_synced(&sibling(path, ".rejected"), &rejected)?;
    }
    let total = records.len();
    info!(path:% = path.display(), records = total; "replaying records ahead of new ones");
    Ok(Some(Replay {
        path: path.to_owned(),
        records,
        total,
    }))
}

/// Marks a fully delivered replay file, so a second `--replay` sends nothing twice.
pub fn retire_replayed(path: &Path) -> io::Result<PathBuf> {
    let mut stamp = Vec::new();
    crate::clock::write_rfc3339_millis(&mut stamp, SystemTime::now());
    let stamp: String = String::from_utf8_lossy(&stamp)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let target = sibling(path, &format!(".replayed-{stamp}"));
    std::fs::rename(path, &target)?;
    Ok(target)
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
        let retired = retire_replayed(&path).unwrap();
        assert!(!path.exists() && retired.exists());
        assert!(retired.to_string_lossy().contains(".replayed-"));
        assert!(load_replay(&path).unwrap().is_none());
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
    }

    #[test]
    fn an_unwritable_path_falls_back_to_stderr() {
        let path = Path::new("/nonexistent-dir/for/sure/dl.ndjson");
        assert_eq!(write_records(path, &[rec(1)]), Destination::Stderr(1));
    }
}
