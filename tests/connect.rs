//! Connecting: tokens, origins, the per-user connection limit, welcome (docs/protocol.md §2).
mod common;
use common::*;
use serde_json::json;

fn url_with(app: &TestApp, token: &str) -> String {
    format!("{}?token={}", app.ws_url(), token)
}

/// The first frame names the connection, the user, the node and the token's expiry.
#[actix_rt::test]
async fn welcome_names_client_user_node_and_expiry() {
    let app = spawn_app_with(&["--node-id", "node-a"]);
    let exp = now() + 600;
    let c = Client::connect_token(&app, &token_with("alice", json!({"exp": exp}))).await;
    assert_eq!(c.welcome["user"], "alice");
    assert_eq!(c.welcome["node"], "node-a");
    assert_eq!(c.welcome["expires_at"], exp);
    assert!(!c.client_id().is_empty());
}

/// Services may put the token in `Authorization: Bearer` instead of the query.
#[actix_rt::test]
async fn bearer_header_authenticates() {
    let app = spawn_app();
    let auth = format!("Bearer {}", token("svc"));
    let mut ws = open_with_headers(&app.ws_url(), &[("Authorization", &auth)]).await;
    use futures_util::StreamExt;
    let first = ws.next().await.expect("frame").expect("ok");
    let v: serde_json::Value = serde_json::from_str(first.to_text().expect("text")).expect("json");
    assert_eq!(v["type"], "welcome");
    assert_eq!(v["user"], "svc");
}

/// The `Bearer` scheme of the `Authorization` header is matched case-insensitively (RFC 9110).
#[actix_rt::test]
async fn bearer_scheme_is_case_insensitive() {
    let app = spawn_app();
    for scheme in ["BEARER", "bEaReR"] {
        let auth = format!("{scheme} {}", token("svc"));
        let mut ws = open_with_headers(&app.ws_url(), &[("Authorization", &auth)]).await;
        use futures_util::StreamExt;
        let first = ws.next().await.expect("frame").expect("ok");
        let v: serde_json::Value =
            serde_json::from_str(first.to_text().expect("text")).expect("json");
        assert_eq!(v["type"], "welcome", "{scheme}: {v}");
    }
}

/// Every malformed or unacceptable token closes with 1008 `invalid token`.
#[actix_rt::test]
async fn hostile_tokens_close_with_invalid_token() {
    let app = spawn_app();
    let exp = now() + 600;
    let none_alg = {
        use base64_url as b64;
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&json!({"sub": "x", "exp": exp}).to_string())
        )
    };
    let cases = vec![
        ("missing", String::new()),
        ("garbage", "not.a.jwt".to_owned()),
        ("alg none", none_alg),
        (
            "wrong key",
            sign(&json!({"sub": "x", "exp": exp}), "another-secret"),
        ),
        (
            "future nbf",
            sign(&json!({"sub": "x", "exp": exp, "nbf": now() + 120}), SECRET),
        ),
        ("missing exp", sign(&json!({"sub": "x"}), SECRET)),
        ("missing sub", sign(&json!({"exp": exp}), SECRET)),
        ("empty sub", sign(&json!({"sub": "", "exp": exp}), SECRET)),
        ("numeric sub", sign(&json!({"sub": 5, "exp": exp}), SECRET)),
        (
            "info not an object",
            sign(&json!({"sub": "x", "exp": exp, "info": [1]}), SECRET),
        ),
    ];
    for (name, token) in cases {
        let url = if token.is_empty() {
            app.ws_url()
        } else {
            url_with(&app, &token)
        };
        assert_eq!(
            close_of(&url).await,
            (1008, "invalid token".to_owned()),
            "{name}"
        );
    }
}

