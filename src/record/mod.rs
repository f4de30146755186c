//! The webhook record: the typed shape of one `POST /log` body.
//!
//! Field rules follow the Go reference so its clients keep working: every field may
//! be absent (or `null`) and takes its zero value, except `user_id`, which must be a
//! non-zero integer. Unknown fields are ignored. The record, `meta`, each login and
//! `phone_numbers` must be JSON objects, as Go's decoder demands of a struct. Login
//! times must be RFC 3339, as Go's `time.Time` demands, with any number of fractional
//! digits. What is accepted is forwarded with every field present, as Go's encoder
//! writes a struct.
//!
//! Writing absent fields out makes a record grow: `{}` in `logins` is forwarded as 39
//! bytes. `decode_within` counts the forwarded size while it decodes and refuses a
//! record that would pass a limit, before the rest of it is built.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
mod encode;
mod text;
pub use encode::{write_batch, write_record};
pub use text::Text;

// Deserialize is written out rather than derived: a derived struct also reads a JSON
// array (`[7]` as user_id 7), which Go refuses.

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Record {
    pub user_id: i64,
    pub total: f64,
    pub title: Text,
    pub meta: Meta,
    pub completed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Meta {
    pub logins: Vec<Login>,
    pub phone_numbers: PhoneNumbers,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Login {
    pub time: Timestamp,
    pub ip: Text,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhoneNumbers {
    pub home: Text,
    pub mobile: Text,
}

/// An RFC 3339 timestamp, kept as the text the client sent once it has been checked.
/// Keeping the text avoids a date type on the hot path and forwards exactly what came in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Timestamp(Text);

impl Timestamp {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Default for Timestamp {
    /// Go's zero `time.Time`, which the reference forwards for a missing time.
    fn default() -> Self {
        Timestamp(Text::new(ZERO_TIME))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TimestampVisitor)
    }
}

struct TimestampVisitor;

impl Visitor<'_> for TimestampVisitor {
    type Value = Timestamp;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an RFC 3339 timestamp")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Timestamp, E> {
        if is_timestamp(text) {
            Ok(Timestamp(Text::new(text)))
        } else {
            Err(de::Error::custom(format_args!(
                "{} is not an RFC 3339 timestamp (e.g. 2020-08-08T01:52:50Z)",
                Quote(text)
            )))
        }
    }
}

/// RFC 3339 as Go reads it: like `clock::is_rfc3339`, but with any number of
/// fractional digits (Go keeps nine and ignores the rest; RFC 3339 sets no limit).
pub fn is_timestamp(text: &str) -> bool {
    const FRACTION: usize = "2020-08-08T01:52:50.".len();
    const KEPT: usize = FRACTION + 9;
    let b = text.as_bytes();
    if b.get(FRACTION - 1) == Some(&b'.') {
        let digits = b[FRACTION..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if digits > 9 {
            // The same text with the fraction cut to nine digits, on the stack.
            let zone = &b[FRACTION + digits..];
            let mut cut = [0u8; KEPT + "+00:00".len()];
            let Some(slot) = cut.get_mut(KEPT..KEPT + zone.len()) else {
                return false;
            };
            slot.copy_from_slice(zone);
            cut[..KEPT].copy_from_slice(&b[..KEPT]);
            return std::str::from_utf8(&cut[..KEPT + zone.len()])
                .is_ok_and(crate::clock::is_rfc3339);
        }
    }
    crate::clock::is_rfc3339(text)
}

/// Go's decoder leaves a field at its zero value when the JSON says `null`.
fn nullable<'de, T, A>(map: &mut A) -> Result<T, A::Error>
where
    T: Deserialize<'de> + Default,
    A: MapAccess<'de>,
{
    Ok(map.next_value::<Option<T>>()?.unwrap_or_default())
}

/// A key's index among an object's fields, `None` for one to ignore. The matcher is a
/// `match` on literals, as serde's derive writes it: this runs for every key.
struct Key<F>(F);

impl<'de, F: FnOnce(&str) -> Option<usize>> DeserializeSeed<'de> for Key<F> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de, F: FnOnce(&str) -> Option<usize>> Visitor<'de> for Key<F> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok((self.0)(key))
    }
}

