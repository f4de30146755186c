//! One log record as one line: logfmt (`ts=… level=… msg="…" key=value …`) or a
//! JSON object with the same keys.

use std::fmt::Write as _;
use std::time::SystemTime;

use log::kv::{Key, Value, VisitSource};

use crate::clock::StampCache;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// Formats one record as a line: `ts=… level=… msg="…" key=value …`, or a JSON object
/// with the same keys.
pub fn format_line(
    out: &mut Vec<u8>,
    stamps: &mut StampCache,
    now: SystemTime,
    record: &log::Record<'_>,
    format: LogFormat,
) {
    let level = match record.level() {
        log::Level::Error => "error",
        log::Level::Warn => "warn",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    };
    let mut message_owned = String::new();
    let message = match record.args().as_str() {
        Some(text) => text,
        None => {
            let _ = write!(message_owned, "{}", record.args());
            &message_owned
        }
    };
    begin_line(out, stamps, now, level, message, format);
    let _ = record.key_values().visit(&mut Pairs {
        out: &mut *out,
        format,
    });
    end_line(out, format);
}

/// The fields of the line written for every request.
pub struct RequestLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration_us: u64,
    /// Present when the request waited for room in the ring.
    pub waited_ms: Option<u64>,
    pub remote: &'a str,
    /// Present on errors: why, in the words of the answer.
    pub reason: Option<&'a str>,
}

/// The request line, written directly: the bytes `format_line` makes of
/// `info!(method, path, status, duration_us, waited_ms, remote, reason; "request")`,
/// without the logger's dispatch and key-value visitor, which took about 800 of the
/// loop's instructions per request.
pub fn format_request_line(
    out: &mut Vec<u8>,
    stamps: &mut StampCache,
    now: SystemTime,
    line: &RequestLine<'_>,
    format: LogFormat,
) {
    begin_line(out, stamps, now, "info", "request", format);
    push_text_pair(out, format, "method", line.method);
    push_text_pair(out, format, "path", line.path);
    push_number_pair(out, format, "status", u64::from(line.status));
    push_number_pair(out, format, "duration_us", line.duration_us);
    if let Some(waited) = line.waited_ms {
        push_number_pair(out, format, "waited_ms", waited);
    }
    push_text_pair(out, format, "remote", line.remote);
    if let Some(reason) = line.reason {
        push_text_pair(out, format, "reason", reason);
    }
    end_line(out, format);
}

/// `ts=… level=… msg=…`, or the JSON object's opening with the same keys.
fn begin_line(
    out: &mut Vec<u8>,
    stamps: &mut StampCache,
    now: SystemTime,
    level: &str,
    message: &str,
    format: LogFormat,
) {
    match format {
        LogFormat::Logfmt => {
            out.extend_from_slice(b"ts=");
            stamps.write(out, now);
            out.extend_from_slice(b" level=");
            out.extend_from_slice(level.as_bytes());
            out.extend_from_slice(b" msg=");
            push_logfmt_string(out, message);
        }
        LogFormat::Json => {
            out.extend_from_slice(b"{\"ts\":\"");
            stamps.write(out, now);
            out.extend_from_slice(b"\",\"level\":\"");
            out.extend_from_slice(level.as_bytes());
            out.extend_from_slice(b"\",\"msg\":");
            push_json_string(out, message);
        }
    }
}

fn end_line(out: &mut Vec<u8>, format: LogFormat) {
    if format == LogFormat::Json {
        out.push(b'}');
    }
    out.push(b'\n');
}

/// ` key=` or `,"key":`.
fn push_key(out: &mut Vec<u8>, format: LogFormat, key: &str) {
    match format {
        LogFormat::Logfmt => {
            out.push(b' ');
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
        }
        LogFormat::Json => {
            out.push(b',');
            push_json_string(out, key);
            out.push(b':');
        }
    }
}

fn push_text_pair(out: &mut Vec<u8>, format: LogFormat, key: &str, text: &str) {
    push_key(out, format, key);
    match format {
        LogFormat::Logfmt => push_logfmt_string(out, text),
        LogFormat::Json => push_json_string(out, text),
    }
}

fn push_number_pair(out: &mut Vec<u8>, format: LogFormat, key: &str, n: u64) {
    push_key(out, format, key);
    crate::text::push_decimal(out, n);
}

struct Pairs<'a> {
    out: &'a mut Vec<u8>,
    format: LogFormat,
}

