//! Hostile frames: every bad input gets a clear error (or the contract's close code) and the
//! hub stays healthy for everyone else.
mod common;
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

async fn error_for(c: &mut Client, text: &str) -> Value {
    c.send_raw(Message::text(text)).await;
    let f = c.next_frame().await;
    assert_eq!(f["type"], "error", "reply to {text}: {f}");
    f
}

/// Frames that are not a JSON object with a known, well-typed request get `bad_request` (or
/// `unknown_type`), with the id echoed only when it was valid; the connection stays open.
#[actix_rt::test]
async fn malformed_frames_get_errors_and_the_connection_stays_open() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "h").await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(String, &str, Value)> = vec![
        ("not json".into(), "bad_request", Value::Null),
        ("[1,2]".into(), "bad_request", Value::Null),
        ("42".into(), "bad_request", Value::Null),
        ("{}".into(), "bad_request", Value::Null),
        (r#"{"type":5,"id":1}"#.into(), "bad_request", json!(1)),
        (r#"{"type":"warp","id":2}"#.into(), "unknown_type", json!(2)),
        (
            r#"{"type":"subscribe","id":3}"#.into(),
            "bad_request",
            json!(3),
        ),
        (
            r#"{"type":"subscribe","id":4,"channel":["x"]}"#.into(),
            "bad_request",
            json!(4),
        ),
        (
            r#"{"type":"subscribe","id":5,"channel":"bad channel"}"#.into(),
            "bad_request",
            json!(5),
        ),
        (
            r#"{"type":"subscribe","id":6,"channel":"chat:*"}"#.into(),
            "bad_request",
            json!(6),
        ),
        (
            format!(
                r#"{{"type":"subscribe","id":7,"channel":"{}"}}"#,
                "x".repeat(256)
            ),
            "bad_request",
            json!(7),
        ),
        (
            r#"{"type":"subscribe","id":8,"channel":"c","recover":{"offset":-1,"epoch":"e"}}"#
                .into(),
            "bad_request",
            json!(8),
        ),
        (
            r#"{"type":"history","id":9,"channel":"c","limit":"ten"}"#.into(),
            "bad_request",
            json!(9),
        ),
        (
            r#"{"type":"publish","id":10,"channel":"c"}"#.into(),
            "bad_request",
            json!(10),
        ),
        (
            r#"{"type":"publish","id":11,"channel":"c","data":1,"event_id":""}"#.into(),
            "bad_request",
            json!(11),
        ),
        (
            r#"{"type":"publish","id":12,"channel":"c","data":1,"event_id":7}"#.into(),
            "bad_request",
            json!(12),
        ),
        (
            format!(r#"{{"type":"publish","id":13,"channel":"c","data":{deep}}}"#),
            "bad_request",
            json!(13),
        ),
        (
            r#"{"type":"refresh","id":14}"#.into(),
            "bad_request",
            json!(14),
        ),
        (
            r#"{"type":"ping","id":-1}"#.into(),
            "bad_request",
            Value::Null,
        ),
        (
            r#"{"type":"ping","id":1.5}"#.into(),
            "bad_request",
            Value::Null,
        ),
        (
            r#"{"type":"ping","id":1e2}"#.into(),
            "bad_request",
            Value::Null,
        ),
        (
            r#"{"type":"ping","id":9007199254740992}"#.into(),
            "bad_request",
            Value::Null,
        ),
        (
            r#"{"type":"ping","id":"7"}"#.into(),
            "bad_request",
            Value::Null,
        ),
        (
            r#"{"type":"ping","id":null}"#.into(),
            "bad_request",
            Value::Null,
        ),
    ];
    for (text, code, id) in cases {
        let f = error_for(&mut c, &text).await;
        assert_eq!(f["code"], code, "{text}");
        assert_eq!(f["id"], id, "{text}");
        assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

/// A binary frame is a `bad_request`, not a disconnect.
#[actix_rt::test]
async fn binary_frames_are_bad_requests() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "h").await;
    c.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    let f = c.next_frame().await;
    assert_eq!(
        (f["type"].as_str(), f["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

/// A message over `HUB_MAX_FRAME_BYTES` closes with 1009.
#[actix_rt::test]
async fn oversize_message_closes_with_1009() {
    let app = spawn_app_with(&["--max-frame-bytes", "2048"]);
    let mut c = Client::connect(&app, "h").await;
    c.send_raw(Message::text(format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(3000)
    )))
    .await;
    assert_eq!(c.expect_close().await, (1009, "message too big".to_owned()));
}

fn raw_frame(opcode: OpCode, fin: bool, payload: Vec<u8>) -> Message {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        ..FrameHeader::default()
    };
    Message::Frame(Frame::from_payload(header, payload.into()))
}

/// Fragments that add up to more than the limit close with 1009, even if each is small.
#[actix_rt::test]
async fn fragmented_oversize_message_closes_with_1009() {
    let app = spawn_app_with(&["--max-frame-bytes", "2048"]);
    let mut c = Client::connect(&app, "h").await;
    c.ws.send(raw_frame(OpCode::Data(Data::Text), false, vec![b' '; 1000]))
        .await
        .expect("send");
    for _ in 0..3 {
        // The hub may close before the last fragments are written.
        if c.ws
            .send(raw_frame(
                OpCode::Data(Data::Continue),
                false,
                vec![b' '; 1000],
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(c.expect_close().await, (1009, "message too big".to_owned()));
}

/// A fragmented message within the limit is reassembled and answered.
#[actix_rt::test]
async fn fragmented_message_is_reassembled() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "h").await;
    let text = br#"{"type":"ping","id":77}"#.to_vec();
    c.ws.send(raw_frame(
        OpCode::Data(Data::Text),
        false,
        text[..10].to_vec(),
    ))
    .await
    .expect("send");
    c.ws.send(raw_frame(
        OpCode::Data(Data::Continue),
        true,
        text[10..].to_vec(),
    ))
    .await
    .expect("send");
    assert_eq!(c.next_frame().await, json!({"type": "pong", "id": 77}));
}

/// A text frame that is not UTF-8 closes with 1007, whole or fragmented.
#[actix_rt::test]
async fn invalid_utf8_closes_with_1007() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "h").await;
    c.ws.send(raw_frame(
        OpCode::Data(Data::Text),
        true,
        vec![b'{', 0xff, 0xfe, b'}'],
    ))
    .await
    .expect("send");
    assert_eq!(c.expect_close().await, (1007, "invalid utf-8".to_owned()));

    let mut c = Client::connect(&app, "h2").await;
    c.ws.send(raw_frame(OpCode::Data(Data::Text), false, vec![b'"', 0xe2]))
        .await
        .expect("send");
    c.ws.send(raw_frame(
        OpCode::Data(Data::Continue),
        true,
        vec![0x28, b'"'],
    ))
    .await
    .expect("send");
    assert_eq!(c.expect_close().await, (1007, "invalid utf-8".to_owned()));
}

/// One client's garbage does not disturb another client's traffic.
#[actix_rt::test]
async fn garbage_from_one_client_leaves_others_unaffected() {
    let app = spawn_app();
    let mut good = Client::connect(&app, "good").await;
    good.subscribe("calm").await;
    let mut bad = Client::connect(&app, "bad").await;
    for text in ["\u{0}", "{\"type\":", "}}}}", "[[[[[["] {
        bad.send_raw(Message::text(text)).await;
    }
    bad.ws
        .send(raw_frame(OpCode::Data(Data::Text), true, vec![0xc0]))
        .await
        .expect("send");
    good.publish("calm", json!("still here")).await;
    assert_eq!(good.next_of("message").await["data"], "still here");
}