/// The keys of one object: which to read, and a refusal of repeats as serde's derive did.
struct Keys<F> {
    index_of: F,
    names: &'static [&'static str],
    seen: u8,
}

impl<F: Fn(&str) -> Option<usize> + Copy> Keys<F> {
    fn new(names: &'static [&'static str], index_of: F) -> Keys<F> {
        Keys {
            index_of,
            names,
            seen: 0,
        }
    }

    /// The next known key's index; unknown keys' values are skipped.
    fn next<'de, A: MapAccess<'de>>(&mut self, map: &mut A) -> Result<Option<usize>, A::Error> {
        while let Some(key) = map.next_key_seed(Key(self.index_of))? {
            let Some(index) = key else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if self.seen & (1 << index) != 0 {
                let name = self.names.get(index).copied().unwrap_or("?");
                return Err(de::Error::duplicate_field(name));
            }
            self.seen |= 1 << index;
            return Ok(Some(index));
        }
        Ok(None)
    }

    fn saw(&self, index: usize) -> bool {
        self.seen & (1 << index) != 0
    }
}

const AN_OBJECT: &str = "a JSON object";
// Field names by index, for the matchers below and the messages about repeats.
const RECORD_FIELDS: &[&str] = &["user_id", "total", "title", "meta", "completed"];
const META_FIELDS: &[&str] = &["logins", "phone_numbers"];
const LOGIN_FIELDS: &[&str] = &["time", "ip"];
const PHONE_FIELDS: &[&str] = &["home", "mobile"];

/// What the record being decoded will take when forwarded, counted as its parts are
/// read: a record past `max` stops decoding at once, before the rest is built.
struct Size {
    bytes: usize,
    max: usize,
}

impl Size {
    fn unlimited() -> Size {
        Size {
            bytes: 0,
            max: usize::MAX,
        }
    }

    fn add<E: de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > self.max {
            return Err(E::custom("the record is too large to forward"));
        }
        Ok(())
    }

    /// The last count of a decode: a float. Its exact length needs it formatted, so
    /// its longest form is counted first, and only near the limit the exact one.
    fn add_last_float<E: de::Error>(&mut self, x: f64) -> Result<(), E> {
        if self.bytes.saturating_add(MAX_FLOAT_LEN) <= self.max {
            return Ok(());
        }
        self.add(float_len(x))
    }

    fn is_over(&self) -> bool {
        self.bytes > self.max
    }
}

// What serde_json writes for each object apart from its values.
const RECORD_FRAME: usize = r#"{"user_id":,"total":,"title":,"meta":,"completed":}"#.len();
const META_FRAME: usize = r#"{"logins":[],"phone_numbers":}"#.len();
const LOGIN_FRAME: usize = r#"{"time":,"ip":}"#.len();
const PHONE_FRAME: usize = r#"{"home":,"mobile":}"#.len();
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
const ZERO_PHONE: usize = r#"{"home":"","mobile":""}"#.len();
const ZERO_META: usize = r#"{"logins":[],"phone_numbers":{"home":"","mobile":""}}"#.len();

fn int_len(n: i64) -> usize {
    usize::from(n < 0)
        + n.unsigned_abs()
            .checked_ilog10()
            .map_or(1, |d| d as usize + 1)
}

/// More than serde_json writes for any f64 (`-2.2250738585072014e-308` is 24).
const MAX_FLOAT_LEN: usize = 32;

/// Formats the number as serialization will, on the stack.
fn float_len(x: f64) -> usize {
    let mut buf = [0u8; MAX_FLOAT_LEN];
    let mut rest = &mut buf[..];
    // Were it ever cut short, counting the whole buffer still bounds it.
    let _ = serde_json::to_writer(&mut rest, &x);
    MAX_FLOAT_LEN - rest.len()
}

fn bool_len(b: bool) -> usize {
    if b { "true".len() } else { "false".len() }
}

/// A string's length in JSON, quotes and serde_json's escapes included.
fn str_len(text: &[u8]) -> usize {
    text.len()
        + 2
        + text
            .iter()
            .map(|&b| usize::from(ESCAPE_EXTRA[usize::from(b)]))
            .sum::<usize>()
}

