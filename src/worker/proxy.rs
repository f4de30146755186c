//! An `http://` endpoint behind an HTTP proxy, as curl does it: absolute-form
//! requests (`POST http://host:port/path HTTP/1.1`) to the proxy, no CONNECT.
//!
//! ureq tunnels every request through an HTTP proxy with CONNECT, which many proxies
//! refuse for ports other than 443, and its request writer always sends the
//! origin-form target. So for this one case the agent is given no proxy at all: the
//! resolver hands out the proxy's address in place of the endpoint's (so the socket
//! goes to the proxy), and this connector's transport rewrites the request line of
//! each request to the absolute form, adding `Proxy-Authorization` when the proxy URL
//! has credentials. Everything else (pooling, timeouts, the response) stays ureq's.

use std::io;
use std::sync::Arc;

use ureq::http::Uri;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// What the rewrite puts into each request.
#[derive(Debug)]
struct Target {
    /// `http://host:port`, without userinfo: prefixed to the origin-form target.
    origin: Vec<u8>,
    /// `Proxy-Authorization: Basic …\r\n`, when the proxy URL has credentials.
    authorization: Option<Vec<u8>>,
}

/// Turns the transports of the connector chain into absolute-form ones.
#[derive(Debug, Clone)]
pub struct AbsoluteForm {
    target: Arc<Target>,
}

impl AbsoluteForm {
    /// For an `http://` endpoint and an `http://` proxy (or one without a scheme);
    /// `None` for every other pair, which ureq handles itself (CONNECT for https).
    /// The second value is the proxy's URI, for the resolver.
    pub fn for_endpoint(endpoint: &str, proxy: &ureq::Proxy) -> Option<(AbsoluteForm, Uri)> {
        let uri: Uri = endpoint.parse().ok()?;
        let plain_http = |s: Option<&str>| s.is_some_and(|s| s.eq_ignore_ascii_case("http"));
        if !plain_http(uri.scheme_str()) || proxy.protocol() != ureq::ProxyProtocol::Http {
            return None;
        }
        let origin = match uri.port_u16() {
            Some(port) => format!("http://{}:{port}", uri.host()?),
            None => format!("http://{}", uri.host()?),
        };
        let authorization = (proxy.username().is_some() || proxy.password().is_some()).then(|| {
            let credentials = format!(
                "{}:{}",
                proxy.username().unwrap_or_default(),
                proxy.password().unwrap_or_default()
            );
            format!(
                "Proxy-Authorization: Basic {}\r\n",
                crate::text::base64(credentials.as_bytes())
            )
            .into_bytes()
        });
        let proxy_uri: Uri = format!("http://{}:{}", proxy.host(), proxy.port())
            .parse()
            .ok()?;
        let target = Arc::new(Target {
            origin: origin.into_bytes(),
            authorization,
        });
        Some((AbsoluteForm { target }, proxy_uri))
    }
}

impl<In: Transport> Connector<In> for AbsoluteForm {
    type Out = Box<dyn Transport>;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        Ok(chained.map(|inner| {
            Box::new(AbsoluteFormTransport {
                inner: Box::new(inner),
                target: Arc::clone(&self.target),
                body_left: 0,
            }) as Box<dyn Transport>
        }))
    }
}

#[derive(Debug)]
struct AbsoluteFormTransport {
    inner: Box<dyn Transport>,
    target: Arc<Target>,
    /// Body bytes of the current request still to pass unchanged; at 0 the next
    /// output is a request head.
    body_left: u64,
}

