//! Settings a new user trips over: a public key the hub cannot use, `HUB_JWT_AUDIENCE` and
//! `HUB_JWT_ISSUER`, a development frontend on another origin (CORS on `/dev/token` and the
//! static files), and the development banner's `Try:` command. Real binary or real node, real
//! WebSocket and HTTP clients.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Runs the binary with `args` and an empty environment until it exits (at most `WAIT`),
/// returning its exit status and standard error.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_realtime-hub"))
        .args(args)
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start realtime-hub");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("realtime-hub {args:?} still running after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    (status.code(), stderr)
}

// ---- Public keys ----

/// An EC P-384 public key stops the hub at start, with a message naming the setting, instead
/// of starting a hub that refuses every token.
#[test]
fn a_p384_public_key_stops_the_hub_at_start() {
    let key = fixture("ec_p384_public.pem");
    let (code, stderr) = run_to_exit(&[
        "--bind",
        "127.0.0.1:0",
        "--jwt-public-key",
        &key,
        "--api-key",
        API_KEY,
    ]);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {stderr}");
    assert!(
        stderr.contains("HUB_JWT_PUBLIC_KEY") && stderr.contains("P-256"),
        "{stderr}"
    );
}

// ---- Audience and issuer ----

/// A node that wants `aud` `hub` and `iss` `https://auth.example`.
fn spawn_with_aud_iss() -> TestApp {
    spawn_app_with(&[
        "--jwt-audience",
        "hub",
        "--jwt-issuer",
        "https://auth.example",
    ])
}

/// With both set, a token carrying the right `aud` and `iss` connects.
#[actix_rt::test]
async fn a_token_with_the_configured_aud_and_iss_connects() {
    let app = spawn_with_aud_iss();
    let t = token_with("ann", json!({"aud": "hub", "iss": "https://auth.example"}));
    let client = Client::connect_token(&app, &t).await;
    assert_eq!(client.welcome["user"], "ann");
}

/// With both set, a token without either, or with a wrong one, is closed as `invalid token`.
#[actix_rt::test]
async fn a_token_without_or_with_a_wrong_aud_or_iss_is_refused() {
    let app = spawn_with_aud_iss();
    for claims in [
        json!({"iss": "https://auth.example"}),
        json!({"aud": "other", "iss": "https://auth.example"}),
        json!({"aud": "hub"}),
        json!({"aud": "hub", "iss": "https://evil.example"}),
    ] {
        let t = token_with("ann", claims.clone());
        assert_eq!(
            close_of(&format!("{}?token={t}", app.ws_url())).await,
            (1008, "invalid token".to_owned()),
            "{claims}"
        );
    }
}

/// Without the settings, `aud` and `iss` are not looked at, as before.
#[actix_rt::test]
async fn aud_and_iss_are_ignored_when_not_configured() {
    let app = spawn_app();
    let t = token_with("ann", json!({"aud": "anything", "iss": "anyone"}));
    let client = Client::connect_token(&app, &t).await;
    assert_eq!(client.welcome["user"], "ann");
}

// ---- CORS for a development frontend ----

const FRONTEND: &str = "http://localhost:5173";

/// A development-mode node (no secret, no key) that lists the frontend's origin.
fn spawn_dev_with_frontend() -> TestApp {
    spawn_app_args(&[
        "realtime-hub",
        "--bind",
        "127.0.0.1:0",
        "--allowed-origins",
        FRONTEND,
        "--workers",
        "2",
        "--shutdown-timeout-s",
        "3",
    ])
}

fn header(res: &awc::ClientResponse<impl Sized>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The browser's preflight for `POST /dev/token` with a JSON body is answered for an allowed
/// origin, and the POST's answer is readable by it.
#[actix_rt::test]
async fn an_allowed_origin_may_fetch_a_dev_token() {
    let app = spawn_dev_with_frontend();
    let res = http()
        .request(awc::http::Method::OPTIONS, app.http("/dev/token"))
        .insert_header(("Origin", FRONTEND))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .insert_header(("Access-Control-Request-Headers", "content-type"))
        .send()
        .await
        .expect("preflight");
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(FRONTEND)
    );
    assert!(header(&res, "access-control-allow-methods").is_some_and(|m| m.contains("POST")));
    assert!(header(&res, "access-control-allow-headers")
        .is_some_and(|h| h.to_ascii_lowercase().contains("content-type")));

    let mut res = http()
        .post(app.http("/dev/token"))
        .insert_header(("Origin", FRONTEND))
        .insert_header(("Content-Type", "application/json"))
        .send_body(r#"{"user":"vite"}"#)
        .await
        .expect("token");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(FRONTEND)
    );
    let body: serde_json::Value = res.json().await.expect("json");
    assert!(body["token"].is_string(), "{body}");
}

