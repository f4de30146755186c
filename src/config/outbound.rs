//! Where batches go and how: the endpoint, extra headers, trusted CAs and the proxy.
//! The worker takes these as they are; everything is checked here, at start.

use std::path::PathBuf;
use std::time::Duration;

use super::Stop;
use super::flags::Flags;
use super::settings::{self, Env, Setting, Source, Spec};

/// The worker's settings.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub endpoint: String,
    pub post_timeout: Duration,
    pub retry_wait: Duration,
    /// Added to every POST (tokens); the values are secrets and never logged.
    pub headers: Vec<(String, String)>,
    /// DER certificates from `--ca-file`, trusted besides the bundled web PKI roots.
    pub extra_roots: Vec<Vec<u8>>,
    pub ca_file: Option<PathBuf>,
    /// Proxy URL for the endpoint, from the usual environment variables.
    pub proxy: Option<String>,
    pub compression: PostCompression,
}

/// How batch bodies are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostCompression {
    None,
    /// `Content-Encoding: gzip`, compressed on the worker thread.
    Gzip,
}

impl PostCompression {
    pub fn name(self) -> &'static str {
        match self {
            PostCompression::None => "none",
            PostCompression::Gzip => "gzip",
        }
    }
}

/// Reads the outbound settings.
pub fn load<F: Fn(&str) -> Option<String>>(
    flags: &Flags,
    env: &Env<F>,
    with_default: &dyn Fn(&Option<String>, Spec) -> Setting,
) -> Result<Outbound, Stop> {
    let endpoint = match env.given(&flags.post_endpoint, settings::POST_ENDPOINT) {
        Some(s) => parse_endpoint(&s)?,
        None => {
            return Err(Stop::Invalid(
                "no post endpoint: set --post-endpoint or WEBHOOK_POST_ENDPOINT (an http:// or https:// URL)".to_owned(),
            ));
        }
    };
    let post_timeout = with_default(&flags.post_timeout, settings::POST_TIMEOUT).duration(false)?;
    let compression = with_default(&flags.post_compression, settings::POST_COMPRESSION);
    let compression = match compression.value.trim() {
        "none" => PostCompression::None,
        "gzip" => PostCompression::Gzip,
        _ => return Err(compression.invalid("is not a compression (gzip or none)")),
    };
    let retry_wait = with_default(&flags.retry_wait, settings::RETRY_WAIT).duration(true)?;
    let headers = if flags.post_header.is_empty() {
        match env.get(settings::POST_HEADER.env) {
            Some(lines) => {
                let setting = Setting {
                    value: lines,
                    source: Source::Env(settings::POST_HEADER.env),
                };
                setting
                    .value
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| parse_header(&setting, l))
                    .collect::<Result<_, _>>()?
            }
            None => Vec::new(),
        }
    } else {
        flags
            .post_header
            .iter()
            .map(|h| {
                let setting = Setting {
                    value: h.clone(),
                    source: Source::Flag(settings::POST_HEADER.flag),
                };
                parse_header(&setting, h)
            })
            .collect::<Result<_, _>>()?
    };
    if compression == PostCompression::Gzip
        && headers
            .iter()
            .any(|(name, _): &(String, String)| name.eq_ignore_ascii_case("content-encoding"))
    {
        return Err(Stop::Invalid(
            "--post-header Content-Encoding with --post-compression gzip: the forwarder sets it itself; drop one of them".to_owned(),
        ));
    }
    // Credentials in the URL are sent the way curl sends them, and leave the URL,
    // which reaches logs and, in absolute form, a proxy.
    let (endpoint, credentials) = split_userinfo(&endpoint);
    let mut headers = headers;
    if let Some(basic) = credentials {
        if headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        {
            return Err(Stop::Invalid(
                "the post endpoint URL carries credentials and --post-header sets Authorization too: drop one of them".to_owned(),
            ));
        }
        headers.push(("Authorization".to_owned(), basic));
    }
    let ca_setting = env.given(&flags.ca_file, settings::CA_FILE);
    let extra_roots = match &ca_setting {
        Some(s) => load_pem_certificates(s)?,
        None => Vec::new(),
    };
    let ca_file = ca_setting.map(|s| PathBuf::from(s.value));
    let proxy = proxy_for(&endpoint, |name| env.get(name));
    if let Some(url) = &proxy
        && ureq::Proxy::new(url).is_err()
    {
        return Err(Stop::Invalid(format!(
            "proxy {:?} (from HTTPS_PROXY, HTTP_PROXY or ALL_PROXY) is not a proxy URL (e.g. http://proxy:3128)",
            redact_url(url)
        )));
    }
    if let Some(url) = &proxy
        && ureq::Proxy::new(url).is_ok_and(|p| {
            !matches!(
                p.protocol(),
                ureq::ProxyProtocol::Http | ureq::ProxyProtocol::Https
            )
        })
    {
        return Err(Stop::Invalid(format!(
            "proxy {:?} (from HTTPS_PROXY, HTTP_PROXY or ALL_PROXY) is a SOCKS proxy, which the forwarder does not speak; use an HTTP proxy, or name the endpoint's host in NO_PROXY",
            redact_url(url)
        )));
    }
    Ok(Outbound {
        endpoint,
        post_timeout,
        retry_wait,
        headers,
        extra_roots,
        ca_file,
        proxy,
        compression,
    })
}

