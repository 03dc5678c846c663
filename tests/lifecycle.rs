//! The real `realtime-hub` binary as an operator runs it (docs/protocol.md §7–§9): development mode and
//! its generated API key and `/dev/token`, the server API without a key, the `token`
//! subcommand, graceful shutdown on SIGTERM/SIGINT, and clear failures on bad configuration.
//!
//! Every hub here is a subprocess on port 0 (see `common::process`), configured through `HUB_*` variables only
//! (the test's own `HUB_*` environment is removed).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

/// What a graceful stop may take: the configured shutdown timeout plus a margin.
const SHUTDOWN_TIMEOUT_S: u64 = 2;
const EXIT_WITHIN: Duration = Duration::from_secs(SHUTDOWN_TIMEOUT_S + 3);

// ---- Development mode ----

/// Development mode (no secret, no public key) prints a generated API key once on stdout (not in
/// the logs), and that key opens the server API.
#[actix_rt::test]
async fn dev_mode_prints_a_working_api_key_once() {
    let mut hub = HubProcess::start(&[]);
    let line = hub
        .stdout
        .wait_for(WAIT, |l| l.contains("API key:"))
        .expect("an `API key:` line on stdout");
    let key = line
        .split("API key:")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(key.len() >= 16, "a generated key of some length: `{key}`");
    assert!(
        hub.stdout.text().contains(&format!("http://{}/", hub.addr)),
        "the banner names the address: {}",
        hub.stdout.text()
    );

    let publish = hub.http("/api/publish");
    let body = r#"{"channel":"chat:lobby","data":{"text":"hi"}}"#;
    let (status, answer) = post_url(&publish, Some(&key), body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["channel"], "chat:lobby");
    let (status, answer) = post_url(&publish, None, body).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _) = post_url(&publish, Some("not-the-key"), body).await;
    assert_eq!(status, 401);

    hub.signal("TERM");
    assert!(hub.wait_exit(EXIT_WITHIN).success());
    let stdout = hub.stdout.all_after_exit();
    let stderr = hub.stderr.all_after_exit();
    assert_eq!(
        stdout.lines().filter(|l| l.contains("API key:")).count(),
        1,
        "printed once:\n{stdout}"
    );
    assert!(
        !stderr.contains(&key),
        "the key must not be logged:\n{stderr}"
    );
}

/// In development mode a configured `HUB_API_KEY` is the key (no generated one replaces it), and
/// being the operator's secret it is not printed.
#[actix_rt::test]
async fn dev_mode_uses_a_configured_api_key_without_printing_it() {
    let mut hub = HubProcess::start(&[("HUB_API_KEY", API_KEY)]);
    let (status, answer) = get_url(&hub.http("/api/info"), Some(API_KEY)).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = post_url(&hub.http("/dev/token"), None, r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200, "still development mode");
    hub.signal("TERM");
    assert!(hub.wait_exit(EXIT_WITHIN).success());
    let output = format!(
        "{}\n{}",
        hub.stdout.all_after_exit(),
        hub.stderr.all_after_exit()
    );
    assert!(
        !output.contains(API_KEY),
        "the configured key is not shown:\n{output}"
    );
}

