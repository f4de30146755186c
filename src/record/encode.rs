//! The forwarded form of records: the JSON that batches and dead letters carry.
//!
//! Written by hand rather than through serde's `Serialize`: the keys are fixed, so
//! each object is literal text around its values, and a value with nothing to escape
//! (nearly all of them) is one copy. Through serde every key and value was a call
//! into the serializer that looked at each byte on its own, which made serializing a
//! batch a third of the worker's time per POST. The bytes are serde_json's, exactly:
//! numbers and escapes go through its formatter, and tests compare the two.

use serde_json::ser::{CharEscape, CompactFormatter, Formatter};

use super::{ESCAPE_EXTRA, Login, Meta, PhoneNumbers, Record};

/// A batch as the endpoint receives it: a JSON array of records, oldest first.
pub fn write_batch(records: &[Record], out: &mut Vec<u8>) {
    out.push(b'[');
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_record(record, out);
    }
    out.push(b']');
}

/// One record, as a batch or a dead-letter line holds it.
pub fn write_record(record: &Record, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"user_id":"#);
    write_i64(record.user_id, out);
    out.extend_from_slice(br#","total":"#);
    write_f64(record.total, out);
    out.extend_from_slice(br#","title":"#);
    write_str(record.title.as_bytes(), out);
    out.extend_from_slice(br#","meta":"#);
    write_meta(&record.meta, out);
    out.extend_from_slice(if record.completed {
        br#","completed":true}"#
    } else {
        br#","completed":false}"#
    });
}

fn write_meta(meta: &Meta, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"logins":["#);
    for (index, login) in meta.logins.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_login(login, out);
    }
    out.extend_from_slice(br#"],"phone_numbers":"#);
    write_phone_numbers(&meta.phone_numbers, out);
    out.push(b'}');
}

fn write_login(login: &Login, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"time":"#);
    write_str(login.time.as_bytes(), out);
    out.extend_from_slice(br#","ip":"#);
    write_str(login.ip.as_bytes(), out);
    out.push(b'}');
}

fn write_phone_numbers(phones: &PhoneNumbers, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"home":"#);
    write_str(phones.home.as_bytes(), out);
    out.extend_from_slice(br#","mobile":"#);
    write_str(phones.mobile.as_bytes(), out);
    out.push(b'}');
}

fn write_i64(n: i64, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail.
    let _ = CompactFormatter.write_i64(out, n);
}

/// As serde_json writes an f64: `null` for what JSON cannot say (a decoded record
/// never holds one, but the form must not depend on that).
pub(super) fn write_f64(x: f64, out: &mut Vec<u8>) {
    if x.is_finite() {
        let _ = CompactFormatter.write_f64(out, x);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// A JSON string: runs with nothing to escape are copied whole, and each byte that
/// must be escaped is written by serde_json's formatter.
fn write_str(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    // Nearly every value has nothing to escape: say so in one pass with no early exit
    // (which the compiler turns into vector code), then copy it whole.
    let any_escape = bytes.iter().fold(false, |seen, &b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if !any_escape {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut run_start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        if ESCAPE_EXTRA[usize::from(byte)] == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run_start..at]);
        let _ = CompactFormatter.write_char_escape(out, escape_of(byte));
        run_start = at + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

/// The escape serde_json writes for a byte that needs one.
fn escape_of(byte: u8) -> CharEscape {
    match byte {
        b'"' => CharEscape::Quote,
        b'\\' => CharEscape::ReverseSolidus,
        0x08 => CharEscape::Backspace,
        0x0c => CharEscape::FormFeed,
        b'\n' => CharEscape::LineFeed,
        b'\r' => CharEscape::CarriageReturn,
        b'\t' => CharEscape::Tab,
        other => CharEscape::AsciiControl(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Text, Timestamp};

    fn serde_form(records: &[Record]) -> Vec<u8> {
        serde_json::to_vec(records).unwrap()
    }

    fn ours(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        write_batch(records, &mut out);
        out
    }

    fn sample() -> Record {
        crate::record::decode(
            br#"{"user_id": 1, "total": 1.65, "title": "delectus aut autem", "meta": {"logins": [{"time": "2020-08-08T01:52:50Z", "ip": "0.0.0.0"}], "phone_numbers": {"home": "555-1212", "mobile": "123-5555"}}, "completed": false}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_sample_batch_is_serde_jsons_bytes() {
        let records = vec![sample(), Record::default(), sample()];
        assert_eq!(ours(&records), serde_form(&records));
        assert_eq!(ours(&[]), b"[]");
    }

    #[test]
    fn every_byte_that_needs_an_escape_is_escaped_as_serde_json_does() {
        // Every byte below 0x80 alone, then runs mixing escapes with plain text and
        // with multi-byte characters.
        let mut texts: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        texts.push("a\"b\\c\u{8}d\u{c}e\nf\rg\th\u{1}i\u{1f}j\u{7f}".into());
        texts.push("\"\"\\\\ \u{0}\u{0} é 日本 🦀 \u{2028}".into());
        texts.push(String::new());
        for text in texts {
            let record = Record {
                title: Text::new(&text),
                meta: Meta {
                    logins: vec![Login {
                        time: Timestamp::default(),
                        ip: Text::new(&text),
                    }],
                    phone_numbers: PhoneNumbers {
                        home: Text::new(&text),
                        mobile: Text::new(&text),
                    },
                },
                ..Record::default()
            };
            let records = [record];
            assert_eq!(ours(&records), serde_form(&records), "{text:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_serde_json_writes_them() {
        let floats = [
            0.0,
            -0.0,
            1.65,
            -1.5e-7,
            1e21,
            123456789.125,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::NAN,
            f64::INFINITY,
        ];
        let ints = [0, 1, -1, i64::MAX, i64::MIN, 1_000_000_007];
        for (total, user_id) in floats.iter().zip(ints.iter().cycle()) {
            let records = [Record {
                user_id: *user_id,
                total: *total,
                completed: user_id % 2 == 0,
                ..Record::default()
            }];
            assert_eq!(ours(&records), serde_form(&records), "{total} {user_id}");
        }
    }

    #[test]
    fn several_logins_are_separated_like_the_records() {
        let mut record = sample();
        record.meta.logins = vec![Login::default(); 3];
        let records = [record.clone(), record];
        assert_eq!(ours(&records), serde_form(&records));
    }
}
