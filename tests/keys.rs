//! Key-based tokens (docs/protocol.md §2.2, `HUB_JWT_PUBLIC_KEY`): RS256 with an RSA public key, ES256 with
//! an EC P-256 public key, only the configured algorithm accepted (no algorithm confusion), and
//! `refresh` and live expiry working with them as with HS256.
//!
//! The key pairs are test-only fixtures under `tests/fixtures/` (see its README).

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("fixtures/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("fixtures/ec_public.pem");

/// Signs `claims` with `alg` and the test private key of that family.
fn sign_with(alg: Algorithm, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("RSA fixture"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE).expect("EC fixture"),
        other => panic!("no test key for {other:?}"),
    };
    encode(&Header::new(alg), claims, &key).expect("sign")
}

/// HS256 with arbitrary secret bytes (for algorithm confusion: the public key PEM as secret).
fn sign_hs256_bytes(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

/// Claims for `user` that may subscribe and publish anywhere, expiring in `ttl_s` seconds.
fn claims(user: &str, ttl_s: u64) -> Value {
    json!({"sub": user, "exp": now() + ttl_s, "channels": ["*"], "publish": ["*"]})
}

/// A node that verifies tokens with the public key in `fixture` (and no HS256 secret).
fn spawn_with_public_key(fixture_name: &str) -> TestApp {
    let path = fixture(fixture_name);
    spawn_app_args(&node_args(&["--jwt-public-key", &path], &[]))
}

/// The close a token gets when connecting.
async fn close_for(app: &TestApp, token: &str) -> (u16, String) {
    close_of(&format!("{}?token={token}", app.ws_url())).await
}

fn invalid() -> (u16, String) {
    (1008, "invalid token".to_owned())
}

// ---- Accepted ----

/// An RS256 token signed with the RSA private key connects when its public key is configured,
/// and its claims are used (user, `exp`, permissions).
#[actix_rt::test]
async fn rs256_token_connects_with_rsa_public_key() {
    let app = spawn_with_public_key("rsa_public.pem");
    let exp = now() + 600;
    let token = sign_with(
        Algorithm::RS256,
        &json!({"sub": "alice", "exp": exp, "channels": ["chat:*"], "publish": ["chat:*"]}),
    );
    let mut c = Client::connect_token(&app, &token).await;
    assert_eq!(c.welcome["user"], "alice");
    assert_eq!(c.welcome["expires_at"], exp);
    c.subscribe("chat:lobby").await;
    c.publish("chat:lobby", json!({"text": "signed with RSA"}))
        .await;
    let denied = c
        .request(json!({"type": "subscribe", "channel": "other:x"}))
        .await;
    assert_eq!(denied["code"], "forbidden", "{denied}");
}

/// An RS256 token also connects when the RSA public key is given as PKCS#1 (`RSA PUBLIC KEY`).
#[actix_rt::test]
async fn rs256_token_connects_with_pkcs1_rsa_public_key() {
    let app = spawn_with_public_key("rsa_public_pkcs1.pem");
    let c = Client::connect_token(&app, &sign_with(Algorithm::RS256, &claims("alice", 600))).await;
    assert_eq!(c.welcome["user"], "alice");
}

/// An ES256 token signed with the P-256 private key connects when its public key is configured.
#[actix_rt::test]
async fn es256_token_connects_with_ec_public_key() {
    let app = spawn_with_public_key("ec_public.pem");
    let exp = now() + 600;
    let token = sign_with(
        Algorithm::ES256,
        &json!({"sub": "bob", "exp": exp, "channels": ["chat:*"], "publish": ["chat:*"]}),
    );
    let mut c = Client::connect_token(&app, &token).await;
    assert_eq!(c.welcome["user"], "bob");
    assert_eq!(c.welcome["expires_at"], exp);
    c.subscribe("chat:lobby").await;
    c.publish("chat:lobby", json!({"text": "signed with EC"}))
        .await;
}

/// With both a secret and a public key configured, HS256 tokens signed with the secret and
/// RS256 tokens signed with the private key are both accepted.
#[actix_rt::test]
async fn secret_and_public_key_together_accept_both() {
    let app = spawn_app_with(&["--jwt-public-key", &fixture("rsa_public.pem")]);
    let hs = Client::connect(&app, "alice").await;
    assert_eq!(hs.welcome["user"], "alice");
    let rs = Client::connect_token(&app, &sign_with(Algorithm::RS256, &claims("bob", 600))).await;
    assert_eq!(rs.welcome["user"], "bob");
}

// ---- Refused ----

/// Algorithm confusion: an HS256 token whose secret is the RSA public key PEM is `invalid token`.
#[actix_rt::test]
async fn hs256_signed_with_rsa_public_pem_is_invalid() {
    let app = spawn_with_public_key("rsa_public.pem");
    let token = sign_hs256_bytes(&claims("mallory", 600), RSA_PUBLIC);
    assert_eq!(close_for(&app, &token).await, invalid());
}

/// Algorithm confusion: an HS256 token whose secret is the EC public key PEM is `invalid token`.
#[actix_rt::test]
async fn hs256_signed_with_ec_public_pem_is_invalid() {
    let app = spawn_with_public_key("ec_public.pem");
    let token = sign_hs256_bytes(&claims("mallory", 600), EC_PUBLIC);
    assert_eq!(close_for(&app, &token).await, invalid());
}

/// Algorithm confusion stays refused when an HS256 secret is configured as well: the public key
/// is never used as an HMAC secret.
#[actix_rt::test]
async fn hs256_signed_with_public_pem_is_invalid_alongside_a_secret() {
    let app = spawn_app_with(&["--jwt-public-key", &fixture("rsa_public.pem")]);
    let token = sign_hs256_bytes(&claims("mallory", 600), RSA_PUBLIC);
    assert_eq!(close_for(&app, &token).await, invalid());
}

/// With only a public key configured, an HS256 token (signed with any secret) is `invalid token`.
#[actix_rt::test]
async fn hs256_token_is_invalid_with_only_a_public_key() {
    let app = spawn_with_public_key("rsa_public.pem");
    assert_eq!(close_for(&app, &token("alice")).await, invalid());
    let ec = spawn_with_public_key("ec_public.pem");
    assert_eq!(close_for(&ec, &token("alice")).await, invalid());
}

/// With an RSA key configured, only RS256 is accepted: RS384, RS512, PS256 (same key) and ES256
/// are `invalid token`.
#[actix_rt::test]
async fn unconfigured_algorithms_are_invalid_with_rsa_key() {
    let app = spawn_with_public_key("rsa_public.pem");
    for alg in [
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
    ] {
        let token = sign_with(alg, &claims("alice", 600));
        assert_eq!(close_for(&app, &token).await, invalid(), "{alg:?}");
    }
}

/// With an EC key configured, only ES256 is accepted: RS256 is `invalid token`.
#[actix_rt::test]
async fn rs256_is_invalid_with_ec_key() {
    let app = spawn_with_public_key("ec_public.pem");
    let token = sign_with(Algorithm::RS256, &claims("alice", 600));
    assert_eq!(close_for(&app, &token).await, invalid());
}

/// An RS256 token whose payload was swapped (the signature no longer matches) is `invalid token`.
#[actix_rt::test]
async fn rs256_token_with_swapped_payload_is_invalid() {
    let app = spawn_with_public_key("rsa_public.pem");
    let alice = sign_with(Algorithm::RS256, &claims("alice", 600));
    let admin = sign_with(
        Algorithm::RS256,
        &json!({"sub": "alice", "exp": now() + 600, "channels": ["*", "admin:*"], "publish": ["*"]}),
    );
    let parts: Vec<&str> = alice.split('.').collect();
    let other: Vec<&str> = admin.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], other[1], parts[2]);
    assert_eq!(close_for(&app, &forged).await, invalid());
}

