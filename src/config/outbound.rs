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
            without_credentials(url)
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
    let value = value.trim();
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(invalid("has a control character in its value"));
    }
    Ok((name.to_owned(), value.to_owned()))
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
/// `NO_PROXY` names the host (`*`, a host, or a domain suffix like `.internal`).
pub fn proxy_for(endpoint: &str, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let uri: ureq::http::Uri = endpoint.parse().ok()?;
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
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
    let bypass = no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            let entry = entry
                .rsplit_once(':')
                .filter(|(h, _)| !h.contains(':') || h.ends_with(']'))
                .map_or(entry, |(h, _)| h);
            let entry = entry
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .trim_matches(['[', ']'])
                .to_ascii_lowercase();
            entry == "*" || host == entry || host.ends_with(&format!(".{entry}"))
        });
    (!bypass).then_some(proxy)
}

/// `http://user:secret@proxy:3128` shown as `http://proxy:3128`.
pub fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

pub fn parse_endpoint(setting: &Setting) -> Result<String, Stop> {
    let text = setting.value.trim();
    let uri: ureq::http::Uri = text.parse().map_err(|_| setting.invalid("is not a URL"))?;
    let scheme_ok = matches!(uri.scheme_str(), Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(setting.invalid("is not an absolute http:// or https:// URL"));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn credentials_are_cut_from_proxy_urls() {
        assert_eq!(without_credentials("http://u:p@h:1"), "http://h:1");
        assert_eq!(without_credentials("http://h:1"), "http://h:1");
    }
}