/// In development mode `POST /dev/token` gives a token for the user that connects, may subscribe
/// `chat:*`, `dashboard:*` and `user:<user>`, may publish `chat:*`, and nothing else.
#[actix_rt::test]
async fn dev_token_grants_the_development_rights() {
    let hub = HubProcess::start(&[]);
    let (status, answer) = post_url(&hub.http("/dev/token"), None, r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200, "{answer}");
    let token = answer["token"].as_str().expect("a token").to_owned();

    let mut c = Client::connect_url(&hub.ws_url(), &token).await;
    assert_eq!(c.welcome["user"], "alice");
    let expires_at = c.welcome["expires_at"].as_u64().expect("expires_at");
    assert!(
        (now() + 3600 - 10..=now() + 3600 + 10).contains(&expires_at),
        "valid for an hour: {expires_at}"
    );
    for channel in ["chat:lobby", "dashboard:hub", "user:alice"] {
        c.subscribe(channel).await;
    }
    for channel in ["other:x", "user:bob", "lobby"] {
        let r = c
            .request(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(r["code"], "forbidden", "subscribe {channel}: {r}");
    }
    c.publish("chat:lobby", json!({"text": "hello"})).await;
    for channel in ["dashboard:hub", "other:x", "user:alice"] {
        let r = c
            .request(json!({"type": "publish", "channel": channel, "data": {}}))
            .await;
        assert_eq!(r["code"], "forbidden", "publish {channel}: {r}");
    }
}

/// `POST /dev/token` with a bad body or an unusable user name is 400 `bad_request`.
#[actix_rt::test]
async fn dev_token_with_bad_body_is_bad_request() {
    let hub = HubProcess::start(&[]);
    for body in [
        "{}",
        r#"{"user":""}"#,
        r#"{"user":5}"#,
        r#"{"user":"a b"}"#,
        "nope",
    ] {
        let (status, answer) = post_url(&hub.http("/dev/token"), None, body).await;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (400, &json!("bad_request")),
            "{body}: {answer}"
        );
    }
}