/// An RS256 token past its `exp` is refused as `token expired`.
#[actix_rt::test]
async fn expired_rs256_token_is_token_expired() {
    let app = spawn_with_public_key("rsa_public.pem");
    let token = sign_with(
        Algorithm::RS256,
        &json!({"sub": "alice", "exp": now() - 60, "channels": ["*"]}),
    );
    assert_eq!(
        close_for(&app, &token).await,
        (1008, "token expired".to_owned())
    );
}

/// An RS256 token without `sub` or without `exp` is `invalid token`.
#[actix_rt::test]
async fn rs256_token_without_sub_or_exp_is_invalid() {
    let app = spawn_with_public_key("rsa_public.pem");
    let no_sub = sign_with(Algorithm::RS256, &json!({"exp": now() + 600}));
    assert_eq!(close_for(&app, &no_sub).await, invalid());
    let no_exp = sign_with(Algorithm::RS256, &json!({"sub": "alice"}));
    assert_eq!(close_for(&app, &no_exp).await, invalid());
}

// ---- refresh and live expiry ----

/// An ES256 token that expires while connected closes the socket with 1008 `token expired`.
#[actix_rt::test]
async fn es256_token_expiring_while_connected_closes_with_token_expired() {
    let app = spawn_with_public_key("ec_public.pem");
    let mut c =
        Client::connect_token(&app, &sign_with(Algorithm::ES256, &claims("alice", 1))).await;
    assert_eq!(c.expect_close().await, (1008, "token expired".to_owned()));
}

