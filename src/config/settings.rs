//! Every setting's flag, environment variable and default, written once, and the
//! one resolution rule: the flag wins, then a non-empty environment variable, then the
//! default. Values are parsed here so that a bad one names where it came from.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::Stop;
use crate::duration::parse_go_duration;

/// A setting's names and default.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The long flag without its dashes.
    pub flag: &'static str,
    pub env: &'static str,
    /// `None`: no default (the setting is optional, or required).
    pub default: Option<&'static str>,
}

const fn spec(flag: &'static str, env: &'static str, default: Option<&'static str>) -> Spec {
    Spec { flag, env, default }
}

pub const HTTP: Spec = spec("http", "WEBHOOK_HTTP", Some(":8080"));
pub const POST_ENDPOINT: Spec = spec("post-endpoint", "WEBHOOK_POST_ENDPOINT", None);
pub const BATCH_SIZE: Spec = spec("batch-size", "WEBHOOK_BATCH_SIZE", Some("10"));
pub const BATCH_INTERVAL: Spec = spec("batch-interval", "WEBHOOK_BATCH_INTERVAL", Some("10s"));
pub const QUEUE_WAIT: Spec = spec("queue-wait", "WEBHOOK_QUEUE_WAIT", Some("5s"));
pub const POST_TIMEOUT: Spec = spec("post-timeout", "WEBHOOK_POST_TIMEOUT", Some("10s"));
pub const RETRY_WAIT: Spec = spec("retry-wait", "WEBHOOK_RETRY_WAIT", Some("2s"));
pub const MAX_BODY_BYTES: Spec = spec("max-body-bytes", "WEBHOOK_MAX_BODY_BYTES", Some("1048576"));
pub const MAX_HEAD_BYTES: Spec = spec("max-head-bytes", "WEBHOOK_MAX_HEAD_BYTES", Some("16384"));
pub const MAX_HEADERS: Spec = spec("max-headers", "WEBHOOK_MAX_HEADERS", Some("64"));
/// An edge box can afford 64 MiB of bodies in progress; a server can raise it.
pub const MAX_BUFFERED_BYTES: Spec = spec(
    "max-buffered-bytes",
    "WEBHOOK_MAX_BUFFERED_BYTES",
    Some("67108864"),
);
pub const MAX_CONNECTIONS: Spec = spec("max-connections", "WEBHOOK_MAX_CONNECTIONS", Some("10000"));
pub const HEADER_TIMEOUT: Spec = spec("header-timeout", "WEBHOOK_HEADER_TIMEOUT", Some("10s"));
pub const BODY_TIMEOUT: Spec = spec("body-timeout", "WEBHOOK_BODY_TIMEOUT", Some("30s"));
pub const IDLE_TIMEOUT: Spec = spec("idle-timeout", "WEBHOOK_IDLE_TIMEOUT", Some("60s"));
pub const LOG_LEVEL: Spec = spec("log-level", "WEBHOOK_LOG_LEVEL", Some("info"));
pub const LOG_FORMAT: Spec = spec("log-format", "WEBHOOK_LOG_FORMAT", Some("logfmt"));
/// The working directory is the one place every deployment has and an operator
/// looks first.
pub const DEAD_LETTER: Spec = spec(
    "dead-letter",
    "WEBHOOK_DEAD_LETTER",
    Some("webhook-forwarder.dead-letter.ndjson"),
);
pub const REPLAY: Spec = spec("replay", "WEBHOOK_REPLAY", None);
/// The environment variable holds one header per line.
pub const POST_HEADER: Spec = spec("post-header", "WEBHOOK_POST_HEADERS", None);
pub const CA_FILE: Spec = spec("ca-file", "WEBHOOK_CA_FILE", None);
pub const POST_COMPRESSION: Spec =
    spec("post-compression", "WEBHOOK_POST_COMPRESSION", Some("none"));
/// The token clients must send; `AUTH_TOKEN_FILE` is the same from a mounted secret.
pub const AUTH_TOKEN: Spec = spec("auth-token", "WEBHOOK_AUTH_TOKEN", None);
pub const AUTH_TOKEN_FILE: Spec = spec("auth-token-file", "WEBHOOK_AUTH_TOKEN_FILE", None);

/// Every setting, in the order `--help` lists them.
pub const ALL: &[Spec] = &[
    HTTP,
    POST_ENDPOINT,
    BATCH_SIZE,
    BATCH_INTERVAL,
    QUEUE_WAIT,
    POST_TIMEOUT,
    RETRY_WAIT,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_BUFFERED_BYTES,
    MAX_CONNECTIONS,
    HEADER_TIMEOUT,
    BODY_TIMEOUT,
    IDLE_TIMEOUT,
    LOG_LEVEL,
    LOG_FORMAT,
    DEAD_LETTER,
    REPLAY,
    POST_HEADER,
    CA_FILE,
    POST_COMPRESSION,
    AUTH_TOKEN,
    AUTH_TOKEN_FILE,
];

/// The environment as the settings see it: an empty value counts as unset.
pub struct Env<F>(pub F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.is_empty())
    }

    /// The flag's value, else the environment's; `None` when neither is given.
    pub fn given(&self, flag: &Option<String>, spec: Spec) -> Option<Setting> {
        match flag {
            Some(value) => Some(Setting {
                value: value.clone(),
                source: Source::Flag(spec.flag),
            }),
            None => self.get(spec.env).map(|value| Setting {
                value,
                source: Source::Env(spec.env),
            }),
        }
    }

    /// As `given`, falling back to the default.
    pub fn resolve(&self, flag: &Option<String>, spec: Spec) -> Option<Setting> {
        self.given(flag, spec).or_else(|| {
            spec.default.map(|value| Setting {
                value: value.to_owned(),
                source: Source::Default(spec.flag),
            })
        })
    }
}

/// The table as text, appended to `--help`.
pub fn help_table() -> String {
    let mut out = String::from(
        "\nEnvironment variables (a flag wins over its variable; an empty one is unset;\nWEBHOOK_POST_HEADERS takes one header per line):\n",
    );
    for spec in ALL {
        let default = spec
            .default
            .map_or(String::new(), |d| format!(", default {d}"));
        out.push_str(&format!("  --{:<18} {}{}\n", spec.flag, spec.env, default));
    }
    out
}

#[derive(Debug, Clone, Copy)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    Default(&'static str),
}

/// One setting's value and where it came from, for error messages that name both.
pub struct Setting {
    pub value: String,
    pub source: Source,
}

impl Setting {
    pub fn invalid(&self, why: &str) -> Stop {
        let value = &self.value;
        Stop::Invalid(match self.source {
            Source::Flag(name) => format!("--{name}={value:?} {why}"),
            Source::Env(name) => format!("{name}={value:?} {why}"),
            Source::Default(name) => format!("default {name} {value:?} {why}"),
        })
    }

    pub fn count(&self, min: usize, max: usize) -> Result<usize, Stop> {
        match self.value.trim().parse::<usize>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.invalid(&format!("is not a whole number from {min} to {max}"))),
        }
    }

    pub fn duration(&self, zero_allowed: bool) -> Result<Duration, Stop> {
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

pub fn parse_listen(setting: &Setting) -> Result<Vec<SocketAddr>, Stop> {
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
