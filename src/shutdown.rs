//! The ordered shutdown of a node: stop being ready, refuse new connections, close every
//! session with 1001 `going away` while the Streams readers stop reading and finish the batch in
//! hand, wait for both, then stop the HTTP server. All of it within `HUB_SHUTDOWN_TIMEOUT_S`:
//! when that is up, [`crate::run`] drops the server, closing whatever is still open.

use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;

use crate::app::AppState;
use crate::hub;
use crate::protocol::Close;

/// Runs the shutdown sequence; returns when the server has stopped or the timeout is up,
/// whichever comes first.
pub async fn drain(app: &AppState, server: ServerHandle) {
    let timeout = app.config.shutdown_timeout;
    let deadline = Instant::now() + timeout;
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
    tracing::info!(
        connections = open,
        "shutting down: closing connections with 1001"
    );
    // Sessions leave the Hub as their sockets close; wait for that, but not past the timeout
    // (a peer that never reads cannot hold the node up).
    while Instant::now() < deadline {
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
        let _ = tokio::time::timeout_at(deadline.into(), streams).await;
    }
    // The closed sessions' leaves and releases (and their lifecycle events) reach Redis
    // before the process exits; what the time does not allow, the lease settles later.
    let _ = tokio::time::timeout_at(deadline.into(), app.engine.flush()).await;
    // Webhooks: with the memory engine, deliver what is queued while the time allows (what
    // is left is counted as lost); with Redis the queues stay for the other nodes.
    if let Some(hooks) = &app.webhooks {
        hooks.settle(deadline).await;
        hooks.stop().await;
    }
    // The server gets only the time left. A graceful stop waits for every connection, and one
    // whose peer never reads stays open (its session cannot even be polled to close it): that
    // wait would add up to another shutdown timeout. When the time is up, `run` drops the
    // server instead, which closes such connections at once.
    let stopped = tokio::time::timeout_at(deadline.into(), server.stop(true)).await;
    match stopped {
        Ok(()) => tracing::info!("stopped"),
        Err(_) => tracing::warn!(
            timeout_s = timeout.as_secs(),
            "shutdown timeout reached: closing the connections still open"
        ),
    }
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
                    tracing::warn!(
                        error = %e,
                        "cannot listen for SIGTERM/SIGINT; only Ctrl-C stops the hub"
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