/// Bytes an escape adds to a byte: `\n`-style escapes 1, `\u00XX` 5.
const ESCAPE_EXTRA: [u8; 256] = {
    let mut extra = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        extra[b] = 5;
        b += 1;
    }
    let mut short = [0x08, 0x09, 0x0a, 0x0c, 0x0d, b'"', b'\\'].as_slice();
    while let [first, rest @ ..] = short {
        extra[*first as usize] = 1;
        short = rest;
    }
    extra
};

impl<'de> Deserialize<'de> for Record {
    /// With no limit on the forwarded size; `decode_within` sets one.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RecordVisitor {
            size: &mut Size::unlimited(),
        }
        .deserialize(deserializer)
    }
}

struct RecordVisitor<'a> {
    size: &'a mut Size,
}

impl<'de> DeserializeSeed<'de> for RecordVisitor<'_> {
    type Value = Record;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Record, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordVisitor<'_> {
    type Value = Record;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(AN_OBJECT)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
        let mut keys = Keys::new(RECORD_FIELDS, |key| match key {
            "user_id" => Some(0),
            "total" => Some(1),
            "title" => Some(2),
            "meta" => Some(3),
            "completed" => Some(4),
            _ => None,
        });
        let mut record = Record::default();
        while let Some(index) = keys.next(&mut map)? {
            match index {
                0 => record.user_id = nullable(&mut map)?,
                1 => record.total = nullable(&mut map)?,
                2 => record.title = nullable(&mut map)?,
                3 => record.meta = map.next_value_seed(MetaVisitor { size: self.size })?,
                _ => record.completed = nullable(&mut map)?,
            }
        }
        let meta = if keys.saw(3) { 0 } else { ZERO_META };
        self.size.add(
            RECORD_FRAME
                + int_len(record.user_id)
                + str_len(record.title.as_bytes())
                + meta
                + bool_len(record.completed),
        )?;
        self.size.add_last_float(record.total)?;
        Ok(record)
    }
}

/// `meta`: an object, or `null` for the zero value.
struct MetaVisitor<'a> {
    size: &'a mut Size,
}

impl<'de> DeserializeSeed<'de> for MetaVisitor<'_> {
    type Value = Meta;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Meta, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for MetaVisitor<'_> {
    type Value = Meta;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(AN_OBJECT)
    }
    fn visit_none<E: de::Error>(self) -> Result<Meta, E> {
        self.size.add(ZERO_META)?;
        Ok(Meta::default())
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Meta, D::Error> {
        deserializer.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Meta, A::Error> {
        let mut keys = Keys::new(META_FIELDS, |key| match key {
            "logins" => Some(0),
            "phone_numbers" => Some(1),
            _ => None,
        });
        let mut meta = Meta::default();
        while let Some(index) = keys.next(&mut map)? {
            match index {
                0 => meta.logins = map.next_value_seed(LoginsVisitor { size: self.size })?,
                _ => {
                    meta.phone_numbers =
                        map.next_value_seed(PhoneNumbersVisitor { size: self.size })?
                }
            }
        }
        let phone_numbers = if keys.saw(1) { 0 } else { ZERO_PHONE };
        self.size.add(META_FRAME + phone_numbers)?;
        Ok(meta)
    }
}

/// `meta.logins`: an array of objects, or `null` for none.
struct LoginsVisitor<'a> {
    size: &'a mut Size,
}

impl<'de> DeserializeSeed<'de> for LoginsVisitor<'_> {
    type Value = Vec<Login>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Login>, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for LoginsVisitor<'_> {
    type Value = Vec<Login>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of objects")
    }
    fn visit_none<E: de::Error>(self) -> Result<Vec<Login>, E> {
        Ok(Vec::new())
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Login>, D::Error> {
        deserializer.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Login>, A::Error> {
        let mut logins = Vec::new();
        // Each login is counted as it is read: `[{},{},…]` stops at the limit.
        while let Some(login) = seq.next_element_seed(LoginVisitor { size: self.size })? {
            if !logins.is_empty() {
                self.size.add(",".len())?;
            }
            logins.push(login);
        }
        Ok(logins)
    }
}

/// One login: an object (a `null` in the array is refused, as before).
struct LoginVisitor<'a> {
    size: &'a mut Size,
}

