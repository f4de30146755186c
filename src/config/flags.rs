//! The command line as argh reads it, after Go-style flags are rewritten.
//!
//! Each option's help says what it is; its environment variable and default come from
//! the settings table (`settings.rs`) and are appended to `--help` from there.

use argh::FromArgs;

/// Forward webhook records received over HTTP to an endpoint, in batches.
#[derive(FromArgs, Debug, Default)]
pub struct Flags {
    /// listen address: :8080 (all interfaces), 127.0.0.1:8080, [::1]:8080
    #[argh(option)]
    pub http: Option<String>,
    /// absolute http:// or https:// URL batches are POSTed to
    #[argh(option)]
    pub post_endpoint: Option<String>,
    /// records per batch; 0 turns the size trigger off
    #[argh(option)]
    pub batch_size: Option<String>,
    /// longest wait of the oldest record before its batch is sent, a Go duration (10s, 1m30s, 250ms); 0 turns the time trigger off
    #[argh(option)]
    pub batch_interval: Option<String>,
    /// longest a POST /log waits for queue room before its 503, a Go duration; 0 answers 503 at once
    #[argh(option)]
    pub queue_wait: Option<String>,
    /// time limit of one POST attempt
    #[argh(option)]
    pub post_timeout: Option<String>,
    /// wait before each of the 3 retries of a failed POST
    #[argh(option)]
    pub retry_wait: Option<String>,
    /// largest request body in bytes
    #[argh(option)]
    pub max_body_bytes: Option<String>,
    /// largest request head (request line and headers) in bytes
    #[argh(option)]
    pub max_head_bytes: Option<String>,
    /// most header fields in one request
    #[argh(option)]
    pub max_headers: Option<String>,
    /// most bytes of request bodies held at once, across all connections (bodies being received, and requests waiting for queue room); at least --max-body-bytes
    #[argh(option)]
    pub max_buffered_bytes: Option<String>,
    /// most client connections open at once
    #[argh(option)]
    pub max_connections: Option<String>,
    /// time allowed to send a request head
    #[argh(option)]
    pub header_timeout: Option<String>,
    /// time allowed to send a request body
    #[argh(option)]
    pub body_timeout: Option<String>,
    /// how long an idle keep-alive connection is kept
    #[argh(option)]
    pub idle_timeout: Option<String>,
    /// error, warn, info, debug, trace or off
    #[argh(option)]
    pub log_level: Option<String>,
    /// logfmt or json
    #[argh(option)]
    pub log_format: Option<String>,
    /// file that undeliverable accepted records are appended to, as NDJSON
    #[argh(option)]
    pub dead_letter: Option<String>,
    /// dead-letter file whose records are sent at startup, ahead of new ones; renamed once delivered
    #[argh(option)]
    pub replay: Option<String>,
    /// header added to every POST, 'Name: value' (repeatable), e.g. 'Authorization: Bearer ...'; values are never logged
    #[argh(option)]
    pub post_header: Vec<String>,
    /// PEM file of extra CA certificates trusted for an https:// endpoint, besides the bundled web PKI roots
    #[argh(option)]
    pub ca_file: Option<String>,
    /// gzip or none: compress each batch with gzip (Content-Encoding: gzip) to save uplink bytes
    #[argh(option)]
    pub post_compression: Option<String>,
    /// bearer token that POST /log and GET /metrics then require (Authorization: Bearer ...); a flag shows in ps, prefer --auth-token-file
    #[argh(option)]
    pub auth_token: Option<String>,
    /// file holding the bearer token (a mounted secret); its trailing newline is dropped
    #[argh(option)]
    pub auth_token_file: Option<String>,
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
}

/// Switches take no value, which the Go-style normalisation must know.
pub const SWITCHES: &[&str] = &["help", "version"];

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
        // argh knows only --help; -h is what people type first.
        if arg == "-h" {
            out.push("--help".to_owned());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn go_flag_forms_are_normalized() {
        assert_eq!(
            normalize_go_flags(&args(&[
                "-batch-size",
                "5",
                "-batch-interval=1s",
                "--http=:1",
                "--version",
                "-help",
                "-h"
            ])),
            args(&[
                "--batch-size",
                "5",
                "--batch-interval",
                "1s",
                "--http",
                ":1",
                "--version",
                "--help",
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
}
