//! Incremental decoder for `Transfer-Encoding: chunked` request bodies.
//!
//! It is fed whatever bytes have arrived, in any split, and copies chunk data into a
//! body buffer. Nothing is buffered inside the decoder itself, so a body can arrive
//! one byte at a time. Extensions and trailers are skipped, with limits on their size.
//! Bare LF line endings are refused: accepting them is how request smuggling starts
//! when a proxy in front reads the framing differently.
//!
//! Chunk-size lines also draw on one budget for the whole body (`ChunkedDecoder::new`),
//! never reset per line, so the bytes a peer can make us parse besides data are bounded
//! per request, and a body costs CPU in proportion to its size.

/// Longest chunk-size line (size, extensions) or trailer section we accept.
pub const MAX_LINE_EXTRA: usize = 4096;
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Not valid chunked framing.
    Malformed,
    /// The decoded body would pass the body limit.
    TooLarge,
    /// The chunk-size lines together (sizes, extensions, line ends) passed their
    /// per-request budget.
    LinesTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// Whitespace after the size, before `;` or CR.
    SizeSpace {
        value: u64,
    },
    /// Skipping a chunk extension up to CR.
    Extension {
        value: u64,
    },
    /// CR seen after a size line; LF must follow.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

#[derive(Debug, Clone, Copy)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes spent on the current size line's extras or on trailers, for the limits.
    extra: usize,
    /// What is left of the budget for all chunk-size lines of this body.
    line_budget: usize,
}

impl Default for ChunkedDecoder {
    /// No budget across lines: only the per-line and trailer limits apply.
    fn default() -> Self {
        ChunkedDecoder::new(usize::MAX)
    }
}

