//! The inbound bearer token that `POST /log` and `GET /metrics` may require.
//!
//! Only the token's SHA-256 digest is kept, so the token itself can never reach a log
//! line or a `Debug` print. A presented token is hashed the same way and the two
//! fixed-size digests are compared in constant time: the time taken depends neither
//! on where the first wrong byte is nor on the real token's length.

use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

const DIGEST_LEN: usize = 32;

/// What a request's `Authorization` header amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token is required here.
    Open,
    Granted,
    /// No `Authorization: Bearer …` header (or a repeated one).
    Missing,
    Wrong,
}

#[derive(Clone)]
pub struct BearerToken {
    digest: [u8; DIGEST_LEN],
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(not shown)")
    }
}

impl BearerToken {
    pub fn new(token: &[u8]) -> BearerToken {
        BearerToken {
            digest: hash(token),
        }
    }

    /// Judges an `Authorization` header value: `Bearer <token>`, the scheme in any case.
    pub fn check(&self, authorization: Option<&[u8]>) -> Access {
        let Some(value) = authorization else {
            return Access::Missing;
        };
        let Some(presented) = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| value[7..].trim_ascii())
        else {
            return Access::Missing;
        };
        if bool::from(hash(presented).ct_eq(&self.digest)) {
            Access::Granted
        } else {
            Access::Wrong
        }
    }
}

fn hash(bytes: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_bearer_token_is_granted() {
        let token = BearerToken::new(b"s3cret-token");
        assert_eq!(token.check(Some(b"Bearer s3cret-token")), Access::Granted);
        assert_eq!(token.check(Some(b"bearer   s3cret-token")), Access::Granted);
        assert_eq!(token.check(Some(b"Bearer s3cret-tokeN")), Access::Wrong);
        assert_eq!(token.check(Some(b"Bearer s3cret")), Access::Wrong);
        assert_eq!(token.check(Some(b"Bearer ")), Access::Wrong);
        assert_eq!(token.check(Some(b"Basic czNjcmV0")), Access::Missing);
        assert_eq!(token.check(Some(b"s3cret-token")), Access::Missing);
        assert_eq!(token.check(Some(b"Bearer")), Access::Missing);
        assert_eq!(token.check(None), Access::Missing);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let shown = format!("{:?}", BearerToken::new(b"s3cret-token"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
