//! A record's text field, kept inline when short.
//!
//! Nearly every string a record holds is short: a title, an IP address, a phone
//! number, a timestamp. As `String`s they were five allocations per record on the
//! loop's thread, and five frees wherever the record ended, most of them past glibc's
//! per-thread cache (it keeps seven chunks of a size, and a batch frees fifty). Up to
//! `INLINE` bytes now live in the field itself; longer text goes to the heap as
//! before.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};

/// As many bytes as fit beside the length in the space of a `String`.
const INLINE: usize = 22;

#[derive(Clone)]
pub enum Text {
    /// `bytes[..len]` is the text, cut from a `&str` at its own length.
    Inline {
        len: u8,
        bytes: [u8; INLINE],
    },
    Heap(Box<str>),
}

impl Text {
    pub fn new(text: &str) -> Text {
        if text.len() > INLINE {
            return Text::Heap(text.into());
        }
        let mut bytes = [0u8; INLINE];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Text::Inline {
            len: text.len() as u8,
            bytes,
        }
    }

    /// The UTF-8 bytes, without the check `as_str` makes: for writing them out.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Text::Heap(text) => text.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Always valid: the bytes came from a `&str`, whole. The check costs a few
            // instructions per byte, which is why writing uses `as_bytes`.
            Text::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            Text::Heap(text) => text,
        }
    }
}

impl Default for Text {
    fn default() -> Text {
        Text::Inline {
            len: 0,
            bytes: [0; INLINE],
        }
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Text {}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text::new(text)
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        if text.len() > INLINE {
            Text::Heap(text.into_boxed_str())
        } else {
            Text::new(&text)
        }
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text, D::Error> {
        deserializer.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = Text;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Text, E> {
        Ok(Text::new(text))
    }
    fn visit_string<E: de::Error>(self, text: String) -> Result<Text, E> {
        Ok(Text::from(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_inline_and_long_text_is_kept_whole() {
        assert_eq!(std::mem::size_of::<Text>(), std::mem::size_of::<String>());
        for text in ["", "a", "0.0.0.0", "2020-08-08T01:52:50Z", "é日本🦀🦀🦀"] {
            let field = Text::new(text);
            assert!(matches!(field, Text::Inline { .. }), "{text}");
            assert_eq!(field.as_str(), text);
            assert_eq!(field.as_bytes(), text.as_bytes());
        }
        let long = "a title longer than twenty-two bytes, é";
        assert!(matches!(Text::new(long), Text::Heap(_)));
        assert_eq!(Text::new(long).as_str(), long);
        assert_eq!(Text::from(long.to_owned()), Text::new(long));
        assert_eq!(Text::from("short".to_owned()), Text::new("short"));
    }

    #[test]
    fn json_strings_of_every_kind_come_through() {
        for json in [r#""plain""#, r#""esc\"aped\n""#, r#""\u00e9\ud83e\udd80""#] {
            let want: String = serde_json::from_str(json).unwrap();
            let from_str: Text = serde_json::from_str(json).unwrap();
            let from_slice: Text = serde_json::from_slice(json.as_bytes()).unwrap();
            assert_eq!(from_str.as_str(), want);
            assert_eq!(from_slice.as_str(), want);
            assert_eq!(
                serde_json::to_string(&from_str).unwrap(),
                serde_json::to_string(&want).unwrap()
            );
        }
        assert!(serde_json::from_str::<Text>("7").is_err());
    }
}
