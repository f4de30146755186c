//! Settings from flags and `WEBHOOK_*` environment variables; flags win.
//!
//! Every value is checked here, at start, and a bad one stops the program with one
//! line naming where it came from. The Go reference silently ignored bad env values;
//! a forwarder that runs with settings nobody asked for is worse than one that stops.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use log::LevelFilter;

use crate::duration::{format_go_duration, parse_go_duration};
use crate::http::Limits;

/// Forward webhook records received over HTTP to an endpoint, in batches.
#[derive(FromArgs, Debug, Default)]
struct Flags {
    /// listen address: :8080 (all interfaces), 127.0.0.1:8080, [::1]:8080. Env WEBHOOK_HTTP, default :8080
    #[argh(option)]
    http: Option<String>,
    /// absolute http:// or https:// URL batches are POSTed to. Env WEBHOOK_POST_ENDPOINT, required
    #[argh(option)]
    post_endpoint: Option<String>,
    /// records per batch; 0 turns the size trigger off. Env WEBHOOK_BATCH_SIZE, default 10
    #[argh(option)]
    batch_size: Option<String>,
    /// longest wait of the oldest record before its batch is sent, a Go duration (10s, 1m30s, 250ms); 0 turns the time trigger off. Env WEBHOOK_BATCH_INTERVAL, default 10s
    #[argh(option)]
    batch_interval: Option<String>,
    /// time limit of one POST attempt. Env WEBHOOK_POST_TIMEOUT, default 10s
    #[argh(option)]
    post_timeout: Option<String>,
    /// wait before each of the 3 retries of a failed POST. Env WEBHOOK_RETRY_WAIT, default 2s
    #[argh(option)]
    retry_wait: Option<String>,
    /// largest request body in bytes. Env WEBHOOK_MAX_BODY_BYTES, default 1048576
    #[argh(option)]
    max_body_bytes: Option<String>,
    /// largest request head (request line and headers) in bytes. Env WEBHOOK_MAX_HEAD_BYTES, default 16384
    #[argh(option)]
    max_head_bytes: Option<String>,
    /// most header fields in one request. Env WEBHOOK_MAX_HEADERS, default 64
    #[argh(option)]
    max_headers: Option<String>,
    /// most client connections open at once. Env WEBHOOK_MAX_CONNECTIONS, default 10000
    #[argh(option)]
    max_connections: Option<String>,
    /// time allowed to send a request head. Env WEBHOOK_HEADER_TIMEOUT, default 10s
    #[argh(option)]
    header_timeout: Option<String>,
    /// time allowed to send a request body. Env WEBHOOK_BODY_TIMEOUT, default 30s
    #[argh(option)]
    body_timeout: Option<String>,
    /// how long an idle keep-alive connection is kept. Env WEBHOOK_IDLE_TIMEOUT, default 60s
    #[argh(option)]
    idle_timeout: Option<String>,
    /// error, warn, info, debug, trace or off. Env WEBHOOK_LOG_LEVEL, default info
    #[argh(option)]
    log_level: Option<String>,
    /// logfmt or json. Env WEBHOOK_LOG_FORMAT, default logfmt
    #[argh(option)]
    log_format: Option<String>,
    /// file that undeliverable accepted records are appended to, as NDJSON. Env WEBHOOK_DEAD_LETTER, default ./webhook-forwarder.dead-letter.ndjson
    #[argh(option)]
    dead_letter: Option<String>,
    /// dead-letter file whose records are sent at startup, ahead of new ones; renamed once delivered. Env WEBHOOK_REPLAY
    #[argh(option)]
    replay: Option<String>,
    /// header added to every POST, 'Name: value' (repeatable), e.g. 'Authorization: Bearer ...'; values are never logged. Env WEBHOOK_POST_HEADERS, one per line
    #[argh(option)]
    post_header: Vec<String>,
    /// PEM file of extra CA certificates trusted for an https:// endpoint, besides the bundled web PKI roots. Env WEBHOOK_CA_FILE
    #[argh(option)]
    ca_file: Option<String>,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
}

