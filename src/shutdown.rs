//! The ordered shutdown of a node: stop being ready, refuse new connections, close every
//! session with 1001 `going away` while the Streams readers stop reading and finish the batch in
//! hand, wait for both (bounded by `HUB_SHUTDOWN_TIMEOUT_S`), then stop the HTTP server.

use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;

use crate::app::AppState;
use crate::hub;
use crate::protocol::Close;

pub async fn drain(app: &AppState, server: ServerHandle) {
    let started = Instant::now();
    let timeout = app.config.shutdown_timeout;
    app.start_draining();
    // Runs alongside the sessions' close; what it cannot finish in time stays pending in Redis.
    let streams = app
        .streams
        .clone()
        .map(|s| actix::spawn(async move { s.stop(timeout).await }));
    let open = app
        .hub
        .send(hub::CloseAll {
            close: Close::GoingAway,
        })
        .await
        .unwrap_or(0);
    log::info!(connections = open; "shutting down: closing connections with 1001");
    // Sessions leave the Hub as their sockets close; wait for that, but not past the timeout
    // (a peer that never reads cannot hold the node up).
    while started.elapsed() < timeout {
        let left = app
            .hub
            .send(hub::Stats {
                with_channels: false,
            })
            .await
            .map(|s| s.connections)
            .unwrap_or(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if let Some(streams) = streams {
        let _ = streams.await;
    }
    server.stop(true).await;
    log::info!("stopped");
}

/// Listens for SIGTERM and SIGINT from the moment it is called (inside the runtime), so a
/// signal that arrives while the node starts still drains it; the future resolves on the first.
pub fn signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    log::warn!(
                        "error=\"{e}\" cannot listen for SIGTERM/SIGINT; only Ctrl-C stops the hub"
                    );
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
