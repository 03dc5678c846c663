//! What `/metrics` shows from a node's first scrape (docs/operations.md, "Alerts worth
//! setting"): the standard process metrics, and labelled counters at 0 before their first
//! count, so that `increase(...) > 0` fires on the first one. Real node, real HTTP.

mod common;

use common::*;

/// The value of the sample line that starts with `series` followed by a space.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The process collector's five series are there, with plausible values (the open-files
/// alert divides the first by the second).
#[actix_rt::test]
async fn metrics_show_the_process_figures() {
    let app = spawn_app();
    let text = scrape(&app).await;
    let open = sample(&text, "process_open_fds").expect("process_open_fds");
    let max = sample(&text, "process_max_fds").expect("process_max_fds");
    assert!(open >= 1.0 && max >= open, "{open} of {max}");
    assert!(sample(&text, "process_resident_memory_bytes").is_some_and(|b| b > 0.0));
    assert!(sample(&text, "process_cpu_seconds_total").is_some_and(|s| s >= 0.0));
    assert!(sample(&text, "process_start_time_seconds").is_some_and(|t| t > 1.6e9));
}

/// Error codes and connect results are at 0 before anything happened.
#[actix_rt::test]
async fn error_and_connect_series_exist_at_zero_from_the_start() {
    let app = spawn_app();
    let text = scrape(&app).await;
    for series in [
        "hub_errors_total{code=\"internal\"}",
        "hub_errors_total{code=\"unavailable\"}",
        "hub_connects_total{result=\"internal_error\"}",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series} in:\n{text}");
    }
}

/// A node reading streams shows each stream's dead letters at 0 before the first one.
#[actix_rt::test]
async fn dead_letters_exist_at_zero_from_the_start() {
    let redis = RedisServer::start();
    let app = spawn_node(&redis, "n1", &["--streams", "orders"]);
    let text = scrape(&app).await;
    assert_eq!(
        sample(
            &text,
            "hub_stream_entries_total{stream=\"orders\",result=\"dead\"}"
        ),
        Some(0.0),
        "{text}"
    );
}