/// Switches take no value, which the Go-style normalisation must know.
const SWITCHES: &[&str] = &["help", "version"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Logfmt,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The address as written, for the startup log.
    pub http: String,
    /// Addresses to try binding, in order.
    pub listen: Vec<SocketAddr>,
    pub post_endpoint: String,
    pub batch_size: usize,
    pub batch_interval: Option<Duration>,
    pub post_timeout: Duration,
    pub retry_wait: Duration,
    pub limits: Limits,
    pub max_connections: usize,
    pub log_level: LevelFilter,
    pub log_format: LogFormat,
    pub dead_letter: PathBuf,
    pub replay: Option<PathBuf>,
    /// Extra headers for every POST; the values are secrets and never logged.
    pub post_headers: Vec<(String, String)>,
    /// DER certificates from `--ca-file`, trusted besides the web PKI roots.
    pub extra_roots: Vec<Vec<u8>>,
    pub ca_file: Option<PathBuf>,
    /// Proxy URL for the endpoint, from the usual environment variables.
    pub proxy: Option<String>,
}

impl Config {
    /// Capacity of the record ring: room for one batch in flight and one filling.
    pub fn ring_capacity(&self) -> usize {
        if self.batch_size == 0 {
            100
        } else {
            2 * self.batch_size
        }
    }

    /// The settings as one log-friendly summary.
    pub fn describe_interval(&self) -> String {
        self.batch_interval
            .map_or("0s".to_owned(), |d| format_go_duration(d.as_nanos() as i64))
    }
}

/// What the command line asks for besides running.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// `--help` or `--version`: print this to stdout, exit 0.
    Print(String),
    /// A bad setting or flag: print this to stderr, exit 2.
    Invalid(String),
}

pub const MAX_BATCH_SIZE: usize = 100_000;

