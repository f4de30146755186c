//! Go `time.Duration` strings, parsed and printed the way Go does.
//!
//! Users move here from a Go service whose settings were `time.ParseDuration`
//! strings, so `1h15m30.5s`, `250ms`, `.5s` and a bare `0` must mean exactly what
//! they meant there. The arithmetic follows Go's `ParseDuration` step by step
//! (integer part, fraction scaled into the unit, overflow checks at each step).

use std::fmt;

/// Why a string is not a Go duration. The caller adds which setting it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    Invalid,
    MissingUnit,
    UnknownUnit(String),
    Overflow,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::Invalid => f.write_str("invalid duration"),
            DurationError::MissingUnit => f.write_str("missing unit in duration"),
            DurationError::UnknownUnit(u) => write!(f, "unknown unit {u:?} in duration"),
            DurationError::Overflow => f.write_str("duration out of range"),
        }
    }
}

const NANOSECOND: u64 = 1;
const MICROSECOND: u64 = 1_000 * NANOSECOND;
const MILLISECOND: u64 = 1_000 * MICROSECOND;
const SECOND: u64 = 1_000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => NANOSECOND,
        "us" | "\u{00b5}s" | "\u{03bc}s" => MICROSECOND,
        "ms" => MILLISECOND,
        "s" => SECOND,
        "m" => MINUTE,
        "h" => HOUR,
        _ => return None,
    })
}

/// Parses a Go duration into signed nanoseconds, with Go's range (an `i64`).
pub fn parse_go_duration(text: &str) -> Result<i64, DurationError> {
    let mut s = text.as_bytes();
    let mut negative = false;
    if let Some((&sign, rest)) = s.split_first()
        && (sign == b'-' || sign == b'+')
    {
        negative = sign == b'-';
        s = rest;
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(DurationError::Invalid);
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        // The next character must be [0-9.].
        if !(s[0] == b'.' || s[0].is_ascii_digit()) {
            return Err(DurationError::Invalid);
        }
        let (whole, rest) = leading_int(s)?;
        let had_whole = rest.len() != s.len();
        s = rest;
        let mut fraction: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut had_fraction = false;
        if let Some((&b'.', rest)) = s.split_first() {
            s = rest;
            let (f, sc, rest) = leading_fraction(s);
            had_fraction = rest.len() != s.len();
            fraction = f;
            scale = sc;
            s = rest;
        }
        if !had_whole && !had_fraction {
            return Err(DurationError::Invalid);
        }
        let unit_len = s
            .iter()
            .position(|&c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(DurationError::MissingUnit);
        }
        // The unit may hold the multi-byte `µ`; slice on the byte position we found,
        // which always falls on an ASCII digit or dot, hence a char boundary.
        let unit = std::str::from_utf8(&s[..unit_len]).map_err(|_| DurationError::Invalid)?;
        s = &s[unit_len..];
        let unit_ns =
            unit_nanos(unit).ok_or_else(|| DurationError::UnknownUnit(unit.to_owned()))?;
        if whole > (1u64 << 63) / unit_ns {
            return Err(DurationError::Overflow);
        }
        let mut value = whole * unit_ns;
        if fraction > 0 {
            // Go does this step in float64 too; it keeps results identical.
            value += (fraction as f64 * (unit_ns as f64 / scale)) as u64;
            if value > 1u64 << 63 {
                return Err(DurationError::Overflow);
            }
        }
        total = total.checked_add(value).ok_or(DurationError::Overflow)?;
        if total > 1u64 << 63 {
            return Err(DurationError::Overflow);
        }
    }
    if negative {
        // -(1<<63) is the one value whose magnitude does not fit a positive i64.
        return Ok((total as i64).wrapping_neg());
    }
    if total > i64::MAX as u64 {
        return Err(DurationError::Overflow);
    }
    Ok(total as i64)
}

fn leading_int(s: &[u8]) -> Result<(u64, &[u8]), DurationError> {
    let mut value: u64 = 0;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if value > (1u64 << 63) / 10 {
            return Err(DurationError::Overflow);
        }
        value = value * 10 + u64::from(s[i] - b'0');
        if value > 1u64 << 63 {
            return Err(DurationError::Overflow);
        }
        i += 1;
    }
    Ok((value, &s[i..]))
}

