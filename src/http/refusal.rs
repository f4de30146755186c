//! What the connection refuses on its own, before or instead of the application:
//! the one place where each fault gets its status and its message.

/// A refusal: the status answered and the message in its JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: &'static str,
}

const fn refusal(status: u16, message: &'static str) -> Refusal {
    Refusal { status, message }
}

impl Refusal {
    pub const MALFORMED_HEAD: Refusal = refusal(400, "malformed request head");
    /// httparse ends a line at a bare LF; a proxy in front may not, and would read a
    /// different set of headers (RFC 9112 2.2 lets us refuse).
    pub const BARE_LF: Refusal =
        refusal(400, "bare LF in the request head, lines must end in CRLF");
    pub const HEAD_TOO_LARGE: Refusal = refusal(431, "request head too large");
    pub const TOO_MANY_HEADERS: Refusal = refusal(431, "too many header fields");
    pub const VERSION: Refusal = refusal(505, "only HTTP/1.0 and HTTP/1.1 are supported");
    pub const BAD_LENGTH: Refusal = refusal(400, "invalid Content-Length");
    pub const REPEATED_LENGTH: Refusal = refusal(400, "repeated Content-Length");
    pub const EMPTY_CODING: Refusal = refusal(400, "empty Transfer-Encoding");
    pub const LENGTH_AND_CODING: Refusal =
        refusal(400, "both Content-Length and Transfer-Encoding");
    pub const CHUNKED_NOT_LAST: Refusal =
        refusal(400, "chunked must be the final transfer coding, once");
    pub const UNKNOWN_CODING: Refusal =
        refusal(501, "only the chunked transfer coding is supported");
    /// RFC 9112 6.1: HTTP/1.0 has no Transfer-Encoding; such framing is faulty.
    pub const CODING_IN_HTTP10: Refusal = refusal(400, "Transfer-Encoding is not HTTP/1.0");
    pub const HOST: Refusal = refusal(400, "exactly one Host header is required");
    pub const EXPECTATION: Refusal = refusal(417, "only Expect: 100-continue is supported");
    pub const BODY_TOO_LARGE: Refusal = refusal(413, "request body too large");
    pub const MALFORMED_CHUNKED: Refusal = refusal(400, "malformed chunked body");
    /// 400, not 431 or 413: these are neither header fields nor content, and RFC 9112
    /// 7.1.1 asks only for a fitting 4xx.
    pub const CHUNK_LINES: Refusal =
        refusal(400, "chunk-size lines and extensions too long for one body");
    pub const TIMEOUT: Refusal = refusal(408, "request not received in time");
    /// A compressed body would otherwise read as malformed JSON, or, if it happened
    /// to be JSON, be taken for what it is not. Nothing is decoded: no body can
    /// expand past the size limit it was checked against.
    pub const CONTENT_CODING: Refusal = refusal(
        415,
        "Content-Encoding is not supported: send the body as plain JSON",
    );

    /// Every refusal, for the tests and the fuzz targets.
    pub const ALL: [Refusal; 19] = [
        Refusal::MALFORMED_HEAD,
        Refusal::BARE_LF,
        Refusal::HEAD_TOO_LARGE,
        Refusal::TOO_MANY_HEADERS,
        Refusal::VERSION,
        Refusal::BAD_LENGTH,
        Refusal::REPEATED_LENGTH,
        Refusal::EMPTY_CODING,
        Refusal::LENGTH_AND_CODING,
        Refusal::CHUNKED_NOT_LAST,
        Refusal::UNKNOWN_CODING,
        Refusal::CODING_IN_HTTP10,
        Refusal::HOST,
        Refusal::EXPECTATION,
        Refusal::BODY_TOO_LARGE,
        Refusal::MALFORMED_CHUNKED,
        Refusal::CHUNK_LINES,
        Refusal::TIMEOUT,
        Refusal::CONTENT_CODING,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::response::status_index;

    #[test]
    fn every_refusal_has_a_known_status_and_a_message_that_needs_no_escaping() {
        for r in Refusal::ALL {
            assert!(status_index(r.status).is_some(), "{r:?}");
            assert!((400..600).contains(&r.status), "{r:?}");
            assert!(
                !r.message.is_empty()
                    && !r
                        .message
                        .bytes()
                        .any(|b| b == b'"' || b == b'\\' || b < 0x20),
                "{r:?}"
            );
        }
    }
}