/// `/hub-client.js` is readable by an allowed origin, so a frontend can import it.
#[actix_rt::test]
async fn an_allowed_origin_may_import_the_client() {
    let app = spawn_dev_with_frontend();
    let res = http()
        .get(app.http("/hub-client.js"))
        .insert_header(("Origin", FRONTEND))
        .send()
        .await
        .expect("hub-client.js");
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(FRONTEND)
    );
}

/// An origin that is not allowed gets no CORS headers anywhere, and its preflight the 404
/// every unknown route gets; the browser then refuses the page the answer.
#[actix_rt::test]
async fn other_origins_get_no_cors() {
    let app = spawn_dev_with_frontend();
    let evil = "http://evil.example";
    let res = http()
        .request(awc::http::Method::OPTIONS, app.http("/dev/token"))
        .insert_header(("Origin", evil))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .send()
        .await
        .expect("preflight");
    assert_eq!(res.status().as_u16(), 404);
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    for (method, path) in [("POST", "/dev/token"), ("GET", "/hub-client.js")] {
        let res = http()
            .request(method.parse().expect("method"), app.http(path))
            .insert_header(("Origin", evil))
            .insert_header(("Content-Type", "application/json"))
            .send_body(r#"{"user":"x"}"#)
            .await
            .expect("request");
        assert_eq!(header(&res, "access-control-allow-origin"), None, "{path}");
    }
}

/// Outside development mode the `/dev/token` preflight is a 404 like the route itself.
#[actix_rt::test]
async fn no_dev_token_preflight_outside_development_mode() {
    let app = spawn_app_with(&["--allowed-origins", FRONTEND]);
    let res = http()
        .request(awc::http::Method::OPTIONS, app.http("/dev/token"))
        .insert_header(("Origin", FRONTEND))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .send()
        .await
        .expect("preflight");
    assert_eq!(res.status().as_u16(), 404);
}

// ---- The development banner ----

/// The banner's `Try:` line is a command that works as printed: its key and address publish.
#[actix_rt::test]
async fn the_banner_try_command_publishes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_realtime-hub"))
        .args(["--bind", "127.0.0.1:0", "--workers", "1"])
        .env_clear()
        .env(
            "HUB_STATIC_DIR",
            format!("{}/static", env!("CARGO_MANIFEST_DIR")),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start realtime-hub");
    let stdout = child.stdout.take().expect("stdout");
    // The banner is printed before the node serves; lines are read on a thread so the wait
    // is bounded.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.trim_start().starts_with("Try:") {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let line = rx.recv_timeout(WAIT);
    let published = match &line {
        Ok(line) => Some(try_line(line).await),
        Err(_) => None,
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a Try: line within the wait");
    assert!(!line.contains('<'), "a placeholder in: {line}");
    let (status, body) = published.expect("tried");
    assert_eq!(status, 200, "{line}: {body}");
    assert_eq!(body["channel"], "chat:lobby", "{body}");
}

/// Does what the `Try:` line says (`curl -H 'K: V' -d 'BODY' URL`) with awc; the listener is
/// bound before the banner, so the request waits for the node rather than failing.
async fn try_line(line: &str) -> (u16, serde_json::Value) {
    let quoted: Vec<&str> = line.split('\'').collect();
    let (header, body) = (quoted[1], quoted[3]);
    let (name, value) = header.split_once(": ").expect("a header in the Try line");
    let url = line
        .split_whitespace()
        .last()
        .expect("a URL in the Try line");
    let mut res = http()
        .post(url)
        .insert_header((name, value))
        .send_body(body.to_owned())
        .await
        .expect("the Try command's request");
    let status = res.status().as_u16();
    let body = res.body().await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or_default())
}
