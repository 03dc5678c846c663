//! This node's reading of the Redis server's clock. Lease scores are written and compared in
//! server time, so nodes whose own clocks disagree still agree on whose lease ran out. Knows
//! nothing about what the leases are for.

use std::sync::atomic::{AtomicI64, Ordering};

use redis::aio::ConnectionLike;

use crate::clock::unix_millis;

/// The server's clock as this node reads it; the heartbeat sets the offset from `TIME` at
/// every beat (until the first, the local clock).
#[derive(Debug, Default)]
pub(super) struct ServerClock {
    /// Server time minus local time, in ms.
    offset_ms: AtomicI64,
}

impl ServerClock {
    /// Unix ms on the server's clock, as well as this node can tell.
    pub(super) fn now_ms(&self) -> u64 {
        let local = i64::try_from(unix_millis()).unwrap_or(i64::MAX);
        u64::try_from(local.saturating_add(self.offset_ms.load(Ordering::Acquire))).unwrap_or(0)
    }

    /// Reads `TIME` and takes the offset, assuming the answer was made halfway through the
    /// round trip. Answers the server's time.
    pub(super) async fn sync(&self, conn: &mut impl ConnectionLike) -> redis::RedisResult<u64> {
        let sent = unix_millis();
        let server = server_ms(conn).await?;
        let received = unix_millis();
        let local = sent / 2 + received / 2;
        let offset =
            i64::try_from(server).unwrap_or(i64::MAX) - i64::try_from(local).unwrap_or(i64::MAX);
        self.offset_ms.store(offset, Ordering::Release);
        Ok(server)
    }
}

/// The server's clock now (`TIME`), in unix ms.
pub(super) async fn server_ms(conn: &mut impl ConnectionLike) -> redis::RedisResult<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1000 + micros / 1000)
}
