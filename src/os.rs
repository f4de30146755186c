//! The few calls to the operating system that the standard library does not wrap.
//! The crate's only `unsafe` lives here.

use std::io;

/// Asks the scheduler to run this thread promptly when it wakes.
///
/// On one core the poll loop is busy whenever traffic is heavy, and the worker wakes
/// twice per batch (a batch to send, the endpoint's answer). Waiting out the loop's
/// time slice each time made a POST cycle last several milliseconds, long enough for
/// the ring to fill. Linux's EEVDF scheduler (6.12 and later) lets a task request a
/// shorter slice, which gives it an earlier deadline and so preempts on wakeup; it
/// needs no privilege. Older kernels refuse the request, and nothing changes.
pub fn request_short_slice() {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: 0, // SCHED_OTHER
        flags: 0,
        nice: 0,
        priority: 0,
        runtime: 100_000, // 100 µs, the shortest slice the kernel accepts
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr(2) reads `size` bytes of a properly laid out struct that
    // outlives the call; pid 0 is this thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        log::debug!(error:% = io::Error::last_os_error(); "short scheduler slice not granted");
    }
}

/// Accepting failed for lack of descriptors or memory, not because of one peer.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
