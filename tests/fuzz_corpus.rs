//! Replays the fuzz corpus, saved crashes and fixed-crash regressions through the
//! fuzz target bodies on stable, so `cargo test` keeps every input that ever mattered
//! passing without a nightly toolchain or a fuzzing run.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use webhook_forwarder::testing::fuzz;

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input for `target`; the committed corpus must exist and hold something,
/// so a moved or emptied directory cannot turn this test into one that checks nothing.
fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = files_in(&fuzz.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is missing or empty"
    );
    let mut inputs = corpus;
    // Local crash artifacts (ignored by git) and committed regressions, when present.
    inputs.extend(files_in(&fuzz.join("artifacts").join(target)));
    inputs.extend(files_in(&fuzz.join("regressions").join(target)));

    let mut failures = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if panic::catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failures.push(path.display().to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "{target}: {} of {} inputs failed (messages above):\n{}",
        failures.len(),
        inputs.len(),
        failures.join("\n")
    );
}

#[test]
fn http_conn_corpus() {
    replay("http_conn", fuzz::http_conn);
}

#[test]
fn record_corpus() {
    replay("record", fuzz::record);
}

#[test]
fn duration_corpus() {
    replay("duration", fuzz::duration);
}

#[test]
fn chunked_corpus() {
    replay("chunked", fuzz::chunked);
}
