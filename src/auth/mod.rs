//! Who a connection is and what it may do: JWT verification (HS256 with a secret, RS256/ES256
//! with a public key, nothing else), the claims the hub uses, and channel permissions.
//! Knows nothing about sockets or engines.

mod pattern;

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use pattern::Pattern;

use crate::clock::unix_seconds;
use crate::config::Config;
use crate::protocol::Close;

/// Clock leeway for `exp` and `nbf`: tolerates small clock skew between the token issuer and
/// the hub; the contract allows at most 5 s.
pub const LEEWAY_S: u64 = 2;

/// Why a token was refused; each maps to one close reason of the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Invalid(String),
    Expired,
}

impl AuthError {
    pub fn close(&self) -> Close {
        match self {
            AuthError::Invalid(_) => Close::InvalidToken,
            AuthError::Expired => Close::TokenExpired,
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Invalid(why) => write!(f, "invalid token: {why}"),
            AuthError::Expired => f.write_str("token expired"),
        }
    }
}

/// The claims the hub reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    channels: Option<Vec<String>>,
    publish: Option<Vec<String>>,
    info: Option<Box<RawValue>>,
}

/// A verified user and what the token lets them do.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    /// The token's `exp`, Unix seconds.
    pub expires_at: u64,
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
    /// The token's `info`, shown to others in presence.
    pub info: Option<Arc<RawValue>>,
}

impl Identity {
    /// `user:<sub>` belongs to its user alone; other channels follow the token's patterns.
    pub fn can_subscribe(&self, channel: &str) -> bool {
        match channel.strip_prefix("user:") {
            Some(owner) => owner == self.user,
            None => pattern::any_match(&self.subscribe, channel),
        }
    }

    /// Publishing needs a matching `publish` pattern; another user's personal channel is never
    /// open to a client, whatever its patterns.
    pub fn can_publish(&self, channel: &str) -> bool {
        match channel.strip_prefix("user:") {
            Some(owner) if owner != self.user => false,
            _ => pattern::any_match(&self.publish, channel),
        }
    }
}

/// Verifies tokens with the configured keys only.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
    /// `HUB_JWT_AUDIENCE`: when set, a token without this `aud` is invalid.
    audience: Option<String>,
    /// `HUB_JWT_ISSUER`: when set, a token without this `iss` is invalid.
    issuer: Option<String>,
    default_subscribe: Vec<Pattern>,
    default_publish: Vec<Pattern>,
}

impl Verifier {
    pub fn new(config: &Config) -> Result<Self, String> {
        let hs256 = config.jwt.secret.as_deref().map(DecodingKey::from_secret);
        let public = config
            .jwt
            .public_key_pem
            .as_deref()
            .map(public_key)
            .transpose()?;
        Ok(Verifier {
            hs256,
            public,
            audience: config.jwt.audience.clone(),
            issuer: config.jwt.issuer.clone(),
            default_subscribe: config
                .default_channels
                .iter()
                .map(|p| Pattern::new(p))
                .collect(),
            default_publish: config
                .default_publish
                .iter()
                .map(|p| Pattern::new(p))
                .collect(),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Invalid(format!("malformed: {e}")))?;
        let key = match (header.alg, &self.hs256, &self.public) {
            (Algorithm::HS256, Some(key), _) => key,
            (alg, _, Some((key, configured))) if alg == *configured => key,
            (alg, _, _) => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {alg:?} is not accepted"
                )))
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = LEEWAY_S;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })?
            .claims;
        let user = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Invalid("missing or empty `sub`".into()))?;
        let info = match claims.info {
            Some(raw) if raw.get().trim_start().starts_with('{') => Some(Arc::from(raw)),
            Some(_) => return Err(AuthError::Invalid("`info` must be an object".into())),
            None => None,
        };
        let patterns = |given: Option<Vec<String>>, default: &Vec<Pattern>| match given {
            Some(list) => list.iter().map(|p| Pattern::new(p)).collect(),
            None => default.clone(),
        };
        Ok(Identity {
            subscribe: patterns(claims.channels, &self.default_subscribe),
            publish: patterns(claims.publish, &self.default_publish),
            user,
            expires_at: claims.exp,
            info,
        })
    }
}

