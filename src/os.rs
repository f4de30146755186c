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

/// Raises the soft limit on open descriptors to the hard limit and returns the soft
/// limit now in force.
///
/// The soft limit is often 1024 while the hard one is far higher, and every client
/// connection costs a descriptor; raising it is what an unprivileged process may do.
/// When the raise is refused (a sandbox), the current soft limit is returned; when
/// even reading the limit fails, `None`.
pub fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` into the struct we own for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit(2) only reads the struct, which outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        } else {
            log::debug!(error:% = io::Error::last_os_error(); "soft descriptor limit not raised");
        }
    }
    // RLIM_INFINITY is u64::MAX: as good as no limit.
    Some(limit.rlim_cur)
}
