//! A strict reader of our own output, used by the tests and the fuzz targets to check
//! that every response is well-formed HTTP/1.1 with a body matching `Content-Length`.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ParsedResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Splits a byte stream into responses. `head_only` says which of them answer HEAD
/// requests (no body despite `Content-Length`); pass `|_| false` when there are none.
/// Interim `100 Continue` responses are returned too, with an empty body.
pub fn split_responses(
    mut bytes: &[u8],
    head_only: impl Fn(usize) -> bool,
) -> Result<Vec<ParsedResponse>, String> {
    let mut responses: Vec<ParsedResponse> = Vec::new();
    while !bytes.is_empty() {
        let finals = responses.iter().filter(|r| r.status != 100).count();
        match parse_one(bytes, head_only(finals))? {
            Some((response, used)) => {
                responses.push(response);
                bytes = &bytes[used..];
            }
            None => {
                return Err(format!(
                    "truncated response: {:?}",
                    String::from_utf8_lossy(bytes)
                ));
            }
        }
    }
    Ok(responses)
}

/// The first response in `bytes` and its length, `None` if it is not complete yet.
/// Strict: HTTP/1.1, exactly one `Content-Length` on final responses.
pub fn parse_one(bytes: &[u8], head_only: bool) -> Result<Option<(ParsedResponse, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "bad response head ({e}): {:?}",
                String::from_utf8_lossy(bytes)
            ));
        }
    };
    if response.version != Some(1) {
        return Err("response is not HTTP/1.1".into());
    }
    let status = response.code.ok_or("no status")?;
    let headers: Vec<(String, String)> = response
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    if status == 100 {
        return Ok(Some((
            ParsedResponse {
                status,
                headers,
                body: Vec::new(),
            },
            head_len,
        )));
    }
    let lengths: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let [length] = lengths[..] else {
        return Err(format!("{} Content-Length headers", lengths.len()));
    };
    let length: usize = length
        .parse()
        .map_err(|_| "bad Content-Length".to_string())?;
    let body_len = if head_only { 0 } else { length };
    if bytes.len() < head_len + body_len {
        return Ok(None);
    }
    let body = bytes[head_len..head_len + body_len].to_vec();
    Ok(Some((
        ParsedResponse {
            status,
            headers,
            body,
        },
        head_len + body_len,
    )))
}
