//! `webhook-forwarder probe`: the container health check, without a shell or curl.
//!
//! A scratch image has neither, so the binary checks itself: `GET /healthz` on the
//! listen address, exit 0 on `200` within a short timeout, 1 otherwise.

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

/// The listen address from `--http ADDR` (any of the Go flag forms) or `WEBHOOK_HTTP`.
pub fn listen_from(args: &[String], env: Option<String>) -> String {
    let normalized = crate::config::normalize_go_flags(args);
    normalized
        .windows(2)
        .find(|pair| pair[0] == "--http")
        .map(|pair| pair[1].clone())
        .or(env.filter(|v| !v.is_empty()))
        .unwrap_or_else(|| ":8080".to_owned())
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

    #[test]
    fn the_address_comes_from_flags_then_env() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            listen_from(&args(&["--http", ":1"]), Some(":2".into())),
            ":1"
        );
        assert_eq!(listen_from(&args(&["-http=:3"]), None), ":3");
        assert_eq!(listen_from(&args(&[]), Some(":2".into())), ":2");
        assert_eq!(listen_from(&args(&[]), None), ":8080");
    }
}