/// An RS256 token that expires while connected closes the socket with 1008 `token expired`.
#[actix_rt::test]
async fn rs256_token_expiring_while_connected_closes_with_token_expired() {
    let app = spawn_with_public_key("rsa_public.pem");
    let mut c =
        Client::connect_token(&app, &sign_with(Algorithm::RS256, &claims("alice", 1))).await;
    assert_eq!(c.expect_close().await, (1008, "token expired".to_owned()));
}

/// `refresh` with a new RS256 token answers its `exp` and replaces the old expiry: the socket
/// stays open past the first token's `exp` (plus the leeway).
#[actix_rt::test]
async fn refresh_with_rs256_token_outlives_the_first_token() {
    let app = spawn_with_public_key("rsa_public.pem");
    let mut c =
        Client::connect_token(&app, &sign_with(Algorithm::RS256, &claims("alice", 1))).await;
    let new_exp = now() + 3600;
    let fresh = sign_with(
        Algorithm::RS256,
        &json!({"sub": "alice", "exp": new_exp, "channels": ["*"], "publish": ["*"]}),
    );
    let r = c.request(json!({"type": "refresh", "token": fresh})).await;
    assert_eq!(r["type"], "refreshed", "{r}");
    assert_eq!(r["expires_at"], new_exp);
    // The first token's exp (1 s) plus the hub's leeway (at most 5 s per the contract, 2 s here)
    // passes during this wait; the socket must not be closed.
    c.expect_silence(Duration::from_millis(3_500)).await;
    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

/// `refresh` works with ES256 tokens too.
#[actix_rt::test]
async fn refresh_with_es256_token_answers_new_expiry() {
    let app = spawn_with_public_key("ec_public.pem");
    let mut c =
        Client::connect_token(&app, &sign_with(Algorithm::ES256, &claims("alice", 600))).await;
    let new_exp = now() + 7200;
    let fresh = sign_with(Algorithm::ES256, &json!({"sub": "alice", "exp": new_exp}));
    let r = c.request(json!({"type": "refresh", "token": fresh})).await;
    assert_eq!(r["type"], "refreshed", "{r}");
    assert_eq!(r["expires_at"], new_exp);
}

/// `refresh` with a key-based token for another `sub` is `forbidden`; the connection stays open.
#[actix_rt::test]
async fn refresh_with_rs256_token_of_another_user_is_forbidden() {
    let app = spawn_with_public_key("rsa_public.pem");
    let mut c =
        Client::connect_token(&app, &sign_with(Algorithm::RS256, &claims("alice", 600))).await;
    let other = sign_with(Algorithm::RS256, &claims("bob", 600));
    let r = c.request(json!({"type": "refresh", "token": other})).await;
    assert_eq!(
        (r["type"].clone(), r["code"].clone()),
        (json!("error"), json!("forbidden"))
    );
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

/// `refresh` with an algorithm-confusion token (HS256 keyed with the public PEM) or an HS256
/// token on a public-key-only node is refused with an error; the connection stays open and
/// keeps its identity.
#[actix_rt::test]
async fn refresh_with_confused_or_hs256_token_is_refused() {
    let app = spawn_with_public_key("rsa_public.pem");
    let mut c =
        Client::connect_token(&app, &sign_with(Algorithm::RS256, &claims("alice", 600))).await;
    for bad in [
        sign_hs256_bytes(&claims("alice", 3600), RSA_PUBLIC),
        token("alice"),
    ] {
        let r = c.request(json!({"type": "refresh", "token": bad})).await;
        assert_eq!(r["type"], "error", "{r}");
        assert!(r["code"].is_string(), "{r}");
    }
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}
