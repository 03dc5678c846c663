//! The tokens the simulated users connect with: HS256 tokens signed with the hub's secret, or,
//! against a hub in development mode (no secret known), tokens asked of its `POST /dev/token`.
//!
//! One distinct user per connection (`u0`, `u1`, ...) because the hub allows only a few
//! connections per user. Tokens are made before any clock starts, so signing or fetching never
//! counts in a measured time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use crate::http::HttpClient;

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

/// Tokens for users `<prefix>0..<prefix>n` from a development-mode hub's `POST /dev/token`,
/// over one keep-alive connection to `base`.
pub async fn dev_tokens(base: &str, prefix: &str, n: usize) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: String,
    }
    let mut client = HttpClient::new(base, Duration::from_secs(5)).await?;
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let body = serde_json::json!({ "user": format!("{prefix}{i}") }).to_string();
        let answer = client
            .request(
                "POST",
                "/dev/token",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await
            .map_err(|e| anyhow!("POST {base}/dev/token: {e}"))?;
        if answer.status != 200 {
            bail!(
                "POST {base}/dev/token answered {}: {} (without --secret the hub must be in \
                 development mode)",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        let answer: Answer = serde_json::from_slice(&answer.body)
            .with_context(|| format!("the answer of POST {base}/dev/token"))?;
        tokens.push(answer.token);
    }
    Ok(tokens)
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
