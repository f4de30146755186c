//! `webhook-forwarder probe`: the container health check, without a shell or curl.
//!
//! A scratch image has neither, so the binary checks itself: `GET /healthz` on the
//! listen address, exit 0 on `200` within a short timeout, 1 otherwise.
//!
//! Docker runs the health check as a second process in the container, with the
//! image's environment but without the arguments given to the service, so the probe
//! reads those from PID 1 and applies the service's own precedence to them.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Where the service can be reached from this host, given its listen address:
/// `:8080` and unspecified addresses mean loopback.
pub fn target(listen: &str) -> Result<SocketAddr, String> {
    let listen = listen.trim();
    let text = if listen.starts_with(':') {
        format!("127.0.0.1{listen}")
    } else {
        listen.to_owned()
    };
    let addr = text
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            format!("{listen:?} is not a listen address (e.g. :8080, 127.0.0.1:8080)")
        })?;
    Ok(match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    })
}

/// Asks `/healthz`; Ok when it answers 200.
pub fn check(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < 12 {
        match stream.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(format!("no answer from {addr}: {e}")),
        }
    }
    let status_line = String::from_utf8_lossy(&head[..filled]);
    if status_line.starts_with("HTTP/1.1 200 ") || status_line.starts_with("HTTP/1.0 200 ") {
        Ok(())
    } else {
        Err(format!(
            "{addr} answered {:?}",
            status_line.lines().next().unwrap_or("")
        ))
    }
}

/// Printed by `probe --help`.
pub const USAGE: &str = "\
Usage: webhook-forwarder probe [--http ADDR]

Exits 0 when the service answers GET /healthz with 200 within 2s, else 1: the
container's health check, which needs no shell or curl.

Options:
  --http ADDR   the service's listen address (:8080, 127.0.0.1:9090, [::1]:8080).
                Without it, the probe follows the service running as PID 1 (the
                container's command): its --http, else its WEBHOOK_HTTP, else :8080.
                When PID 1 is not webhook-forwarder: WEBHOOK_HTTP, else :8080.
  -h, --help    print this help and exit
";

/// What `probe` was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Check { http: Option<String> },
}

/// Reads the probe's own arguments: `--http ADDR` in any Go flag form, or help.
/// Anything else is refused, so a typo cannot silently probe the default address.
pub fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut http = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-h" | "--help" | "-help" | "help" => return Ok(Command::Help),
            "--http" | "-http" => match rest.next() {
                Some(value) => http = Some(value.clone()),
                None => return Err("--http needs a value (e.g. --http :8080)".to_owned()),
            },
            _ => match arg
                .strip_prefix("--http=")
                .or_else(|| arg.strip_prefix("-http="))
            {
                Some(value) => http = Some(value.to_owned()),
                None => return Err(format!("unknown argument {arg:?}")),
            },
        }
    }
    Ok(Command::Check { http })
}

/// The address to probe, and where it came from, for the failure message.
#[derive(Debug, PartialEq, Eq)]
pub struct Listen {
    pub addr: String,
    pub from: &'static str,
}

/// Where the service listens, as this process can best tell. Reads PID 1's command
/// line and environment because in a container the health check runs beside the
/// service, with the image's environment but not the arguments given to the service.
pub fn listen_address(http: Option<String>) -> Listen {
    let cmdline = std::fs::read("/proc/1/cmdline").ok();
    let environ = std::fs::read("/proc/1/environ").ok();
    resolve(http, cmdline.as_deref(), environ.as_deref(), |name| {
        std::env::var(name).ok()
    })
}

/// [`listen_address`] without the reading: the probe's own `--http` first, then the
/// service's settings when PID 1 is the service, else the probe's environment.
pub fn resolve(
    http: Option<String>,
    pid1_cmdline: Option<&[u8]>,
    pid1_environ: Option<&[u8]>,
    own_env: impl Fn(&str) -> Option<String>,
) -> Listen {
    if let Some(addr) = http {
        return Listen {
            addr,
            from: "the probe's --http",
        };
    }
    if let Some(args) = pid1_cmdline.and_then(service_args) {
        if let Some(addr) = http_flag(&args) {
            return Listen {
                addr,
                from: "the --http of PID 1",
            };
        }
        // Without access to PID 1's environment, the probe's own is the same image's.
        let (env, from) = match pid1_environ {
            Some(environ) => (
                env_var(environ, "WEBHOOK_HTTP"),
                "the WEBHOOK_HTTP of PID 1",
            ),
            None => (own_env("WEBHOOK_HTTP"), "WEBHOOK_HTTP"),
        };
        return match env.filter(|v| !v.is_empty()) {
            Some(addr) => Listen { addr, from },
            None => Listen {
                addr: DEFAULT_LISTEN.to_owned(),
                from: "the default",
            },
        };
    }
    match own_env("WEBHOOK_HTTP").filter(|v| !v.is_empty()) {
        Some(addr) => Listen {
            addr,
            from: "WEBHOOK_HTTP",
        },
        None => Listen {
            addr: DEFAULT_LISTEN.to_owned(),
            from: "the default",
        },
    }
}

