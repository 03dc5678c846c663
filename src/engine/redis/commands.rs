//! The connection commands go over: the `redis` crate's `ConnectionManager`, plus one resend of
//! a read-only command whose link had already died, and a new link when the old one stopped
//! answering.
//!
//! A `ConnectionManager` learns that its link is dead only from a command that fails on it, and
//! reconnects for the next one. A node whose link sat idle while Redis restarted would answer
//! its first request after the restart with `unavailable` (`broken pipe`) while `/ready` already
//! says 200. Only reads are sent again: the crate reports `BrokenPipe` also for requests that
//! were written before the link died, and a write (a publish, a presence change) may have run.
//!
//! A link can also die without failing: a peer gone behind a firewall or a NAT that forgot the
//! connection, where nothing answers and no error comes until the kernel gives up on its
//! retransmissions (a quarter of an hour by default). The crate takes a timed-out answer for a
//! passing condition and keeps the link, so after [`STALLS_BEFORE_NEW_LINK`] answers in a row
//! have timed out, the next command goes over a new one. A Redis that is only slow (a long
//! script, a pause) costs nothing more than one new connection per stall.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// Answers in a row that may time out before the link is replaced.
const STALLS_BEFORE_NEW_LINK: u32 = 2;

#[derive(Clone)]
pub struct Commands(Arc<Link>);

struct Link {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: Mutex<ConnectionManager>,
    /// Answers that timed out since the last one that came.
    stalls: AtomicU32,
}

impl Commands {
    /// Connects lazily: the first command connects, so a node can start while Redis is down.
    /// `connect` bounds a connection attempt, `reply` each answer.
    pub fn lazy(client: &redis::Client, connect: Duration, reply: Duration) -> RedisResult<Self> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(reply))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Commands(Arc::new(Link {
            client: client.clone(),
            config,
            current: Mutex::new(manager),
            stalls: AtomicU32::new(0),
        })))
    }

    fn current(&self) -> MutexGuard<'_, ConnectionManager> {
        self.0
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn manager(&self) -> ConnectionManager {
        self.current().clone()
    }

    /// Counts a timed-out answer, and replaces the link once too many came in a row; any
    /// answer (an error reply included) shows the link works.
    fn observe<T>(&self, result: &RedisResult<T>) {
        match result {
            Err(e) if e.is_timeout() => {
                let stalls = self.0.stalls.fetch_add(1, Ordering::AcqRel) + 1;
                if stalls == STALLS_BEFORE_NEW_LINK {
                    self.replace_link();
                }
            }
            _ => self.0.stalls.store(0, Ordering::Release),
        }
    }

    fn replace_link(&self) {
        // Commands still waiting on the old link keep it until they end.
        match ConnectionManager::new_lazy_with_config(self.0.client.clone(), self.0.config.clone())
        {
            Ok(fresh) => {
                *self.current() = fresh;
                tracing::warn!(
                    stalls = STALLS_BEFORE_NEW_LINK,
                    "redis stopped answering on the command link: replacing it"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot replace the redis command link"),
        }
        self.0.stalls.store(0, Ordering::Release);
    }
}

/// The link under the command had closed (before or after it was written: the crate does not
/// tell).
fn link_closed(e: &redis::RedisError) -> bool {
    // The crate keeps the I/O error in an `Arc` that it exposes only as the error's source.
    let io = std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>())
        .and_then(|inner| inner.downcast_ref::<io::Error>());
    io.is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::NotConnected
        )
    })
}

/// Commands that change nothing, so running one twice is harmless.
fn read_only(cmd: &Cmd) -> bool {
    const READS: &[&[u8]] = &[
        b"GET",
        b"MGET",
        b"HGET",
        b"HMGET",
        b"HGETALL",
        b"HLEN",
        b"EXISTS",
        b"TYPE",
        b"TIME",
        b"PING",
        b"LLEN",
        b"LRANGE",
        b"ZRANGE",
        b"ZRANGEBYSCORE",
        b"ZSCORE",
        b"ZCARD",
        b"XLEN",
        b"XRANGE",
        b"XREVRANGE",
        b"XPENDING",
        b"XINFO",
        b"SCAN",
    ];
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => READS.iter().any(|r| r.eq_ignore_ascii_case(name)),
        _ => false,
    }
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut link = self.manager();
            let answer = match link.req_packed_command(cmd).await {
                Err(e) if link_closed(&e) && read_only(cmd) => link.req_packed_command(cmd).await,
                answer => answer,
            };
            self.observe(&answer);
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut link = self.manager();
            let answer = match link.req_packed_commands(pipeline, offset, count).await {
                Err(e) if link_closed(&e) && pipeline.cmd_iter().all(read_only) => {
                    link.req_packed_commands(pipeline, offset, count).await
                }
                answer => answer,
            };
            self.observe(&answer);
            answer
        })
    }

    fn get_db(&self) -> i64 {
        self.manager().get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_sent_again() {
        assert!(read_only(&redis::cmd("XINFO")));
        assert!(read_only(&redis::cmd("hgetall")));
        for write in ["EVALSHA", "SET", "PUBLISH", "XACK", "HSET"] {
            assert!(!read_only(&redis::cmd(write)), "{write}");
        }
    }

    #[test]
    fn a_closed_link_is_recognised() {
        for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::NotConnected] {
            assert!(link_closed(&redis::RedisError::from(io::Error::from(kind))));
        }
    }

    #[test]
    fn a_reset_a_timeout_or_a_refusal_is_not_a_closed_link() {
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::TimedOut,
            io::ErrorKind::ConnectionRefused,
        ] {
            assert!(!link_closed(&redis::RedisError::from(io::Error::from(
                kind
            ))));
        }
    }
}
