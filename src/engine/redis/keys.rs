//! Every Redis key and pub/sub topic of the hub, under `HUB_REDIS_PREFIX`. A channel's keys carry
//! the channel as a hash tag, so under Redis Cluster they live on one shard and its scripts stay
//! single-slot.

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The prefix every key and topic starts with (`HUB_REDIS_PREFIX`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash `{epoch, offset}` of a channel's current history life.
    pub fn meta(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:meta", self.prefix)
    }

    /// List of a channel's newest `message` frames, oldest first.
    pub fn history(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:history", self.prefix)
    }

    /// `offset:epoch` of an `event_id` already published in the channel.
    pub fn dedup(&self, channel: &str, event_id: &str) -> String {
        format!("{}:{{{channel}}}:dedup:{event_id}", self.prefix)
    }

    /// Hash client → presence entry (JSON).
    pub fn presence(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:presence", self.prefix)
    }

    /// Sorted set client → lease expiry (Unix ms): Redis 7.0 has no per-field expiry.
    pub fn presence_leases(&self, channel: &str) -> String {
        format!("{}:{{{channel}}}:presence:leases", self.prefix)
    }

    /// Sorted set client → lease expiry of one user's connections, cluster-wide.
    pub fn connections(&self, user: &str) -> String {
        format!("{}:conns:{{{user}}}", self.prefix)
    }

    /// Sorted set node → lease expiry: the live nodes.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Hash of a node's figures for `/api/info`.
    pub fn node_info(&self, node: &str) -> String {
        format!("{}:node:{node}:info", self.prefix)
    }

    /// Hash channel → local subscriber count of a node, for `/api/channels`.
    pub fn node_channels(&self, node: &str) -> String {
        format!("{}:node:{node}:channels", self.prefix)
    }

    /// Set of a node's presence entries (`<announce>\n<channel>\n<client>`), so a live node
    /// can remove them, with `leave` pushes, when that node dies.
    pub fn node_presence(&self, node: &str) -> String {
        format!("{}:node:{node}:presence", self.prefix)
    }

    /// Set by the node that removed `node` as dead, for ten leases. Should `node` be alive after
    /// all (cut off from Redis for a lease), it finds this at its next heartbeat and announces
    /// its clients again with `join`: the others saw them `leave`.
    pub fn node_removed(&self, node: &str) -> String {
        format!("{}:node:{node}:removed", self.prefix)
    }

    /// The pub/sub topic of a channel's publications and join/leave.
    pub fn topic(&self, channel: &str) -> String {
        format!("{}:ch:{channel}", self.prefix)
    }

    /// The channel a topic carries, if it is one of ours.
    pub fn channel_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic.strip_prefix(&self.prefix)?.strip_prefix(":ch:")
    }

    /// List of the lifecycle events waiting for delivery to the webhook `url`, oldest first
    /// (one queue per URL: each has its own order and delivery ids).
    pub fn webhook_queue(&self, url: &str) -> String {
        format!("{}:webhooks:{{{}}}:queue", self.prefix, url_tag(url))
    }

    /// Hash of the batch in flight to `url`: `delivery` (its `X-Hub-Delivery`), `count` (the
    /// events at the queue's head it holds), `attempts`, `next_at`, `error`.
    pub fn webhook_batch(&self, url: &str) -> String {
        format!("{}:webhooks:{{{}}}:batch", self.prefix, url_tag(url))
    }

    /// The node delivering to `url` (`SET NX PX`): one sender per URL keeps batches in order.
    pub fn webhook_lock(&self, url: &str) -> String {
        format!("{}:webhooks:{{{}}}:lock", self.prefix, url_tag(url))
    }

    /// Stream of webhook events given up after their last attempt.
    pub fn webhook_dlq(&self) -> String {
        format!("{}:webhooks:dlq", self.prefix)
    }

    /// Hash client → node of the connections holding a lifecycle subject
    /// ([`crate::lifecycle::Subject::key`]).
    pub fn lifecycle_holders(&self, subject: &str) -> String {
        format!("{}:lc:{{{subject}}}:holders", self.prefix)
    }

    /// Present while the subject is up (held, or inside its grace); its value is the pending
    /// down event's reason while a grace runs, else empty.
    pub fn lifecycle_up(&self, subject: &str) -> String {
        format!("{}:lc:{{{subject}}}:up", self.prefix)
    }

    /// Sorted set subject → grace deadline (Unix ms on the Redis clock).
    pub fn lifecycle_grace(&self) -> String {
        format!("{}:lc:grace", self.prefix)
    }

    /// Set of `<subject>\t<client>` a node holds, so that whoever removes the node when it
    /// dies can take them down (`node_lost`).
    pub fn lifecycle_node(&self, node: &str) -> String {
        format!("{}:lc:node:{node}", self.prefix)
    }

    /// Set by the node that took `node`'s subjects down as lost; should `node` be alive after
    /// all, it announces them again (`online` once more), keeping the alternation.
    pub fn lifecycle_node_lost(&self, node: &str) -> String {
        format!("{}:lc:node:{node}:lost", self.prefix)
    }

    /// The topic nodes talk to each other on.
    pub fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }
}

/// A short stable name for a webhook URL, for its keys: the first 16 hex digits of its
/// SHA-256 (URLs may hold characters a key should not, and may be long).
pub fn url_tag(url: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(url.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn channel_keys_share_a_hash_tag() {
        let k = Keys::new("hub");
        assert_eq!(k.meta("chat:a"), "hub:{chat:a}:meta");
        assert_eq!(k.history("chat:a"), "hub:{chat:a}:history");
        assert_eq!(k.dedup("chat:a", "e"), "hub:{chat:a}:dedup:e");
    }

    #[test]
    fn topics_map_back_to_channels() {
        let k = Keys::new("p");
        assert_eq!(k.channel_of(&k.topic("chat:x")), Some("chat:x"));
        assert_eq!(k.channel_of("other:ch:x"), None);
        assert_eq!(k.channel_of(&k.control()), None);
    }
}