impl Transport for AbsoluteFormTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        if self.body_left > 0 {
            self.body_left = self.body_left.saturating_sub(amount as u64);
            return self.inner.transmit_output(amount, timeout);
        }
        let output = self.inner.buffers().output();
        let head = output
            .get(..amount)
            .ok_or_else(|| refused("output past the buffer"))?;
        let (rewritten, body_left) = rewrite_head(&self.target, head)?;
        let room = output
            .get_mut(..rewritten.len())
            .ok_or_else(|| refused("request head too large for the buffer"))?;
        room.copy_from_slice(&rewritten);
        self.body_left = body_left;
        self.inner.transmit_output(rewritten.len(), timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

fn refused(why: &str) -> ureq::Error {
    ureq::Error::Io(io::Error::other(format!(
        "cannot write an absolute-form request for the proxy: {why}"
    )))
}

/// The head with its target made absolute and the proxy credentials added, and how
/// many body bytes follow it beyond those already in `head`.
fn rewrite_head(target: &Target, head: &[u8]) -> Result<(Vec<u8>, u64), ureq::Error> {
    let find = |needle: &[u8]| head.windows(needle.len()).position(|w| w == needle);
    let line_end = find(b"\r\n").ok_or_else(|| refused("no request line"))?;
    let head_end = find(b"\r\n\r\n").ok_or_else(|| refused("request head split"))? + 4;
    let space = head[..line_end]
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(|| refused("no request target"))?;
    if head.get(space + 1) != Some(&b'/') {
        return Err(refused("request target not in origin form"));
    }
    let length = head[line_end + 2..head_end]
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let text = std::str::from_utf8(line).ok()?;
            let (name, value) = text.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<u64>().ok())
                .flatten()
        })
        .next()
        .unwrap_or(0);
    let already = (head.len() - head_end) as u64;
    let mut out = Vec::with_capacity(head.len() + target.origin.len() + 64);
    out.extend_from_slice(&head[..=space]);
    out.extend_from_slice(&target.origin);
    out.extend_from_slice(&head[space + 1..line_end + 2]);
    if let Some(auth) = &target.authorization {
        out.extend_from_slice(auth);
    }
    out.extend_from_slice(&head[line_end + 2..]);
    Ok((out, length.saturating_sub(already)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(endpoint: &str, proxy: &str) -> Option<Arc<Target>> {
        let proxy = ureq::Proxy::new(proxy).ok()?;
        AbsoluteForm::for_endpoint(endpoint, &proxy).map(|(c, _)| c.target)
    }

    #[test]
    fn only_http_endpoints_through_http_proxies_use_absolute_form() {
        assert!(target("http://h:9/x", "http://p:3128").is_some());
        assert!(target("http://h:9/x", "p:3128").is_some());
        assert!(target("https://h/x", "http://p:3128").is_none());
        assert!(target("http://h/x", "https://p:3128").is_none());
        let proxy = ureq::Proxy::new("u:p@proxy:3128").unwrap();
        let (_, uri) = AbsoluteForm::for_endpoint("http://h/x", &proxy).unwrap();
        assert_eq!(uri.to_string(), "http://proxy:3128/");
    }

    #[test]
    fn the_request_line_becomes_absolute_and_credentials_are_added() {
        let t = target("http://user:x@h:9/in?q=1", "http://us%40r:pw@p:3128").unwrap();
        let head = b"POST /in?q=1 HTTP/1.1\r\nHost: h:9\r\ncontent-length: 12\r\n\r\n[1,2]";
        let (out, left) = rewrite_head(&t, head).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST http://h:9/in?q=1 HTTP/1.1\r\nProxy-Authorization: Basic dXNAcjpwdw==\r\nHost: h:9\r\ncontent-length: 12\r\n\r\n[1,2]"
        );
        assert_eq!(left, 7);
        let t = target("http://[::1]/x", "http://p").unwrap();
        let (out, left) = rewrite_head(&t, b"POST /x HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(out, b"POST http://[::1]/x HTTP/1.1\r\n\r\n");
        assert_eq!(left, 0);
    }

    #[test]
    fn what_is_not_a_request_head_is_refused_not_rewritten() {
        let t = target("http://h/x", "http://p").unwrap();
        for head in [
            &b"[{\"user_id\":1}]"[..],
            b"POST /x HTTP/1.1\r\nHost: h",
            b"POST http://h/x HTTP/1.1\r\n\r\n",
            b"POST\r\n\r\n",
            b"",
        ] {
            assert!(rewrite_head(&t, head).is_err(), "{head:?}");
        }
    }
}