impl<'de> DeserializeSeed<'de> for LoginVisitor<'_> {
    type Value = Login;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Login, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for LoginVisitor<'_> {
    type Value = Login;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(AN_OBJECT)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Login, A::Error> {
        let mut keys = Keys::new(LOGIN_FIELDS, |key| match key {
            "time" => Some(0),
            "ip" => Some(1),
            _ => None,
        });
        let mut login = Login::default();
        while let Some(index) = keys.next(&mut map)? {
            match index {
                0 => login.time = nullable(&mut map)?,
                _ => login.ip = nullable(&mut map)?,
            }
        }
        self.size
            .add(LOGIN_FRAME + str_len(login.time.as_bytes()) + str_len(login.ip.as_bytes()))?;
        Ok(login)
    }
}

/// `meta.phone_numbers`: an object, or `null` for the zero value.
struct PhoneNumbersVisitor<'a> {
    size: &'a mut Size,
}

impl<'de> DeserializeSeed<'de> for PhoneNumbersVisitor<'_> {
    type Value = PhoneNumbers;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<PhoneNumbers, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for PhoneNumbersVisitor<'_> {
    type Value = PhoneNumbers;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(AN_OBJECT)
    }
    fn visit_none<E: de::Error>(self) -> Result<PhoneNumbers, E> {
        self.size.add(ZERO_PHONE)?;
        Ok(PhoneNumbers::default())
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<PhoneNumbers, D::Error> {
        deserializer.deserialize_map(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PhoneNumbers, A::Error> {
        let mut keys = Keys::new(PHONE_FIELDS, |key| match key {
            "home" => Some(0),
            "mobile" => Some(1),
            _ => None,
        });
        let mut numbers = PhoneNumbers::default();
        while let Some(index) = keys.next(&mut map)? {
            match index {
                0 => numbers.home = nullable(&mut map)?,
                _ => numbers.mobile = nullable(&mut map)?,
            }
        }
        self.size.add(
            PHONE_FRAME + str_len(numbers.home.as_bytes()) + str_len(numbers.mobile.as_bytes()),
        )?;
        Ok(numbers)
    }
}

/// Why a body was not accepted; the message is what the client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not JSON at all, or JSON cut short.
    Malformed(String),
    /// JSON, but a field has the wrong type or value.
    Invalid(String),
    /// Its forwarded JSON, absent fields written out, would pass the limit (413).
    TooLarge(String),
}

impl Rejection {
    pub fn message(&self) -> &str {
        match self {
            Rejection::Malformed(m) | Rejection::Invalid(m) | Rejection::TooLarge(m) => m,
        }
    }
}

/// Decodes and validates one record, with no limit on its forwarded size: for records
/// read back from the dead-letter file, which were accepted once already.
pub fn decode(body: &[u8]) -> Result<Record, Rejection> {
    decode_within(body, usize::MAX)
}

/// Decodes and validates one record, and refuses it (`TooLarge`) when its forwarded
/// JSON would take more than `max_forwarded` bytes, so a record costs no more memory
/// and wire than the body limit allows whatever defaults it asks for.
///
/// The fast path is a plain `serde_json` decode. Only when it fails is the body decoded
/// again with path tracking, so the error can name the field without slowing success.
pub fn decode_within(body: &[u8], max_forwarded: usize) -> Result<Record, Rejection> {
    let mut size = Size {
        bytes: 0,
        max: max_forwarded,
    };
    // One UTF-8 check of the whole body, so that the parser need not check each of a
    // record's sixteen or so strings again; a body that fails it is decoded from the
    // bytes, for the parser's own error with its position.
    let decoded = match std::str::from_utf8(body) {
        Ok(text) => decode_from(&mut serde_json::Deserializer::from_str(text), &mut size),
        Err(_) => decode_from(&mut serde_json::Deserializer::from_slice(body), &mut size),
    };
    match decoded {
        Ok(record) if record.user_id == 0 => Err(Rejection::Invalid(
            "user_id: required, must be a non-zero integer".to_owned(),
        )),
        Ok(record) => Ok(record),
        Err(_) if size.is_over() => Err(Rejection::TooLarge(format!(
            "record too large: forwarded with every absent field written out, it would \
             take more than {max_forwarded} bytes"
        ))),
        Err(plain) => Err(explain(body, plain)),
    }
}

fn decode_from<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
    size: &mut Size,
) -> Result<Record, serde_json::Error> {
    let record = RecordVisitor { size }.deserialize(&mut *de)?;
    de.end()?;
    Ok(record)
}

