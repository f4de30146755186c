//! The process has two threads for its whole life, the poll loop and the worker:
//! no thread per POST, per lookup or per anything.

mod common;

use common::*;

fn threads_of(pid: u32) -> Vec<String> {
    let mut tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    tids.sort();
    tids
}

#[test]
fn no_thread_is_created_after_start_up() {
    if !strace_available() {
        return;
    }
    let sink = Sink::start(&[]);
    // A name, not an IP literal, so the endpoint has to be looked up.
    let endpoint = format!("http://localhost:{}/ingest", sink.addr.port());
    let fwd = Forwarder::start(&["--post-endpoint", &endpoint, "--batch-size", "1"], &[]);
    let pid = fwd.proc.pid();
    let before = threads_of(pid);
    assert_eq!(before.len(), 2, "the loop and the worker: {before:?}");
    // strace -f follows every thread and sees any new one the moment it is made.
    let strace = Strace::attach(
        &pid.to_string(),
        &["-f", "-qq", "-e", "trace=clone,clone3,fork,vfork"],
        "clone.trace",
    );
    for n in 1..=30 {
        assert_eq!(fwd.post(&record(n)).status, 201);
    }
    let batches = sink.wait_batches(30, SOON);
    assert!(batches.iter().all(|b| b.status == 200));
    let calls = strace.finish();
    assert!(
        !calls.contains("clone"),
        "threads were created while posting:\n{calls}"
    );
    assert_eq!(threads_of(pid), before, "the same two threads");
}
