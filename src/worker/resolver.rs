//! The endpoint's address, looked up without a thread.
//!
//! ureq's own resolver starts a thread for every lookup when a timeout is set, and it
//! is asked again for every request, even over a kept-alive connection. This one
//! answers an IP literal without any lookup, looks a name up once on the worker
//! thread (getaddrinfo; its time counts within the POST's global timeout, and the
//! system resolver's own timeouts bound a hung lookup), and keeps the answer until
//! `TTL` has passed or an attempt fails that did not look it up itself.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a looked-up address is used before it is looked up again. The system
/// resolver does not tell a record's own TTL; a minute follows a moved endpoint
/// soon enough and costs one lookup a minute under load.
pub const TTL: Duration = Duration::from_secs(60);

/// ureq keeps at most this many addresses per lookup.
const MAX_ADDRS: usize = 16;

#[derive(Debug, Default)]
struct Cached {
    /// The host and port the addresses are for.
    host: String,
    port: u16,
    addrs: Vec<SocketAddr>,
    at: Option<Instant>,
}

/// Shared by the agent (which asks) and the worker (which says when a connection
/// failed). Only the worker thread uses it, so the lock is never contended.
#[derive(Debug, Clone, Default)]
pub struct CachingResolver {
    cache: Arc<Mutex<Cached>>,
    /// Resolve this instead of the requested URI: the proxy that absolute-form
    /// requests go to (see `proxy`).
    via: Option<Uri>,
    /// Lookups made, for the tests and the bench.
    lookups: Arc<std::sync::atomic::AtomicU64>,
}

impl CachingResolver {
    /// Answers every lookup with the address of `proxy`.
    pub fn via(proxy: Uri) -> CachingResolver {
        CachingResolver {
            via: Some(proxy),
            ..CachingResolver::default()
        }
    }

    /// An attempt that began at `attempt_began` failed: the next one looks the name
    /// up again, unless this attempt looked it up itself. Asking again at once would
    /// bring the same answer at the same cost, and a lookup slower than
    /// `--post-timeout` would then fail every retry in turn.
    pub fn forget_unless_looked_up_since(&self, attempt_began: Instant) {
        if let Ok(mut cache) = self.cache.lock()
            && cache.at.is_some_and(|at| at < attempt_began)
        {
            cache.at = None;
        }
    }

    #[cfg(test)]
    pub fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The addresses of `host:port`, from the cache while it is fresh (no allocation
    /// then: this runs for every POST).
    fn lookup(
        &self,
        host: &str,
        port: u16,
        now: Instant,
        mut out: ResolvedSocketAddrs,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fresh = cache.at.is_some_and(|at| now.duration_since(at) < TTL);
        if !(fresh && cache.port == port && cache.host == host) {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.take(MAX_ADDRS).collect();
            if addrs.is_empty() {
                return Err(ureq::Error::HostNotFound);
            }
            *cache = Cached {
                host: host.to_owned(),
                port,
                addrs,
                at: Some(now),
            };
        }
        for addr in &cache.addrs {
            out.push(*addr);
        }
        Ok(out)
    }
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let uri = self.via.as_ref().unwrap_or(uri);
        let bad = || ureq::Error::BadUri(format!("{uri} has no host"));
        let host = uri.host().ok_or_else(bad)?;
        let port = uri
            .port_u16()
            .or_else(|| match uri.scheme_str() {
                Some(s) if s.eq_ignore_ascii_case("https") => Some(443),
                Some(s) if s.eq_ignore_ascii_case("http") => Some(80),
                _ => None,
            })
            .ok_or_else(bad)?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let mut out = self.empty();
        if let Ok(ip) = literal.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, port));
            return Ok(out);
        }
        self.lookup(host, port, Instant::now(), out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(r: &CachingResolver, url: &str) -> Vec<SocketAddr> {
        let uri: Uri = url.parse().unwrap();
        r.resolve(&uri, &Config::default(), NextTimeout::default())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn ip_literals_need_no_lookup() {
        let r = CachingResolver::default();
        assert_eq!(
            resolve(&r, "http://127.0.0.1:9/x"),
            ["127.0.0.1:9".parse().unwrap()]
        );
        assert_eq!(
            resolve(&r, "https://[::1]/x"),
            ["[::1]:443".parse().unwrap()]
        );
        assert_eq!(
            resolve(&r, "http://10.1.2.3/"),
            ["10.1.2.3:80".parse().unwrap()]
        );
        assert_eq!(r.lookups(), 0);
    }

    #[test]
    fn a_name_is_looked_up_once_until_forgotten() {
        let r = CachingResolver::default();
        let first = resolve(&r, "http://localhost:8080/x");
        assert!(!first.is_empty() && first.iter().all(|a| a.port() == 8080));
        for _ in 0..10 {
            assert_eq!(resolve(&r, "http://localhost:8080/x"), first);
        }
        assert_eq!(r.lookups(), 1);
        r.forget_unless_looked_up_since(Instant::now());
        resolve(&r, "http://localhost:8080/x");
        assert_eq!(r.lookups(), 2);
        // Another port of the same host is another key.
        resolve(&r, "http://localhost:9090/x");
        assert_eq!(r.lookups(), 3);
    }

    /// A lookup made by the failing attempt itself stays for the retry; one made
    /// before the attempt began goes.
    #[test]
    fn a_failed_attempt_keeps_only_the_lookup_it_made_itself() {
        let r = CachingResolver::default();
        let attempt_began = Instant::now();
        resolve(&r, "http://localhost:8080/x");
        r.forget_unless_looked_up_since(attempt_began);
        resolve(&r, "http://localhost:8080/x");
        assert_eq!(r.lookups(), 1, "looked up during the failed attempt: kept");
        r.forget_unless_looked_up_since(Instant::now() + Duration::from_millis(1));
        resolve(&r, "http://localhost:8080/x");
        assert_eq!(
            r.lookups(),
            2,
            "looked up by an earlier attempt: asked again"
        );
    }

    #[test]
    fn via_a_proxy_every_lookup_answers_with_the_proxy() {
        let r = CachingResolver::via("http://127.0.0.2:3128".parse().unwrap());
        assert_eq!(
            resolve(&r, "http://endpoint.invalid/x"),
            ["127.0.0.2:3128".parse().unwrap()]
        );
    }

    #[test]
    fn an_unknown_name_is_an_error_not_a_panic() {
        let r = CachingResolver::default();
        let uri: Uri = "http://no-such-host.invalid/x".parse().unwrap();
        assert!(
            r.resolve(&uri, &Config::default(), NextTimeout::default())
                .is_err()
        );
    }
}
