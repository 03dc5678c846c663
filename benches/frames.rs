//! Frame encode and decode on the wire's hot paths, through the crate's public protocol API.
//!
//! - `encode/message`: a publication's `message` push, built once per publication per node
//!   (`MessageTemplate::new` + `complete`, then the validation into a shared `Message`);
//! - `encode/published`, `encode/subscribed_100`: a publish reply, and a `subscribed` reply
//!   recovering 100 publications (`ServerFrame::encode`);
//! - `decode/*`: `parse_frame` of the client frames a session reads most (publish with a
//!   100-byte `data`, subscribe, ping) and of a malformed one.
//!
//! `cargo bench --bench frames`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::value::RawValue;

use realtime_hub::protocol::server::{message, Sender};
use realtime_hub::protocol::{parse_frame, MessageTemplate, ServerFrame};

/// A 100-byte `data`, as in the load generator's runs.
fn data() -> Box<RawValue> {
    let text = format!(
        r#"{{"lg_seq":12345,"lg_t":1767225612345678,"pad":"{}"}}"#,
        "x".repeat(51)
    );
    assert_eq!(text.len(), 100);
    RawValue::from_string(text).expect("valid JSON")
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    let data = data();
    let sender = Sender {
        user: "alice".into(),
        client: "4f9c2d1e8b7a4c3d9e0f1a2b3c4d5e6f".into(),
    };
    group.bench_function("message", |b| {
        let mut offset = 0u64;
        b.iter(|| {
            offset += 1;
            let template = MessageTemplate::new(
                black_box("chat:room-42"),
                black_box("6f1c0a3e-2b4d-4e5f-8a9b-0c1d2e3f4a5b"),
                None,
                &data,
                Some(&sender),
                1_767_225_612_345,
            );
            message(template.complete(offset, "k3x9")).expect("valid frame")
        })
    });
    group.bench_function("published", |b| {
        b.iter(|| {
            ServerFrame::Published {
                id: Some(black_box(17)),
                channel: black_box("chat:room-42"),
                offset: 1234,
                epoch: "k3x9",
                event_id: "6f1c0a3e-2b4d-4e5f-8a9b-0c1d2e3f4a5b",
            }
            .encode()
        })
    });
    let template = MessageTemplate::new("chat:room-42", "e", None, &data, Some(&sender), 1);
    let history: Vec<_> = (1..=100)
        .map(|o| message(template.complete(o, "k3x9")).expect("valid frame"))
        .collect();
    group.bench_function("subscribed_100", |b| {
        b.iter(|| {
            ServerFrame::Subscribed {
                id: Some(1),
                channel: "chat:room-42",
                offset: 100,
                epoch: "k3x9",
                recovered: true,
                publications: black_box(&history),
            }
            .encode()
        })
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    let publish = format!(
        r#"{{"type":"publish","id":42,"channel":"chat:room-42","data":{},"event_id":"6f1c0a3e-2b4d-4e5f-8a9b-0c1d2e3f4a5b"}}"#,
        data().get()
    );
    let frames = [
        ("publish", publish.as_str()),
        (
            "subscribe",
            r#"{"type":"subscribe","id":7,"channel":"chat:room-42","recover":{"offset":1234,"epoch":"k3x9"}}"#,
        ),
        ("ping", r#"{"type":"ping","id":9}"#),
        ("malformed", r#"{"type":"publish","id":3,"channel":12}"#),
    ];
    for (name, text) in frames {
        group.bench_function(name, |b| b.iter(|| parse_frame(black_box(text))));
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
