//! Calendar arithmetic for the three timestamps the service reads or writes:
//! RFC 3339 in records (validated), RFC 3339 UTC in log lines, and the HTTP `Date`.
//!
//! A date crate would bring far more than these ~100 lines need; the civil-date
//! conversion is Howard Hinnant's well-known days-from-civil algorithm.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::text::push_padded;

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        _ => 28,
    }
}

/// Year, month (1-12), day (1-31) of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Broken-down UTC time of a `SystemTime`, to the millisecond.
struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
    weekday: u32, // 0 = Sunday
}

fn utc(time: SystemTime) -> Utc {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    Utc {
        year,
        month,
        day,
        hour: of_day / 3600,
        minute: of_day % 3600 / 60,
        second: of_day % 60,
        millis: since.subsec_millis(),
        weekday: (days + 4).rem_euclid(7) as u32,
    }
}

/// `2026-11-29T10:00:00.123Z`, the log line timestamp.
pub fn write_rfc3339_millis(out: &mut Vec<u8>, time: SystemTime) {
    let t = utc(time);
    push_padded(out, t.year.clamp(0, 9999) as u32, 4);
    out.push(b'-');
    push_padded(out, t.month, 2);
    out.push(b'-');
    push_padded(out, t.day, 2);
    out.push(b'T');
    push_padded(out, t.hour, 2);
    out.push(b':');
    push_padded(out, t.minute, 2);
    out.push(b':');
    push_padded(out, t.second, 2);
    out.push(b'.');
    push_padded(out, t.millis, 3);
    out.push(b'Z');
}

/// Log timestamps for one second at a time: the calendar arithmetic runs when the
/// second changes, not for every line.
pub struct StampCache {
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    prefix: [u8; 19],
}

impl StampCache {
    pub const fn new() -> StampCache {
        StampCache {
            second: u64::MAX,
            prefix: [0; 19],
        }
    }

    /// Same output as `write_rfc3339_millis`.
    pub fn write(&mut self, out: &mut Vec<u8>, time: SystemTime) {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.second {
            let mut full = Vec::with_capacity(24);
            write_rfc3339_millis(&mut full, time);
            self.prefix.copy_from_slice(&full[..19]);
            self.second = since.as_secs();
        }
        out.extend_from_slice(&self.prefix);
        out.push(b'.');
        push_padded(out, since.subsec_millis(), 3);
        out.push(b'Z');
    }
}

impl Default for StampCache {
    fn default() -> Self {
        StampCache::new()
    }
}

/// The `Date` header value, formatted once per second rather than once per response.
#[derive(Default)]
pub struct HttpDateCache {
    second: u64,
    text: Vec<u8>,
}

impl HttpDateCache {
    pub fn refresh(&mut self) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text.clear();
            write_http_date(&mut self.text, now);
        }
    }

    pub fn value(&self) -> &[u8] {
        &self.text
    }
}

/// `Sun, 29 Nov 2026 10:00:00 GMT`, the IMF-fixdate HTTP requires in `Date`.
pub fn write_http_date(out: &mut Vec<u8>, time: SystemTime) {
    const DAYS: [&[u8]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    const MONTHS: [&[u8]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let t = utc(time);
    out.extend_from_slice(DAYS[t.weekday as usize % 7]);
    out.extend_from_slice(b", ");
    push_padded(out, t.day, 2);
    out.push(b' ');
    out.extend_from_slice(MONTHS[(t.month as usize + 11) % 12]);
    out.push(b' ');
    push_padded(out, t.year.clamp(0, 9999) as u32, 4);
    out.push(b' ');
    push_padded(out, t.hour, 2);
    out.push(b':');
    push_padded(out, t.minute, 2);
    out.push(b':');
    push_padded(out, t.second, 2);
    out.extend_from_slice(b" GMT");
}

/// Checks the RFC 3339 layout Go's `time.Time` accepts in JSON:
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` with real calendar dates.
pub fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let sep = |at: usize, want: u8| b.get(at) == Some(&want);
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        num(0..4),
        num(5..7),
        num(8..10),
        num(11..13),
        num(14..16),
        num(17..19),
    ) else {
        return false;
    };
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return false;
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month) {
        return false;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return false;
    }
    let mut rest = &b[19..];
    if let Some((&b'.', fraction)) = rest.split_first() {
        let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return false;
        }
        rest = &fraction[digits..];
    }
    match rest {
        b"Z" => true,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let _ = sign;
            let offset = [*h1, *h2, *m1, *m2];
            offset.iter().all(u8::is_ascii_digit)
                && (h1 - b'0') * 10 + (h2 - b'0') < 24
                && (m1 - b'0') * 10 + (m2 - b'0') < 60
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn accepts_rfc3339() {
        for ok in [
            "2020-08-08T01:52:50Z",
            "2020-08-08T01:52:50.5Z",
            "2020-08-08T01:52:50.123456789Z",
            "2020-08-08T01:52:50+02:00",
            "2020-08-08T01:52:50-23:59",
            "2024-02-29T00:00:00Z",
            "2000-02-29T23:59:59Z",
            "0001-01-01T00:00:00Z",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for bad in [
            "",
            "yesterday",
            "2020-08-08",
            "2020-08-08 01:52:50Z",
            "2020-08-08t01:52:50Z",
            "2020-08-08T01:52:50",
            "2020-08-08T01:52:50z",
            "2020-13-08T01:52:50Z",
            "2020-00-08T01:52:50Z",
            "2023-02-29T01:52:50Z",
            "1900-02-29T01:52:50Z",
            "2020-04-31T01:52:50Z",
            "2020-08-08T24:00:00Z",
            "2020-08-08T01:60:50Z",
            "2020-08-08T01:52:60Z",
            "2020-08-08T01:52:50.Z",
            "2020-08-08T01:52:50.1234567890Z",
            "2020-08-08T01:52:50+24:00",
            "2020-08-08T01:52:50+02:60",
            "2020-08-08T01:52:50+0200",
            "2020-08-08T01:52:50Z ",
            "+020-08-08T01:52:50Z",
            "2020-08-08T01:52:50\u{00e9}",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn formats_log_and_http_dates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_785_405_600_123); // 2026-07-30T10:00:00.123Z
        let mut out = Vec::new();
        write_rfc3339_millis(&mut out, t);
        assert_eq!(out, b"2026-07-30T10:00:00.123Z");
        out.clear();
        write_http_date(&mut out, t);
        assert_eq!(out, b"Thu, 30 Jul 2026 10:00:00 GMT");
        out.clear();
        write_http_date(&mut out, UNIX_EPOCH);
        assert_eq!(out, b"Thu, 01 Jan 1970 00:00:00 GMT");
        out.clear();
        write_rfc3339_millis(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400)); // leap day
        assert_eq!(out, b"2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_stamp_cache_matches_the_full_formatter() {
        let mut cache = StampCache::new();
        for millis in [
            0u64,
            999,
            1_000,
            1_001,
            59_999,
            86_399_999,
            86_400_000,
            1_785_405_600_123,
            1_785_405_600_999,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(millis);
            let (mut cached, mut full) = (Vec::new(), Vec::new());
            cache.write(&mut cached, t);
            write_rfc3339_millis(&mut full, t);
            assert_eq!(cached, full, "{millis}");
        }
    }
}