impl ChunkedDecoder {
    /// A decoder whose chunk-size lines may take `line_budget` bytes in all, every byte
    /// of every line counted (size, whitespace, extensions, CR, LF).
    pub fn new(line_budget: usize) -> Self {
        ChunkedDecoder {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            extra: 0,
            line_budget,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending data to `body`, which must stay within `max_body`.
    /// Returns how many bytes of `input` were used; once done, the rest is the next request.
    pub fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<usize, ChunkError> {
        let mut pos = 0;
        while pos < input.len() && self.state != State::Done {
            if let State::Data { remaining } = self.state {
                let take = remaining.min((input.len() - pos) as u64) as usize;
                body.extend_from_slice(&input[pos..pos + take]);
                pos += take;
                let left = remaining - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                continue;
            }
            let byte = input[pos];
            pos += 1;
            self.state = self.step(byte, body.len(), max_body)?;
        }
        Ok(pos)
    }

    fn step(&mut self, byte: u8, body_len: usize, max_body: usize) -> Result<State, ChunkError> {
        use State::*;
        if matches!(
            self.state,
            Size { .. } | SizeSpace { .. } | Extension { .. } | SizeLf { .. }
        ) {
            self.line_budget = self
                .line_budget
                .checked_sub(1)
                .ok_or(ChunkError::LinesTooLong)?;
        }
        let next = match (self.state, byte) {
            (Size { value, digits }, _) if byte.is_ascii_hexdigit() => {
                // 15 hex digits already exceed any body limit; more would overflow.
                if digits >= 15 {
                    return Err(ChunkError::TooLarge);
                }
                let digit = (byte as char).to_digit(16).unwrap_or(0) as u64;
                Size {
                    value: value * 16 + digit,
                    digits: digits + 1,
                }
            }
            (Size { digits: 0, .. }, _) => return Err(ChunkError::Malformed),
            (Size { value, .. } | SizeSpace { value }, b' ' | b'\t') => SizeSpace { value },
            (Size { value, .. } | SizeSpace { value }, b';') => Extension { value },
            (Size { value, .. } | SizeSpace { value } | Extension { value }, b'\r') => {
                SizeLf { value }
            }
            (Extension { .. }, b'\n') => return Err(ChunkError::Malformed),
            (Extension { value }, _) => {
                self.extra += 1;
                if self.extra > MAX_LINE_EXTRA {
                    return Err(ChunkError::Malformed);
                }
                Extension { value }
            }
            (SizeLf { value }, b'\n') => {
                self.extra = 0;
                if value == 0 {
                    TrailerStart
                } else if value > (max_body.saturating_sub(body_len)) as u64 {
                    return Err(ChunkError::TooLarge);
                } else {
                    Data { remaining: value }
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size {
                value: 0,
                digits: 0,
            },
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart | TrailerLine, b'\n') => return Err(ChunkError::Malformed),
            (TrailerLine, b'\r') => TrailerLf,
            (TrailerStart | TrailerLine, _) => {
                self.extra += 1;
                if self.extra > MAX_TRAILER_BYTES {
                    return Err(ChunkError::Malformed);
                }
                TrailerLine
            }
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            _ => return Err(ChunkError::Malformed),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut body = Vec::new();
        let used = d.decode(input, &mut body, max)?;
        assert!(d.is_done(), "not done after {input:?}");
        Ok((body, used))
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let input = b"4;name=value\r\nWiki\r\n5 ; x\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: yes\r\nAnother: 1\r\n\r\nNEXT";
        let (body, used) = decode_all(input, 1024).unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&input[used..], b"NEXT");
    }

    #[test]
    fn same_result_for_every_split() {
        let input = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0;end\r\nT: 1\r\n\r\n";
        let (whole, _) = decode_all(input, 1024).unwrap();
        for split in 0..input.len() {
            let mut d = ChunkedDecoder::default();
            let mut body = Vec::new();
            let a = d.decode(&input[..split], &mut body, 1024).unwrap();
            assert_eq!(a, split);
            let b = d.decode(&input[split..], &mut body, 1024).unwrap();
            assert_eq!(a + b, input.len());
            assert!(d.is_done());
            assert_eq!(body, whole);
        }
    }

    #[test]
    fn byte_at_a_time() {
        let input = b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::default();
        let mut body = Vec::new();
        for b in input.iter() {
            assert_eq!(d.decode(std::slice::from_ref(b), &mut body, 10).unwrap(), 1);
        }
        assert!(d.is_done());
        assert_eq!(body, b"abc");
    }

    #[test]
    fn refuses_bad_framing() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"-1\r\n",
            b"1\nx\r\n0\r\n\r\n",
            b"1\r\nxy\r\n",
            b"1\r\nx\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nTrailer\n",
            b"1;ext\nx",
            b" 1\r\n",
            b"1 2\r\n",
        ] {
            let mut d = ChunkedDecoder::default();
            let mut body = Vec::new();
            assert_eq!(
                d.decode(bad, &mut body, 100),
                Err(ChunkError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn stops_as_soon_as_the_limit_is_crossed() {
        let mut d = ChunkedDecoder::default();
        let mut body = Vec::new();
        assert_eq!(d.decode(b"5\r\nhello\r\n", &mut body, 8), Ok(10));
        // The next chunk's size alone proves the body too large: no data is read.
        assert_eq!(d.decode(b"4\r\n", &mut body, 8), Err(ChunkError::TooLarge));
        assert_eq!(body.len(), 5);
        let mut d = ChunkedDecoder::default();
        assert_eq!(
            d.decode(b"ffffffffffffffffff\r\n", &mut Vec::new(), 8),
            Err(ChunkError::TooLarge)
        );
    }

    #[test]
    fn bounds_extensions_and_trailers() {
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'x', MAX_LINE_EXTRA + 1));
        let mut d = ChunkedDecoder::default();
        assert_eq!(
            d.decode(&long_ext, &mut Vec::new(), 100),
            Err(ChunkError::Malformed)
        );
        let mut long_trailer = b"0\r\n".to_vec();
        for _ in 0..(MAX_TRAILER_BYTES / 8) {
            long_trailer.extend_from_slice(b"T: 123456\r\n");
        }
        let mut d = ChunkedDecoder::default();
        assert_eq!(
            d.decode(&long_trailer, &mut Vec::new(), 100),
            Err(ChunkError::Malformed)
        );
    }

    #[test]
    fn size_lines_share_one_budget_per_body() {
        // Each line is under the per-line limit; together they pass the budget. Before
        // issue 14 the count restarted on every line, so only the body timeout bounded
        // how many such lines one request could make us parse.
        let line = b"1;eeeeeeee\r\nx\r\n"; // a 12-byte size line
        let mut input = Vec::new();
        for _ in 0..3 {
            input.extend_from_slice(line);
        }
        input.extend_from_slice(b"0\r\n\r\n"); // a 3-byte last line
        // Exactly the budget: accepted, whatever the split.
        for split in 0..input.len() {
            let mut d = ChunkedDecoder::new(3 * 12 + 3);
            let mut body = Vec::new();
            let a = d.decode(&input[..split], &mut body, 100).unwrap();
            let b = d.decode(&input[split..], &mut body, 100).unwrap();
            assert_eq!(a + b, input.len());
            assert!(d.is_done());
            assert_eq!(body, b"xxx");
        }
        // One byte less: refused, on the last line's LF.
        let mut d = ChunkedDecoder::new(3 * 12 + 2);
        let mut body = Vec::new();
        assert_eq!(
            d.decode(&input, &mut body, 100),
            Err(ChunkError::LinesTooLong)
        );
        assert_eq!(body, b"xxx");
        // The flood from the issue stops within the budget, not at the body's end.
        let mut d = ChunkedDecoder::new(16 * 1024);
        let mut flood = b"1;".to_vec();
        flood.extend(std::iter::repeat_n(b'e', 4000));
        flood.extend_from_slice(b"\r\nx\r\n");
        let mut body = Vec::new();
        let mut fed = 0;
        let outcome = loop {
            match d.decode(&flood, &mut body, 1024 * 1024) {
                Ok(n) => fed += n,
                Err(e) => break e,
            }
            assert!(fed < 32 * 1024, "no refusal after {fed} bytes");
        };
        assert_eq!(outcome, ChunkError::LinesTooLong);
        // Without a budget only the per-line limit applies, as before.
        let mut d = ChunkedDecoder::default();
        for _ in 0..100 {
            assert_eq!(
                d.decode(&flood, &mut Vec::new(), usize::MAX),
                Ok(flood.len())
            );
        }
    }
}
