//! Gapless subscribing and recovery: after `subscribed`, every offset exactly once, in order;
//! a reconnecting client gets exactly what it missed (docs/protocol.md §3.13).
mod common;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Subscribers joining while a publisher runs flat out see offset+1, +2, … with no gap or repeat.
#[actix_rt::test]
async fn subscribing_while_publishing_is_gapless() {
    let app = spawn_app_with(&["--client-rate", "100000"]);
    const TOTAL: u64 = 2000;
    let mut publisher = Client::connect(&app, "pub").await;
    let publishing = async move {
        // Pipelined: many publications in flight at once.
        for i in 0..TOTAL {
            publisher
                .send(json!({"type": "publish", "id": i, "channel": "g", "data": i}))
                .await;
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for i in 0..TOTAL {
            assert_eq!(publisher.reply_to(i).await["type"], "published");
        }
    };
    let subscribing = async {
        let mut seen = Vec::new();
        for n in 0..8 {
            tokio::time::sleep(Duration::from_millis(15)).await;
            let mut c = Client::connect(&app, &format!("sub{n}")).await;
            let s = c.subscribe("g").await;
            let start = s["offset"].as_u64().expect("offset");
            seen.push((c, start));
        }
        seen
    };
    let ((), subscribers) = tokio::join!(publishing, subscribing);
    let mid_stream = subscribers
        .iter()
        .filter(|(_, s)| (1..TOTAL).contains(s))
        .count();
    assert!(
        mid_stream >= 3,
        "only {mid_stream} subscribers joined mid-stream: the test proved little"
    );
    for (mut c, start) in subscribers {
        for expected in start + 1..=TOTAL {
            let m = c.next_of("message").await;
            assert_eq!(m["offset"], expected, "subscriber starting at {start}");
        }
        c.expect_silence(Duration::from_millis(200)).await;
    }
}

/// A client that reconnects with `recover` gets exactly the publications it missed.
#[actix_rt::test]
async fn recover_returns_exactly_the_missed_publications() {
    let app = spawn_app();
    let mut publisher = Client::connect(&app, "pub").await;
    let mut c = Client::connect(&app, "reader").await;
    let epoch = c.subscribe("r").await["epoch"].clone();
    publisher.publish("r", json!(1)).await;
    publisher.publish("r", json!(2)).await;
    assert_eq!(c.next_of("message").await["offset"], 1);
    assert_eq!(c.next_of("message").await["offset"], 2);
    drop(c);
    for i in 3..=5 {
        publisher.publish("r", json!(i)).await;
    }
    let mut c = Client::connect(&app, "reader").await;
    let s = c
        .request(
            json!({"type": "subscribe", "channel": "r", "recover": {"offset": 2, "epoch": epoch}}),
        )
        .await;
    assert_eq!(s["recovered"], true);
    assert_eq!(s["offset"], 5);
    let got: Vec<u64> = s["publications"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["offset"].as_u64())
        .collect();
    assert_eq!(got, vec![3, 4, 5]);
    assert_eq!(s["publications"][0]["data"], 3);
    assert_eq!(s["publications"][0]["type"], "message");
    publisher.publish("r", json!(6)).await;
    assert_eq!(c.next_of("message").await["offset"], 6);
}

/// Recovering from the current offset is a recovery with nothing missed.
#[actix_rt::test]
async fn recover_at_the_latest_offset_is_recovered_and_empty() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "a").await;
    let p = c.publish("r", json!(1)).await;
    let s = c
        .request(json!({"type": "subscribe", "channel": "r", "recover": {"offset": 1, "epoch": p["epoch"]}}))
        .await;
    assert_eq!(
        (s["recovered"].clone(), s["publications"].clone()),
        (json!(true), json!([]))
    );
}

/// Another epoch cannot be recovered: `recovered:false` and no publications.
#[actix_rt::test]
async fn recover_from_another_epoch_fails_cleanly() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "a").await;
    c.publish("r", json!(1)).await;
    let s = c
        .request(
            json!({"type": "subscribe", "channel": "r", "recover": {"offset": 0, "epoch": "gone"}}),
        )
        .await;
    assert_eq!(s["type"], "subscribed");
    assert_eq!(s["recovered"], false);
    assert_eq!(s["publications"], json!([]));
    assert_eq!(s["offset"], 1);
}

/// A gap that history no longer holds entirely is not recovered.
#[actix_rt::test]
async fn recover_past_the_history_window_fails_cleanly() {
    let app = spawn_app_with(&["--history-size", "2"]);
    let mut c = Client::connect(&app, "a").await;
    let epoch = c.publish("r", json!(1)).await["epoch"].clone();
    for i in 2..=4 {
        c.publish("r", json!(i)).await;
    }
    let s = c
        .request(json!({"type": "subscribe", "channel": "r", "recover": {"offset": 1, "epoch": epoch.clone()}}))
        .await;
    assert_eq!(
        (s["recovered"].clone(), s["publications"].clone()),
        (json!(false), json!([]))
    );
    // From offset 2 the gap (3, 4) is still all there.
    let mut d = Client::connect(&app, "b").await;
    let s = d
        .request(
            json!({"type": "subscribe", "channel": "r", "recover": {"offset": 2, "epoch": epoch}}),
        )
        .await;
    assert_eq!(s["recovered"], true);
    assert_eq!(s["publications"].as_array().map(Vec::len), Some(2));
}

/// An offset ahead of the channel cannot be recovered.
#[actix_rt::test]
async fn recover_from_the_future_fails_cleanly() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "a").await;
    let epoch = c.publish("r", json!(1)).await["epoch"].clone();
    let s = c
        .request(
            json!({"type": "subscribe", "channel": "r", "recover": {"offset": 9, "epoch": epoch}}),
        )
        .await;
    assert_eq!(s["recovered"], false);
}
