//! The server API for services (docs/protocol.md §6): every route with a good key, a wrong key and no
//! key; bad bodies, bad channels, oversize bodies, unknown routes and wrong methods, always
//! answered with the contract's JSON error and status, never a 500.

mod common;

use actix_web::web::Bytes;
use awc::http::Method;
use common::*;
use serde_json::{json, Value};

/// One HTTP answer: status, `Content-Type` and the body parsed as JSON (`Null` if it is not).
struct Answer {
    status: u16,
    content_type: String,
    json: Value,
}

/// Sends `method path` with an optional API key, content type and body.
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut req = http().request(method, app.http(path));
    if let Some(key) = key {
        req = req.insert_header(("X-API-Key", key));
    }
    if let Some(ct) = content_type {
        req = req.insert_header(("Content-Type", ct));
    }
    let sent = match body {
        Some(body) => req.send_body(body).await,
        None => req.send().await,
    };
    answer(sent.expect("http request")).await
}

async fn answer<S>(mut res: awc::ClientResponse<S>) -> Answer
where
    S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = res.body().limit(16 << 20).await.expect("body");
    Answer {
        status,
        content_type,
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

/// A request with the right key and a JSON body.
async fn post_json(app: &TestApp, path: &str, body: &str) -> Answer {
    call(
        app,
        Method::POST,
        path,
        Some(API_KEY),
        Some("application/json"),
        Some(body.as_bytes().to_vec()),
    )
    .await
}

async fn get(app: &TestApp, path: &str) -> Answer {
    call(app, Method::GET, path, Some(API_KEY), None, None).await
}

/// Asserts the contract's error answer: this status, a JSON body `{"error":{"code","message"}}`.
#[track_caller]
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "status of {}", a.json);
    assert!(
        a.content_type.starts_with("application/json"),
        "content type `{}` of an error",
        a.content_type
    );
    assert_eq!(a.json["error"]["code"], code, "error body {}", a.json);
    assert!(
        a.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error message in {}",
        a.json
    );
}