/// The verifying key and algorithm of a PEM public key: RS256 for RSA, ES256 for EC P-256.
/// An EC key on another curve parses, but could verify no ES256 token: it is refused here, at
/// start, rather than every token later.
fn public_key(pem: &[u8]) -> Result<(DecodingKey, Algorithm), String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, Algorithm::RS256));
    }
    let key = DecodingKey::from_ec_pem(pem).map_err(|e| {
        format!("HUB_JWT_PUBLIC_KEY is neither an RSA nor an EC public key in PEM: {e}")
    })?;
    // Building the ES256 verifier is what checks the curve: with an empty signature the
    // check can only fail, but building it fails only when the key is not a P-256 point.
    jsonwebtoken::crypto::verify("", b"", &key, Algorithm::ES256).map_err(|_| {
        "HUB_JWT_PUBLIC_KEY is an EC key on a curve other than P-256: \
         only RSA (RS256) and EC P-256 (ES256) keys are supported"
            .to_owned()
    })?;
    Ok((key, Algorithm::ES256))
}

/// What a minted token grants.
#[derive(Debug, Serialize)]
pub struct MintClaims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
}

impl MintClaims {
    pub fn new(
        user: &str,
        ttl_s: u64,
        channels: Option<Vec<String>>,
        publish: Option<Vec<String>>,
    ) -> Self {
        let now = unix_seconds();
        MintClaims {
            sub: user.to_owned(),
            exp: now + ttl_s,
            iat: now,
            channels,
            publish,
        }
    }
}

/// Signs claims with an HS256 secret (development tokens and the `token` subcommand).
pub fn mint_hs256(claims: &MintClaims, secret: &[u8]) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::ServeArgs;

    const SECRET: &str = "unit-secret";

    fn verifier(args: &[&str]) -> Verifier {
        let mut all = vec!["realtime-hub", "--jwt-secret", SECRET];
        all.extend_from_slice(args);
        let config = ServeArgs::from_args(all)
            .and_then(ServeArgs::into_config)
            .expect("config");
        Verifier::new(&config).expect("verifier")
    }

    fn token(extra: serde_json::Value) -> String {
        let mut claims = json!({"sub": "alice", "exp": unix_seconds() + 60});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("sign")
    }

    fn is_invalid(r: Result<Identity, AuthError>) -> bool {
        matches!(r, Err(AuthError::Invalid(_)))
    }

    /// Without `HUB_JWT_AUDIENCE` and `HUB_JWT_ISSUER`, `aud` and `iss` are not looked at.
    #[test]
    fn aud_and_iss_are_ignored_when_not_configured() {
        let v = verifier(&[]);
        assert!(v.verify(&token(json!({}))).is_ok());
        assert!(v
            .verify(&token(json!({"aud": "other", "iss": "x"})))
            .is_ok());
    }

    /// With `HUB_JWT_AUDIENCE`, a token passes only with that audience among its `aud`.
    #[test]
    fn audience_is_required_when_configured() {
        let v = verifier(&["--jwt-audience", "hub"]);
        assert!(v.verify(&token(json!({"aud": "hub"}))).is_ok());
        assert!(v.verify(&token(json!({"aud": ["api", "hub"]}))).is_ok());
        assert!(is_invalid(v.verify(&token(json!({})))));
        assert!(is_invalid(v.verify(&token(json!({"aud": "other"})))));
        assert!(is_invalid(v.verify(&token(json!({"aud": []})))));
        assert!(is_invalid(v.verify(&token(json!({"aud": 7})))));
    }

    /// With `HUB_JWT_ISSUER`, a token passes only with exactly that `iss`.
    #[test]
    fn issuer_is_required_when_configured() {
        let v = verifier(&["--jwt-issuer", "https://auth.example"]);
        assert!(v
            .verify(&token(json!({"iss": "https://auth.example"})))
            .is_ok());
        assert!(is_invalid(v.verify(&token(json!({})))));
        assert!(is_invalid(v.verify(&token(json!({"iss": "https://evil"})))));
        assert!(is_invalid(v.verify(&token(json!({"iss": 1})))));
    }

    /// An RSA or EC P-256 key is taken with its algorithm; a P-384 key is refused with a
    /// message naming the setting.
    #[test]
    fn only_rsa_and_p256_public_keys_are_taken() {
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/tests/fixtures/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .expect("fixture")
        };
        let alg = |name: &str| public_key(&fixture(name)).map(|(_, alg)| alg);
        assert_eq!(alg("rsa_public.pem"), Ok(Algorithm::RS256));
        assert_eq!(alg("ec_public.pem"), Ok(Algorithm::ES256));
        let e = alg("ec_p384_public.pem").expect_err("P-384");
        assert!(
            e.contains("HUB_JWT_PUBLIC_KEY") && e.contains("P-256"),
            "{e}"
        );
    }
}