fn explain(body: &[u8], plain: serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    if matches!(
        plain.classify(),
        Category::Syntax | Category::Eof | Category::Io
    ) {
        return Rejection::Malformed(bounded(&format!("malformed JSON: {plain}")));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, Record>(&mut de) {
        Err(err) => {
            let path = err.path().to_string();
            let inner = strip_position(&err.inner().to_string());
            if path == "." || path.is_empty() {
                Rejection::Invalid(bounded(&inner))
            } else {
                Rejection::Invalid(bounded(&format!("{path}: {inner}")))
            }
        }
        // Both decoders see the same bytes; fall back to the plain message if they disagree.
        Ok(_) => Rejection::Invalid(bounded(&strip_position(&plain.to_string()))),
    }
}

/// Most bytes of client input a rejection quotes: enough to recognise the value, too
/// little for the answer to grow with the input.
pub const MAX_QUOTE: usize = 64;
/// Longest rejection message. Quotes are cut to `MAX_QUOTE`, so only a message nobody
/// foresaw gets this far, and it is cut too.
pub const MAX_MESSAGE: usize = 512;

/// Displays client text escaped as `{:?}` does, cut to `MAX_QUOTE` bytes (`…` after).
struct Quote<'a>(&'a str);

impl std::fmt::Display for Quote<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0;
        let mut end = text.len().min(MAX_QUOTE);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{:?}", &text[..end])?;
        if end < text.len() {
            f.write_str("\u{2026}")?;
        }
        Ok(())
    }
}

/// A rejection message fit to send: serde quotes a mistyped string whole
/// (`invalid type: string "…", expected i64`), so each such quote is cut to `MAX_QUOTE`
/// bytes of the input, and the message to `MAX_MESSAGE`.
fn bounded(message: &str) -> String {
    let mut out = shorten_quotes(message);
    if out.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - '\u{2026}'.len_utf8();
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('\u{2026}');
    }
    out
}

