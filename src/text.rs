//! Small text pieces written on the hot path without allocating: decimal numbers,
//! zero-padded fields, and short fixed-size copies of text kept for log lines; and
//! base64, for the Basic credentials of the endpoint and the proxy.

use std::fmt::Display;
use std::io::Write as _;

/// Appends `value` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends the last `width` decimal digits of `value`, zero-padded (dates, times).
pub fn push_padded(out: &mut Vec<u8>, value: u32, width: usize) {
    let width = width.min(10);
    let mut digits = [b'0'; 10];
    let mut v = value;
    for slot in digits.iter_mut().rev().take(width) {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits[10 - width..]);
}

/// Up to `N` bytes of text, cut at a character boundary, kept without a heap
/// allocation (a request's method and path, a peer's address).
#[derive(Clone, Copy)]
pub struct FixedText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> FixedText<N> {
    pub fn new(text: &str) -> Self {
        let mut len = text.len().min(N);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0u8; N];
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        FixedText { bytes, len }
    }

    /// `value` as `Display` writes it, cut to `N` bytes (whole characters).
    pub fn display(value: impl Display) -> Self {
        let mut bytes = [0u8; N];
        let mut cursor = std::io::Cursor::new(&mut bytes[..]);
        // A value longer than N fails the write part-way; what fits is kept.
        let _ = write!(cursor, "{value}");
        let written = cursor.position() as usize;
        // A character cut by the limit is dropped whole.
        let len = match std::str::from_utf8(&bytes[..written]) {
            Ok(_) => written,
            Err(e) => e.valid_up_to(),
        };
        FixedText { bytes, len }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("-")
    }
}

/// Standard base64 with padding (RFC 4648), for Basic credentials.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn decimals() {
        for n in [0u64, 7, 10, 201, 1_048_576, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn padded_fields() {
        let mut out = Vec::new();
        push_padded(&mut out, 7, 2);
        push_padded(&mut out, 2026, 4);
        push_padded(&mut out, 12345, 3);
        assert_eq!(out, b"072026345");
    }

    #[test]
    fn fixed_text_cuts_at_a_character_boundary() {
        assert_eq!(FixedText::<8>::new("/healthz").as_str(), "/healthz");
        assert_eq!(FixedText::<4>::new("/héllo").as_str(), "/h\u{e9}");
        assert_eq!(FixedText::<2>::new("é€").as_str(), "é");
        let addr: std::net::SocketAddr = "[2001:db8::1]:8080".parse().unwrap();
        assert_eq!(
            FixedText::<64>::display(addr).as_str(),
            "[2001:db8::1]:8080"
        );
        assert_eq!(FixedText::<5>::display(addr).as_str(), "[2001");
        assert_eq!(FixedText::<3>::display("aé€").as_str(), "aé");
    }
}
