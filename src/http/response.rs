//! Serializing responses straight into a connection's output buffer.

use crate::text::push_decimal;

/// A response as the application decides it; framing headers are added when written.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    pub status: u16,
    pub content_type: &'static str,
    pub body: &'a [u8],
    /// `Allow` for 405 answers.
    pub allow: Option<&'static str>,
    /// `Retry-After` seconds for 503 answers.
    pub retry_after: Option<u32>,
    /// `WWW-Authenticate` for 401 answers: the scheme the client must use.
    pub www_authenticate: Option<&'static str>,
    /// Close the connection after this response, whatever the client asked for.
    pub close: bool,
}

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";

impl<'a> Response<'a> {
    pub fn text(status: u16, body: &'a [u8]) -> Self {
        Response {
            status,
            content_type: TEXT,
            body,
            allow: None,
            retry_after: None,
            www_authenticate: None,
            close: false,
        }
    }

    pub fn json(status: u16, body: &'a [u8]) -> Self {
        Response {
            status,
            content_type: JSON,
            body,
            allow: None,
            retry_after: None,
            www_authenticate: None,
            close: false,
        }
    }
}

/// Every status this server answers with, and its reason phrase: the one list the
/// status line and the metrics both use.
pub const STATUSES: [(u16, &str); 18] = [
    (100, "Continue"),
    (200, "OK"),
    (201, "Created"),
    (204, "No Content"),
    (400, "Bad Request"),
    (401, "Unauthorized"),
    (404, "Not Found"),
    (405, "Method Not Allowed"),
    (408, "Request Timeout"),
    (413, "Content Too Large"),
    (415, "Unsupported Media Type"),
    (417, "Expectation Failed"),
    (429, "Too Many Requests"),
    (431, "Request Header Fields Too Large"),
    (500, "Internal Server Error"),
    (501, "Not Implemented"),
    (503, "Service Unavailable"),
    (505, "HTTP Version Not Supported"),
];

/// Where `status` stands in `STATUSES`.
pub fn status_index(status: u16) -> Option<usize> {
    STATUSES.iter().position(|&(code, _)| code == status)
}

pub fn reason(status: u16) -> &'static str {
    status_index(status).map_or("Unknown", |i| STATUSES[i].1)
}

/// How the response tells the client what happens to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// HTTP/1.1 default: nothing to say.
    KeepAlive,
    /// HTTP/1.0 client that asked to keep the connection.
    KeepAliveHttp10,
    Close,
}

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What `write` adds besides the variable texts: the status line, header names and
/// separators, and numbers at their longest.
const FIXED_LEN: usize = 192;

/// Appends `100 Continue`, growing `out` by no more than that (see `write`).
pub fn write_continue(out: &mut Vec<u8>) {
    out.reserve_exact(CONTINUE.len());
    out.extend_from_slice(CONTINUE);
}

/// The most bytes `write` appends for `response`.
pub fn written_len_bound(response: &Response<'_>, head_only: bool, date: &[u8]) -> usize {
    let body = if head_only { 0 } else { response.body.len() };
    FIXED_LEN
        + response.content_type.len()
        + response.allow.map_or(0, str::len)
        + response.www_authenticate.map_or(0, str::len)
        + date.len()
        + body
}