/// Reads the settings from `args` (without the program name) and the environment.
pub fn load(
    program: &str,
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, Stop> {
    let normalized = normalize_go_flags(args);
    let refs: Vec<&str> = normalized.iter().map(String::as_str).collect();
    let flags = match Flags::from_args(&[program], &refs) {
        Ok(flags) => flags,
        Err(exit) if exit.status.is_ok() => return Err(Stop::Print(exit.output)),
        Err(exit) => return Err(Stop::Invalid(exit.output.trim_end().replace('\n', " "))),
    };
    if flags.version {
        return Err(Stop::Print(format!(
            "webhook-forwarder {}\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let pick = |flag: &Option<String>,
                flag_name: &'static str,
                env_name: &'static str|
     -> Option<Setting> {
        match flag {
            Some(value) => Some(Setting {
                value: value.clone(),
                source: Source::Flag(flag_name),
            }),
            None => env(env_name).map(|value| Setting {
                value,
                source: Source::Env(env_name),
            }),
        }
    };

    let http_setting = pick(&flags.http, "http", "WEBHOOK_HTTP");
    let http = http_setting
        .as_ref()
        .map_or(":8080".to_owned(), |s| s.value.clone());
    let listen = match &http_setting {
        Some(s) => parse_listen(s)?,
        None => parse_listen(&Setting {
            value: http.clone(),
            source: Source::Default("http"),
        })?,
    };

    let post_endpoint = match pick(
        &flags.post_endpoint,
        "post-endpoint",
        "WEBHOOK_POST_ENDPOINT",
    ) {
        Some(s) => parse_endpoint(&s)?,
        None => {
            return Err(Stop::Invalid(
                "no post endpoint: set --post-endpoint or WEBHOOK_POST_ENDPOINT (an http:// or https:// URL)".to_owned(),
            ));
        }
    };
    let batch_size = pick(&flags.batch_size, "batch-size", "WEBHOOK_BATCH_SIZE")
        .map_or(Ok(10), |s| s.count(0, MAX_BATCH_SIZE))?;
    let batch_interval = pick(
        &flags.batch_interval,
        "batch-interval",
        "WEBHOOK_BATCH_INTERVAL",
    )
    .map_or(Ok(Duration::from_secs(10)), |s| s.duration(true))?;
    let batch_interval = (!batch_interval.is_zero()).then_some(batch_interval);
    if batch_size == 0 && batch_interval.is_none() {
        return Err(Stop::Invalid(
            "batch size and batch interval are both 0: no batch would ever be sent".to_owned(),
        ));
    }
    let post_timeout = pick(&flags.post_timeout, "post-timeout", "WEBHOOK_POST_TIMEOUT")
        .map_or(Ok(Duration::from_secs(10)), |s| s.duration(false))?;
    let retry_wait = pick(&flags.retry_wait, "retry-wait", "WEBHOOK_RETRY_WAIT")
        .map_or(Ok(Duration::from_secs(2)), |s| s.duration(true))?;

    let defaults = Limits::default();
    let limits = Limits {
        max_body_bytes: pick(
            &flags.max_body_bytes,
            "max-body-bytes",
            "WEBHOOK_MAX_BODY_BYTES",
        )
        .map_or(Ok(defaults.max_body_bytes), |s| {
            s.count(1, 64 * 1024 * 1024)
        })?,
        max_head_bytes: pick(
            &flags.max_head_bytes,
            "max-head-bytes",
            "WEBHOOK_MAX_HEAD_BYTES",
        )
        .map_or(Ok(defaults.max_head_bytes), |s| s.count(256, 1024 * 1024))?,
        max_headers: pick(&flags.max_headers, "max-headers", "WEBHOOK_MAX_HEADERS")
            .map_or(Ok(defaults.max_headers), |s| {
                s.count(1, crate::http::conn::MAX_HEADERS_CAP)
            })?,
        header_timeout: pick(
            &flags.header_timeout,
            "header-timeout",
            "WEBHOOK_HEADER_TIMEOUT",
        )
        .map_or(Ok(defaults.header_timeout), |s| s.duration(false))?,
        body_timeout: pick(&flags.body_timeout, "body-timeout", "WEBHOOK_BODY_TIMEOUT")
            .map_or(Ok(defaults.body_timeout), |s| s.duration(false))?,
        idle_timeout: pick(&flags.idle_timeout, "idle-timeout", "WEBHOOK_IDLE_TIMEOUT")
            .map_or(Ok(defaults.idle_timeout), |s| s.duration(false))?,
        max_pending_output: defaults.max_pending_output,
    };
    let max_connections = pick(
        &flags.max_connections,
        "max-connections",
        "WEBHOOK_MAX_CONNECTIONS",
    )
    .map_or(Ok(10_000), |s| s.count(1, 1_000_000))?;
    let log_level = match pick(&flags.log_level, "log-level", "WEBHOOK_LOG_LEVEL") {
        None => LevelFilter::Info,
        Some(s) => s
            .value
            .parse::<LevelFilter>()
            .map_err(|_| s.invalid("is not a log level (error, warn, info, debug, trace, off)"))?,
    };
    let log_format = match pick(&flags.log_format, "log-format", "WEBHOOK_LOG_FORMAT") {
        None => LogFormat::Logfmt,
        Some(s) => match s.value.as_str() {
            "logfmt" => LogFormat::Logfmt,
            "json" => LogFormat::Json,
            _ => return Err(s.invalid("is not a log format (logfmt or json)")),
        },
    };
    let dead_letter = pick(&flags.dead_letter, "dead-letter", "WEBHOOK_DEAD_LETTER").map_or_else(
        || PathBuf::from(crate::deadletter::DEFAULT_PATH),
        |s| PathBuf::from(s.value),
    );
    let replay = pick(&flags.replay, "replay", "WEBHOOK_REPLAY").map(|s| PathBuf::from(s.value));
    let post_headers = if flags.post_header.is_empty() {
        match env("WEBHOOK_POST_HEADERS") {
            Some(lines) => {
                let setting = Setting {
                    value: lines,
                    source: Source::Env("WEBHOOK_POST_HEADERS"),
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
                parse_header(
                    &Setting {
                        value: h.clone(),
                        source: Source::Flag("post-header"),
                    },
                    h,
                )
            })
            .collect::<Result<_, _>>()?
    };
    let ca_setting = pick(&flags.ca_file, "ca-file", "WEBHOOK_CA_FILE");
    let extra_roots = match &ca_setting {
        Some(s) => load_pem_certificates(s)?,
        None => Vec::new(),
    };
    let ca_file = ca_setting.map(|s| PathBuf::from(s.value));
    let proxy = proxy_for(&post_endpoint, |name| env(name));
    if let Some(url) = &proxy
        && ureq::Proxy::new(url).is_err()
    {
        return Err(Stop::Invalid(format!(
            "proxy {:?} (from HTTPS_PROXY, HTTP_PROXY or ALL_PROXY) is not a proxy URL (e.g. http://proxy:3128)",
            without_credentials(url)
        )));
    }
    Ok(Config {
        proxy,
        post_headers,
        extra_roots,
        ca_file,
        dead_letter,
        replay,
        http,
        listen,
        post_endpoint,
        batch_size,
        batch_interval,
        post_timeout,
        retry_wait,
        limits,
        max_connections,
        log_level,
        log_format,
    })
}

/// Rewrites Go flag forms to what argh takes: `-batch-size 5` and `-batch-size=5`
/// become `--batch-size 5`, and so does `--batch-size=5`.
pub fn normalize_go_flags(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 4);
    let mut expecting_value = false;
    let mut rest_are_positional = false;
    for arg in args {
        if expecting_value || rest_are_positional {
            out.push(arg.clone());
            expecting_value = false;
            continue;
        }
        if arg == "--" {
            rest_are_positional = true;
            out.push(arg.clone());
            continue;
        }
        let name = if let Some(long) = arg.strip_prefix("--") {
            long
        } else if let Some(short) = arg
            .strip_prefix('-')
            .filter(|s| s.starts_with(|c: char| c.is_ascii_alphabetic()) && s.len() > 1)
        {
            short
        } else {
            out.push(arg.clone());
            continue;
        };
        match name.split_once('=') {
            Some((flag, value)) => {
                out.push(format!("--{flag}"));
                out.push(value.to_owned());
            }
            None => {
                expecting_value = !SWITCHES.contains(&name);
                out.push(format!("--{name}"));
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Flag(&'static str),
    Env(&'static str),
    Default(&'static str),
}

struct Setting {
    value: String,
    source: Source,
}

impl Setting {
    fn invalid(&self, why: &str) -> Stop {
        let value = &self.value;
        Stop::Invalid(match self.source {
            Source::Flag(name) => format!("--{name}={value:?} {why}"),
            Source::Env(name) => format!("{name}={value:?} {why}"),
            Source::Default(name) => format!("default {name} {value:?} {why}"),
        })
    }

    fn count(&self, min: usize, max: usize) -> Result<usize, Stop> {
        match self.value.trim().parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.invalid(&format!("is not a whole number from {min} to {max}"))),
        }
    }

    fn duration(&self, zero_allowed: bool) -> Result<Duration, Stop> {
        let nanos = parse_go_duration(self.value.trim())
            .map_err(|_| self.invalid("is not a Go duration (e.g. 10s, 1m30s, 250ms)"))?;
        if nanos < 0 {
            return Err(self.invalid("is negative"));
        }
        if nanos == 0 && !zero_allowed {
            return Err(self.invalid("must be more than 0"));
        }
        Ok(Duration::from_nanos(nanos as u64))
    }
}

fn parse_listen(setting: &Setting) -> Result<Vec<SocketAddr>, Stop> {
    let text = setting.value.trim();
    if let Some(port) = text.strip_prefix(':') {
        // Go's ":8080": every interface, IPv6 and IPv4 where the host has both.
        let port: u16 = port
            .parse()
            .map_err(|_| setting.invalid("has no valid port (e.g. :8080)"))?;
        return Ok(vec![
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
        ]);
    }
    match text.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err(setting.invalid("resolves to no address"))
            } else {
                Ok(addrs)
            }
        }
        Err(_) => {
            Err(setting.invalid("is not a listen address (e.g. :8080, 127.0.0.1:8080, [::1]:8080)"))
        }
    }
}

/// `Name: value`, with a valid header name and no line breaks in the value.
fn parse_header(setting: &Setting, line: &str) -> Result<(String, String), Stop> {
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
fn load_pem_certificates(setting: &Setting) -> Result<Vec<Vec<u8>>, Stop> {
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

fn parse_endpoint(setting: &Setting) -> Result<String, Stop> {
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
    use std::collections::HashMap;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn load_with(list: &[&str], env: &[(&str, &str)]) -> Result<Config, Stop> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load("webhook-forwarder", &args(list), |k| env.get(k).cloned())
    }

    fn invalid(list: &[&str], env: &[(&str, &str)]) -> String {
        match load_with(list, env) {
            Err(Stop::Invalid(message)) => message,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    const EP: &str = "--post-endpoint=http://127.0.0.1:9/x";

    #[test]
    fn go_flag_forms_are_normalized() {
        assert_eq!(
            normalize_go_flags(&args(&[
                "-batch-size",
                "5",
                "-batch-interval=1s",
                "--http=:1",
                "--version",
                "-help"
            ])),
            args(&[
                "--batch-size",
                "5",
                "--batch-interval",
                "1s",
                "--http",
                ":1",
                "--version",
                "--help"
            ])
        );
        // A value that looks like a flag stays a value.
        assert_eq!(
            normalize_go_flags(&args(&["-batch-size", "-5"])),
            args(&["--batch-size", "-5"])
        );
        assert_eq!(
            normalize_go_flags(&args(&["--post-endpoint=http://h/?a=b"])),
            args(&["--post-endpoint", "http://h/?a=b"])
        );
    }

    #[test]
    fn defaults() {
        let c = load_with(&[EP], &[]).unwrap();
        assert_eq!(c.batch_size, 10);
        assert_eq!(c.batch_interval, Some(Duration::from_secs(10)));
        assert_eq!(c.http, ":8080");
        assert_eq!(c.listen.len(), 2);
        assert!(
            c.listen
                .iter()
                .all(|a| a.port() == 8080 && a.ip().is_unspecified())
        );
        assert_eq!(c.retry_wait, Duration::from_secs(2));
        assert_eq!(c.post_timeout, Duration::from_secs(10));
        assert_eq!(c.ring_capacity(), 20);
        assert_eq!(c.limits.max_body_bytes, 1024 * 1024);
    }

    #[test]
    fn flags_win_over_env_in_every_form() {
        let env = [
            ("WEBHOOK_BATCH_SIZE", "7"),
            ("WEBHOOK_BATCH_INTERVAL", "1m30s"),
            ("WEBHOOK_POST_ENDPOINT", "https://e.example/in"),
        ];
        let c = load_with(&[], &env).unwrap();
        assert_eq!(
            (c.batch_size, c.batch_interval),
            (7, Some(Duration::from_secs(90)))
        );
        assert_eq!(c.post_endpoint, "https://e.example/in");
        for form in [
            &["-batch-size", "5"][..],
            &["-batch-size=5"],
            &["--batch-size=5"],
            &["--batch-size", "5"],
        ] {
            assert_eq!(load_with(form, &env).unwrap().batch_size, 5, "{form:?}");
        }
        let c = load_with(
            &["-batch-interval", "250ms", "-post-endpoint", "http://a/b"],
            &env,
        )
        .unwrap();
        assert_eq!(c.batch_interval, Some(Duration::from_millis(250)));
        assert_eq!(c.post_endpoint, "http://a/b");
    }

    #[test]
    fn bad_settings_name_their_source_and_value() {
        assert_eq!(
            invalid(&[EP], &[("WEBHOOK_BATCH_INTERVAL", "10 seconds")]),
            r#"WEBHOOK_BATCH_INTERVAL="10 seconds" is not a Go duration (e.g. 10s, 1m30s, 250ms)"#
        );
        assert_eq!(
            invalid(&[EP, "--batch-size=ten"], &[]),
            r#"--batch-size="ten" is not a whole number from 0 to 100000"#
        );
        assert_eq!(
            invalid(&[EP, "--batch-size", "-1"], &[]),
            r#"--batch-size="-1" is not a whole number from 0 to 100000"#
        );
        assert_eq!(
            invalid(&[EP, "--batch-interval=-5s"], &[]),
            r#"--batch-interval="-5s" is negative"#
        );
        assert!(invalid(&[], &[]).contains("WEBHOOK_POST_ENDPOINT"));
        assert!(
            invalid(&["--post-endpoint", "ftp://x/y"], &[])
                .starts_with("--post-endpoint=\"ftp://x/y\"")
        );
        assert!(invalid(&["--post-endpoint", "/just/a/path"], &[]).contains("absolute"));
        assert!(invalid(&[EP, "--http", "nonsense"], &[]).starts_with("--http=\"nonsense\""));
        assert!(invalid(&[EP, "--http", ":99999"], &[]).starts_with("--http=\":99999\""));
        assert!(invalid(&[EP, "--batch-size=0", "--batch-interval=0"], &[]).contains("both 0"));
        assert!(invalid(&[EP, "--log-level=loud"], &[]).contains("log level"));
        assert!(invalid(&[EP, "--no-such-flag"], &[]).contains("no-such-flag"));
        assert!(invalid(&[EP, "--post-timeout=0"], &[]).contains("more than 0"));
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let c = load_with(&[EP], &[("WEBHOOK_BATCH_SIZE", "")]).unwrap();
        assert_eq!(c.batch_size, 10);
    }

    #[test]
    fn zero_turns_one_trigger_off() {
        let c = load_with(&[EP, "--batch-size=0"], &[]).unwrap();
        assert_eq!(c.ring_capacity(), 100);
        let c = load_with(&[EP, "--batch-interval=0"], &[]).unwrap();
        assert_eq!(c.batch_interval, None);
    }

    #[test]
    fn help_and_version_print() {
        match load_with(&["--help"], &[]) {
            Err(Stop::Print(text)) => {
                for needle in [
                    "--batch-size",
                    "WEBHOOK_BATCH_SIZE",
                    "default 10",
                    "--batch-interval",
                    "default 10s",
                    "--post-endpoint",
                    "--http",
                    "default :8080",
                ] {
                    assert!(text.contains(needle), "help lacks {needle}: {text}");
                }
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(load_with(&["-version"], &[]), Err(Stop::Print(v)) if v.starts_with("webhook-forwarder "))
        );
    }

    #[test]
    fn post_headers_from_flags_or_env_lines() {
        let c = load_with(
            &[
                EP,
                "--post-header",
                "Authorization: Bearer abc",
                "-post-header=X-Team:  core ",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            c.post_headers,
            vec![
                ("Authorization".into(), "Bearer abc".into()),
                ("X-Team".into(), "core".into())
            ]
        );
        let c = load_with(
            &[EP],
            &[(
                "WEBHOOK_POST_HEADERS",
                "Authorization: Bearer a,b\nX-Id: 7\n",
            )],
        )
        .unwrap();
        assert_eq!(
            c.post_headers,
            vec![
                ("Authorization".into(), "Bearer a,b".into()),
                ("X-Id".into(), "7".into())
            ]
        );
        let c = load_with(
            &[EP, "--post-header", "X-A: 1"],
            &[("WEBHOOK_POST_HEADERS", "X-B: 2")],
        )
        .unwrap();
        assert_eq!(
            c.post_headers,
            vec![("X-A".into(), "1".into())],
            "flags win over env"
        );
        let err = invalid(&[EP, "--post-header", "Authorization Bearer secret"], &[]);
        assert!(
            err.contains("not 'Name: value'") && !err.contains("secret"),
            "{err}"
        );
        assert!(invalid(&[EP, "--post-header", "Bad Name: x"], &[]).contains("invalid name"));
    }

    #[test]
    fn ca_file_must_hold_certificates() {
        assert!(invalid(&[EP, "--ca-file", "/nonexistent.pem"], &[]).contains("cannot be read"));
        let path = std::env::temp_dir().join(format!("wf-config-test-{}.pem", std::process::id()));
        std::fs::write(&path, "not a pem file").unwrap();
        assert!(
            invalid(&[EP, "--ca-file", path.to_str().unwrap()], &[]).contains("no PEM certificate")
        );
        let _ = std::fs::remove_file(path);
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
    fn a_bad_proxy_is_refused_without_its_password() {
        let err = invalid(&[EP], &[("HTTP_PROXY", "ftp://user:hunter2@proxy:21")]);
        assert!(
            err.contains("not a proxy URL") && !err.contains("hunter2"),
            "{err}"
        );
        assert_eq!(without_credentials("http://u:p@h:1"), "http://h:1");
        assert_eq!(without_credentials("http://h:1"), "http://h:1");
    }

    #[test]
    fn listen_addresses() {
        let c = load_with(&[EP, "--http", "127.0.0.1:0"], &[]).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:0".parse().unwrap()]);
        let c = load_with(&[EP, "--http", "[::1]:8080"], &[]).unwrap();
        assert_eq!(c.listen, vec!["[::1]:8080".parse().unwrap()]);
    }
}
