//! The webhook record: the typed shape of one `POST /log` body.
//!
//! Field rules follow the Go reference so its clients keep working: every field may
//! be absent (or `null`) and takes its zero value, except `user_id`, which must be a
//! non-zero integer. Unknown fields are ignored. Login times must be RFC 3339, as
//! Go's `time.Time` demands. What is accepted is forwarded with every field present,
//! as Go's encoder writes a struct.

use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default, deserialize_with = "null_as_default")]
    pub user_id: i64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub total: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub title: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: Meta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub completed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default, deserialize_with = "null_as_default")]
    pub logins: Vec<Login>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub phone_numbers: PhoneNumbers,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Login {
    #[serde(default, deserialize_with = "null_as_default")]
    pub time: Timestamp,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhoneNumbers {
    #[serde(default, deserialize_with = "null_as_default")]
    pub home: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub mobile: String,
}

/// An RFC 3339 timestamp, kept as the text the client sent once it has been checked.
/// Keeping the text avoids a date type on the hot path and forwards exactly what came in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Timestamp(String);

impl Timestamp {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Timestamp {
    /// Go's zero `time.Time`, which the reference forwards for a missing time.
    fn default() -> Self {
        Timestamp("0001-01-01T00:00:00Z".to_owned())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if crate::clock::is_rfc3339(&text) {
            Ok(Timestamp(text))
        } else {
            Err(serde::de::Error::custom(format_args!(
                "{text:?} is not an RFC 3339 timestamp (e.g. 2020-08-08T01:52:50Z)"
            )))
        }
    }
}

/// Go's decoder leaves a field at its zero value when the JSON says `null`.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Why a body was not accepted; the message is what the client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not JSON at all, or JSON cut short.
    Malformed(String),
    /// JSON, but a field has the wrong type or value.
    Invalid(String),
}

impl Rejection {
    pub fn message(&self) -> &str {
        match self {
            Rejection::Malformed(m) | Rejection::Invalid(m) => m,
        }
    }
}

/// Decodes and validates one record.
///
/// The fast path is a plain `serde_json` decode. Only when it fails is the body decoded
/// again with path tracking, so the error can name the field without slowing success.
pub fn decode(body: &[u8]) -> Result<Record, Rejection> {
    match serde_json::from_slice::<Record>(body) {
        Ok(record) if record.user_id == 0 => Err(Rejection::Invalid(
            "user_id: required, must be a non-zero integer".to_owned(),
        )),
        Ok(record) => Ok(record),
        Err(plain) => Err(explain(body, plain)),
    }
}

fn explain(body: &[u8], plain: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    if matches!(
        plain.classify(),
        Category::Syntax | Category::Eof | Category::Io
    ) {
        return Rejection::Malformed(format!("malformed JSON: {plain}"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, Record>(&mut de) {
        Err(err) => {
            let path = err.path().to_string();
            let inner = strip_position(&err.inner().to_string());
            if path == "." || path.is_empty() {
                Rejection::Invalid(inner)
            } else {
                Rejection::Invalid(format!("{path}: {inner}"))
            }
        }
        // Both decoders see the same bytes; fall back to the plain message if they disagree.
        Ok(_) => Rejection::Invalid(strip_position(&plain.to_string())),
    }
}

/// serde_json appends " at line L column C"; with a field path it only adds noise.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"user_id": 1, "total": 1.65, "title": "delectus aut autem", "meta": {"logins": [{"time": "2020-08-08T01:52:50Z", "ip": "0.0.0.0"}], "phone_numbers": {"home": "555-1212", "mobile": "123-5555"}}, "completed": false}"#;

    #[test]
    fn decodes_the_readme_sample() {
        let r = decode(SAMPLE.as_bytes()).expect("sample decodes");
        assert_eq!(r.user_id, 1);
        assert_eq!(r.total, 1.65);
        assert_eq!(r.title, "delectus aut autem");
        assert_eq!(r.meta.logins.len(), 1);
        assert_eq!(r.meta.logins[0].time.as_str(), "2020-08-08T01:52:50Z");
        assert_eq!(r.meta.logins[0].ip, "0.0.0.0");
        assert_eq!(r.meta.phone_numbers.home, "555-1212");
        assert_eq!(r.meta.phone_numbers.mobile, "123-5555");
        assert!(!r.completed);
    }

    #[test]
    fn forwards_the_sample_unchanged() {
        let r = decode(SAMPLE.as_bytes()).unwrap();
        let again: serde_json::Value = serde_json::to_value(&r).unwrap();
        let original: serde_json::Value = serde_json::from_str(SAMPLE).unwrap();
        assert_eq!(again, original);
    }

    #[test]
    fn numbers_are_forwarded_exactly() {
        // Found by the record fuzz target: serde_json's fast float parser can be off by
        // one unit in the last place; the forwarder must not alter numbers.
        for total in [
            "0.7976931348623157e307",
            "1.65",
            "2.2250738585072014e-308",
            "9007199254740993",
            "0.1",
        ] {
            let body = format!(r#"{{"user_id": 1, "total": {total}}}"#);
            let r = decode(body.as_bytes()).unwrap();
            let again = decode(serde_json::to_string(&r).unwrap().as_bytes()).unwrap();
            assert_eq!(r.total.to_bits(), again.total.to_bits(), "{total}");
            assert_eq!(
                r.total.to_bits(),
                total.parse::<f64>().unwrap().to_bits(),
                "{total}"
            );
        }
    }

    #[test]
    fn absent_and_null_fields_take_go_zero_values() {
        let r =
            decode(br#"{"user_id": 7, "title": null, "meta": {"logins": [{"ip": "1.2.3.4"}]}}"#)
                .unwrap();
        assert_eq!(r.title, "");
        assert_eq!(r.total, 0.0);
        assert_eq!(r.meta.logins[0].time.as_str(), "0001-01-01T00:00:00Z");
        assert_eq!(r.meta.phone_numbers, PhoneNumbers::default());
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""completed":false"#), "{json}");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let r = decode(br#"{"user_id": 3, "extra": {"deep": [1, 2, {"x": null}]}}"#).unwrap();
        assert_eq!(r.user_id, 3);
    }

    #[test]
    fn missing_or_zero_user_id_is_invalid() {
        for body in [
            &br#"{"title": "x"}"#[..],
            br#"{"user_id": 0}"#,
            br#"{"user_id": null}"#,
        ] {
            let err = decode(body).unwrap_err();
            assert!(matches!(err, Rejection::Invalid(_)));
            assert!(
                err.message().starts_with("user_id: required"),
                "{}",
                err.message()
            );
        }
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"user_id": "seven"}"#, r#"user_id: invalid type: string "seven", expected i64"#),
            (br#"{"user_id": 1, "total": "x"}"#, "total: invalid type: string \"x\", expected f64"),
            (br#"{"user_id": 1, "completed": 1}"#, "completed: invalid type: integer `1`, expected a boolean"),
            (br#"{"user_id": 1.5}"#, "user_id: invalid type: floating point `1.5`, expected i64"),
            (
                br#"{"user_id": 1, "meta": {"logins": [{"time": "2020-08-08T01:52:50Z"}, {"time": "yesterday"}]}}"#,
                r#"meta.logins[1].time: "yesterday" is not an RFC 3339 timestamp (e.g. 2020-08-08T01:52:50Z)"#,
            ),
        ];
        for (body, want) in cases {
            let err = decode(body).unwrap_err();
            assert!(matches!(err, Rejection::Invalid(_)), "{err:?}");
            assert_eq!(err.message(), want);
        }
    }

    #[test]
    fn broken_json_is_malformed() {
        for body in [
            &b""[..],
            b"{",
            b"{\"user_id\": 1,}",
            b"nope",
            b"[1,2]x",
            b"\xff\xfe",
        ] {
            match decode(body) {
                Err(Rejection::Malformed(m)) => assert!(m.starts_with("malformed JSON"), "{m}"),
                Err(Rejection::Invalid(m)) => assert!(body == b"[1,2]x" || !m.is_empty()),
                Ok(r) => panic!("{body:?} accepted as {r:?}"),
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut body = String::from(r#"{"user_id": 1, "x": "#);
        body.push_str(&"[".repeat(100_000));
        assert!(decode(body.as_bytes()).is_err());
    }
}