/// Every route of §3 this file covers, with a body that would succeed.
fn routes() -> Vec<(Method, &'static str, Option<&'static str>)> {
    vec![
        (
            Method::POST,
            "/api/publish",
            Some(r#"{"channel":"chat:a","data":{}}"#),
        ),
        (
            Method::POST,
            "/api/broadcast",
            Some(r#"{"channels":["chat:a"],"data":{}}"#),
        ),
        (Method::GET, "/api/history/chat:a", None),
        (Method::GET, "/api/presence/chat:a", None),
        (Method::POST, "/api/disconnect", Some(r#"{"user":"alice"}"#)),
        (Method::GET, "/api/channels", None),
        (Method::GET, "/api/info", None),
        (Method::GET, "/api/deadletters", None),
        (Method::GET, "/api/no-such-route", None),
        (Method::POST, "/api/no/such/route", Some("{}")),
        (Method::GET, "/api/", None),
        (Method::GET, "/api", None),
    ]
}

// ---- API key ----

/// Every route under /api/, known or not, answers 401 `unauthorized` without the key.
#[actix_rt::test]
async fn every_api_route_without_key_is_unauthorized() {
    let app = spawn_app();
    for (method, path, body) in routes() {
        let a = call(
            &app,
            method.clone(),
            path,
            None,
            Some("application/json"),
            body.map(|b| b.as_bytes().to_vec()),
        )
        .await;
        assert_error(&a, 401, "unauthorized");
    }
}

/// Every route under /api/, known or not, answers 401 `unauthorized` with a wrong key, including
/// an empty key and the right key with a different case or an extra character.
#[actix_rt::test]
async fn every_api_route_with_wrong_key_is_unauthorized() {
    let app = spawn_app();
    let wrong = [
        "wrong",
        "",
        "TEST-API-KEY",
        &format!("{API_KEY}x"),
        "test-api-ke",
    ];
    for key in wrong {
        for (method, path, body) in routes() {
            let a = call(
                &app,
                method.clone(),
                path,
                Some(key),
                Some("application/json"),
                body.map(|b| b.as_bytes().to_vec()),
            )
            .await;
            assert_error(&a, 401, "unauthorized");
        }
    }
}

/// The key is checked before routing: an unknown /api/ route is 404 `not_found` only with the key.
#[actix_rt::test]
async fn unknown_api_route_with_key_is_json_404() {
    let app = spawn_app();
    for path in ["/api/no-such-route", "/api/", "/api", "/api/publish/extra"] {
        assert_error(&get(&app, path).await, 404, "not_found");
    }
    assert_error(
        &post_json(&app, "/api/no/such/route", "{}").await,
        404,
        "not_found",
    );
}

/// A route given the wrong method is 404 `not_found` (no such route) as JSON, never a 500.
#[actix_rt::test]
async fn wrong_method_on_api_route_is_json_404() {
    let app = spawn_app();
    let wrong = [
        (Method::GET, "/api/publish"),
        (Method::PUT, "/api/publish"),
        (Method::GET, "/api/broadcast"),
        (Method::DELETE, "/api/broadcast"),
        (Method::GET, "/api/disconnect"),
        (Method::POST, "/api/channels"),
        (Method::DELETE, "/api/info"),
        (Method::POST, "/api/history/chat:a"),
        (Method::PUT, "/api/presence/chat:a"),
    ];
    for (method, path) in wrong {
        let a = call(
            &app,
            method.clone(),
            path,
            Some(API_KEY),
            Some("application/json"),
            Some(b"{}".to_vec()),
        )
        .await;
        assert_error(&a, 404, "not_found");
    }
}

/// Paths outside /api/ that nothing serves are a JSON 404 `not_found`, whatever the method.
#[actix_rt::test]
async fn unknown_route_outside_api_is_json_404() {
    let app = spawn_app();
    for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
        let a = call(&app, method, "/no-such-page", None, None, None).await;
        assert_error(&a, 404, "not_found");
    }
}

/// Odd paths outside /api/ (a dot file, an encoded slash, a trailing colon) are a JSON 404
/// `not_found` too, not the static file server's plain-text error.
#[actix_rt::test]
async fn odd_static_paths_are_json_404() {
    let app = spawn_app();
    for path in ["/.env", "/a%2Fb", "/x:", "/*x"] {
        let a = call(&app, Method::GET, path, None, None, None).await;
        assert_error(&a, 404, "not_found");
    }
}

/// `/health` and `/ready` answer a JSON error (not a 500, not plain text) to a wrong method.
#[actix_rt::test]
async fn wrong_method_on_health_and_ready_is_json_error() {
    let app = spawn_app();
    for path in ["/health", "/ready"] {
        for method in [Method::POST, Method::PUT, Method::DELETE] {
            let a = call(&app, method.clone(), path, None, None, None).await;
            assert_error(&a, 404, "not_found");
        }
    }
}

// ---- /health and /ready ----

/// `/health` and `/ready` answer 200 without any key on a running node.
#[actix_rt::test]
async fn health_and_ready_answer_200_without_key() {
    let app = spawn_app();
    for path in ["/health", "/ready"] {
        let a = call(&app, Method::GET, path, None, None, None).await;
        assert_eq!(a.status, 200, "{path}: {}", a.json);
        // A key is not needed, and a wrong one does not hurt.
        let a = call(&app, Method::GET, path, Some("wrong"), None, None).await;
        assert_eq!(a.status, 200, "{path} with a wrong key: {}", a.json);
    }
}

// ---- POST /api/publish ----

/// A publication through the API answers its position and reaches a subscribed WebSocket client
/// as a `message` without `from`, with the given `event_type` and `event_id`.
#[actix_rt::test]
async fn api_publication_reaches_subscriber_without_from() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "alice").await;
    c.subscribe("chat:lobby").await;
    let a = post_json(
        &app,
        "/api/publish",
        r#"{"channel":"chat:lobby","data":{"text":"from a service"},"event_type":"chat.message","event_id":"svc-1"}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["channel"], "chat:lobby");
    assert_eq!(a.json["offset"], 1);
    assert_eq!(a.json["event_id"], "svc-1");
    let epoch = a.json["epoch"].as_str().expect("epoch is a string");
    assert!(!epoch.is_empty());

    let m = c.next_of("message").await;
    assert_eq!(m["channel"], "chat:lobby");
    assert_eq!(m["offset"], 1);
    assert_eq!(m["epoch"], epoch);
    assert_eq!(m["event_id"], "svc-1");
    assert_eq!(m["event_type"], "chat.message");
    assert_eq!(m["data"], json!({"text": "from a service"}));
    assert!(m["ts"].as_u64().is_some_and(|ts| ts > 0), "ts in {m}");
    assert!(
        m.get("from").is_none(),
        "a service publication has no `from`: {m}"
    );
}

/// A service may publish to a personal channel `user:<sub>`; its owner receives it.
#[actix_rt::test]
async fn api_may_publish_to_personal_channel() {
    let app = spawn_app();
    let mut alice = Client::connect(&app, "alice").await;
    alice.subscribe("user:alice").await;
    let a = post_json(
        &app,
        "/api/publish",
        r#"{"channel":"user:alice","data":{"note":1}}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let m = alice.next_of("message").await;
    assert_eq!(m["channel"], "user:alice");
    assert_eq!(m["data"], json!({"note": 1}));
}

/// Without an `event_id` the hub makes one, and without `event_type` the push carries none.
#[actix_rt::test]
async fn api_publication_without_event_fields_gets_generated_event_id() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "alice").await;
    c.subscribe("chat:lobby").await;
    let a = post_json(
        &app,
        "/api/publish",
        r#"{"channel":"chat:lobby","data":42}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let event_id = a.json["event_id"].as_str().expect("event_id is a string");
    assert!(!event_id.is_empty());
    let m = c.next_of("message").await;
    assert_eq!(m["event_id"], event_id);
    assert_eq!(m["data"], 42);
    assert!(m.get("event_type").is_none(), "no event_type: {m}");
}

/// The same `event_id` published twice answers the same offset and epoch and is delivered once.
#[actix_rt::test]
async fn republished_event_id_gives_same_position_and_one_delivery() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "alice").await;
    c.subscribe("chat:idem").await;
    let body = r#"{"channel":"chat:idem","data":{"n":1},"event_id":"order-7"}"#;
    let first = post_json(&app, "/api/publish", body).await;
    let again = post_json(
        &app,
        "/api/publish",
        r#"{"channel":"chat:idem","data":{"n":2},"event_id":"order-7"}"#,
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(again.status, 200, "{}", again.json);
    assert_eq!(again.json["offset"], first.json["offset"]);
    assert_eq!(again.json["epoch"], first.json["epoch"]);
    assert_eq!(again.json["event_id"], "order-7");
    // A later publication shows that nothing was delivered between the two.
    let next = post_json(
        &app,
        "/api/publish",
        r#"{"channel":"chat:idem","data":{"n":3}}"#,
    )
    .await;
    assert_eq!(next.json["offset"], 2, "{}", next.json);

    let m = c.next_of("message").await;
    assert_eq!(
        (m["offset"].clone(), m["data"].clone()),
        (json!(1), json!({"n": 1}))
    );
    let m = c.next_of("message").await;
    assert_eq!(
        (m["offset"].clone(), m["data"].clone()),
        (json!(2), json!({"n": 3}))
    );
}

/// A `curl -d` body (Content-Type application/x-www-form-urlencoded) is read as JSON, and so is a
/// body without any Content-Type.
#[actix_rt::test]
async fn curl_style_form_content_type_is_accepted() {
    let app = spawn_app();
    let body = br#"{"channel":"chat:lobby","data":{"text":"hi"}}"#.to_vec();
    let a = call(
        &app,
        Method::POST,
        "/api/publish",
        Some(API_KEY),
        Some("application/x-www-form-urlencoded"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["offset"], 1);
    let a = call(
        &app,
        Method::POST,
        "/api/publish",
        Some(API_KEY),
        None,
        Some(body),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["offset"], 2);
}

/// Bodies that are not JSON, or not an object, are 400 `bad_request`.
#[actix_rt::test]
async fn malformed_publish_body_is_bad_request() {
    let app = spawn_app();
    for body in [
        "",
        "{",
        "not json",
        "[]",
        "null",
        "42",
        r#""text""#,
        "{\"channel\":",
    ] {
        let a = post_json(&app, "/api/publish", body).await;
        assert_error(&a, 400, "bad_request");
    }
}

/// A body that is a JSON array is 400 `bad_request`, even when its items would fill the fields
/// in order: every body is a JSON object (publish, broadcast, disconnect and `/dev/token`).
#[actix_rt::test]
async fn array_shaped_bodies_are_bad_request() {
    let app = spawn_app();
    for (path, body) in [
        ("/api/publish", r#"["chat:a",{"x":1},null,null]"#),
        ("/api/broadcast", r#"[["chat:a"],{"x":1},null,null]"#),
        ("/api/disconnect", r#"["alice"]"#),
    ] {
        let a = post_json(&app, path, body).await;
        assert_error(&a, 400, "bad_request");
    }
    assert_eq!(
        get(&app, "/api/history/chat:a").await.json["offset"],
        0,
        "nothing was published"
    );

    let dev = spawn_app_args(&["realtime-hub", "--bind", "127.0.0.1:0"]);
    let a = call(
        &dev,
        Method::POST,
        "/dev/token",
        None,
        Some("application/json"),
        Some(br#"["alice"]"#.to_vec()),
    )
    .await;
    assert_error(&a, 400, "bad_request");
}

/// A body that is not UTF-8 is 400 `bad_request`.
#[actix_rt::test]
async fn non_utf8_body_is_bad_request() {
    let app = spawn_app();
    let mut body = br#"{"channel":"chat:a","data":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}"#);
    let a = call(
        &app,
        Method::POST,
        "/api/publish",
        Some(API_KEY),
        Some("application/json"),
        Some(body),
    )
    .await;
    assert_error(&a, 400, "bad_request");
}

/// `data` nested far too deep is refused as a client error (400 `bad_request`), never a 500.
#[actix_rt::test]
async fn deeply_nested_data_is_bad_request() {
    let app = spawn_app();
    for depth in [100, 10_000] {
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!(r#"{{"channel":"chat:deep","data":{data}}}"#);
        assert_error(
            &post_json(&app, "/api/publish", &body).await,
            400,
            "bad_request",
        );
    }
    // The node still serves afterwards.
    let a = post_json(
        &app,
        "/api/publish",
        r#"{"channel":"chat:deep","data":[[1]]}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
}

/// Missing or ill-typed fields in a publish body are 400 `bad_request`.
#[actix_rt::test]
async fn publish_with_missing_or_ill_typed_fields_is_bad_request() {
    let app = spawn_app();
    let bodies = [
        r#"{"data":{}}"#,
        r#"{"channel":"chat:a"}"#,
        r#"{"channel":5,"data":{}}"#,
        r#"{"channel":null,"data":{}}"#,
        r#"{"channel":["chat:a"],"data":{}}"#,
        r#"{"channel":"chat:a","data":{},"event_id":5}"#,
        r#"{"channel":"chat:a","data":{},"event_type":{"x":1}}"#,
        r#"{"channel":"chat:a","data":{},"event_type":true}"#,
    ];
    for body in bodies {
        let a = post_json(&app, "/api/publish", body).await;
        assert_error(&a, 400, "bad_request");
    }
}

/// Channel names outside the contract's alphabet or length are 400 `bad_request`.
#[actix_rt::test]
async fn publish_to_invalid_channel_is_bad_request() {
    let app = spawn_app();
    let long = "x".repeat(256);
    for channel in [
        "",
        "chat lobby",
        "chat:*",
        "chat:lobby?",
        "ünï",
        "a#b",
        &long,
    ] {
        let body = json!({"channel": channel, "data": {}}).to_string();
        let a = post_json(&app, "/api/publish", &body).await;
        assert_error(&a, 400, "bad_request");
    }
    // The longest valid name is fine.
    let body = json!({"channel": "x".repeat(255), "data": {}}).to_string();
    assert_eq!(post_json(&app, "/api/publish", &body).await.status, 200);
}

/// `data` of exactly 64 KiB as JSON is published; one byte more is 413 `too_large`.
#[actix_rt::test]
async fn publish_data_over_64_kib_is_too_large() {
    let app = spawn_app();
    // A JSON string's text is its characters plus two quotes.
    let fits = json!({"channel": "chat:big", "data": "x".repeat(65_536 - 2)}).to_string();
    let a = post_json(&app, "/api/publish", &fits).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let over = json!({"channel": "chat:big", "data": "x".repeat(65_536 - 1)}).to_string();
    assert_error(
        &post_json(&app, "/api/publish", &over).await,
        413,
        "too_large",
    );
}

/// A body over 1 MiB with a Content-Length is 413 `too_large` (also for broadcast and disconnect).
#[actix_rt::test]
async fn body_over_one_mib_with_content_length_is_too_large() {
    let app = spawn_app();
    let body = json!({"channel": "chat:big", "data": "x".repeat(1 << 20)}).to_string();
    for path in ["/api/publish", "/api/broadcast", "/api/disconnect"] {
        assert_error(&post_json(&app, path, &body).await, 413, "too_large");
    }
    // The node still serves afterwards.
    let a = post_json(&app, "/api/publish", r#"{"channel":"chat:a","data":1}"#).await;
    assert_eq!(a.status, 200, "{}", a.json);
}

/// A body of exactly 1 MiB is read (padding with JSON whitespace); one byte more is 413.
#[actix_rt::test]
async fn body_of_exactly_one_mib_is_accepted() {
    let app = spawn_app();
    let json = r#"{"channel":"chat:pad","data":1}"#;
    let padded = |len: usize| format!("{json}{}", " ".repeat(len - json.len()));
    let a = post_json(&app, "/api/publish", &padded(1 << 20)).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let a = post_json(&app, "/api/publish", &padded((1 << 20) + 1)).await;
    assert_error(&a, 413, "too_large");
}

/// A chunked body (no Content-Length) that grows over 1 MiB is 413 `too_large`.
#[actix_rt::test]
async fn chunked_body_over_one_mib_is_too_large() {
    let app = spawn_app();
    let mut chunks = vec![Bytes::from_static(br#"{"channel":"chat:big","data":""#)];
    chunks.extend(std::iter::repeat_n(Bytes::from(vec![b'x'; 64 << 10]), 17));
    chunks.push(Bytes::from_static(br#""}"#));
    let res = http()
        .post(app.http("/api/publish"))
        .insert_header(("X-API-Key", API_KEY))
        .insert_header(("Content-Type", "application/json"))
        .send_stream(futures_util::stream::iter(
            chunks.into_iter().map(Ok::<_, std::io::Error>),
        ))
        .await
        .expect("http request");
    assert_error(&answer(res).await, 413, "too_large");
}

/// A small chunked body is read like any other.
#[actix_rt::test]
async fn chunked_small_body_is_accepted() {
    let app = spawn_app();
    let chunks = [
        Bytes::from_static(br#"{"channel":"#),
        Bytes::from_static(br#""chat:a","data""#),
        Bytes::from_static(br#":{"n":1}}"#),
    ];
    let res = http()
        .post(app.http("/api/publish"))
        .insert_header(("X-API-Key", API_KEY))
        .send_stream(futures_util::stream::iter(
            chunks.into_iter().map(Ok::<_, std::io::Error>),
        ))
        .await
        .expect("http request");
    let a = answer(res).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["offset"], 1);
}

// ---- POST /api/broadcast ----

/// Broadcast answers one result per channel, in order: the good channels are published (and
/// delivered to a subscriber), the bad one gets its own error.
#[actix_rt::test]
async fn broadcast_reports_bad_channel_in_place_and_publishes_the_rest() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "alice").await;
    c.subscribe("chat:b1").await;
    c.subscribe("chat:b2").await;
    let a = post_json(
        &app,
        "/api/broadcast",
        r#"{"channels":["chat:b1","bad channel","chat:b2"],"data":{"text":"all"},"event_type":"note"}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let results = a.json["results"].as_array().expect("results array");
    assert_eq!(results.len(), 3, "{}", a.json);
    assert_eq!(results[0]["channel"], "chat:b1");
    assert_eq!(results[0]["offset"], 1);
    assert!(results[0]["epoch"].is_string() && results[0]["event_id"].is_string());
    assert!(results[0].get("error").is_none());
    assert_eq!(results[1]["channel"], "bad channel");
    assert_eq!(results[1]["error"]["code"], "bad_request");
    assert!(results[1]["error"]["message"].is_string());
    assert!(results[1].get("offset").is_none());
    assert_eq!(results[2]["channel"], "chat:b2");
    assert_eq!(results[2]["offset"], 1);

    let mut got = [c.next_of("message").await, c.next_of("message").await];
    got.sort_by_key(|m| m["channel"].as_str().unwrap_or_default().to_owned());
    for (m, channel) in got.iter().zip(["chat:b1", "chat:b2"]) {
        assert_eq!(m["channel"], channel);
        assert_eq!(m["data"], json!({"text": "all"}));
        assert_eq!(m["event_type"], "note");
        assert!(m.get("from").is_none(), "{m}");
    }
}

/// Broadcast with an empty list, a non-list, missing `data` or a bad body is 400 `bad_request`.
#[actix_rt::test]
async fn broadcast_with_bad_body_is_bad_request() {
    let app = spawn_app();
    let bodies = [
        r#"{"channels":[],"data":{}}"#,
        r#"{"channels":"chat:a","data":{}}"#,
        r#"{"channels":[1,2],"data":{}}"#,
        r#"{"channels":["chat:a"]}"#,
        r#"{"data":{}}"#,
        "not json",
        "[]",
    ];
    for body in bodies {
        assert_error(
            &post_json(&app, "/api/broadcast", body).await,
            400,
            "bad_request",
        );
    }
}

/// Broadcasting the same `event_id` twice publishes each channel once.
#[actix_rt::test]
async fn broadcast_event_id_is_idempotent_per_channel() {
    let app = spawn_app();
    let body = r#"{"channels":["chat:x","chat:y"],"data":1,"event_id":"b-1"}"#;
    let first = post_json(&app, "/api/broadcast", body).await;
    let again = post_json(&app, "/api/broadcast", body).await;
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json, again.json);
    let h = get(&app, "/api/history/chat:x").await;
    assert_eq!(h.json["offset"], 1, "{}", h.json);
}

// ---- GET /api/history/{channel} ----

async fn publish_n(app: &TestApp, channel: &str, n: u64) -> String {
    let mut epoch = String::new();
    for i in 1..=n {
        let body = json!({"channel": channel, "data": {"n": i}}).to_string();
        let a = post_json(app, "/api/publish", &body).await;
        assert_eq!(a.json["offset"], i, "{}", a.json);
        epoch = a.json["epoch"].as_str().unwrap_or_default().to_owned();
    }
    epoch
}

fn offsets(history: &Value) -> Vec<u64> {
    history["publications"]
        .as_array()
        .expect("publications array")
        .iter()
        .map(|p| p["offset"].as_u64().expect("offset"))
        .collect()
}

/// A channel with no publications has offset 0, an epoch, and no publications.
#[actix_rt::test]
async fn history_of_empty_channel_gives_position_only() {
    let app = spawn_app();
    let a = get(&app, "/api/history/chat:empty").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["channel"], "chat:empty");
    assert_eq!(a.json["offset"], 0);
    assert!(a.json["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(a.json["publications"], json!([]));
}

/// History gives the newest publications oldest first, as `message` frames without `from`;
/// `limit` takes the newest `limit`, and `limit=0` gives only the position.
#[actix_rt::test]
async fn history_with_limit_gives_newest_oldest_first() {
    let app = spawn_app();
    let epoch = publish_n(&app, "chat:h", 5).await;
    let a = get(&app, "/api/history/chat:h").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["channel"], "chat:h");
    assert_eq!(a.json["offset"], 5);
    assert_eq!(a.json["epoch"], epoch.as_str());
    assert_eq!(offsets(&a.json), [1, 2, 3, 4, 5]);
    let p = &a.json["publications"][0];
    assert_eq!(p["type"], "message");
    assert_eq!(p["channel"], "chat:h");
    assert_eq!(p["data"], json!({"n": 1}));
    assert!(p.get("from").is_none(), "{p}");

    assert_eq!(
        offsets(&get(&app, "/api/history/chat:h?limit=2").await.json),
        [4, 5]
    );
    let zero = get(&app, "/api/history/chat:h?limit=0").await;
    assert_eq!(zero.json["offset"], 5);
    assert_eq!(offsets(&zero.json), Vec::<u64>::new());
}

/// `limit` is capped at `HUB_HISTORY_SIZE`, which also bounds what history keeps.
#[actix_rt::test]
async fn history_limit_is_capped_at_history_size() {
    let app = spawn_app_with(&["--history-size", "3"]);
    publish_n(&app, "chat:cap", 5).await;
    assert_eq!(
        offsets(&get(&app, "/api/history/chat:cap?limit=100").await.json),
        [3, 4, 5]
    );
    assert_eq!(
        offsets(&get(&app, "/api/history/chat:cap").await.json),
        [3, 4, 5]
    );
}

/// `since_offset` with the channel's `epoch` gives the publications after it, at most `limit`.
#[actix_rt::test]
async fn history_since_offset_gives_publications_after_it() {
    let app = spawn_app();
    let epoch = publish_n(&app, "chat:s", 5).await;
    let a = get(
        &app,
        &format!("/api/history/chat:s?since_offset=2&epoch={epoch}"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(offsets(&a.json), [3, 4, 5]);
    let a = get(
        &app,
        &format!("/api/history/chat:s?since_offset=2&epoch={epoch}&limit=1"),
    )
    .await;
    assert_eq!(offsets(&a.json), [3]);
    let a = get(
        &app,
        &format!("/api/history/chat:s?since_offset=5&epoch={epoch}"),
    )
    .await;
    assert_eq!(offsets(&a.json), Vec::<u64>::new());
    assert_eq!(a.json["offset"], 5);
}

/// A `since_offset` from another epoch is ignored: the answer is the newest publications, and its
/// `epoch` shows the change.
#[actix_rt::test]
async fn history_since_other_epoch_is_ignored() {
    let app = spawn_app();
    let epoch = publish_n(&app, "chat:e", 3).await;
    let a = get(
        &app,
        "/api/history/chat:e?since_offset=2&epoch=not-this-one",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["epoch"], epoch.as_str());
    assert_eq!(offsets(&a.json), [1, 2, 3]);
}

/// Bad query values are 400 `bad_request`: non-numbers, negatives, `since_offset` without `epoch`.
#[actix_rt::test]
async fn history_with_bad_query_is_bad_request() {
    let app = spawn_app();
    for query in [
        "limit=abc",
        "limit=-1",
        "limit=1.5",
        "since_offset=x&epoch=e",
        "since_offset=2",
    ] {
        let a = get(&app, &format!("/api/history/chat:q?{query}")).await;
        assert_error(&a, 400, "bad_request");
    }
}

/// The channel fills the rest of the path, percent-decoded: `/api/history/a%2Fb` and
/// `/api/history/a/b` both mean channel `a/b`.
#[actix_rt::test]
async fn history_channel_is_rest_of_path_percent_decoded() {
    let app = spawn_app();
    let a = post_json(&app, "/api/publish", r#"{"channel":"a/b","data":"slash"}"#).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let a2 = post_json(
        &app,
        "/api/publish",
        r#"{"channel":"chat:x/y=z|w","data":"odd"}"#,
    )
    .await;
    assert_eq!(a2.status, 200, "{}", a2.json);
    for path in [
        "/api/history/a%2Fb",
        "/api/history/a/b",
        "/api/history/a%2fb",
        "/api/history/%61/b",
    ] {
        let h = get(&app, path).await;
        assert_eq!(h.status, 200, "{path}: {}", h.json);
        assert_eq!(h.json["channel"], "a/b", "{path}");
        assert_eq!(h.json["offset"], 1, "{path}");
        assert_eq!(h.json["publications"][0]["data"], "slash", "{path}");
    }
    for path in [
        "/api/history/chat:x/y=z|w",
        "/api/history/chat%3Ax%2Fy%3Dz%7Cw",
    ] {
        let h = get(&app, path).await;
        assert_eq!(h.status, 200, "{path}: {}", h.json);
        assert_eq!(h.json["channel"], "chat:x/y=z|w", "{path}");
        assert_eq!(h.json["offset"], 1, "{path}");
    }
}

/// An invalid channel in the path (empty, bad characters, a wildcard, not UTF-8) is 400
/// `bad_request`, for history and presence alike.
#[actix_rt::test]
async fn invalid_channel_in_path_is_bad_request() {
    let app = spawn_app();
    for route in ["/api/history/", "/api/presence/"] {
        for channel in ["", "bad%20name", "chat:*", "%FF", "a%00b", "chat%3F"] {
            let a = get(&app, &format!("{route}{channel}")).await;
            assert_error(&a, 400, "bad_request");
        }
    }
}

// ---- GET /api/presence/{channel} ----

/// Presence lists every connection subscribed to the channel with its user and `info`.
#[actix_rt::test]
async fn presence_lists_subscribed_clients() {
    let app = spawn_app();
    let mut alice = Client::connect_token(
        &app,
        &token_with("alice", json!({"info": {"name": "Alice"}})),
    )
    .await;
    let mut bob = Client::connect(&app, "bob").await;
    alice.subscribe("chat:p").await;
    bob.subscribe("chat:p").await;
    let a = get(&app, "/api/presence/chat:p").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["channel"], "chat:p");
    let mut clients = a.json["clients"].as_array().expect("clients").clone();
    clients.sort_by_key(|c| c["user"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        clients,
        [
            json!({"client": alice.client_id(), "user": "alice", "info": {"name": "Alice"}}),
            json!({"client": bob.client_id(), "user": "bob", "info": {}}),
        ]
    );
}

/// Presence of a channel nobody is in is an empty list; the percent-decoded path names it.
#[actix_rt::test]
async fn presence_of_empty_channel_is_empty() {
    let app = spawn_app();
    let a = get(&app, "/api/presence/room%2F1").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json, json!({"channel": "room/1", "clients": []}));
}

// ---- POST /api/disconnect ----

/// Disconnect closes every socket of the user with 4001 `disconnected`, answers how many, and
/// leaves other users connected.
#[actix_rt::test]
async fn disconnect_closes_users_sockets_with_4001() {
    let app = spawn_app();
    let mut a1 = Client::connect(&app, "alice").await;
    let mut a2 = Client::connect(&app, "alice").await;
    let mut bob = Client::connect(&app, "bob").await;
    let a = post_json(&app, "/api/disconnect", r#"{"user":"alice"}"#).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json, json!({"disconnected": 2}));
    assert_eq!(a1.expect_close().await, (4001, "disconnected".to_owned()));
    assert_eq!(a2.expect_close().await, (4001, "disconnected".to_owned()));
    let pong = bob.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

/// Disconnecting a user with no sockets answers `{"disconnected":0}`.
#[actix_rt::test]
async fn disconnect_unknown_user_answers_zero() {
    let app = spawn_app();
    let a = post_json(&app, "/api/disconnect", r#"{"user":"nobody"}"#).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json, json!({"disconnected": 0}));
}

/// Disconnect without a `user`, with an ill-typed or empty one, or a bad body is 400 `bad_request`.
#[actix_rt::test]
async fn disconnect_with_bad_body_is_bad_request() {
    let app = spawn_app();
    for body in [
        "{}",
        r#"{"user":5}"#,
        r#"{"user":null}"#,
        r#"{"user":""}"#,
        r#"{"user":["alice"]}"#,
        "nope",
    ] {
        assert_error(
            &post_json(&app, "/api/disconnect", body).await,
            400,
            "bad_request",
        );
    }
}

// ---- GET /api/channels and /api/info ----

/// `/api/channels` lists the channels with local subscribers and how many each has.
#[actix_rt::test]
async fn channels_lists_subscriber_counts() {
    let app = spawn_app();
    let a = get(&app, "/api/channels").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json, json!({"channels": []}));

    let mut alice = Client::connect(&app, "alice").await;
    let mut bob = Client::connect(&app, "bob").await;
    alice.subscribe("chat:c1").await;
    alice.subscribe("chat:c2").await;
    bob.subscribe("chat:c1").await;
    let a = get(&app, "/api/channels").await;
    let mut channels = a.json["channels"].as_array().expect("channels").clone();
    channels.sort_by_key(|c| c["channel"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        channels,
        [
            json!({"channel": "chat:c1", "subscribers": 2}),
            json!({"channel": "chat:c2", "subscribers": 1}),
        ]
    );
}

/// `/api/info` describes this node: name, connections, subscriptions, uptime, version; no
/// streams without Redis, the configured ones with it.
#[actix_rt::test]
async fn info_describes_this_node() {
    let app = spawn_app_with(&["--node-id", "api-test-node"]);
    let mut alice = Client::connect(&app, "alice").await;
    let _bob = Client::connect(&app, "bob").await;
    alice.subscribe("chat:i1").await;
    alice.subscribe("chat:i2").await;
    let a = get(&app, "/api/info").await;
    assert_eq!(a.status, 200, "{}", a.json);
    if std::env::var("HUB_TEST_ENGINE").as_deref() == Ok("redis") {
        // On the Redis engine the default stream is read (and described) from the start.
        assert_eq!(a.json["streams"][0]["stream"], "hub:events", "{}", a.json);
        assert_eq!(a.json["streams"][0]["dead_letters"], 0, "{}", a.json);
    } else {
        assert_eq!(a.json["streams"], json!([]));
    }
    let nodes = a.json["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{}", a.json);
    let node = &nodes[0];
    assert_eq!(node["node"], "api-test-node");
    assert_eq!(node["connections"], 2);
    assert_eq!(node["subscriptions"], 2);
    assert!(node["uptime_s"].is_u64(), "{node}");
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
}
