//! Gzip (RFC 1952) for batch bodies, and its bounded inverse for the bundled receiver.
//!
//! The worker compresses every batch with one deflate state and one output buffer,
//! both kept from batch to batch, so once the buffer has grown to the largest batch
//! compressing allocates nothing. The gzip framing (a 10-byte header, then CRC-32 and
//! length) is written here around raw deflate, which lets the state be reset rather
//! than rebuilt: miniz_oxide's state is a few hundred KiB.

use std::io::Read;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

pub struct GzipEncoder {
    deflate: Compress,
    crc: Crc,
    out: Vec<u8>,
}

impl Default for GzipEncoder {
    fn default() -> Self {
        GzipEncoder {
            // zlib's default level: JSON batches shrink several times for a fraction of
            // the CPU the loop spends receiving their records.
            deflate: Compress::new(Compression::default(), false),
            crc: Crc::new(),
            out: Vec::new(),
        }
    }
}

impl GzipEncoder {
    /// `input` as one gzip member; the bytes stay valid until the next call.
    pub fn encode(&mut self, input: &[u8]) -> Result<&[u8], String> {
        self.deflate.reset();
        self.crc.reset();
        self.crc.update(input);
        self.out.clear();
        self.out.extend_from_slice(&HEADER);
        let mut consumed = 0;
        loop {
            // deflate writes only into spare capacity. JSON shrinks well past half, so
            // this is one pass, and no reallocation once the buffer has grown.
            self.out.reserve((input.len() - consumed) / 2 + 4096);
            let (in_before, out_before) = (self.deflate.total_in(), self.deflate.total_out());
            let status = self
                .deflate
                .compress_vec(&input[consumed..], &mut self.out, FlushCompress::Finish)
                .map_err(|e| format!("gzip failed: {e}"))?;
            consumed += (self.deflate.total_in() - in_before) as usize;
            match status {
                Status::StreamEnd => break,
                _ if self.deflate.total_out() == out_before && consumed == input.len() => {
                    return Err("gzip made no progress".to_owned());
                }
                _ => {}
            }
        }
        self.out.extend_from_slice(&self.crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        self.out
            .extend_from_slice(&(input.len() as u32).to_le_bytes());
        Ok(&self.out)
    }

    /// What the last `encode` made.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Frees the output buffer if it has grown past `keep` bytes.
    pub fn release_buffer_above(&mut self, keep: usize) {
        if self.out.capacity() > keep {
            self.out = Vec::new();
        }
    }

    /// Bytes held between batches, for the memory-bound test.
    pub fn buffer_capacity(&self) -> usize {
        self.out.capacity()
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It would inflate past the limit (a decompression bomb, or just too big).
    TooLarge,
    Invalid(String),
}

/// Whether `body` starts like a gzip member.
pub fn is_gzip(body: &[u8]) -> bool {
    body.starts_with(&HEADER[..2])
}

/// Inflates every gzip member of `input` into `out`, holding at most `limit + 1`
/// bytes however far the input would inflate.
pub fn gunzip_bounded(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), InflateError> {
    let mut reader = flate2::read::MultiGzDecoder::new(input).take(limit as u64 + 1);
    reader
        .read_to_end(out)
        .map_err(|e| InflateError::Invalid(e.to_string()))?;
    if out.len() > limit {
        return Err(InflateError::TooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: usize) -> Vec<u8> {
        let record = r#"{"user_id":1,"total":1.65,"title":"delectus aut autem","meta":{"logins":[{"time":"2020-08-08T01:52:50Z","ip":"0.0.0.0"}],"phone_numbers":{"home":"555-1212","mobile":"123-5555"}},"completed":false}"#;
        let mut body = b"[".to_vec();
        for n in 0..records {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(record.as_bytes());
        }
        body.push(b']');
        body
    }

    #[test]
    fn a_compressed_batch_inflates_to_the_same_json_with_any_gzip_reader() {
        let mut encoder = GzipEncoder::default();
        for records in [0, 1, 10, 100, 3] {
            let json = batch(records);
            let gz = encoder.encode(&json).unwrap().to_vec();
            assert!(is_gzip(&gz));
            assert!(
                records < 10 || gz.len() * 5 < json.len(),
                "{} -> {}",
                json.len(),
                gz.len()
            );
            // flate2's own reader checks the CRC and the length trailer.
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut inflated)
                .unwrap();
            assert_eq!(inflated, json);
            let value: serde_json::Value = serde_json::from_slice(&inflated).unwrap();
            assert_eq!(value.as_array().unwrap().len(), records);
        }
    }

    #[test]
    fn the_buffer_is_reused_not_grown() {
        let mut encoder = GzipEncoder::default();
        let json = batch(100);
        encoder.encode(&json).unwrap();
        let capacity = encoder.buffer_capacity();
        for _ in 0..50 {
            encoder.encode(&json).unwrap();
            encoder.encode(&batch(7)).unwrap();
        }
        assert_eq!(encoder.buffer_capacity(), capacity);
    }

    #[test]
    fn inflating_is_bounded() {
        let mut encoder = GzipEncoder::default();
        let zeros = vec![b'0'; 1 << 20];
        let bomb = encoder.encode(&zeros).unwrap().to_vec();
        assert!(bomb.len() < 8 * 1024, "{}", bomb.len());
        let mut out = Vec::new();
        assert_eq!(
            gunzip_bounded(&bomb, 64 * 1024, &mut out),
            Err(InflateError::TooLarge)
        );
        assert!(out.len() <= 64 * 1024 + 1);
        let mut out = Vec::new();
        assert_eq!(gunzip_bounded(&bomb, 1 << 20, &mut out), Ok(()));
        assert_eq!(out, zeros);
        let mut out = Vec::new();
        assert!(matches!(
            gunzip_bounded(b"\x1f\x8bnot gzip", 1024, &mut out),
            Err(InflateError::Invalid(_))
        ));
    }
}
