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

/// Field 41 of /proc/PID/task/TID/stat: the thread's scheduling policy.
fn policy_of(pid: u32, tid: &str) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).expect("stat");
    let after_name = stat.rsplit_once(')').expect("comm in parentheses").1;
    after_name
        .split_whitespace()
        .nth(38)
        .and_then(|f| f.parse().ok())
        .expect("policy field")
}

/// The worker's wake-ups must not preempt the loop (see `os::defer_wakeups_to_the_loop`);
/// the loop itself stays an ordinary thread so that clients are answered promptly.
#[test]
fn the_worker_is_batch_work_and_the_loop_is_not() {
    const SCHED_OTHER: u32 = 0;
    const SCHED_BATCH: u32 = 3;
    let sink = Sink::start(&[]);
    let fwd = Forwarder::start(
        &["--post-endpoint", &sink.endpoint(), "--batch-size", "1"],
        &[],
    );
    let pid = fwd.proc.pid();
    assert_eq!(fwd.post(&record(1)).status, 201);
    sink.wait_batches(1, SOON);
    let policies: Vec<u32> = threads_of(pid).iter().map(|t| policy_of(pid, t)).collect();
    let loop_policy = policy_of(pid, &pid.to_string());
    assert_eq!(loop_policy, SCHED_OTHER, "the loop: {policies:?}");
    assert_eq!(
        policies.iter().filter(|&&p| p == SCHED_BATCH).count(),
        1,
        "one batch thread, the worker: {policies:?}"
    );
}

/// A policy set from outside (here `chrt --idle`, which needs no privilege) is the
/// operator's choice: the worker keeps it rather than switching to SCHED_BATCH.
#[test]
fn a_policy_set_from_outside_is_left_alone() {
    const SCHED_IDLE: u32 = 5;
    let sink = Sink::start(&[]);
    let mut command = std::process::Command::new("chrt");
    command
        .args(["--idle", "0", env!("CARGO_BIN_EXE_webhook-forwarder")])
        .args(["--http", "127.0.0.1:0", "--batch-size", "1"])
        .args(["--post-endpoint", &sink.endpoint()])
        .arg("--dead-letter")
        .arg(temp_path("dead-letter.ndjson"));
    let proc = Proc::spawn(command, true);
    let line = proc.wait_line("listening", SOON);
    let fwd = Forwarder {
        addr: field(&line.text, "listen").parse().expect("listen address"),
        proc,
    };
    // A delivered batch shows the worker has run, and so made its choice of policy.
    assert_eq!(fwd.post(&record(1)).status, 201);
    sink.wait_batches(1, SOON);
    let pid = fwd.proc.pid();
    let threads = threads_of(pid);
    assert_eq!(threads.len(), 2, "the loop and the worker: {threads:?}");
    let policies: Vec<u32> = threads.iter().map(|t| policy_of(pid, t)).collect();
    assert_eq!(
        policies,
        [SCHED_IDLE, SCHED_IDLE],
        "chrt's policy on both threads"
    );
}

/// The lookups that follow failed connections make no thread either.
#[test]
fn looking_the_name_up_again_after_failures_creates_no_thread() {
    if !strace_available() {
        return;
    }
    // Nothing listens there: every attempt fails to connect.
    let endpoint = format!("http://localhost:{}/ingest", closed_port());
    let mut fwd = Forwarder::start(
        &[
            "--post-endpoint",
            &endpoint,
            "--batch-size",
            "1",
            "--retry-wait",
            "20ms",
        ],
        &[],
    );
    let pid = fwd.proc.pid();
    assert_eq!(threads_of(pid).len(), 2);
    let strace = Strace::attach(
        &pid.to_string(),
        &["-f", "-qq", "-e", "trace=clone,clone3,fork,vfork,openat"],
        "relookup.trace",
    );
    fwd.post_accepted(&record(1));
    fwd.proc
        .wait_line("batch delivery failed after all retries", SOON);
    assert_ne!(fwd.proc.wait_exit(SOON).code(), Some(0));
    let calls = strace.finish();
    let lookups = calls.matches("/etc/hosts").count();
    assert!(
        lookups >= 2,
        "the retries looked the name up again:\n{calls}"
    );
    assert!(!calls.contains("clone"), "threads were created:\n{calls}");
}
