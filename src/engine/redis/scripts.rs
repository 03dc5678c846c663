//! The server-side scripts that make each multi-step operation atomic: one script per
//! operation, touching only one channel's keys (one hash slot). Scripts that compare leases
//! read the time with `TIME` on the server, so every node judges expiry by the same clock.

use redis::Script;

/// Publishes one or more messages in order, each as one step: dedup check and claim (one
/// `SET NX`), next offset, history append, then PUBLISH of the finished frame; each channel's
/// position, trim and expiry are read and written once per call. Atomic, so every node sees a
/// channel's offsets in order; a batch (a stream's entries) costs one round trip. A step that
/// fails ends the batch: the ones after it are not tried, so nothing overtakes it.
///
/// KEYS, per message: meta, history, dedup key (the history key again when there is no event
/// id). ARGV: history size, history TTL (s), dedup window (s), then per message: topic, epoch
/// to start with, frame head, frame tail, `1` when deduplicating.
/// Returns one answer per message tried: `{1, offset, epoch}`, `{0, "offset:epoch"}` for a
/// duplicate, or (last) `{-1, error}`.
const PUBLISH: &str = r#"
local size, ttl, window = tonumber(ARGV[1]), ARGV[2], ARGV[3]
-- Per channel of this call (by meta key): its epoch and last offset, read once. The channels
-- published to are written back once at the end, with trim and expiry (nothing sees them in
-- between); a channel only answered duplicates is left as it was.
local channels, published = {}, {}
local claimed -- the dedup key the step under way has set, taken back if the step fails
local function load(meta, history, fresh)
  local ch = channels[meta]
  if ch then return ch end
  local state = redis.call('HMGET', meta, 'epoch', 'offset')
  if state[1] then
    ch = {meta = meta, history = history, epoch = state[1], offset = tonumber(state[2]) or 0}
  else
    -- A new life of the channel: whatever history is left of an old one goes (below).
    ch = {meta = meta, history = history, epoch = fresh, offset = 0, new = true}
  end
  channels[meta] = ch
  return ch
