//! Mints the HS256 tokens the simulated users connect with.
//!
//! One distinct user per connection (`u0`, `u1`, ...) because the hub allows only a few
//! connections per user. Tokens are minted before any clock starts, so signing never counts
//! in a measured time.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

/// The claims the hub reads: `sub`, `exp`, and the subscribe patterns.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    channels: &'a [String],
}

/// Signs tokens for `<prefix><index>` users with one secret and one set of patterns.
pub struct TokenMinter {
    key: EncodingKey,
    header: Header,
    prefix: String,
    channels: Vec<String>,
    exp: u64,
}

impl TokenMinter {
    pub fn new(secret: &str, prefix: &str, channels: Vec<String>, ttl_s: u64) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::default(), // HS256
            prefix: prefix.to_string(),
            channels,
            exp: now + ttl_s,
        }
    }

    /// The user id of connection `index`.
    pub fn user(&self, index: usize) -> String {
        format!("{}{index}", self.prefix)
    }

    /// A token for connection `index`.
    pub fn mint(&self, index: usize) -> Result<String> {
        let user = self.user(index);
        let claims = Claims {
            sub: &user,
            exp: self.exp,
            channels: &self.channels,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .with_context(|| format!("signing the token of {user}"))
    }

    /// Tokens for connections `0..n`, in order.
    pub fn mint_all(&self, n: usize) -> Result<Vec<String>> {
        (0..n).map(|i| self.mint(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Back {
        sub: String,
        channels: Vec<String>,
    }

    #[test]
    fn tokens_verify_with_the_same_secret() {
        let m = TokenMinter::new("s", "u", vec!["bench:*".into()], 60);
        let t = m.mint(7).expect("mint");
        let back = decode::<Back>(
            &t,
            &DecodingKey::from_secret(b"s"),
            &Validation::new(Algorithm::HS256),
        )
        .expect("verify");
        assert_eq!(back.claims.sub, "u7");
        assert_eq!(back.claims.channels, ["bench:*"]);
    }
}