/// Digits after the dot; like Go, digits that would overflow are consumed and ignored.
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let mut value: u64 = 0;
    let mut scale = 1.0;
    let mut overflowed = false;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if !overflowed {
            if value > (i64::MAX as u64) / 10 {
                overflowed = true;
            } else {
                let next = value * 10 + u64::from(s[i] - b'0');
                if next > 1u64 << 63 {
                    overflowed = true;
                } else {
                    value = next;
                    scale *= 10.0;
                }
            }
        }
        i += 1;
    }
    (value, scale, &s[i..])
}

/// Prints nanoseconds as Go's `Duration.String` does (`1h15m30.5s`, `250ms`, `0s`),
/// so logs show settings in the form users wrote them.
pub fn format_go_duration(nanos: i64) -> String {
    let mut out = String::new();
    let magnitude = nanos.unsigned_abs();
    if nanos < 0 {
        out.push('-');
    }
    if magnitude == 0 {
        return "0s".to_owned();
    }
    if magnitude < SECOND {
        let (unit, size) = if magnitude < MICROSECOND {
            ("ns", NANOSECOND)
        } else if magnitude < MILLISECOND {
            ("\u{00b5}s", MICROSECOND)
        } else {
            ("ms", MILLISECOND)
        };
        push_trimmed_fraction(&mut out, magnitude / size, magnitude % size, size);
        out.push_str(unit);
        return out;
    }
    let hours = magnitude / HOUR;
    let minutes = (magnitude % HOUR) / MINUTE;
    let rest = magnitude % MINUTE;
    if hours > 0 {
        out.push_str(&hours.to_string());
        out.push('h');
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&minutes.to_string());
        out.push('m');
    }
    push_trimmed_fraction(&mut out, rest / SECOND, rest % SECOND, SECOND);
    out.push('s');
    out
}

