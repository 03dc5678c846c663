//! Every `HUB_DASHBOARD_INTERVAL_S`, the node publishes its own figures to `dashboard:hub`
//! (connections, subscriptions, publications and deliveries per second) for the demo page.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::to_raw_value;

use crate::app::AppState;
use crate::clock::unix_millis;
use crate::engine::PublishRequest;
use crate::hub;

pub const CHANNEL: &str = "dashboard:hub";

#[derive(Serialize)]
struct Snapshot<'a> {
    node: &'a str,
    connections: usize,
    subscriptions: usize,
    publications_per_s: f64,
    deliveries_per_s: f64,
    ts: u64,
}

pub fn start(app: Arc<AppState>) {
    let Some(interval) = app.config.dashboard_interval else {
        return;
    };
    actix::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        let mut last = (
            app.metrics.publications_total(),
            app.metrics.deliveries.get(),
            std::time::Instant::now(),
        );
        loop {
            tick.tick().await;
            if app.is_draining() {
                break;
            }
            let Ok(stats) = app
                .hub
                .send(hub::Stats {
                    with_channels: false,
                })
                .await
            else {
                break;
            };
            let now = (
                app.metrics.publications_total(),
                app.metrics.deliveries.get(),
                std::time::Instant::now(),
            );
            let secs = now.2.duration_since(last.2).as_secs_f64().max(0.001);
            let snapshot = Snapshot {
                node: app.node_id(),
                connections: stats.connections,
                subscriptions: stats.subscriptions,
                publications_per_s: (now.0 - last.0) as f64 / secs,
                deliveries_per_s: (now.1 - last.1) as f64 / secs,
                ts: unix_millis(),
            };
            last = now;
            let Ok(data) = to_raw_value(&snapshot) else {
                continue;
            };
            let request = PublishRequest {
                channel: CHANNEL.to_owned(),
                data,
                event_id: None,
                event_type: Some("hub.stats".to_owned()),
                from: None,
            };
            if let Err(e) = app.engine.publish(request).await {
                tracing::debug!(error = %e, "dashboard snapshot not published");
            }
        }
    });
}