/// The service's default, from its settings table.
const DEFAULT_LISTEN: &str = match crate::config::settings::HTTP.default {
    Some(default) => default,
    None => ":8080",
};

/// The service's arguments from a `/proc/PID/cmdline` (NUL-separated words): those
/// after the first word naming webhook-forwarder, so the service found behind an
/// init (`docker run --init`, tini) counts too. None when it is not the service.
pub fn service_args(cmdline: &[u8]) -> Option<Vec<String>> {
    let cmdline = cmdline.strip_suffix(&[0]).unwrap_or(cmdline);
    if cmdline.is_empty() {
        return None;
    }
    let words: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    let at = words
        .iter()
        .position(|word| word.rsplit('/').next() == Some("webhook-forwarder"))?;
    let args = &words[at + 1..];
    // A probe that is PID 1 itself tells nothing about a service.
    if args.first().map(String::as_str) == Some("probe") {
        return None;
    }
    Some(args.to_vec())
}

/// The value of `--http` in the service's arguments, read the way the service reads
/// them: Go flag forms normalized, every other flag skipping its value, nothing after
/// `--`. The first one wins; the service refuses a second anyway.
pub fn http_flag(args: &[String]) -> Option<String> {
    let normalized = crate::config::normalize_go_flags(args);
    let mut rest = normalized.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--" => return None,
            "--http" => return rest.next().cloned(),
            // Switches take no value; a running service was given none, but be exact.
            "--help" | "--version" => {}
            flag if flag.starts_with("--") => {
                rest.next();
            }
            _ => {}
        }
    }
    None
}