/// `Name: value`, with a valid header name and no line breaks in the value.
pub fn parse_header(setting: &Setting, line: &str) -> Result<(String, String), Stop> {
    // The value may be a secret: errors name the header, never echo the value.
    let source = match setting.source {
        Source::Flag(flag) => format!("--{flag}"),
        Source::Env(env) | Source::Default(env) => env.to_owned(),
    };
    let Some((name, value)) = line.split_once(':') else {
        return Err(Stop::Invalid(format!(
            "{source}: a header is not 'Name: value' (not echoed: it may hold a credential)"
        )));
    };
    let invalid = |why: &str| Stop::Invalid(format!("{source}: header {:?} {why}", name.trim()));
    let name = name.trim();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(invalid("has an invalid name"));
    }
    if is_reserved_header(name) {
        return Err(invalid(
            "is set by the forwarder itself (framing, hop-by-hop or proxy header) and cannot be overridden",
        ));
    }
    let value = value.trim();
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(invalid("has a control character in its value"));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Headers that frame the message or belong to one hop: an operator's value would
/// break every POST (a wrong length), or speak for the connection or the proxy, so
/// they are refused at start rather than fail at run time.
fn is_reserved_header(name: &str) -> bool {
    const RESERVED: &[&str] = &[
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "trailer",
        // 100-continue makes the client wait between head and body, and an endpoint
        // may answer before the body: the batch would count as sent without it.
        "expect",
    ];
    let lower = name.to_ascii_lowercase();
    RESERVED.contains(&lower.as_str()) || lower.starts_with("proxy-")
}

/// Reads every certificate of a PEM file; a file without one is an error.
pub fn load_pem_certificates(setting: &Setting) -> Result<Vec<Vec<u8>>, Stop> {
    let pem = std::fs::read(&setting.value)
        .map_err(|e| setting.invalid(&format!("cannot be read: {e}")))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert.der().to_vec()),
            Ok(_) => {}
            Err(e) => return Err(setting.invalid(&format!("is not valid PEM: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(setting.invalid("holds no PEM certificate"));
    }
    Ok(certs)
}

/// The proxy curl and most tools would use for `endpoint`: `HTTPS_PROXY` for https,
/// `HTTP_PROXY` for http, `ALL_PROXY` for either (lower-case names too), unless
/// `NO_PROXY` names the host (see `no_proxy_matches`).
pub fn proxy_for(endpoint: &str, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let uri: ureq::http::Uri = endpoint.parse().ok()?;
    let host = uri.host()?;
    let names: &[&str] = if uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    let proxy = names.iter().find_map(|name| env(name))?;
    let no_proxy = env("NO_PROXY")
        .or_else(|| env("no_proxy"))
        .unwrap_or_default();
    (!no_proxy_matches(host, &no_proxy)).then_some(proxy)
}

/// Whether a `NO_PROXY` list names `host`, as curl reads it: `*` is every host; a
/// host name matches itself and its subdomains, at label boundaries only (a leading
/// `.` or `*.` is ignored, so `.example.com` and `example.com` both match
/// `api.example.com`, and `ample.com` matches neither); an IP address host is matched
/// only by the same address or a CIDR range holding it (`10.0.0.0/8`, `fd00::/8`), never
/// by a name suffix, so `.0.0.1` does not match `127.0.0.1`. A `:port` on an entry is
/// ignored.
pub fn no_proxy_matches(host: &str, no_proxy: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let host_ip = host.parse::<std::net::IpAddr>().ok();
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| match host_ip {
            _ if entry == "*" => true,
            Some(ip) => ip_entry_matches(ip, entry),
            None => name_entry_matches(&host, entry),
        })
}