/// Appends the response; `head_only` omits the body but keeps its length (HEAD).
///
/// Room for it is reserved exactly, so the buffer grows to what it must hold and no
/// further: left to itself a `Vec` doubles, and a peer that does not read keeps the
/// doubled buffer.
pub fn write(
    out: &mut Vec<u8>,
    response: &Response<'_>,
    head_only: bool,
    persistence: Persistence,
    date: &[u8],
) {
    out.reserve_exact(written_len_bound(response, head_only, date));
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(response.status));
    out.push(b' ');
    out.extend_from_slice(reason(response.status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(response.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_decimal(out, response.body.len() as u64);
    if let Some(allow) = response.allow {
        out.extend_from_slice(b"\r\nAllow: ");
        out.extend_from_slice(allow.as_bytes());
    }
    if let Some(seconds) = response.retry_after {
        out.extend_from_slice(b"\r\nRetry-After: ");
        push_decimal(out, u64::from(seconds));
    }
    if let Some(challenge) = response.www_authenticate {
        out.extend_from_slice(b"\r\nWWW-Authenticate: ");
        out.extend_from_slice(challenge.as_bytes());
    }
    match persistence {
        Persistence::KeepAlive => {}
        Persistence::KeepAliveHttp10 => out.extend_from_slice(b"\r\nConnection: keep-alive"),
        Persistence::Close => out.extend_from_slice(b"\r\nConnection: close"),
    }
    if !date.is_empty() {
        out.extend_from_slice(b"\r\nDate: ");
        out.extend_from_slice(date);
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(response.body);
    }
}

/// An error answer whose message is a fixed ASCII text needing no JSON escaping.
/// `head_only` omits the body (the request was HEAD) but keeps its length.
pub fn write_static_error(
    out: &mut Vec<u8>,
    status: u16,
    message: &'static str,
    head_only: bool,
    date: &[u8],
) {
    debug_assert!(!message.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
    const OPEN: &[u8] = b"{\"message\":\"";
    const CLOSE: &[u8] = b"\"}";
    // Exactly, as in `write`.
    out.reserve_exact(FIXED_LEN + date.len() + message.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    push_decimal(out, (OPEN.len() + message.len() + CLOSE.len()) as u64);
    out.extend_from_slice(b"\r\nConnection: close");
    if !date.is_empty() {
        out.extend_from_slice(b"\r\nDate: ");
        out.extend_from_slice(date);
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(OPEN);
        out.extend_from_slice(message.as_bytes());
        out.extend_from_slice(CLOSE);
    }
}

/// The most an error body written by `write_json_message` takes. Messages may quote
/// client input; the cap keeps a peer from making an answer (and the socket memory of
/// a peer that never reads it) larger than this, whatever it sends.
pub const MAX_ERROR_BODY: usize = 1024;

/// Writes `{"message":"..."}` with JSON escaping, at most `MAX_ERROR_BODY` bytes: a
/// message that would not fit is cut at a character and ends in `…`.
pub fn write_json_message(out: &mut Vec<u8>, message: &str) {
    const OPEN: &[u8] = b"{\"message\":\"";
    const CLOSE: &[u8] = b"\"}";
    const CUT: &str = "\u{2026}";
    let room = MAX_ERROR_BODY - OPEN.len() - CLOSE.len();
    let mut needed = 0;
    let fits = message.chars().all(|c| {
        needed += escaped_len(c);
        needed <= room
    });
    out.extend_from_slice(OPEN);
    let mut left = if fits { room } else { room - CUT.len() };
    for c in message.chars() {
        let len = escaped_len(c);
        if len > left {
            break;
        }
        left -= len;
        push_escaped(out, c);
    }
    if !fits {
        out.extend_from_slice(CUT.as_bytes());
    }
    out.extend_from_slice(CLOSE);
}

/// Bytes `c` takes in a JSON string, escaped as serde_json does.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\t' | '\n' | '\u{c}' | '\r' => 2,
        '\0'..='\u{1f}' => 6,
        _ => c.len_utf8(),
    }
}

fn push_escaped(out: &mut Vec<u8>, c: char) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match c {
        '"' => b'"',
        '\\' => b'\\',
        '\u{8}' => b'b',
        '\t' => b't',
        '\n' => b'n',
        '\u{c}' => b'f',
        '\r' => b'r',
        '\0'..='\u{1f}' => {
            let b = c as u8;
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
            return;
        }
        _ => {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_complete_response() {
        let mut out = Vec::new();
        let mut r = Response::text(405, b"nope");
        r.allow = Some("GET, HEAD");
        write(
            &mut out,
            &r,
            false,
            Persistence::Close,
            b"Thu, 01 Jan 1970 00:00:00 GMT",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\n\
             Allow: GET, HEAD\r\nConnection: close\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\nnope"
        );
    }

    #[test]
    fn head_keeps_the_length_but_not_the_body() {
        let mut out = Vec::new();
        write(
            &mut out,
            &Response::text(200, b"OK"),
            true,
            Persistence::KeepAliveHttp10,
            b"",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn escapes_json_messages() {
        let mut out = Vec::new();
        write_json_message(&mut out, "a \"quoted\"\nline");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["message"], "a \"quoted\"\nline");
    }

    #[test]
    fn json_messages_escape_as_serde_json_does() {
        for message in [
            "",
            "plain",
            "quote \" backslash \\ slash /",
            "\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f}\u{7f}",
            "\u{e9}\u{300}\u{2028}\u{1f600}",
        ] {
            let mut ours = Vec::new();
            write_json_message(&mut ours, message);
            let mut theirs = b"{\"message\":".to_vec();
            serde_json::to_writer(&mut theirs, message).unwrap();
            theirs.push(b'}');
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(theirs).unwrap()
            );
        }
    }

    #[test]
    fn json_messages_never_pass_the_error_body_cap() {
        // Issue 14: a message quoting 1 MiB of client input made a 4 MB answer.
        for unit in ["\u{300}", "\"", "\u{1}", "a", "\u{1f600}", "ab\\"] {
            let message = unit.repeat(1024 * 1024 / unit.len());
            let mut out = Vec::new();
            write_json_message(&mut out, &message);
            assert!(out.len() <= MAX_ERROR_BODY, "{unit:?}: {} bytes", out.len());
            assert!(out.len() > MAX_ERROR_BODY - 16, "{unit:?}: cut too short");
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let kept = v["message"].as_str().unwrap();
            let kept = kept
                .strip_suffix('\u{2026}')
                .expect("a cut message ends in an ellipsis");
            assert!(message.starts_with(kept));
        }
        // A message that fits exactly is not cut.
        let exact = "x".repeat(MAX_ERROR_BODY - b"{\"message\":\"\"}".len());
        let mut out = Vec::new();
        write_json_message(&mut out, &exact);
        assert_eq!(out.len(), MAX_ERROR_BODY);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["message"], exact.as_str());
    }

    #[test]
    fn the_length_bound_covers_the_longest_answer_and_is_reserved_exactly() {
        let date = b"Thu, 01 Jan 1970 00:00:00 GMT";
        let longest = STATUSES.iter().map(|(_, r)| r.len()).max().unwrap();
        let (status, _) = *STATUSES.iter().find(|(_, r)| r.len() == longest).unwrap();
        let mut r = Response::text(status, b"body");
        r.allow = Some("GET, HEAD");
        r.retry_after = Some(u32::MAX);
        r.www_authenticate = Some("Bearer");
        for persistence in [Persistence::KeepAlive, Persistence::KeepAliveHttp10] {
            let mut out = Vec::new();
            write(&mut out, &r, false, persistence, date);
            let bound = written_len_bound(&r, false, date);
            // Content-Length's 20 digits at most, here 1.
            assert!(out.len() + 19 <= bound, "{} > {bound}", out.len());
            assert!(
                bound - out.len() < 64,
                "a loose bound: {bound} for {}",
                out.len()
            );
            assert_eq!(out.capacity(), bound, "reserved exactly");
        }
        let mut out = Vec::new();
        write_static_error(&mut out, status, "a message", false, date);
        assert!(out.len() + 19 <= FIXED_LEN + date.len() + "a message".len());
        assert_eq!(out.capacity(), FIXED_LEN + date.len() + "a message".len());
    }

    #[test]
    fn static_errors_are_json_with_the_right_length() {
        let mut out = Vec::new();
        write_static_error(&mut out, 431, "request head too large", false, b"");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains("Connection: close"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["message"], "request head too large");
    }
}
