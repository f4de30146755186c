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

/// Whether an idle connection is still fit to carry a request: open, and with nothing
/// unasked-for waiting to be read. One `recv(MSG_PEEK | MSG_DONTWAIT)`, where the
/// standard library would need the socket switched to non-blocking and back.
pub fn idle_connection_usable(fd: std::os::fd::RawFd) -> bool {
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
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

/// Asks the kernel to tell, with each read from this TCP socket, when the last bytes
/// read arrived (SO_TIMESTAMPNS) and whether anything, bytes or the peer's close, waits
/// behind them (TCP_INQ). Two calls, once per connection; what a batch costs after
/// that is the write and the read alone (see `read_with_arrival`).
pub fn report_arrivals(fd: std::os::fd::RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    for (level, option) in [
        (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
        (libc::IPPROTO_TCP, libc::TCP_INQ),
    ] {
        // SAFETY: setsockopt(2) reads an int that outlives the call.
        let done = unsafe {
            libc::setsockopt(
                fd,
                level,
                option,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One read from a socket set up by `report_arrivals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub read: usize,
    /// When the last segment read reached this host; `None` if not reported.
    pub arrived: Option<std::time::SystemTime>,
    /// Something waits behind what was read: bytes, or the peer's close (the kernel
    /// reports a close as one byte). `None` if not reported.
    pub more_waiting: Option<bool>,
}

/// Reads once from a socket (blocking up to its SO_RCVTIMEO), with what the kernel
/// reports about the bytes alongside them; one recvmsg(2), as a plain read would be.
pub fn read_with_arrival(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<Arrival> {
    // Room for a timespec and an int, each behind its header, aligned for cmsghdr.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no buffers).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg(2) writes at most `buf.len()` bytes into `buf` and at most
    // `msg_controllen` into `control`, both of which outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut arrival = Arrival {
        read: n as usize,
        arrived: None,
        more_waiting: None,
    };
    // SAFETY: the kernel filled `control` and set `msg_controllen` to what it wrote;
    // the CMSG_* walk stays within it, and each payload is read unaligned at the
    // length the kernel gives for its type.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            let data = libc::CMSG_DATA(header);
            let len = (*header).cmsg_len as usize;
            match ((*header).cmsg_level, (*header).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS)
                    if len
                        >= libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as u32)
                            as usize =>
                {
                    let ts = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                    arrival.arrived = u64::try_from(ts.tv_sec).ok().and_then(|secs| {
                        std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(
                            secs,
                            ts.tv_nsec.clamp(0, 999_999_999) as u32,
                        ))
                    });
                }
                (libc::IPPROTO_TCP, libc::TCP_CM_INQ)
                    if len
                        >= libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize =>
                {
                    let waiting = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    arrival.more_waiting = Some(waiting != 0);
                }
                _ => {}
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    Ok(arrival)
}

/// A counter another thread bumps to wake this one out of `wait_for_either`: an
/// eventfd(2), so it can be waited on together with a socket.
#[derive(Debug)]
pub struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd(2) takes no pointers; a descriptor it returns is ours alone.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        Ok(EventFd(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }

    fn raw(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }

    /// Wakes the waiter. A full counter (EAGAIN) is already a wake-up.
    pub fn signal(&self) {
        let one = 1u64;
        // SAFETY: write(2) reads 8 bytes from `one`, which outlives the call.
        unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
    }

    /// Takes the wake-ups given so far, so the next wait sleeps again.
    fn clear(&self) {
        let mut count = 0u64;
        // SAFETY: read(2) writes at most 8 bytes into `count`, which outlives the
        // call; an empty counter is EAGAIN (the descriptor is non-blocking).
        unsafe { libc::read(self.raw(), (&mut count as *mut u64).cast(), 8) };
    }
}

/// What ended a `wait_for_either`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Woken {
    pub signalled: bool,
    /// The watched socket has bytes to read, was closed by its peer, or is broken.
    pub socket_stirred: bool,
}

/// Sleeps until `bell` is signalled, `watched` stirs, or `timeout` (if any) passes;
/// one ppoll(2), and a read of the counter only when it was signalled.
pub fn wait_for_either(
    bell: &EventFd,
    watched: Option<std::os::fd::RawFd>,
    timeout: Option<std::time::Duration>,
) -> Woken {
    let mut fds = [
        libc::pollfd {
            fd: bell.raw(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            // A negative descriptor is skipped by poll(2).
            fd: watched.unwrap_or(-1),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        },
    ];
    let timespec = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let timespec_ptr = timespec
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: ppoll(2) reads and writes the two pollfds and reads the timespec, all
    // of which outlive the call; a null timespec waits without limit, a null mask
    // leaves the signal mask alone.
    let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, timespec_ptr, std::ptr::null()) };
    if ready <= 0 {
        // Timed out, or a signal: the caller looks again and waits again.
        return Woken::default();
    }
    let woken = Woken {
        signalled: fds[0].revents != 0,
        socket_stirred: watched.is_some() && fds[1].revents != 0,
    };
    if woken.signalled {
        bell.clear();
    }
    woken
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