/// `entry` is an address (`127.0.0.1`, `::1`, `[::1]:443`) equal to `ip`, or a CIDR
/// range holding it.
fn ip_entry_matches(ip: std::net::IpAddr, entry: &str) -> bool {
    use std::net::IpAddr;
    let (addr, bits) = match entry.split_once('/') {
        Some((addr, bits)) => match bits.parse::<u32>() {
            Ok(bits) => (addr, Some(bits)),
            Err(_) => return false,
        },
        None => (entry, None),
    };
    let addr = if let Some(rest) = addr.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if addr.matches(':').count() == 1 {
        // IPv4 with a port.
        addr.split(':').next().unwrap_or(addr)
    } else {
        addr
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    let prefix_equal = |a: u128, b: u128, width: u32| match bits.unwrap_or(width) {
        0 => true,
        n if n <= width => (a ^ b) >> (width - n) == 0,
        _ => false,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            prefix_equal(u128::from(u32::from(a)), u128::from(u32::from(b)), 32)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => prefix_equal(u128::from(a), u128::from(b), 128),
        _ => false,
    }
}

/// `entry` is `host` itself or one of its parent domains.
fn name_entry_matches(host: &str, entry: &str) -> bool {
    let entry = match entry.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => entry,
    };
    let entry = entry
        .trim_start_matches("*.")
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    !entry.is_empty()
        && (host == entry
            || host
                .strip_suffix(entry.as_str())
                .is_some_and(|rest| rest.ends_with('.')))
}

/// A URL as it may appear in a log line: scheme, host and port, and the first path
/// segment followed by `/…` when there is more. Webhook URLs carry their secret in
/// the userinfo, the query or deeper in the path (`/services/T000/B000/XXXX`), so all
/// of those are left out. Works without a scheme too (`user:pw@proxy:3128` →
/// `proxy:3128`), for proxies as the environment gives them.
pub fn redact_url(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // Userinfo ends at the last `@` before the query: a password may hold a raw `/`
    // (malformed, but it must not leak), and a path rarely holds an `@`.
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = rest[..query].rfind('@').map_or(rest, |at| &rest[at + 1..]);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(authority_end);
    let mut out = format!("{scheme}{host}");
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    let (path, after) = tail.split_at(path_end);
    let mut cut = false;
    if let Some(path) = path.strip_prefix('/') {
        out.push('/');
        match path.split_once('/') {
            Some((first, more)) => {
                out.push_str(first);
                cut = !more.is_empty();
                out.push_str(if cut { "/…" } else { "/" });
            }
            None => out.push_str(path),
        }
    }
    if !after.is_empty() && !cut {
        out.push_str(if after.starts_with('?') {
            "?…"
        } else {
            "#…"
        });
    }
    out
}

/// `text` with every `scheme://…` in it passed through `redact_url`: error messages
/// of the HTTP stack may quote the URL they failed on.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || "\"'<>`".contains(c))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