/// Cuts the `{:?}`-escaped text after each `string "` to the tokens that stand for
/// `MAX_QUOTE` bytes of input, ending the kept part with `…` when something was cut.
fn shorten_quotes(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE));
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        let start = at + MARK.len();
        out.push_str(&rest[..start]);
        let quoted = &rest[start..];
        let mut chars = quoted.char_indices().peekable();
        let (mut input, mut kept, mut cut) = (0, 0, false);
        let end = loop {
            let Some((i, c)) = chars.next() else {
                break quoted.len();
            };
            let input_len = match c {
                '"' => break i,
                '\\' => match chars.next() {
                    // `\u{hex}` stands for one character of the input.
                    Some((_, 'u')) => {
                        let mut value = 0u32;
                        for (_, h) in chars.by_ref() {
                            if h == '}' {
                                break;
                            }
                            value = value.saturating_mul(16) | h.to_digit(16).unwrap_or(0);
                        }
                        char::from_u32(value).map_or(1, char::len_utf8)
                    }
                    _ => 1,
                },
                c => c.len_utf8(),
            };
            let token_end = chars.peek().map_or(quoted.len(), |&(j, _)| j);
            if !cut && input + input_len <= MAX_QUOTE {
                input += input_len;
                kept = token_end;
            } else {
                cut = true;
            }
        };
        out.push_str(&quoted[..kept]);
        if cut {
            out.push('\u{2026}');
        }
        rest = &quoted[end..];
    }
    out.push_str(rest);
    out
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
                Err(Rejection::TooLarge(m)) => panic!("{body:?} refused as too large: {m}"),
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

    /// The error body the service sends for `body`.
    fn error_body(body: &[u8]) -> (String, Vec<u8>) {
        let err = decode(body).expect_err("refused");
        let mut out = Vec::new();
        crate::http::response::write_json_message(&mut out, err.message());
        (err.message().to_owned(), out)
    }

    fn assert_short(body: &[u8]) -> String {
        let (message, out) = error_body(body);
        assert!(
            message.len() <= MAX_MESSAGE,
            "{} byte message",
            message.len()
        );
        assert!(out.len() <= 1024, "{} byte error body", out.len());
        message
    }

    #[test]
    fn a_huge_timestamp_gets_a_short_answer() {
        // Issue 14: 1 MiB of U+0300 made a 4 MB answer, each character escaped whole.
        let time = "\u{300}".repeat(512 * 1024);
        let body = format!(r#"{{"user_id": 1, "meta": {{"logins": [{{"time": "{time}"}}]}}}}"#);
        let message = assert_short(body.as_bytes());
        let quoted = format!("{:?}", &time[..MAX_QUOTE]);
        assert_eq!(
            message,
            format!(
                "meta.logins[0].time: {quoted}\u{2026} is not an RFC 3339 timestamp (e.g. 2020-08-08T01:52:50Z)"
            )
        );
    }

    #[test]
    fn mistyped_strings_are_quoted_short() {
        for unit in ["x", "\u{300}", "\"", "\\", "\u{1}", "\u{1f600}", "\u{7f}"] {
            let text = unit.repeat(16 * 1024);
            let json = serde_json::to_string(&text).unwrap();
            for field in ["user_id", "total", "completed", "meta"] {
                let body = match field {
                    "user_id" => format!(r#"{{"user_id": {json}}}"#),
                    _ => format!(r#"{{"user_id": 1, "{field}": {json}}}"#),
                };
                let message = assert_short(body.as_bytes());
                let mut cut = 0;
                while cut + unit.len() <= MAX_QUOTE {
                    cut += unit.len();
                }
                let prefix = format!("{field}: invalid type: string {:?}", &text[..cut]);
                let prefix = prefix.strip_suffix('"').unwrap();
                assert!(
                    message.starts_with(prefix) && message.contains("\u{2026}\", expected "),
                    "{message}"
                );
            }
        }
        // Short strings are quoted whole, as before.
        let (message, _) = error_body(br#"{"user_id": "a\"b\u0001"}"#);
        assert_eq!(
            message,
            r#"user_id: invalid type: string "a\"b\u{1}", expected i64"#
        );
    }

    #[test]
    fn long_field_names_and_malformed_json_get_short_answers() {
        let name = "n\u{300}\"".repeat(100_000);
        let name = serde_json::to_string(&name).unwrap();
        for body in [
            format!(r#"{{{name}: 1}}"#),
            format!(r#"{{"user_id": 1, {name}: [1, 2,]}}"#),
            format!(r#"{{"user_id": 1, "meta": {{{name}: 1, "logins": {name}}}}}"#),
            format!(r#"{{"user_id": 1, {name}"#),
            format!(r#"{{"user_id": 1, "title": "{}"#, "x".repeat(1024 * 1024)),
            format!(r#"{{"user_id": 1, "x": {}}}"#, "[".repeat(1024 * 1024)),
            "\u{300}".repeat(512 * 1024),
            format!(r#"{{"user_id": 1}}{}"#, "\u{300}".repeat(512 * 1024)),
        ] {
            assert_short(body.as_bytes());
        }
    }

    #[test]
    fn shortening_survives_any_text_after_the_mark() {
        for message in [
            "string \"",
            "string \"\\",
            "string \"\\u{",
            "string \"\\u{zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz}\"",
            "string \"\u{300}\\",
            "string \"abc\" and string \"def",
        ] {
            assert!(bounded(message).len() <= MAX_MESSAGE, "{message:?}");
        }
        assert_eq!(
            bounded("string \"abc\" and string \"def\""),
            "string \"abc\" and string \"def\""
        );
    }

    #[test]
    fn the_record_and_its_objects_must_be_objects() {
        // Issue 14: serde's derive read a struct from an array, so `[7]` was user_id 7.
        let cases: [(&[u8], &str); 7] = [
            (b"[7]", "invalid type: sequence, expected a JSON object"),
            (
                b"[7, 1.5, \"t\", null, true]",
                "invalid type: sequence, expected a JSON object",
            ),
            (
                br#"{"user_id": 1, "meta": []}"#,
                "meta: invalid type: sequence, expected a JSON object",
            ),
            (
                br#"{"user_id": 1, "meta": [[], null]}"#,
                "meta: invalid type: sequence, expected a JSON object",
            ),
            (
                br#"{"user_id": 1, "meta": {"logins": [{}, ["2020-08-08T01:52:50Z", "1.2.3.4"]]}}"#,
                "meta.logins[1]: invalid type: sequence, expected a JSON object",
            ),
            (
                br#"{"user_id": 1, "meta": {"phone_numbers": ["555", "123"]}}"#,
                "meta.phone_numbers: invalid type: sequence, expected a JSON object",
            ),
            (
                br#"{"user_id": 1, "meta": {"logins": {"time": "2020-08-08T01:52:50Z"}}}"#,
                "meta.logins: invalid type: map, expected an array of objects",
            ),
        ];
        for (body, want) in cases {
            let err = decode(body).unwrap_err();
            assert!(matches!(err, Rejection::Invalid(_)), "{err:?}");
            assert_eq!(err.message(), want);
        }
        // Objects, nulls and unknown fields read as before; repeats are still refused.
        let r = decode(br#"{"user_id": 2, "meta": {"logins": null, "phone_numbers": null, "x": [1]}, "y": [{}]}"#)
            .unwrap();
        assert_eq!((r.user_id, r.meta), (2, Meta::default()));
        let err = decode(br#"{"user_id": 1, "meta": {"logins": [], "logins": []}}"#).unwrap_err();
        assert_eq!(err.message(), "meta: duplicate field `logins`");
    }

    #[test]
    fn timestamps_take_any_number_of_fractional_digits() {
        for time in [
            "2020-08-08T01:52:50.1234567890Z",
            "2020-08-08T01:52:50.12345678901234567890123456789Z",
            "2020-08-08T01:52:50.1234567890+02:00",
            "2020-08-08T01:52:50.0000000000-23:59",
        ] {
            assert!(is_timestamp(time), "{time}");
            let body = format!(r#"{{"user_id": 1, "meta": {{"logins": [{{"time": "{time}"}}]}}}}"#);
            let r = decode(body.as_bytes()).unwrap_or_else(|e| panic!("{time}: {e:?}"));
            // Forwarded as sent, every digit kept.
            assert_eq!(r.meta.logins[0].time.as_str(), time);
        }
        for time in [
            "2020-08-08T01:52:50.1234567890",
            "2020-08-08T01:52:50.1234567890z",
            "2020-08-08T01:52:50.1234567890Z ",
            "2020-08-08T01:52:50.1234567890+02:00:00",
            "2020-08-08T01:52:50.1234567890+24:00",
            "2020-13-08T01:52:50.1234567890Z",
            "2020-08-08T01:52:50.1234567890\u{e9}",
            "\u{e9}020-08-08T01:52:50.1234567890Z",
            "2020-08-08T01:52:50.Z",
        ] {
            assert!(!is_timestamp(time), "{time}");
        }
        // Up to nine digits, exactly the clock's reading.
        for time in [
            "2020-08-08T01:52:50.123456789Z",
            "2020-08-08T01:52:50Z",
            "2020-08-08T01:52:50.1+01:00",
        ] {
            assert!(
                is_timestamp(time) && crate::clock::is_rfc3339(time),
                "{time}"
            );
        }
    }

    /// The bytes serde_json forwards `body`'s record as.
    fn forwarded_len(body: &[u8]) -> usize {
        serde_json::to_vec(&decode(body).unwrap()).unwrap().len()
    }

    #[test]
    fn the_forwarded_size_is_counted_exactly() {
        let bodies: Vec<String> = vec![
            SAMPLE.to_owned(),
            r#"{"user_id": 1}"#.to_owned(),
            r#"{"user_id": -9223372036854775808, "total": -0.0, "completed": true}"#.to_owned(),
            r#"{"user_id": 9223372036854775807, "total": 1e300, "title": null, "meta": null, "completed": null}"#.to_owned(),
            r#"{"user_id": 10, "total": 5, "meta": {"logins": null, "phone_numbers": null}}"#.to_owned(),
            r#"{"user_id": 99, "total": 2.2250738585072014e-308, "meta": {"phone_numbers": {}}}"#.to_owned(),
            r#"{"user_id": 100, "total": 0.1, "meta": {"logins": [{}, {"time": null, "ip": null}, {"ip": "::1"}]}}"#.to_owned(),
            r#"{"user_id": 7, "title": "a\"\\\/\b\f\n\r\t\u0000\u0001\u000b\u001f\u007f \u00e9 é 😀 \ud83d\ude00 \u2028"}"#.to_owned(),
            r#"{"user_id": 7, "meta": {"logins": [{"time": "2020-08-08T01:52:50.1234567890123+02:00", "ip": "\u0009"}], "phone_numbers": {"home": "\"", "mobile": "\\"}}}"#.to_owned(),
            format!(r#"{{"user_id": 8, "unknown": [1, 2], "meta": {{"logins": [{}]}}}}"#, vec!["{}"; 100].join(",")),
        ];
        for body in &bodies {
            let exact = forwarded_len(body.as_bytes());
            assert!(decode_within(body.as_bytes(), exact).is_ok(), "{body}");
            match decode_within(body.as_bytes(), exact - 1) {
                Err(Rejection::TooLarge(m)) => {
                    assert!(m.contains(&(exact - 1).to_string()), "{m}")
                }
                other => panic!("{body}: {other:?} under a limit of {}", exact - 1),
            }
        }
    }

    #[test]
    fn empty_logins_cannot_amplify_a_record() {
        // Issue 14: 1 MiB of `{}` logins was accepted and forwarded about 20 times larger.
        const LIMIT: usize = 1024 * 1024;
        let mut body = String::from(r#"{"user_id":1,"meta":{"logins":["#);
        while body.len() < LIMIT - 16 {
            body.push_str("{},");
        }
        body.push_str("{}]}}");
        assert!(body.len() <= LIMIT);
        match decode_within(body.as_bytes(), LIMIT) {
            Err(Rejection::TooLarge(m)) => assert_eq!(
                m,
                "record too large: forwarded with every absent field written out, it would take more than 1048576 bytes"
            ),
            other => panic!("{:?}", other.map(|r| r.meta.logins.len())),
        }
        // The same logins fit under a limit that allows them, and nothing else does.
        let count = body.matches("{}").count();
        let login = r#"{"time":"0001-01-01T00:00:00Z","ip":""}"#.len();
        let exact = forwarded_len(body.as_bytes());
        assert!(exact > count * login && exact < count * (login + 1) + 200);
        assert_eq!(
            decode_within(body.as_bytes(), exact)
                .unwrap()
                .meta
                .logins
                .len(),
            count
        );
        // A too-large record is a body problem first: it is refused even without a user_id.
        let no_id = body.replacen(r#""user_id":1,"#, "", 1);
        assert!(matches!(
            decode_within(no_id.as_bytes(), LIMIT),
            Err(Rejection::TooLarge(_))
        ));
    }

    #[test]
    fn the_zero_time_is_not_allocated() {
        assert!(matches!(Timestamp::default().0, Text::Inline { .. }));
        let r = decode(br#"{"user_id": 1, "meta": {"logins": [{}, {"time": null}]}}"#).unwrap();
        assert!(
            r.meta
                .logins
                .iter()
                .all(|l| matches!(l.time.0, Text::Inline { .. }))
        );
        assert_eq!(r.meta.logins[0].time.as_str(), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn repeated_fields_are_named() {
        for (body, want) in [
            (
                &br#"{"user_id": 1, "completed": true, "completed": false}"#[..],
                "duplicate field `completed`",
            ),
            (
                br#"{"user_id": 1, "meta": {"logins": [{"ip": "a", "ip": "b"}]}}"#,
                "meta.logins[0]: duplicate field `ip`",
            ),
            (
                br#"{"user_id": 1, "meta": {"phone_numbers": {"mobile": "", "mobile": ""}}}"#,
                "meta.phone_numbers: duplicate field `mobile`",
            ),
        ] {
            assert_eq!(decode(body).unwrap_err().message(), want);
        }
    }

    #[test]
    fn float_lengths_are_serde_jsons() {
        for x in [
            0.0,
            -0.0,
            1.0,
            0.1 + 0.2,
            5e-324,
            -2.2250738585072014e-308,
            f64::MIN,
            f64::MAX,
            f64::EPSILON,
            -123456789.12345679,
        ] {
            let json = serde_json::to_string(&x).unwrap();
            assert_eq!(float_len(x), json.len(), "{json}");
            assert!(json.len() < MAX_FLOAT_LEN, "{json}");
        }
    }
}