/// Development mode listens on 127.0.0.1:8000 by default, not on every interface. (Whether the
/// port is free does not matter: the address shows in the log line or in the bind error.)
#[actix_rt::test]
async fn dev_mode_binds_loopback_by_default() {
    let mut cmd = hub_command(&[]);
    cmd.env_remove("HUB_BIND");
    let mut child = cmd.spawn().expect("start realtime-hub");
    let stderr = Lines::read_from(child.stderr.take().expect("stderr pipe"));
    let _stdout = Lines::read_from(child.stdout.take().expect("stdout pipe"));
    let line = stderr.wait_for(WAIT, |l| {
        listening_address(l).is_some() || l.contains("cannot listen")
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let line = line.unwrap_or_else(|| panic!("no bind line; stderr:\n{}", stderr.text()));
    assert!(line.contains("127.0.0.1:8000"), "{line}");
}

/// Outside development mode (with `HUB_JWT_SECRET`) `/dev/token` does not exist: JSON 404.
#[actix_rt::test]
async fn dev_token_is_404_with_jwt_secret() {
    let mut hub = HubProcess::start(&[("HUB_JWT_SECRET", SECRET), ("HUB_API_KEY", API_KEY)]);
    let (status, answer) = post_url(&hub.http("/dev/token"), None, r#"{"user":"alice"}"#).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("not_found")),
        "{answer}"
    );
    hub.signal("TERM");
    assert!(hub.wait_exit(EXIT_WITHIN).success());
    let stdout = hub.stdout.all_after_exit();
    assert!(
        !stdout.contains("API key"),
        "no generated key outside dev mode:\n{stdout}"
    );
}

/// With only `HUB_JWT_PUBLIC_KEY` (no secret) development mode is off too: `/dev/token` is 404.
#[actix_rt::test]
async fn dev_token_is_404_with_only_public_key() {
    let key = fixture("rsa_public.pem");
    let hub = HubProcess::start(&[("HUB_JWT_PUBLIC_KEY", &key)]);
    let (status, answer) = post_url(&hub.http("/dev/token"), None, r#"{"user":"alice"}"#).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("not_found")),
        "{answer}"
    );
}

/// Outside development mode without `HUB_API_KEY`, every /api/ route answers 401, whatever key
/// is sent (none, empty, any).
#[actix_rt::test]
async fn api_without_configured_key_is_always_unauthorized() {
    let hub = HubProcess::start(&[("HUB_JWT_SECRET", SECRET)]);
    for key in [None, Some(""), Some("anything"), Some(API_KEY)] {
        for path in [
            "/api/history/chat:a",
            "/api/presence/chat:a",
            "/api/channels",
            "/api/info",
            "/api/deadletters",
            "/api/unknown",
        ] {
            let (status, answer) = get_url(&hub.http(path), key).await;
            assert_eq!(
                (status, &answer["error"]["code"]),
                (401, &json!("unauthorized")),
                "GET {path} with {key:?}: {answer}"
            );
        }
        for (path, body) in [
            ("/api/publish", r#"{"channel":"chat:a","data":1}"#),
            ("/api/broadcast", r#"{"channels":["chat:a"],"data":1}"#),
            ("/api/disconnect", r#"{"user":"alice"}"#),
        ] {
            let (status, answer) = post_url(&hub.http(path), key, body).await;
            assert_eq!(
                (status, &answer["error"]["code"]),
                (401, &json!("unauthorized")),
                "POST {path} with {key:?}: {answer}"
            );
        }
    }
}

// ---- The token subcommand ----

#[derive(serde::Deserialize)]
struct MintedClaims {
    sub: String,
    exp: u64,
    channels: Vec<String>,
    publish: Vec<String>,
}

/// Runs `realtime-hub token ...` to completion.
fn run_token(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = hub_command(envs);
    cmd.arg("token").args(args);
    cmd.output().expect("run realtime-hub token")
}

/// Checks a minted token's signature with `secret` and returns its claims.
fn verify_minted(token: &str, secret: &str) -> MintedClaims {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    decode::<MintedClaims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .expect("a token signed with the secret")
    .claims
}

/// `realtime-hub token --secret` prints one HS256 token with the given user, patterns and TTL,
/// which a hub with that secret accepts.
#[actix_rt::test]
async fn token_subcommand_signs_with_secret_flag() {
    let out = run_token(
        &[
            "--user",
            "u1",
            "--channels",
            "a,b",
            "--publish",
            "c",
            "--ttl",
            "60",
            "--secret",
            SECRET,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    let token = stdout.trim();
    let claims = verify_minted(token, SECRET);
    assert_eq!(claims.sub, "u1");
    assert_eq!(claims.channels, ["a", "b"]);
    assert_eq!(claims.publish, ["c"]);
    assert!(
        (now() + 55..=now() + 65).contains(&claims.exp),
        "exp {} is about now + 60",
        claims.exp
    );

    let app = spawn_app();
    let c = Client::connect_token(&app, token).await;
    assert_eq!(c.welcome["user"], "u1");
    assert_eq!(c.welcome["expires_at"], claims.exp);
}

/// `realtime-hub token` takes the secret from `HUB_JWT_SECRET` when `--secret` is not given.
#[actix_rt::test]
async fn token_subcommand_signs_with_env_secret() {
    let out = run_token(
        &[
            "--user",
            "u2",
            "--channels",
            "chat:*",
            "--publish",
            "chat:*",
        ],
        &[("HUB_JWT_SECRET", "env-secret-xyz")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let claims = verify_minted(stdout.trim(), "env-secret-xyz");
    assert_eq!(claims.sub, "u2");
    assert_eq!(claims.channels, ["chat:*"]);
    assert_eq!(claims.publish, ["chat:*"]);
}

/// `realtime-hub token` without `--secret` or `HUB_JWT_SECRET` (or with an empty one) exits
/// non-zero, prints no token, and says what is missing.
#[actix_rt::test]
async fn token_subcommand_without_secret_fails_with_message() {
    for envs in [&[][..], &[("HUB_JWT_SECRET", "")][..]] {
        let out = run_token(&["--user", "u3"], envs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "exit status {}", out.status);
        assert!(out.stdout.is_empty(), "no token on stdout");
        assert!(
            stderr.contains("--secret") && stderr.contains("HUB_JWT_SECRET"),
            "the message names both ways to give a secret: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `realtime-hub token --user ""` exits non-zero with a message and prints no token: the hub
/// refuses a token with an empty `sub`.
#[actix_rt::test]
async fn token_subcommand_refuses_an_empty_user() {
    let out = run_token(&["--user", "", "--secret", SECRET], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {}", out.status);
    assert!(out.stdout.is_empty(), "no token on stdout");
    assert!(
        stderr.contains("--user"),
        "the message names the flag: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The `token` subcommand does not read the serving settings: a bad `HUB_BIND` (or any other
/// serving variable) does not stop it from printing a token.
#[actix_rt::test]
async fn token_subcommand_ignores_bad_serving_settings() {
    let out = run_token(
        &["--user", "u4", "--channels", "a", "--publish", "a"],
        &[
            ("HUB_JWT_SECRET", SECRET),
            ("HUB_BIND", "x"),
            ("HUB_PING_INTERVAL_S", "soon"),
            ("HUB_LOG_FORMAT", "xml"),
        ],
    );
    assert!(
        out.status.success(),
        "exit status {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(verify_minted(stdout.trim(), SECRET).sub, "u4");
}

// ---- Graceful shutdown ----

/// Signals `name` to a hub with two open sockets: both get 1001 `going away`, and the process
/// exits 0 within the shutdown timeout. (`/ready` during the drain: see
/// `ready_is_503_while_draining`.)
async fn graceful_stop_on(name: &str) {
    let timeout = SHUTDOWN_TIMEOUT_S.to_string();
    let mut hub = HubProcess::start(&[
        ("HUB_JWT_SECRET", SECRET),
        ("HUB_API_KEY", API_KEY),
        ("HUB_SHUTDOWN_TIMEOUT_S", &timeout),
    ]);
    let mut alice = Client::connect_url(&hub.ws_url(), &token("alice")).await;
    let mut bob = Client::connect_url(&hub.ws_url(), &token("bob")).await;
    alice.subscribe("chat:lobby").await;
    assert_eq!(get_url(&hub.http("/ready"), None).await.0, 200);

    let signalled = Instant::now();
    hub.signal(name);
    assert_eq!(alice.expect_close().await, (1001, "going away".to_owned()));
    assert_eq!(bob.expect_close().await, (1001, "going away".to_owned()));

    let status = hub.wait_exit(EXIT_WITHIN);
    let stderr = hub.stderr.all_after_exit();
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < EXIT_WITHIN,
        "stopped in {:?}",
        signalled.elapsed()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// SIGTERM closes open sockets with 1001 `going away` and the process exits 0 in time.
#[actix_rt::test]
async fn sigterm_closes_sockets_with_going_away_and_exits_0() {
    graceful_stop_on("TERM").await;
}

/// SIGINT (Ctrl-C) stops the hub the same way as SIGTERM.
#[actix_rt::test]
async fn sigint_closes_sockets_with_going_away_and_exits_0() {
    graceful_stop_on("INT").await;
}

/// A hub whose drain is held open for the whole shutdown timeout by a peer that never reads.
const DRAIN_TIMEOUT_S: u64 = 3;

fn draining_hub() -> HubProcess {
    let timeout = DRAIN_TIMEOUT_S.to_string();
    HubProcess::start(&[
        ("HUB_JWT_SECRET", SECRET),
        ("HUB_API_KEY", API_KEY),
        ("HUB_SHUTDOWN_TIMEOUT_S", &timeout),
        // Room for the backlog below: the peer is stalled, not dropped as a slow consumer.
        ("HUB_CLIENT_QUEUE_BYTES", "67108864"),
        ("HUB_MAX_PUBLICATION_BYTES", "1000000"),
        ("HUB_HISTORY_SIZE", "1"),
    ])
}

type RawWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A subscriber that stops reading with a backlog far larger than the socket buffers can
/// take: the hub can write nothing more to it, so its session cannot even be polled to close.
async fn stalled_peer(hub: &HubProcess) -> RawWs {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    // A tiny receive window, set before connecting so that autotuning never grows it.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&hub.addr.into()).expect("connect");
    socket.set_nonblocking(true).expect("non-blocking");
    let tcp = tokio::net::TcpStream::from_std(socket.into()).expect("tokio stream");
    let url = format!("{}?token={}", hub.ws_url(), token("stalled"));
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("websocket upgrade");
    let subscribe = json!({"type": "subscribe", "id": 1, "channel": "flood"});
    ws.send(Message::text(subscribe.to_string()))
        .await
        .expect("send");
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the wait");
        if let Some(Ok(Message::Text(t))) = frame {
            if t.contains("subscribed") {
                break;
            }
        }
    }
    // 16 publications of 900 kB: far over what the kernel buffers on both ends hold.
    let body = json!({"channel": "flood", "data": "x".repeat(900_000)}).to_string();
    for _ in 0..16 {
        let (status, answer) = post_url(&hub.http("/api/publish"), Some(API_KEY), &body).await;
        assert_eq!(status, 200, "{answer}");
    }
    ws
}

/// SIGTERM with a peer that never reads still exits 0 within `HUB_SHUTDOWN_TIMEOUT_S` (plus a
/// small margin), not after waiting for that peer a second time.
#[actix_rt::test]
async fn sigterm_with_a_non_reading_peer_exits_within_timeout() {
    let mut hub = draining_hub();
    let _stalled = stalled_peer(&hub).await;
    let signalled = Instant::now();
    hub.signal("TERM");
    let status = hub.wait_exit(Duration::from_secs(3 * DRAIN_TIMEOUT_S));
    let took = signalled.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; stderr:\n{}",
        hub.stderr.all_after_exit()
    );
    assert!(
        took < Duration::from_millis(DRAIN_TIMEOUT_S * 1000 + 1500),
        "stopped in {took:?} with a {DRAIN_TIMEOUT_S} s timeout"
    );
}

/// While the node drains, `/ready` answers 503 with a reason (and the server still answers).
#[actix_rt::test]
async fn ready_is_503_while_draining() {
    let hub = draining_hub();
    let _stalled = stalled_peer(&hub).await;
    hub.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(DRAIN_TIMEOUT_S);
    loop {
        let mut res = http()
            .get(hub.http("/ready"))
            .send()
            .await
            .expect("the server answers while it drains");
        let status = res.status().as_u16();
        let body: Value =
            serde_json::from_slice(&res.body().await.unwrap_or_default()).unwrap_or(Value::Null);
        if status == 503 {
            assert!(body["reason"].is_string(), "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "/ready never answered 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A WebSocket opened while the node drains is refused with 1001 `going away`.
#[actix_rt::test]
async fn new_connection_while_draining_gets_going_away() {
    let hub = draining_hub();
    let _stalled = stalled_peer(&hub).await;
    hub.signal("TERM");
    let draining = hub.stderr.wait_for(WAIT, |l| l.contains("shutting down"));
    assert!(draining.is_some(), "stderr:\n{}", hub.stderr.text());
    let url = format!("{}?token={}", hub.ws_url(), token("late"));
    assert_eq!(close_of(&url).await, (1001, "going away".to_owned()));
}

/// SIGTERM with no connection open stops the hub at once with exit status 0.
#[actix_rt::test]
async fn sigterm_without_connections_exits_0_quickly() {
    let mut hub =
        HubProcess::start(&[("HUB_JWT_SECRET", SECRET), ("HUB_SHUTDOWN_TIMEOUT_S", "30")]);
    assert_eq!(get_url(&hub.http("/ready"), None).await.0, 200);
    let signalled = Instant::now();
    hub.signal("TERM");
    let status = hub.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "an idle node does not wait for the shutdown timeout: {:?}",
        signalled.elapsed()
    );
}

/// A SIGTERM that arrives as soon as the hub says it listens still stops it gracefully (exit
/// status 0), rather than killing it by the signal's default action: the hub listens for
/// signals before it announces that it serves.
#[actix_rt::test]
async fn sigterm_right_after_start_exits_0() {
    // Many workers (as on a many-core host) make the server's start take long enough for the
    // signal to land between the `listening` line and the first poll of a late handler.
    let mut hub = HubProcess::start(&[("HUB_JWT_SECRET", SECRET), ("HUB_WORKERS", "32")]);
    hub.signal("TERM");
    let status = hub.wait_exit(EXIT_WITHIN);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; stderr:\n{}",
        hub.stderr.all_after_exit()
    );
}

// ---- Bad configuration ----

/// `HUB_HISTORY_SIZE=0` is refused at start with a message naming the variable.
#[actix_rt::test]
async fn zero_history_size_fails_with_message() {
    let stderr = fails_to_start(&[("HUB_JWT_SECRET", SECRET), ("HUB_HISTORY_SIZE", "0")]);
    assert!(stderr.contains("HUB_HISTORY_SIZE"), "{stderr}");
}

/// A `HUB_JWT_PUBLIC_KEY` that cannot be read (missing file, a directory) is refused at start
/// with a message naming the variable and the path.
#[actix_rt::test]
async fn unreadable_public_key_fails_with_message() {
    let dir = fixture("");
    for path in ["/nonexistent/realtime-hub/key.pem", dir.as_str()] {
        let stderr = fails_to_start(&[("HUB_JWT_PUBLIC_KEY", path)]);
        assert!(stderr.contains("HUB_JWT_PUBLIC_KEY"), "{stderr}");
        assert!(
            stderr.contains(path.trim_end_matches('/')),
            "names {path}: {stderr}"
        );
    }
}

/// A `HUB_JWT_PUBLIC_KEY` file that is not an RSA or EC public key is refused with a message.
#[actix_rt::test]
async fn public_key_that_is_not_a_key_fails_with_message() {
    let stderr = fails_to_start(&[("HUB_JWT_PUBLIC_KEY", &fixture("not_a_key.pem"))]);
    assert!(stderr.contains("HUB_JWT_PUBLIC_KEY"), "{stderr}");
}

/// A setting that does not parse (a number that is not one) is refused with a message naming
/// the setting and the value.
#[actix_rt::test]
async fn unparsable_setting_fails_with_message() {
    let stderr = fails_to_start(&[("HUB_JWT_SECRET", SECRET), ("HUB_PING_INTERVAL_S", "soon")]);
    assert!(stderr.contains("soon"), "{stderr}");
    assert!(
        stderr.contains("ping-interval-s") || stderr.contains("HUB_PING_INTERVAL_S"),
        "{stderr}"
    );
}

/// Lifecycle and webhook settings a hub cannot run with are refused at start, each with a
/// message naming the variable: URLs without a secret, a URL that is not http(s), a grace
/// out of range.
#[actix_rt::test]
async fn bad_webhook_and_lifecycle_settings_fail_with_message() {
    let on = ("HUB_LIFECYCLE_EVENTS", "*");
    let url = ("HUB_WEBHOOK_URLS", "http://127.0.0.1:9/hook");
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[on, url], "HUB_WEBHOOK_SECRET"),
        (
            &[
                on,
                ("HUB_WEBHOOK_URLS", "ftp://x/y"),
                ("HUB_WEBHOOK_SECRET", "s"),
            ],
            "HUB_WEBHOOK_URLS",
        ),
        (
            &[on, ("HUB_LIFECYCLE_GRACE_S", "86400")],
            "HUB_LIFECYCLE_GRACE_S",
        ),
    ];
    for (envs, names) in cases {
        let mut all = vec![("HUB_JWT_SECRET", SECRET)];
        all.extend_from_slice(envs);
        let stderr = fails_to_start(&all);
        assert!(stderr.contains(names), "{envs:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `HUB_PING_INTERVAL_S=0` is refused with a message naming the variable.
#[actix_rt::test]
async fn zero_ping_interval_fails_with_message() {
    let stderr = fails_to_start(&[("HUB_JWT_SECRET", SECRET), ("HUB_PING_INTERVAL_S", "0")]);
    assert!(stderr.contains("HUB_PING_INTERVAL_S"), "{stderr}");
}
