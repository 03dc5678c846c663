//! The connection commands go over: the `redis` crate's `ConnectionManager`, plus one resend of
//! a command that never left this process because the link under it had died.
//!
//! A `ConnectionManager` learns that its link is dead only from a command that fails on it, and
//! reconnects for the next one. A node whose link sat idle while Redis restarted would answer
//! its first request after the restart with `unavailable` (`broken pipe`) while `/ready` already
//! says 200. The resend is limited to the errors that mean the command was never written
//! (`BrokenPipe`, `NotConnected`), so a command that may have run is never run twice.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

#[derive(Clone)]
pub struct Commands(ConnectionManager);

impl Commands {
    /// Connects lazily: the first command connects, so a node can start while Redis is down.
    /// `connect` bounds a connection attempt, `reply` each answer.
    pub fn lazy(client: &redis::Client, connect: Duration, reply: Duration) -> RedisResult<Self> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(reply))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        ConnectionManager::new_lazy_with_config(client.clone(), config).map(Commands)
    }
}

/// The command was refused before it was written: the link had already closed.
fn never_sent(e: &redis::RedisError) -> bool {
    // The crate keeps the I/O error behind an `Arc` it exposes only as the error's source.
    let io = std::error::Error::source(e).and_then(|source| {
        source.downcast_ref::<io::Error>().or_else(|| {
            source
                .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
                .and_then(|inner| inner.downcast_ref::<io::Error>())
        })
    });
    io.is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::NotConnected
        )
    })
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.0.req_packed_command(cmd).await {
                Err(e) if never_sent(&e) => self.0.req_packed_command(cmd).await,
                answer => answer,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.0.req_packed_commands(pipeline, offset, count).await {
                Err(e) if never_sent(&e) => {
                    self.0.req_packed_commands(pipeline, offset, count).await
                }
                answer => answer,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_link_means_never_sent() {
        for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::NotConnected] {
            assert!(never_sent(&redis::RedisError::from(io::Error::from(kind))));
        }
    }

    #[test]
    fn a_reset_or_timeout_may_have_run_so_is_not_resent() {
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::TimedOut,
            io::ErrorKind::ConnectionRefused,
        ] {
            assert!(!never_sent(&redis::RedisError::from(io::Error::from(kind))));
        }
    }
}
