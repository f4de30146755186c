//! The standard `process_*` figures, read from `/proc/self` each time `/metrics` is
//! rendered: each file into a stack buffer, parsed in place, nothing allocated. A
//! figure that cannot be read (no `/proc`, an unexpected format) is left out rather
//! than guessed, and never stops the scrape.

use std::io::Read;

/// Clock ticks per second in `/proc/<pid>/stat`: `USER_HZ`, fixed at 100 by the
/// Linux ABI on every architecture we build for (Prometheus' own client assumes it too).
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// Reads the figures now.
pub fn read() -> Process {
    let mut buf = [0u8; 4096];
    let cpu_seconds = read_small("/proc/self/stat", &mut buf)
        .and_then(cpu_ticks)
        .map(|ticks| ticks as f64 / USER_HZ);
    let resident_bytes = read_small("/proc/self/status", &mut buf)
        .and_then(resident_kib)
        .map(|kib| kib * 1024);
    let max_fds = read_small("/proc/self/limits", &mut buf).and_then(soft_max_files);
    Process {
        resident_bytes,
        cpu_seconds,
        open_fds: open_fds(),
        max_fds,
    }
}

/// The file's first `buf.len()` bytes; `None` when it cannot be read or does not fit.
fn read_small<'b>(path: &str, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => return Some(&buf[..filled]),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    // Full: the text may go on, and a cut figure would be wrong.
    None
}

fn number(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// User plus system time in clock ticks, from `/proc/self/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted from its last `)`.
fn cpu_ticks(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let utime = number(fields.nth(11)?)?;
    let stime = number(fields.next()?)?;
    utime.checked_add(stime)
}

/// `VmRSS:` of `/proc/self/status`, in KiB.
fn resident_kib(status: &[u8]) -> Option<u64> {
    let line = status
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"VmRSS:"))?;
    let mut words = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let kib = number(words.next()?)?;
    (words.next()? == b"kB").then_some(kib)
}

/// The soft limit on open files from `/proc/self/limits`; `None` when unlimited.
fn soft_max_files(limits: &[u8]) -> Option<u64> {
    let line = limits
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"Max open files"))?;
    let soft = line.split(|&b| b == b' ').find(|w| !w.is_empty())?;
    number(soft)
}

/// Descriptors open now, from `/proc/self/fd`, not counting the one used to look.
fn open_fds() -> Option<u64> {
    let dir = std::fs::File::open("/proc/self/fd").ok()?;
    let entries = crate::os::count_dir_entries(&dir).ok()?;
    Some(entries.saturating_sub(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_formats() {
        let stat = b"4361 (we ird) (name) R 4359 4359 3100 0 -1 4194304 102 0 0 0 250 31 0 0 20 0 1 0 149590 3133440 427 18446744073709551615\n";
        assert_eq!(cpu_ticks(stat), Some(281));
        assert_eq!(cpu_ticks(b"4361 (cat R 1 2"), None);
        assert_eq!(cpu_ticks(b""), None);
        let status = b"Name:\tcat\nVmPeak:\t  5000 kB\nVmRSS:\t    1708 kB\nRssAnon:\t 0 kB\n";
        assert_eq!(resident_kib(status), Some(1708));
        assert_eq!(resident_kib(b"Name:\tcat\n"), None);
        let limits = b"Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 1048576              files     \n";
        assert_eq!(soft_max_files(limits), Some(1024));
        let unlimited =
            b"Max open files            unlimited            unlimited            files\n";
        assert_eq!(soft_max_files(unlimited), None);
    }

    #[test]
    fn reads_this_process() {
        let p = read();
        assert!(p.resident_bytes.is_some_and(|b| b > 1024 * 1024), "{p:?}");
        assert!(p.cpu_seconds.is_some_and(|s| s >= 0.0), "{p:?}");
        // Other tests open and close files meanwhile: only the bounds are sure.
        let open = p.open_fds.expect("open fds");
        assert!(open >= 1, "{p:?}");
        assert!(p.max_fds.is_some_and(|max| max >= open), "{p:?}");
    }
}
