//! The few calls to the operating system that the standard library does not wrap.
//! The crate's only `unsafe` lives here.

use std::io;

/// Keeps this thread's wake-ups from preempting the poll loop.
///
/// On a shared core the worker wakes when the endpoint answers, usually in the middle
/// of the loop's turn. Preempting there costs two context switches, and then the
/// worker often finds its next batch unfinished and sleeps again: three to four
/// switches per POST at batch size 10. As SCHED_BATCH work it waits instead for the
/// loop to yield after handing over a batch, or to sleep, and then reads the answer and
/// sends the next batch in one run: about two switches per POST under load.
///
/// It keeps its full share of the CPU (same weight, same nice value), so it cannot be
/// starved: when neither happens, the scheduler's tick ends the running task's slice,
/// a few milliseconds at most. That wait, also behind any other ordinary task on the
/// core, counts in the POST's logged duration. A policy the operator chose (`chrt`) is
/// left alone; if the kernel refuses, nothing changes. No privilege is needed.
pub fn defer_wakeups_to_the_loop() {
    // SAFETY: sched_getscheduler(2) takes only a pid; 0 is this thread.
    if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
        return;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) reads the param struct, which outlives the call;
    // pid 0 is this thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        log::debug!(error:% = io::Error::last_os_error(); "batch scheduling not granted");
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

/// Ignores every signal whose default action would end the process at once and that
/// the service does not use: SIGUSR1 and SIGUSR2 (log rotators and supervisors send
/// them), the timer signals, SIGIO, SIGSTKFLT and the real-time signals. SIGXFSZ too:
/// a dead-letter file past the size limit then fails with EFBIG, which falls back to
/// stderr, instead of killing the process with the records. SIGPIPE is ignored by
/// the Rust runtime already. The signals glibc keeps below SIGRTMIN are left alone.
pub fn ignore_stray_signals() {
    let fixed = [
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGSTKFLT,
        libc::SIGXFSZ,
    ];
    let real_time = libc::SIGRTMIN()..=libc::SIGRTMAX();
    for signal in fixed.into_iter().chain(real_time) {
        // SAFETY: signal(2) with SIG_IGN installs no handler; it only changes the
        // disposition, which is process-wide and valid for any of these numbers.
        unsafe {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
}

/// Whether stderr would take a write now without blocking, waiting at most `wait`.
/// A pipe or terminal that reports writable takes at least one page (4 KiB) at
/// once, so a write of that much does not block. Asking this, rather than setting
/// O_NONBLOCK, leaves the descriptor as other processes sharing it expect it.
pub fn stderr_writable(wait: std::time::Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDERR_FILENO,
        events: libc::POLLOUT,
        revents: 0,
    };
    let millis = wait.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: poll(2) reads and writes exactly one pollfd that lives on this stack
    // frame for the whole call.
    let ready = unsafe { libc::poll(&mut fd, 1, millis) };
    // An error or hang-up also reads as writable: the write then fails at once and
    // the caller drops the lines instead of waiting for a reader that is gone.
    ready > 0
}

/// One write(2) to descriptor 2, without the standard library's stderr lock.
pub fn write_stderr(bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: write(2) reads at most `bytes.len()` bytes from a live slice.
    let n = unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Lets the kernel queue as many not-yet-accepted connections as it allows
/// (`net.core.somaxconn`), instead of the standard library's 128: a burst of
/// connections then waits in the kernel instead of being reset. Calling listen(2)
/// again on a listening socket only changes its backlog.
pub fn widen_backlog(listener: &impl std::os::fd::AsRawFd) -> io::Result<i32> {
    let backlog = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(4096);
    // SAFETY: listen(2) on a descriptor the caller owns and keeps open; no memory
    // is passed.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), backlog) };
    if rc == 0 {
        Ok(backlog)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes glibc's allocator give memory back: large buffers (request bodies) are
/// mapped on their own and unmapped when freed, at a fixed threshold that does not
/// creep up after each one (glibc's default does, and then keeps such buffers in
/// the heap for good), and freed heap memory past 1 MiB at the top is returned.
pub fn return_large_buffers_to_the_kernel() {
    // SAFETY: mallopt(3) only changes allocator parameters; it is called at start,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
        // The worker's own arena would otherwise keep its peak as well.
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns free heap memory to the kernel after a burst (malloc_trim(3)).
pub fn trim_free_memory() {
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Counts the entries of an open directory but `.` and `..`, without allocating:
/// `std::fs::read_dir` makes a `CString` per entry, and `/proc/self/fd` holds one
/// entry per connection.
pub fn count_dir_entries(dir: &std::fs::File) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // Aligned for the kernel's `struct linux_dirent64` records.
    #[repr(C, align(8))]
    struct Buffer([u8; 8192]);
    let mut buffer = Buffer([0; 8192]);
    let mut count = 0;
    loop {
        // SAFETY: getdents64(2) writes at most `len` bytes into the buffer, which
        // outlives the call; the descriptor is open for as long as `dir` is borrowed.
        let filled = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buffer.0.as_mut_ptr(),
                buffer.0.len(),
            )
        };
        if filled < 0 {
            return Err(io::Error::last_os_error());
        }
        if filled == 0 {
            return Ok(count);
        }
        // Each record: inode (8), offset (8), record length (2), type (1), the name
        // with its NUL. Lengths come from the kernel; a bad one ends the count.
        let records = &buffer.0[..(filled as usize).min(buffer.0.len())];
        let mut at = 0;
        while let Some(header) = records.get(at..at + 19) {
            let len = usize::from(u16::from_ne_bytes([header[16], header[17]]));
            let name = records.get(at + 19..at + len).unwrap_or_default();
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            if name != b"." && name != b".." {
                count += 1;
            }
            if len == 0 {
                return Err(io::Error::other("getdents64 returned an empty record"));
            }
            at += len;
        }
    }
}

/// What a look at an idle connection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleConnection {
    /// Open, nothing waiting: fit to carry a request.
    Quiet,
    /// Closed by the peer, or broken.
    Closed,
    /// The peer sent something nobody asked for; its first byte.
    Spoke(u8),
}

/// Looks at an idle connection: open, and with nothing unasked-for waiting to be
/// read? One `recv(MSG_PEEK | MSG_DONTWAIT)`, where the standard library would need
/// the socket switched to non-blocking and back.
pub fn look_at_idle_connection(fd: std::os::fd::RawFd) -> IdleConnection {
    let mut byte = 0u8;
    // SAFETY: recv(2) writes at most 1 byte into `byte`, which outlives the call; an
    // invalid descriptor is an error return, not undefined behaviour.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    // -1 with EAGAIN: nothing to read, the peer has not closed it. 0: closed by the
    // peer. A byte: the peer said something nobody asked for. Any other error: broken.
    match n {
        1.. => IdleConnection::Spoke(byte),
        0 => IdleConnection::Closed,
        _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => {
            IdleConnection::Quiet
        }
        _ => IdleConnection::Closed,
    }
}

/// Shrinks a socket's send and receive buffers, so that a test can fill them with a
/// few kilobytes instead of megabytes.
#[cfg(test)]
pub fn shrink_socket_buffers(fd: std::os::fd::RawFd, bytes: i32) {
    for option in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt(2) reads an int that outlives the call.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_directory_entries() {
        let dir = std::env::temp_dir().join(format!("wf-os-count-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in 0..300 {
            std::fs::write(dir.join(format!("a-rather-long-file-name-{n}")), "").unwrap();
        }
        let open = std::fs::File::open(&dir).unwrap();
        assert_eq!(count_dir_entries(&open).unwrap(), 300);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
