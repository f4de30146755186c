//! Settings from flags and `WEBHOOK_*` environment variables; flags win.
//!
//! Every value is checked here, at start, and a bad one stops the program with one
//! line naming where it came from. The Go reference silently ignored bad env values;
//! a forwarder that runs with settings nobody asked for is worse than one that stops.
//!
//! `settings` holds each setting's flag, variable and default once; `flags` is the
//! command line; `outbound` is what the worker needs to reach the endpoint.

mod flags;
mod outbound;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use log::LevelFilter;

use crate::auth::BearerToken;
use crate::duration::format_go_duration;
use crate::http::Limits;
use crate::logging::LogFormat;
use flags::Flags;
pub use flags::normalize_go_flags;
pub use outbound::{
    Outbound, PostCompression, no_proxy_matches, proxy_for, redact_url, redact_urls_in,
};
use settings::{Env, Setting, Source};

#[derive(Debug, Clone)]
pub struct Config {
    /// The address as written, for the startup log.
    pub http: String,
    /// Addresses to try binding, in order.
    pub listen: Vec<SocketAddr>,
    pub batch_size: usize,
    pub batch_interval: Option<Duration>,
    /// How long a request may wait for queue room; zero refuses at once.
    pub queue_wait: Duration,
    pub limits: Limits,
    /// The global budget for request bodies held at once.
    pub max_buffered_bytes: usize,
    pub max_connections: usize,
    pub log_level: LevelFilter,
    pub log_format: LogFormat,
    pub dead_letter: PathBuf,
    pub replay: Option<PathBuf>,
    /// The bearer token `POST /log` and `GET /metrics` require, if any.
    pub auth: Option<BearerToken>,
    pub outbound: Outbound,
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