end
local function publish(meta, history, dedup, topic, fresh, head, tail, deduplicate)
  local ch = load(meta, history, fresh)
  local offset = ch.offset + 1
  if deduplicate then
    -- One command for the check and the claim: the value is what a repeat is answered.
    local position = string.format('%d', offset) .. ':' .. ch.epoch
    if not redis.call('SET', dedup, position, 'NX', 'EX', window) then
      return {0, redis.call('GET', dedup)}
    end
    claimed = dedup
  end
  if ch.new then
    redis.call('DEL', history)
    ch.new = nil
  end
  local frame = head .. string.format('%d', offset) .. ',"epoch":"' .. ch.epoch .. '",' .. tail
  redis.call('RPUSH', history, frame)
  ch.offset = offset
  claimed = nil
  if not ch.published then
    ch.published = true
    published[#published + 1] = ch
  end
  redis.call('PUBLISH', topic, frame)
  return {1, offset, ch.epoch}
end
local function finish(answers)
  -- Positions first: a channel's next offset must never be given twice, whatever fails after.
  for _, ch in ipairs(published) do
    redis.call('HSET', ch.meta, 'epoch', ch.epoch, 'offset', ch.offset)
  end
  for _, ch in ipairs(published) do
    pcall(function()
      redis.call('LTRIM', ch.history, -size, -1)
      redis.call('EXPIRE', ch.history, ttl)
      redis.call('EXPIRE', ch.meta, ttl)
    end)
  end
  return answers
end
local answers = {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = 3 * i, 4 + 5 * i
  local ok, answer = pcall(publish, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3],
    ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4] == '1')
  if not ok then
    if claimed then redis.call('DEL', claimed) end
    answers[#answers + 1] = {-1, type(answer) == 'table' and answer.err or tostring(answer)}
    return finish(answers)
  end
  answers[#answers + 1] = answer
end
return finish(answers)
"#;

/// The channel's position, starting an epoch if it has none, and the publications after a
/// given offset when history still holds all of them.
///
/// KEYS: meta, history. ARGV: epoch to start with, history TTL (s), since offset (-1: none),
/// since epoch.
/// Returns `{offset, epoch}` or `{offset, epoch, recovered (0|1), frames}`.
const POSITION: &str = r#"
local meta, history = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', history)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  redis.call('EXPIRE', meta, ARGV[2])
end
local offset = tonumber(redis.call('HGET', meta, 'offset'))
local since = tonumber(ARGV[3])
if since < 0 then return {offset, epoch} end
if ARGV[4] ~= epoch or since > offset then return {offset, epoch, 0} end
local oldest = offset - redis.call('LLEN', history) + 1
if since + 1 < oldest then return {offset, epoch, 0} end
return {offset, epoch, 1, redis.call('LRANGE', history, since + 1 - oldest, -1)}
"#;

/// A page of history: the newest `limit` frames, or the first `limit` after `since` (same
/// epoch only).
///
/// KEYS: meta, history. ARGV: epoch to start with, history TTL (s), limit, since offset (-1:
/// none), since epoch.
/// Returns `{offset, epoch, frames}`.
const HISTORY: &str = r#"
local meta, history = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', history)
  redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  redis.call('EXPIRE', meta, ARGV[2])
end
local offset = tonumber(redis.call('HGET', meta, 'offset'))
local limit = tonumber(ARGV[3])
if limit <= 0 then return {offset, epoch, {}} end
local since = tonumber(ARGV[4])
if since >= 0 and ARGV[5] == epoch then
  local len = redis.call('LLEN', history)
  local start = since + 1 - (offset - len + 1)
  if start < 0 then start = 0 end
  if start >= len then return {offset, epoch, {}} end
  return {offset, epoch, redis.call('LRANGE', history, start, start + limit - 1)}
end
return {offset, epoch, redis.call('LRANGE', history, -limit, -1)}
"#;

/// The server's time in Unix ms, as a Lua number (`now`).
macro_rules! server_now {
    () => {
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    };
}

/// Takes one of a user's connection slots if one is free (expired leases are freed first: a
/// slot carries no `leave`, so nothing is lost by freeing it here).
///
/// KEYS: the user's connection set. ARGV: client, limit, lease (ms), which is also the key's TTL.
/// Returns 1 when taken.
const ACQUIRE: &str = concat!(
    server_now!(),
    r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[3])), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#
);

/// A channel's presence, without entries whose lease expired. Expired entries are only
/// skipped, not deleted: removing them is the dead-node sweep's job, which sends their `leave`
/// pushes (a query that deleted them first would swallow those pushes).
///
/// KEYS: presence hash, presence leases. Returns the entries (JSON).
const PRESENCE: &str = concat!(
    server_now!(),
    r#"
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. string.format('%d', now), '+inf')
local entries = {}
for _, client in ipairs(live) do
  local entry = redis.call('HGET', KEYS[1], client)
  if entry then entries[#entries + 1] = entry end
end
return entries
"#
);

/// Removes one presence entry and, if it was there and `announce` is set, publishes the
/// `leave` frame. KEYS: presence hash, presence leases. ARGV: client, topic, frame ('' = none).
const LEAVE: &str = r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if removed == 1 and ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return removed
"#;

/// The scripts, hashed once.
pub struct Scripts {
    pub publish: Script,
    pub position: Script,
    pub history: Script,
    pub acquire: Script,
    pub presence: Script,
    pub leave: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            publish: Script::new(PUBLISH),
            position: Script::new(POSITION),
            history: Script::new(HISTORY),
            acquire: Script::new(ACQUIRE),
            presence: Script::new(PRESENCE),
            leave: Script::new(LEAVE),
        }
    }
}