fn base64_url(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A token whose `exp` has passed closes with 1008 `token expired`.
#[actix_rt::test]
async fn expired_token_closes_with_token_expired() {
    let app = spawn_app();
    let t = sign(&json!({"sub": "x", "exp": now() - 60}), SECRET);
    assert_eq!(
        close_of(&url_with(&app, &t)).await,
        (1008, "token expired".to_owned())
    );
}

/// Clock leeway is at most 5 s: a token expired 10 s ago closes with 1008 `token expired`, and
/// one valid only from 10 s from now with 1008 `invalid token`.
#[actix_rt::test]
async fn token_leeway_is_at_most_5s() {
    let app = spawn_app();
    let expired = sign(&json!({"sub": "x", "exp": now() - 10}), SECRET);
    assert_eq!(
        close_of(&url_with(&app, &expired)).await,
        (1008, "token expired".to_owned())
    );
    let early = sign(
        &json!({"sub": "x", "exp": now() + 600, "nbf": now() + 10}),
        SECRET,
    );
    assert_eq!(
        close_of(&url_with(&app, &early)).await,
        (1008, "invalid token".to_owned())
    );
}

/// A browser from another origin is refused; no Origin (not a browser) and the same host pass.
#[actix_rt::test]
async fn foreign_origins_are_refused_by_default() {
    let app = spawn_app();
    let url = url_with(&app, &token("o"));
    let mut ws = open_with_headers(&url, &[("Origin", "http://evil.example")]).await;
    assert_eq!(
        expect_close(&mut ws).await,
        (1008, "origin not allowed".to_owned())
    );
    let same = format!("http://{}", app.addr);
    let mut ws = open_with_headers(&url, &[("Origin", &same)]).await;
    use futures_util::StreamExt;
    let first = ws.next().await.expect("frame").expect("ok");
    assert!(first.to_text().expect("text").contains("welcome"));
}

/// `HUB_ALLOWED_ORIGINS` lists the origins browsers may come from, besides the hub's own host
/// (its demo page); any other origin is refused.
#[actix_rt::test]
async fn configured_origins_are_allowed() {
    let app = spawn_app_with(&["--allowed-origins", "https://app.example,https://b.example"]);
    let url = url_with(&app, &token("o"));
    use futures_util::StreamExt;
    for origin in [
        "https://b.example".to_owned(),
        format!("http://{}", app.addr),
    ] {
        let mut ws = open_with_headers(&url, &[("Origin", &origin)]).await;
        let first = ws.next().await.expect("frame").expect("ok");
        assert!(
            first.to_text().expect("text").contains("welcome"),
            "{origin}"
        );
    }
    let mut ws = open_with_headers(&url, &[("Origin", "https://c.example")]).await;
    assert_eq!(
        expect_close(&mut ws).await,
        (1008, "origin not allowed".to_owned())
    );
}

/// A user past the connection limit is refused; a closed connection frees its slot.
#[actix_rt::test]
async fn connection_limit_per_user() {
    let app = spawn_app_with(&["--max-connections-per-user", "2"]);
    let a = Client::connect(&app, "bob").await;
    let _b = Client::connect(&app, "bob").await;
    assert_eq!(
        close_of(&url_with(&app, &token("bob"))).await,
        (1008, "connection limit".to_owned())
    );
    let _other = Client::connect(&app, "carol").await;
    drop(a);
    // The slot comes back once the hub has seen the socket go.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut ws = open(&url_with(&app, &token("bob"))).await;
        use futures_util::StreamExt;
        match ws.next().await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) if t.contains("welcome") => {
                break
            }
            _ => assert!(std::time::Instant::now() < deadline, "slot never released"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A token that expires while connected closes the connection with 1008 `token expired`.
#[actix_rt::test]
async fn token_expiring_while_connected_closes_the_connection() {
    let app = spawn_app();
    let mut c = Client::connect_token(&app, &token_with("eve", json!({"exp": now() + 1}))).await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(8), c.expect_close()).await;
    assert_eq!(
        closed.expect("closed in time"),
        (1008, "token expired".to_owned())
    );
}

/// `refresh` with a new token of the same user postpones the expiry.
#[actix_rt::test]
async fn refresh_postpones_expiry() {
    let app = spawn_app();
    let mut c = Client::connect_token(&app, &token_with("eve", json!({"exp": now() + 1}))).await;
    let exp = now() + 3600;
    let r = c
        .request(json!({"type": "refresh", "token": token_with("eve", json!({"exp": exp}))}))
        .await;
    assert_eq!(r["type"], "refreshed");
    assert_eq!(r["expires_at"], exp);
    c.expect_silence(std::time::Duration::from_secs(5)).await;
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

/// `refresh` refuses another user's token and bad tokens, and the connection stays open.
#[actix_rt::test]
async fn refresh_refuses_other_users_and_bad_tokens() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "eve").await;
    let r = c
        .request(json!({"type": "refresh", "token": token("mallory")}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    let r = c
        .request(json!({"type": "refresh", "token": "garbage"}))
        .await;
    assert_eq!(r["code"], "forbidden");
    let r = c
        .request(json!({"type": "refresh", "token": sign(&json!({"sub": "eve", "exp": now() - 100}), SECRET)}))
        .await;
    assert_eq!(r["code"], "forbidden");
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

/// The server pings idle connections at the configured interval.
#[actix_rt::test]
async fn server_pings_at_the_interval() {
    let app = spawn_app_with(&["--ping-interval-s", "1"]);
    let mut ws = open(&url_with(&app, &token("p"))).await;
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a ping in time")
        {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_))) => break,
            Some(Ok(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A peer that answers no ping for two intervals is dropped.
#[actix_rt::test]
async fn silent_peer_is_dropped_after_two_intervals() {
    let app = spawn_app_with(&["--ping-interval-s", "1"]);
    // A raw socket that completes the upgrade and then never answers anything.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.expect("tcp");
    let req = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("silent"),
        app.addr
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(8), tcp.read(&mut buf))
            .await
            .expect("the hub drops the silent peer in time");
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1900),
        "dropped too early"
    );
}