/// Writes `whole.fraction` with the fraction's trailing zeros trimmed (none if zero).
fn push_trimmed_fraction(out: &mut String, whole: u64, fraction: u64, unit: u64) {
    out.push_str(&whole.to_string());
    if fraction == 0 {
        return;
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    out.push('.');
    out.push_str(digits.trim_end_matches('0'));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> i64 {
        parse_go_duration(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn parses_what_go_parses() {
        // Cases taken from the behaviour of Go's time.ParseDuration.
        assert_eq!(ok("0"), 0);
        assert_eq!(ok("-0"), 0);
        assert_eq!(ok("+0"), 0);
        assert_eq!(ok("5s"), 5 * SECOND as i64);
        assert_eq!(ok("30s"), 30 * SECOND as i64);
        assert_eq!(ok("1478s"), 1478 * SECOND as i64);
        assert_eq!(ok("-5s"), -5 * SECOND as i64);
        assert_eq!(ok("+5s"), 5 * SECOND as i64);
        assert_eq!(ok("-0s"), 0);
        assert_eq!(ok("5.0s"), 5 * SECOND as i64);
        assert_eq!(ok("5.6s"), 5_600 * MILLISECOND as i64);
        assert_eq!(ok("5.s"), 5 * SECOND as i64);
        assert_eq!(ok(".5s"), 500 * MILLISECOND as i64);
        assert_eq!(ok("1.0s"), SECOND as i64);
        assert_eq!(ok("1.00s"), SECOND as i64);
        assert_eq!(ok("1.004s"), 1_004 * MILLISECOND as i64);
        assert_eq!(ok("100.00100s"), 100 * SECOND as i64 + MILLISECOND as i64);
        assert_eq!(ok("10ns"), 10);
        assert_eq!(ok("11us"), 11_000);
        assert_eq!(ok("12\u{00b5}s"), 12_000);
        assert_eq!(ok("12\u{03bc}s"), 12_000);
        assert_eq!(ok("13ms"), 13 * MILLISECOND as i64);
        assert_eq!(ok("14s"), 14 * SECOND as i64);
        assert_eq!(ok("15m"), 15 * MINUTE as i64);
        assert_eq!(ok("16h"), 16 * HOUR as i64);
        assert_eq!(ok("3h30m"), (3 * HOUR + 30 * MINUTE) as i64);
        assert_eq!(
            ok("10.5s4m"),
            (4 * MINUTE + 10 * SECOND + 500 * MILLISECOND) as i64
        );
        assert_eq!(
            ok("-2m3.4s"),
            -((2 * MINUTE + 3 * SECOND + 400 * MILLISECOND) as i64)
        );
        assert_eq!(
            ok("1h2m3s4ms5us6ns"),
            (HOUR + 2 * MINUTE + 3 * SECOND + 4 * MILLISECOND + 5 * MICROSECOND + 6) as i64
        );
        assert_eq!(
            ok("39h9m14.425s"),
            (39 * HOUR + 9 * MINUTE + 14 * SECOND + 425 * MILLISECOND) as i64
        );
        assert_eq!(
            ok("1h15m30.5s"),
            (HOUR + 15 * MINUTE + 30 * SECOND + 500 * MILLISECOND) as i64
        );
        assert_eq!(ok("52763797000ns"), 52_763_797_000);
        assert_eq!(ok("0.3333333333333333333h"), 20 * MINUTE as i64);
        assert_eq!(ok("9007199254740993ns"), 9_007_199_254_740_993);
        assert_eq!(ok("9223372036854775807ns"), i64::MAX);
        assert_eq!(ok("9223372036854775.807us"), i64::MAX);
        assert_eq!(ok("-9223372036854775808ns"), i64::MIN);
        assert_eq!(ok("0.100000000000000000000h"), 6 * MINUTE as i64);
        assert_eq!(
            ok("0.830103483285477580700h"),
            49 * MINUTE as i64 + 48 * SECOND as i64 + 372_539_827
        );
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "10 seconds",
            "1.5.5s",
            "5s ",
            " 5s",
            "1e3s",
            "0x10s",
            "--5s",
        ] {
            assert!(
                parse_go_duration(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(parse_go_duration("3"), Err(DurationError::MissingUnit));
        assert_eq!(
            parse_go_duration("1d"),
            Err(DurationError::UnknownUnit("d".into()))
        );
        assert_eq!(
            parse_go_duration("9223372036854775808ns"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_go_duration("9223372036854775.808us"),
            Err(DurationError::Overflow)
        );
        assert_eq!(parse_go_duration("3000000h"), Err(DurationError::Overflow));
        assert_eq!(
            parse_go_duration("9223372036854775807ns1ns"),
            Err(DurationError::Overflow)
        );
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(0), "0s");
        assert_eq!(format_go_duration(1), "1ns");
        assert_eq!(format_go_duration(1_100), "1.1\u{00b5}s");
        assert_eq!(format_go_duration(2_200_000), "2.2ms");
        assert_eq!(format_go_duration(250_000_000), "250ms");
        assert_eq!(format_go_duration(3_300_000_000), "3.3s");
        assert_eq!(format_go_duration(10 * SECOND as i64), "10s");
        assert_eq!(format_go_duration((90 * SECOND) as i64), "1m30s");
        assert_eq!(
            format_go_duration((4 * MINUTE + 5 * SECOND + 1) as i64),
            "4m5.000000001s"
        );
        assert_eq!(
            format_go_duration((5 * HOUR + 6 * MINUTE + 7_001 * MILLISECOND) as i64),
            "5h6m7.001s"
        );
        assert_eq!(format_go_duration((8 * HOUR) as i64), "8h0m0s");
        assert_eq!(format_go_duration(-(SECOND as i64)), "-1s");
        assert_eq!(format_go_duration(i64::MAX), "2562047h47m16.854775807s");
        assert_eq!(format_go_duration(i64::MIN), "-2562047h47m16.854775808s");
    }

    #[test]
    fn formatted_durations_parse_back() {
        for n in [
            0,
            1,
            999,
            1_000,
            1_500,
            250_000_000,
            3_300_000_000,
            5_400_000_000_000,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(ok(&format_go_duration(n)), n, "{n}");
        }
    }
}
