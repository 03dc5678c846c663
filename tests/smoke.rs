//! The smallest end-to-end check: one client, one channel, its own publication back.

mod common;
use common::*;
use serde_json::json;

/// A client connects, subscribes, publishes and receives its own publication.
#[actix_rt::test]
async fn publisher_receives_its_own_publication() {
    let app = spawn_app();
    let mut c = Client::connect(&app, "alice").await;
    let s = c.subscribe("chat:lobby").await;
    assert_eq!(s["offset"], 0);
    let p = c.publish("chat:lobby", json!({"text": "hi"})).await;
    assert_eq!(p["offset"], 1);
    let m = c.next_of("message").await;
    assert_eq!(m["data"]["text"], "hi");
    assert_eq!(m["from"]["user"], "alice");
}