/// One variable from a `/proc/PID/environ` (NUL-separated `NAME=value` entries).
pub fn env_var(environ: &[u8], name: &str) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_map_to_reachable_ones() {
        assert_eq!(target(":8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            target("0.0.0.0:9000").unwrap(),
            "127.0.0.1:9000".parse().unwrap()
        );
        assert_eq!(target("[::]:9000").unwrap(), "[::1]:9000".parse().unwrap());
        assert_eq!(
            target("127.0.0.2:1").unwrap(),
            "127.0.0.2:1".parse().unwrap()
        );
        assert!(target("nonsense").is_err());
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn probe_arguments() {
        for help in ["-h", "--help", "-help", "help"] {
            assert_eq!(parse_args(&strings(&[help])), Ok(Command::Help));
            assert_eq!(
                parse_args(&strings(&["--http", ":1", help])),
                Ok(Command::Help)
            );
        }
        for form in [
            &["--http", ":1"][..],
            &["-http", ":1"],
            &["--http=:1"],
            &["-http=:1"],
        ] {
            assert_eq!(
                parse_args(&strings(form)),
                Ok(Command::Check {
                    http: Some(":1".into())
                })
            );
        }
        assert_eq!(parse_args(&[]), Ok(Command::Check { http: None }));
        assert!(parse_args(&strings(&["--http"])).is_err());
        assert!(parse_args(&strings(&["--htp", ":1"])).is_err());
        assert!(parse_args(&strings(&[""])).is_err());
    }

    #[test]
    fn the_service_is_found_in_pid_1s_command_line() {
        assert_eq!(
            service_args(b"/webhook-forwarder\0--http\x00127.0.0.1:9090\0"),
            Some(strings(&["--http", "127.0.0.1:9090"]))
        );
        // docker run --init, tini
        assert_eq!(
            service_args(b"/sbin/docker-init\0--\0/webhook-forwarder\0-http=:9\0"),
            Some(strings(&["-http=:9"]))
        );
        assert_eq!(service_args(b"webhook-forwarder\0"), Some(Vec::new()));
        // An empty argument is kept, a trailing NUL is not an argument.
        assert_eq!(
            service_args(b"./webhook-forwarder\0--http\0\0"),
            Some(strings(&["--http", ""]))
        );
        assert_eq!(service_args(b"/lib/systemd/systemd\0--system\0"), None);
        assert_eq!(service_args(b"/webhook-forwarder-old\0"), None);
        assert_eq!(service_args(b"/webhook-forwarder\0probe\0"), None);
        assert_eq!(service_args(b""), None);
        assert_eq!(service_args(b"\0\0\0"), None);
        assert_eq!(service_args(b"\xff\xfe\0\x80"), None);
        assert_eq!(
            service_args(b"/webhook-forwarder\0--http\0\xff:1\0"),
            Some(strings(&["--http", "\u{fffd}:1"]))
        );
    }

    #[test]
    fn the_http_flag_is_read_as_the_service_reads_it() {
        for form in [
            &["--http", ":1"][..],
            &["-http", ":1"],
            &["--http=:1"],
            &["-http=:1"],
            &["--batch-size", "5", "--http", ":1"],
            &["-batch-size=5", "-http", ":1", "--http", ":2"],
            // The value of another flag is not a flag.
            &["--post-header", "--http", "--http", ":1"],
            &["--version", "--http", ":1"],
        ] {
            assert_eq!(http_flag(&strings(form)).as_deref(), Some(":1"), "{form:?}");
        }
        assert_eq!(http_flag(&strings(&["--", "--http", ":1"])), None);
        assert_eq!(http_flag(&strings(&["--http"])), None);
        assert_eq!(http_flag(&strings(&["--dead-letter", "--http"])), None);
        assert_eq!(http_flag(&strings(&["-", "", "-1", "---"])), None);
        assert_eq!(http_flag(&[]), None);
    }

    #[test]
    fn environment_entries_match_whole_names() {
        let environ = b"PATH=/bin\0WEBHOOK_HTTPS=x\0WEBHOOK_HTTP=:9\0junk\0\xff=\xfe\0";
        assert_eq!(env_var(environ, "WEBHOOK_HTTP").as_deref(), Some(":9"));
        assert_eq!(
            env_var(b"WEBHOOK_HTTP=\0", "WEBHOOK_HTTP").as_deref(),
            Some("")
        );
        assert_eq!(env_var(b"WEBHOOK_HTTPS=x", "WEBHOOK_HTTP"), None);
        assert_eq!(env_var(b"", "WEBHOOK_HTTP"), None);
    }

    #[test]
    fn precedence_follows_the_service() {
        let service = b"/webhook-forwarder\0--http\0:1\0".as_slice();
        let bare = b"/webhook-forwarder\0".as_slice();
        let other = b"/sbin/init\0".as_slice();
        let pid1_env = b"WEBHOOK_HTTP=:2\0".as_slice();
        let own = |name: &str| (name == "WEBHOOK_HTTP").then(|| ":3".to_owned());
        let none = |_: &str| None;
        let addr = |listen: Listen| listen.addr;
        // The probe's own flag beats everything.
        assert_eq!(
            addr(resolve(
                Some(":0".into()),
                Some(service),
                Some(pid1_env),
                own
            )),
            ":0"
        );
        // Then the service's flag, its environment, its default.
        assert_eq!(
            addr(resolve(None, Some(service), Some(pid1_env), own)),
            ":1"
        );
        assert_eq!(addr(resolve(None, Some(bare), Some(pid1_env), own)), ":2");
        assert_eq!(addr(resolve(None, Some(bare), Some(b""), own)), ":8080");
        assert_eq!(
            addr(resolve(None, Some(bare), Some(b"WEBHOOK_HTTP=\0"), own)),
            ":8080"
        );
        // PID 1's environment unreadable: the probe's own stands in for it.
        assert_eq!(addr(resolve(None, Some(bare), None, own)), ":3");
        assert_eq!(addr(resolve(None, Some(bare), None, none)), ":8080");
        // PID 1 is something else, or unreadable: the probe's own environment.
        assert_eq!(addr(resolve(None, Some(other), Some(pid1_env), own)), ":3");
        assert_eq!(addr(resolve(None, None, None, own)), ":3");
        assert_eq!(addr(resolve(None, None, None, none)), ":8080");
        assert_eq!(
            resolve(None, Some(service), None, none).from,
            "the --http of PID 1"
        );
        assert_eq!(
            resolve(None, Some(bare), Some(pid1_env), none).from,
            "the WEBHOOK_HTTP of PID 1"
        );
        assert_eq!(resolve(None, Some(bare), None, own).from, "WEBHOOK_HTTP");
    }
}