impl<'kvs> VisitSource<'kvs> for Pairs<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        // An absent optional field (`key = None`) is left out of the line.
        if is_null(&value) {
            return Ok(());
        }
        let out = &mut *self.out;
        push_key(out, self.format, key.as_str());
        if let Some(n) = value.to_u64() {
            crate::text::push_decimal(out, n);
        } else if let Some(n) = value.to_i64() {
            let _ = write!(AsFmt(out), "{n}");
        } else if let Some(x) = value.to_f64() {
            let _ = write!(AsFmt(out), "{x:.3}");
        } else if let Some(b) = value.to_bool() {
            out.extend_from_slice(if b { b"true" } else { b"false" });
        } else if let Some(text) = value.to_borrowed_str() {
            match self.format {
                LogFormat::Logfmt => push_logfmt_string(out, text),
                LogFormat::Json => push_json_string(out, text),
            }
        } else {
            // Display values (addresses, errors) are written in place; only text that
            // needs quoting is moved aside, so the common case allocates nothing.
            let start = out.len();
            let _ = write!(AsFmt(out), "{value}");
            let bare = self.format == LogFormat::Logfmt && is_bare(&out[start..]);
            if !bare {
                let raw = out.split_off(start);
                let text = String::from_utf8_lossy(&raw);
                match self.format {
                    LogFormat::Logfmt => push_logfmt_string(out, &text),
                    LogFormat::Json => push_json_string(out, &text),
                }
            }
        }
        Ok(())
    }
}

/// Lets `write!` format numbers straight into the byte buffer.
/// Whether the value is `None` (log writes an absent `Option` as null).
fn is_null(value: &Value<'_>) -> bool {
    struct Null(bool);
    impl<'v> log::kv::VisitValue<'v> for Null {
        fn visit_any(&mut self, _value: Value<'_>) -> Result<(), log::kv::Error> {
            Ok(())
        }
        fn visit_null(&mut self) -> Result<(), log::kv::Error> {
            self.0 = true;
            Ok(())
        }
    }
    let mut null = Null(false);
    let _ = value.visit(&mut null);
    null.0
}

struct AsFmt<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for AsFmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn is_bare(text: &[u8]) -> bool {
    !text.is_empty()
        && text
            .iter()
            .all(|&b| b > b' ' && b != b'"' && b != b'=' && b != b'\\' && b < 0x7f)
}

/// A bare word when it is safe to leave unquoted, else a quoted, escaped string.
fn push_logfmt_string(out: &mut Vec<u8>, text: &str) {
    if is_bare(text.as_bytes()) {
        out.extend_from_slice(text.as_bytes());
    } else {
        push_json_string(out, text);
    }
}

fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Keys and most values need no escaping: quote them as they are.
    if is_bare(text.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json's escaping is exact and cannot fail on a Vec.
    let _ = serde_json::to_writer(&mut *out, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn line(format: LogFormat, build: impl FnOnce(&mut dyn FnMut(&log::Record<'_>))) -> String {
        let mut out = Vec::new();
        let now = UNIX_EPOCH + Duration::from_millis(1_785_405_600_123);
        build(&mut |record| format_line(&mut out, &mut StampCache::new(), now, record, format));
        String::from_utf8(out).unwrap()
    }

    /// The request line written directly is the line `info!` writes with the same
    /// fields, in both formats, whatever the fields hold.
    #[test]
    fn the_request_line_is_the_loggers_line_byte_for_byte() {
        use log::kv::ToValue;
        let now = UNIX_EPOCH + Duration::from_millis(1_785_405_600_123);
        let cases = [
            ("POST", "/log", 201, 87, None, "127.0.0.1:50312", None),
            ("GET", "/healthz", 200, 0, Some(12), "[::1]:9", None),
            (
                "POST",
                "/a b=\"c\"",
                400,
                5,
                None,
                "-",
                Some("title: expected a string"),
            ),
            (
                "-",
                "-",
                503,
                4_000_123,
                Some(5000),
                "10.0.0.1:1",
                Some("queue full"),
            ),
            ("PUT", "/\u{e9}\t\u{1}", 405, 1, Some(0), "", Some("")),
        ];
        for (method, path, status, duration_us, waited_ms, remote, reason) in cases {
            for format in [LogFormat::Logfmt, LogFormat::Json] {
                let kvs: [(&str, Value<'_>); 7] = [
                    ("method", Value::from(method)),
                    ("path", Value::from(path)),
                    ("status", Value::from(status)),
                    ("duration_us", Value::from(duration_us)),
                    ("waited_ms", waited_ms.to_value()),
                    ("remote", Value::from(remote)),
                    ("reason", reason.to_value()),
                ];
                let mut by_logger = Vec::new();
                format_line(
                    &mut by_logger,
                    &mut StampCache::new(),
                    now,
                    &log::Record::builder()
                        .level(log::Level::Info)
                        .args(format_args!("request"))
                        .key_values(&kvs)
                        .build(),
                    format,
                );
                let mut direct = Vec::new();
                let request = RequestLine {
                    method,
                    path,
                    status,
                    duration_us,
                    waited_ms,
                    remote,
                    reason,
                };
                format_request_line(&mut direct, &mut StampCache::new(), now, &request, format);
                assert_eq!(
                    String::from_utf8(direct).unwrap(),
                    String::from_utf8(by_logger).unwrap(),
                    "{format:?}"
                );
            }
        }
    }

    #[test]
    fn logfmt_quotes_only_what_needs_it() {
        let kvs: [(&str, Value<'_>); 5] = [
            ("method", Value::from("POST")),
            ("status", Value::from(201u16)),
            ("duration_ms", Value::from(3.25f64)),
            ("error", Value::from("connection refused: \"x\"")),
            ("ok", Value::from(true)),
        ];
        let text = line(LogFormat::Logfmt, |emit| {
            emit(
                &log::Record::builder()
                    .level(log::Level::Info)
                    .args(format_args!("batch sent"))
                    .key_values(&kvs)
                    .build(),
            )
        });
        assert_eq!(
            text,
            "ts=2026-07-30T10:00:00.123Z level=info msg=\"batch sent\" method=POST status=201 duration_ms=3.250 error=\"connection refused: \\\"x\\\"\" ok=true\n"
        );
    }

    #[test]
    fn absent_optional_fields_are_left_out_in_both_formats() {
        use log::kv::ToValue;
        let none: Option<u64> = None;
        let kvs: [(&str, Value<'_>); 3] = [
            ("status", Value::from(201u16)),
            ("waited_ms", none.to_value()),
            ("reason", Some("queue full").to_value()),
        ];
        for (format, want) in [
            (LogFormat::Logfmt, " status=201 reason=\"queue full\"\n"),
            (
                LogFormat::Json,
                ",\"status\":201,\"reason\":\"queue full\"}\n",
            ),
        ] {
            let text = line(format, |emit| {
                emit(
                    &log::Record::builder()
                        .level(log::Level::Info)
                        .args(format_args!("request"))
                        .key_values(&kvs)
                        .build(),
                )
            });
            assert!(text.ends_with(want), "{text}");
            assert!(!text.contains("waited_ms"), "{text}");
        }
    }

    #[test]
    fn display_values_are_written_in_place_and_quoted_when_needed() {
        let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let spaced = "no route to host";
        for (format, want) in [
            (
                LogFormat::Logfmt,
                "remote=127.0.0.1:8080 error=\"no route to host\"\n",
            ),
            (
                LogFormat::Json,
                "\"remote\":\"127.0.0.1:8080\",\"error\":\"no route to host\"}\n",
            ),
        ] {
            let kvs: [(&str, Value<'_>); 2] = [
                ("remote", Value::from_display(&addr)),
                ("error", Value::from_display(&spaced)),
            ];
            let text = line(format, |emit| {
                emit(
                    &log::Record::builder()
                        .level(log::Level::Info)
                        .args(format_args!("x"))
                        .key_values(&kvs)
                        .build(),
                )
            });
            assert!(text.ends_with(want), "{text}");
        }
    }

    #[test]
    fn json_lines_parse_and_carry_the_same_keys() {
        let kvs: [(&str, Value<'_>); 2] = [
            ("path", Value::from("/log")),
            ("status", Value::from(400u16)),
        ];
        let text = line(LogFormat::Json, |emit| {
            emit(
                &log::Record::builder()
                    .level(log::Level::Warn)
                    .args(format_args!("request"))
                    .key_values(&kvs)
                    .build(),
            )
        });
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["ts"], "2026-07-30T10:00:00.123Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["msg"], "request");
        assert_eq!(v["path"], "/log");
        assert_eq!(v["status"], 400);
    }
}