pub fn parse_endpoint(setting: &Setting) -> Result<String, Stop> {
    let text = setting.value.trim();
    // The URL may hold a secret: errors show it as the log does.
    let shown = Setting {
        value: redact_url(text),
        source: setting.source,
    };
    let uri: ureq::http::Uri = text.parse().map_err(|_| shown.invalid("is not a URL"))?;
    // Userinfo ends at the authority's last @, and the authority at the first /, ?
    // or #. An @ after that (a raw /, ? or # in a password puts it there) makes the
    // log, which hides up to the last @ before the query, and the request name
    // different hosts, and the log show part of the password: refused, and the
    // message shows none of the URL.
    let after_scheme = text.find("://").map_or(0, |at| at + 3);
    let rest = &text[after_scheme..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if rest[authority_end..].contains('@') {
        let source = match setting.source {
            Source::Flag(name) => format!("--{name}"),
            Source::Env(name) | Source::Default(name) => name.to_owned(),
        };
        return Err(Stop::Invalid(format!(
            "{source} has an @ after its host (a raw /, ? or # in a password puts one there): percent-encode them (%40, %2F, %3F, %23)"
        )));
    }
    let scheme_ok = matches!(uri.scheme_str(), Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(shown.invalid("is not an absolute http:// or https:// URL"));
    }
    Ok(text.to_owned())
}

/// The endpoint without its userinfo, and that userinfo as an `Authorization: Basic`
/// value (percent-decoded, as a URL carries it), if there was one.
fn split_userinfo(endpoint: &str) -> (String, Option<String>) {
    let Some(scheme_end) = endpoint.find("://").map(|at| at + 3) else {
        return (endpoint.to_owned(), None);
    };
    let rest = &endpoint[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (endpoint.to_owned(), None);
    };
    if at == 0 {
        // `http://@host/`: no credentials were given; none are made up.
        return (format!("{}{}", &endpoint[..scheme_end], &rest[1..]), None);
    }
    let stripped = format!("{}{}", &endpoint[..scheme_end], &rest[at + 1..]);
    let userinfo = &rest[..at];
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut plain = percent_decode(user);
    plain.push(b':');
    plain.extend(percent_decode(password));
    (
        stripped,
        Some(format!("Basic {}", crate::text::base64(&plain))),
    )
}

/// `%XX` to the byte; anything else, a malformed escape too, as it is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        // Two hex digits exactly: from_str_radix alone would take a sign (`%+4`).
        let hex = bytes
            .get(at + 1..at + 3)
            .filter(|pair| pair.iter().all(u8::is_ascii_hexdigit))
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::base64;

    #[test]
    fn userinfo_leaves_the_url_and_becomes_basic_credentials() {
        let split = |url: &str| split_userinfo(url);
        assert_eq!(
            split("https://user:pw@example.com/in?x=1"),
            (
                "https://example.com/in?x=1".to_owned(),
                Some(format!("Basic {}", base64(b"user:pw")))
            )
        );
        // Percent-escapes are decoded; the last @ ends the userinfo.
        assert_eq!(
            split("http://a%40b:p%3Ass%zz@h:8080/"),
            (
                "http://h:8080/".to_owned(),
                Some(format!("Basic {}", base64(b"a@b:p:ss%zz")))
            )
        );
        assert_eq!(
            split("http://token@h/"),
            (
                "http://h/".to_owned(),
                Some(format!("Basic {}", base64(b"token:")))
            )
        );
        // An @ in the path or query is not userinfo.
        assert_eq!(
            split("http://h/a@b?c=@"),
            ("http://h/a@b?c=@".to_owned(), None)
        );
        assert_eq!(split("http://h"), ("http://h".to_owned(), None));
    }

    #[test]
    fn proxies_follow_the_usual_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let both: &[(&str, &str)] = &[
            ("HTTPS_PROXY", "http://p:3128"),
            ("HTTP_PROXY", "http://q:8080"),
        ];
        assert_eq!(
            proxy_for("https://api.example.com/x", env(both)).as_deref(),
            Some("http://p:3128")
        );
        assert_eq!(
            proxy_for("http://api.example.com/x", env(both)).as_deref(),
            Some("http://q:8080")
        );
        assert_eq!(
            proxy_for("http://h/x", env(&[("all_proxy", "socks5://s:1080")])).as_deref(),
            Some("socks5://s:1080")
        );
        assert_eq!(proxy_for("http://h/x", env(&[])), None);
        for no in [
            "*",
            "api.example.com",
            ".example.com",
            "example.com",
            "other, example.com:443",
            "*.example.com",
        ] {
            let vars: &'static [(&'static str, &'static str)] = Box::leak(
                vec![("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", no)].into_boxed_slice(),
            );
            assert_eq!(
                proxy_for("https://api.example.com/x", env(vars)),
                None,
                "NO_PROXY={no}"
            );
        }
        let vars: &[(&str, &str)] = &[
            ("HTTPS_PROXY", "http://p:3128"),
            ("no_proxy", "ample.com,localhost"),
        ];
        assert_eq!(
            proxy_for("https://api.example.com/x", env(vars)).as_deref(),
            Some("http://p:3128")
        );
        let vars: &[(&str, &str)] = &[
            ("HTTP_PROXY", "http://p:3128"),
            ("NO_PROXY", "127.0.0.1,::1"),
        ];
        assert_eq!(proxy_for("http://127.0.0.1:9/x", env(vars)), None);
        assert_eq!(proxy_for("http://[::1]:9/x", env(vars)), None);
    }

    #[test]
    fn no_proxy_matches_as_curl_does() {
        let cases: &[(&str, &str, bool)] = &[
            ("127.0.0.1", ".0.0.1", false),
            ("127.0.0.1", "0.0.1", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.1:8080", true),
            ("127.0.0.1", "127.0.0.0/8", true),
            ("128.0.0.1", "127.0.0.0/8", false),
            ("10.1.2.3", "10.1.0.0/16", true),
            ("10.2.2.3", "10.1.0.0/16", false),
            ("10.2.2.3", "0.0.0.0/0", true),
            ("10.2.2.3", "10.0.0.0/33", false),
            ("10.2.2.3", "10.0.0.0/x", false),
            ("[::1]", "::1", true),
            ("[::1]", "[::1]:443", true),
            ("[::1]", "::/0", true),
            ("[fd00::5]", "fd00::/8", true),
            ("[fe80::5]", "fd00::/8", false),
            ("[::1]", "127.0.0.1", false),
            ("127.0.0.1", "localhost", false),
            ("api.example.com", "example.com", true),
            ("api.example.com", ".example.com", true),
            ("api.example.com", "*.example.com", true),
            ("api.example.com", "EXAMPLE.com.", true),
            ("api.example.com", "example.com:443", true),
            ("example.com", ".example.com", true),
            ("api.example.com", "ample.com", false),
            ("api.example.com", "api.example.com.evil", false),
            ("api.example.com.", "example.com", true),
            ("anything", "*", true),
            ("anything", "", false),
            ("anything", " , ,", false),
            ("anything", "other, anything", true),
        ];
        for &(host, list, want) in cases {
            assert_eq!(
                no_proxy_matches(host, list),
                want,
                "{host} vs NO_PROXY={list}"
            );
        }
    }

    #[test]
    fn redacted_urls_keep_host_port_and_first_segment() {
        let cases: &[(&str, &str)] = &[
            ("http://u:p@h:1", "http://h:1"),
            ("http://h:1", "http://h:1"),
            ("user:pw@host:3128", "host:3128"),
            ("host:3128", "host:3128"),
            (
                "https://hooks.example.com/services/T000/B000/XXXX",
                "https://hooks.example.com/services/…",
            ),
            (
                "http://user:secret@127.0.0.1:9/services/T000/B000/XXXX?token=abc",
                "http://127.0.0.1:9/services/…",
            ),
            ("http://h/in?token=abc", "http://h/in?…"),
            ("http://h/in/", "http://h/in/"),
            ("http://h/", "http://h/"),
            ("http://h/#frag", "http://h/#…"),
            ("http://u:p/w@h:1/x", "http://h:1/x"),
            ("http://h/x?mail=a@b", "http://h/x?…"),
            ("", ""),
            ("://", "://"),
            ("@", ""),
        ];
        for &(url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
        assert_eq!(
            redact_urls_in("bad uri: http://u:secret@h/a/b?k=v has no host; see \"https://x/y/z\""),
            "bad uri: http://h/a/… has no host; see \"https://x/y/…\""
        );
        assert_eq!(redact_urls_in("no url here"), "no url here");
        assert_eq!(redact_urls_in("é://u:p@h/a/b é"), "é://h/a/… é");
        assert_eq!(redact_urls_in("…://"), "…://");
        assert_eq!(redact_urls_in("://a/b/c ://"), "://a/b/… ://");
    }

    #[test]
    fn redaction_never_panics_on_odd_text() {
        let text = "é://ü:p@[::1]:9/ä/…?x=@#y ://@/?#é@é://";
        let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        for &a in &cuts {
            for &b in cuts.iter().filter(|&&b| b >= a) {
                let piece = &text[a..b];
                let _ = redact_url(piece);
                let _ = redact_urls_in(piece);
                let _ = no_proxy_matches(piece, piece);
            }
        }
    }

    #[test]
    fn framing_and_hop_by_hop_headers_are_refused() {
        let setting = Setting {
            value: String::new(),
            source: Source::Flag("post-header"),
        };
        for name in [
            "Content-Length",
            "transfer-encoding",
            "HOST",
            "Connection",
            "Keep-Alive",
            "TE",
            "Upgrade",
            "Trailer",
            "Expect",
            "Proxy-Authorization",
            "proxy-connection",
        ] {
            let line = format!("{name}: s3cret");
            match parse_header(&setting, &line) {
                Err(Stop::Invalid(message)) => {
                    assert!(message.contains(name), "{message}");
                    assert!(!message.contains("s3cret"), "{message}");
                }
                other => panic!("{name} accepted: {other:?}"),
            }
        }
        for name in ["Content-Type", "Authorization", "X-Proxyish", "Tenant"] {
            assert!(
                parse_header(&setting, &format!("{name}: v")).is_ok(),
                "{name}"
            );
        }
    }
}