    /// The batch interval as the operator would write it, for the startup log.
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

/// Descriptors kept back from client connections, so the endpoint connection and the
/// dead-letter file can always be opened. Counted: stdin, stdout, stderr; the listener;
/// epoll; the waker's eventfd; the signal socket pair and its three registered copies;
/// the endpoint connection and its replacement while it reconnects; the resolver's
/// socket and the files it reads (`/etc/hosts`, `/etc/resolv.conf`); the dead-letter,
/// replay and `.rejected` files; the `/proc` file or directory `/metrics` reads. That
/// is about 20; 32 leaves room for the libraries.
pub const DESCRIPTOR_RESERVE: usize = 32;

/// The most client connections that fit in `open_files` descriptors (the soft
/// limit; `None` when unknown) besides the reserve, and never more than asked for.
/// At least one, so a very low limit still serves.
pub fn connections_within(max_connections: usize, open_files: Option<u64>) -> usize {
    let Some(limit) = open_files else {
        return max_connections;
    };
    let room = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(DESCRIPTOR_RESERVE);
    max_connections.min(room).max(1)
}

/// The subcommands, which argh does not know about, appended to `--help`.
const COMMANDS_HELP: &str = "
Commands:
  webhook-forwarder probe [--http ADDR]: exit 0 when /healthz answers 200 (the
                 container's health check; probe --help tells more)
  webhook-forwarder help: print this help
";

/// Reads the settings from `args` (without the program name) and the environment.
pub fn load(
    program: &str,
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, Stop> {
    // `webhook-forwarder help`, like `probe`, is a word rather than a flag.
    let help = [String::from("--help")];
    let args = match args.first().map(String::as_str) {
        Some("help") if args.len() == 1 => &help[..],
        _ => args,
    };
    let normalized = normalize_go_flags(args);
    let refs: Vec<&str> = normalized.iter().map(String::as_str).collect();
    let flags = match Flags::from_args(&[program], &refs) {
        Ok(flags) => flags,
        Err(exit) if exit.status.is_ok() => {
            return Err(Stop::Print(
                exit.output + COMMANDS_HELP + &settings::help_table(),
            ));
        }
        Err(exit) => return Err(Stop::Invalid(exit.output.trim_end().replace('\n', " "))),
    };
    if flags.version {
        return Err(Stop::Print(format!(
            "webhook-forwarder {}\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let env = Env(env);
    // Every setting with a default resolves to a value.
    let with_default = |flag: &Option<String>, spec: settings::Spec| -> Setting {
        env.resolve(flag, spec).unwrap_or_else(|| Setting {
            value: String::new(),
            source: Source::Default(spec.flag),
        })
    };

    let http = with_default(&flags.http, settings::HTTP);
    let listen = settings::parse_listen(&http)?;
    let batch_size =
        with_default(&flags.batch_size, settings::BATCH_SIZE).count(0, MAX_BATCH_SIZE)?;
    let batch_interval =
        with_default(&flags.batch_interval, settings::BATCH_INTERVAL).duration(true)?;
    let batch_interval = (!batch_interval.is_zero()).then_some(batch_interval);
    if batch_size == 0 && batch_interval.is_none() {
        return Err(Stop::Invalid(
            "batch size and batch interval are both 0: no batch would ever be sent".to_owned(),
        ));
    }
    let queue_wait = with_default(&flags.queue_wait, settings::QUEUE_WAIT).duration(true)?;
    let limits = Limits {
        max_body_bytes: with_default(&flags.max_body_bytes, settings::MAX_BODY_BYTES)
            .count(1, 64 * 1024 * 1024)?,
        max_head_bytes: with_default(&flags.max_head_bytes, settings::MAX_HEAD_BYTES)
            .count(256, 1024 * 1024)?,
        max_headers: with_default(&flags.max_headers, settings::MAX_HEADERS)
            .count(1, crate::http::conn::MAX_HEADERS_CAP)?,
        header_timeout: with_default(&flags.header_timeout, settings::HEADER_TIMEOUT)
            .duration(false)?,
        body_timeout: with_default(&flags.body_timeout, settings::BODY_TIMEOUT).duration(false)?,
        idle_timeout: with_default(&flags.idle_timeout, settings::IDLE_TIMEOUT).duration(false)?,
        max_pending_output: Limits::default().max_pending_output,
        refuse_content_coding: true,
    };
    let buffered = with_default(&flags.max_buffered_bytes, settings::MAX_BUFFERED_BYTES);
    let max_buffered_bytes = buffered.count(1, 1 << 40)?;
    if max_buffered_bytes < limits.max_body_bytes {
        return Err(buffered.invalid(&format!(
            "is less than the largest body ({} bytes): such a body could never be read",
            limits.max_body_bytes
        )));
    }
    let max_connections =
        with_default(&flags.max_connections, settings::MAX_CONNECTIONS).count(1, 1_000_000)?;
    let level = with_default(&flags.log_level, settings::LOG_LEVEL);
    let log_level = level
        .value
        .parse::<LevelFilter>()
        .map_err(|_| level.invalid("is not a log level (error, warn, info, debug, trace, off)"))?;
    let format = with_default(&flags.log_format, settings::LOG_FORMAT);
    let log_format = match format.value.as_str() {
        "logfmt" => LogFormat::Logfmt,
        "json" => LogFormat::Json,
        _ => return Err(format.invalid("is not a log format (logfmt or json)")),
    };
    let dead_letter = PathBuf::from(with_default(&flags.dead_letter, settings::DEAD_LETTER).value);
    let replay = env
        .given(&flags.replay, settings::REPLAY)
        .map(|s| PathBuf::from(s.value));
    let auth = load_auth(&flags, &env)?;
    let outbound = outbound::load(&flags, &env, &with_default)?;
    Ok(Config {
        http: http.value,
        listen,
        batch_size,
        batch_interval,
        queue_wait,
        limits,
        max_buffered_bytes,
        max_connections,
        log_level,
        log_format,
        dead_letter,
        replay,
        auth,
        outbound,
    })
}

/// The inbound token, from the flag, the variable or a file. Errors never show the
/// token: they name where it came from and what is wrong with it.
fn load_auth<F: Fn(&str) -> Option<String>>(
    flags: &Flags,
    env: &Env<F>,
) -> Result<Option<BearerToken>, Stop> {
    let inline = env.given(&flags.auth_token, settings::AUTH_TOKEN);
    let file = env.given(&flags.auth_token_file, settings::AUTH_TOKEN_FILE);
    let name = |source: Source| match source {
        Source::Flag(flag) | Source::Default(flag) => format!("--{flag}"),
        Source::Env(var) => var.to_owned(),
    };
    let (token, from) = match (inline, file) {
        (None, None) => return Ok(None),
        (Some(a), Some(b)) => {
            return Err(Stop::Invalid(format!(
                "{} and {} are both set: give the token one way",
                name(a.source),
                name(b.source)
            )));
        }
        (Some(setting), None) => (setting.value.into_bytes(), name(setting.source)),
        (None, Some(setting)) => {
            let mut bytes = std::fs::read(&setting.value)
                .map_err(|e| setting.invalid(&format!("cannot be read: {e}")))?;
            // Secrets are often written with a final newline; it is not part of the token.
            while bytes.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                bytes.pop();
            }
            (bytes, format!("the token in {}", name(setting.source)))
        }
    };
    if token.is_empty() {
        return Err(Stop::Invalid(format!("{from} is empty")));
    }
    // A header value cannot carry anything else, so such a token could never match.
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Stop::Invalid(format!(
            "{from} holds a space, a control or a non-ASCII character (not shown)"
        )));
    }
    Ok(Some(BearerToken::new(&token)))
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
        assert_eq!(c.outbound.retry_wait, Duration::from_secs(2));
        assert_eq!(c.outbound.post_timeout, Duration::from_secs(10));
        assert_eq!(c.ring_capacity(), 20);
        assert_eq!(c.queue_wait, Duration::from_secs(5));
        assert_eq!(c.max_buffered_bytes, 64 * 1024 * 1024);
        assert_eq!(c.limits.max_body_bytes, 1024 * 1024);
        assert_eq!(c.outbound.compression, PostCompression::None);
    }

    #[test]
    fn post_compression_is_gzip_or_none() {
        let c = load_with(&[EP, "--post-compression", "gzip"], &[]).unwrap();
        assert_eq!(c.outbound.compression, PostCompression::Gzip);
        let c = load_with(&[EP], &[("WEBHOOK_POST_COMPRESSION", "gzip")]).unwrap();
        assert_eq!(c.outbound.compression, PostCompression::Gzip);
        assert_eq!(
            invalid(&[EP], &[("WEBHOOK_POST_COMPRESSION", "zstd")]),
            r#"WEBHOOK_POST_COMPRESSION="zstd" is not a compression (gzip or none)"#
        );
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
        assert_eq!(c.outbound.endpoint, "https://e.example/in");
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
        assert_eq!(c.outbound.endpoint, "http://a/b");
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
        assert!(
            invalid(&[EP, "--max-buffered-bytes=1000"], &[]).contains("largest body"),
            "a budget smaller than one body"
        );
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
        for asks in [&["--help"][..], &["-help"], &["-h"], &["help"], &[EP, "-h"]] {
            let Err(Stop::Print(text)) = load_with(asks, &[]) else {
                panic!("{asks:?} prints the help");
            };
            assert!(text.starts_with("Usage: webhook-forwarder"), "{asks:?}");
            assert!(
                text.contains("webhook-forwarder probe [--http ADDR]"),
                "{text}"
            );
        }
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
            c.outbound.headers,
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
            c.outbound.headers,
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
            c.outbound.headers,
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
    fn a_bad_proxy_is_refused_without_its_password() {
        let err = invalid(&[EP], &[("HTTP_PROXY", "ftp://user:hunter2@proxy:21")]);
        assert!(
            err.contains("not a proxy URL") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn a_content_encoding_of_ones_own_cannot_ride_on_gzip() {
        let err = invalid(
            &[
                EP,
                "--post-compression",
                "gzip",
                "--post-header",
                "content-encoding: br",
            ],
            &[],
        );
        assert!(err.contains("Content-Encoding"), "{err}");
        // Without compression the operator's encoding is theirs to declare.
        assert!(load_with(&[EP, "--post-header", "Content-Encoding: br"], &[]).is_ok());
    }

    #[test]
    fn a_socks_proxy_stops_the_start_rather_than_every_post() {
        let err = invalid(&[EP], &[("ALL_PROXY", "socks5://user:hunter2@proxy:1080")]);
        assert!(err.contains("SOCKS") && !err.contains("hunter2"), "{err}");
        // Named in NO_PROXY, the endpoint does not use it: no objection.
        let c = load_with(
            &[EP],
            &[
                ("ALL_PROXY", "socks5://proxy:1080"),
                ("NO_PROXY", "127.0.0.1"),
            ],
        );
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn connections_leave_the_descriptor_reserve_free() {
        assert_eq!(
            connections_within(10_000, Some(1024)),
            1024 - DESCRIPTOR_RESERVE
        );
        assert_eq!(connections_within(100, Some(1024)), 100);
        assert_eq!(
            connections_within(10_000, Some(256)),
            256 - DESCRIPTOR_RESERVE
        );
        assert_eq!(connections_within(10_000, Some(u64::MAX)), 10_000);
        assert_eq!(connections_within(10_000, None), 10_000);
        assert_eq!(connections_within(10_000, Some(8)), 1);
    }

    #[test]
    fn endpoint_errors_never_show_its_secrets() {
        let err = invalid(&["--post-endpoint", "ftp://u:secret@h/a/b?token=abc"], &[]);
        assert!(err.starts_with("--post-endpoint=\"ftp://h/a/…\""), "{err}");
        let err = invalid(&["--post-endpoint", "http://u:secret@/a b"], &[]);
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn the_auth_token_comes_one_way_and_is_never_echoed() {
        use crate::auth::Access;
        assert!(load_with(&[EP], &[]).unwrap().auth.is_none());
        let c = load_with(&[EP, "--auth-token", "hunter22"], &[]).unwrap();
        let auth = c.auth.expect("a token");
        assert_eq!(auth.check(Some(b"Bearer hunter22")), Access::Granted);
        assert!(!format!("{auth:?}").contains("hunter22"));
        let c = load_with(&[EP], &[("WEBHOOK_AUTH_TOKEN", "hunter22")]).unwrap();
        assert!(c.auth.is_some());

        let path = std::env::temp_dir().join(format!("wf-token-test-{}", std::process::id()));
        let file = path.to_str().unwrap();
        std::fs::write(&path, "hunter22\n").unwrap();
        for c in [
            load_with(&[EP, "--auth-token-file", file], &[]).unwrap(),
            load_with(&[EP], &[("WEBHOOK_AUTH_TOKEN_FILE", file)]).unwrap(),
        ] {
            let auth = c.auth.expect("a token from the file");
            assert_eq!(auth.check(Some(b"Bearer hunter22")), Access::Granted);
        }
        let err = invalid(
            &[EP, "--auth-token", "hunter22"],
            &[("WEBHOOK_AUTH_TOKEN_FILE", file)],
        );
        assert_eq!(
            err,
            "--auth-token and WEBHOOK_AUTH_TOKEN_FILE are both set: give the token one way"
        );
        std::fs::write(&path, "\n").unwrap();
        let err = invalid(&[EP, "--auth-token-file", file], &[]);
        assert_eq!(err, "the token in --auth-token-file is empty");
        std::fs::write(&path, "hunter22 with spaces\n").unwrap();
        let err = invalid(&[EP, "--auth-token-file", file], &[]);
        assert!(
            err.contains("holds a space") && !err.contains("hunter22"),
            "{err}"
        );
        let _ = std::fs::remove_file(&path);
        let err = invalid(&[EP, "--auth-token-file", file], &[]);
        assert!(err.contains("cannot be read"), "{err}");
        assert_eq!(
            invalid(&[EP, "--auth-token="], &[]),
            "--auth-token is empty"
        );
        let err = invalid(&[EP, "--auth-token", "hunter\u{7f}22"], &[]);
        assert!(!err.contains("hunter"), "{err}");
    }

    #[test]
    fn listen_addresses() {
        let c = load_with(&[EP, "--http", "127.0.0.1:0"], &[]).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:0".parse().unwrap()]);
        let c = load_with(&[EP, "--http", "[::1]:8080"], &[]).unwrap();
        assert_eq!(c.listen, vec!["[::1]:8080".parse().unwrap()]);
    }

    #[test]
    fn defaults_agree_with_the_http_layers_own() {
        let c = load_with(&[EP], &[]).unwrap();
        let d = Limits::default();
        assert_eq!(c.limits.max_body_bytes, d.max_body_bytes);
        assert_eq!(c.limits.max_head_bytes, d.max_head_bytes);
        assert_eq!(c.limits.max_headers, d.max_headers);
        assert_eq!(c.limits.header_timeout, d.header_timeout);
        assert_eq!(c.limits.body_timeout, d.body_timeout);
        assert_eq!(c.limits.idle_timeout, d.idle_timeout);
    }

    #[test]
    fn help_lists_every_setting_once_with_its_variable() {
        let Err(Stop::Print(text)) = load_with(&["--help"], &[]) else {
            panic!("--help prints");
        };
        for spec in settings::ALL {
            let flag = format!("--{}", spec.flag);
            assert!(text.contains(&flag), "argh lacks {flag}");
            assert!(text.contains(spec.env), "help lacks {}", spec.env);
        }
        // Every option argh knows is in the table, so none lacks its variable.
        let (argh_part, _) = text.split_once("\nEnvironment variables").expect("table");
        for line in argh_part
            .lines()
            .filter(|l| l.trim_start().starts_with("--"))
        {
            let word = line.trim_start()[2..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            let flag = word.trim_end_matches(',');
            let known = settings::ALL.iter().any(|s| s.flag == flag);
            assert!(
                known || ["help", "version"].contains(&flag),
                "--{flag} is not in the settings table"
            );
        }
    }
}
