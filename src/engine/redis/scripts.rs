//! The server-side scripts that make each multi-step operation atomic: one script per
//! operation, touching only one channel's keys (one hash slot). Scripts that compare leases
//! read the time with `TIME` on the server, so every node judges expiry by the same clock.

use redis::Script;

/// Publishes one or more messages in order, each as one step: dedup check and claim (one
/// `SET NX`), next offset, finished frame. Consecutive messages of one channel (a run, at most
/// `RUN` of them) are appended to history with one `RPUSH` and sent with one `PUBLISH`, as a
/// bundle when there are several (see `protocol::node::frames`); each channel's position, trim
/// and expiry are read and written once per call. Atomic, so every node sees a channel's
/// offsets in order; a batch (a stream's entries) costs one round trip. A step that fails ends
/// the batch: the ones after it are not tried, so nothing overtakes it. A run whose append
/// fails answers the failure at its first message, and takes back its dedup claims and
/// offsets: nothing of it was kept or sent.
///
/// With a consumer group given, the messages are a stream's entries: each one answered as
/// published or as a duplicate is acknowledged (`XACK`) in the same step.
///
/// What is the same for a channel's messages is passed once per channel, so a message costs
/// three arguments (four keys and arguments with an event id), which is most of what a burst
/// costs Redis.
/// KEYS: per channel, meta and history; then the dedup key of each message that has an event
/// id, in message order; then, with a group, the stream. ARGV: history size, history TTL (s),
/// dedup window (s), channel count, consumer group ('' for none), then per channel: topic,
/// epoch to start with, frame head; then per message: its channel's number (from 1; negative
/// when deduplicating, with the next dedup key), its frame tail and its entry id ('' for
/// none).
/// Returns `{epochs, answers, acknowledged}`: the epoch of each channel reached, in channel
/// order; one answer per message tried: its offset, `"offset:epoch"` for a duplicate, or
/// (last) `{-1, error}`; and `1` when the answered entries were acknowledged.
const PUBLISH: &str = r#"
local size, ttl, window = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local count, group = tonumber(ARGV[4]), ARGV[5]
local RUN = 256
-- Per channel of this call (by number): its keys, head, epoch and last offset, read once.
-- The channels published to are written back once at the end, with trim and expiry (nothing
-- sees them in between); a channel only answered duplicates is left as it was.
local channels, published, epochs, answers = {}, {}, {}, {}
-- The run being gathered: consecutive new messages of one channel, with the dedup keys they
-- claimed, the channel's offset before them and the index of the first one's answer.
local run = {frames = {}, claims = {}}
local claimed -- the dedup key the step under way has set, taken back if the step fails
local first_message, dedups = 6 + 3 * count, 2 * count
local function reason(err)
  return type(err) == 'table' and err.err or tostring(err)
end
local function load(c)
  local ch = channels[c]
  if ch then return ch end
  local meta, history, a = KEYS[2 * c - 1], KEYS[2 * c], 3 + 3 * c
  ch = {meta = meta, history = history, topic = ARGV[a], head = ARGV[a + 2]}
  local state = redis.call('HMGET', meta, 'epoch', 'offset')
  if state[1] then
    ch.epoch, ch.offset = state[1], tonumber(state[2]) or 0
  else
    -- A new life of the channel: whatever history is left of an old one goes (below).
    ch.epoch, ch.offset, ch.new = ARGV[a + 1], 0, true
  end
  channels[c] = ch
  epochs[c] = ch.epoch
  return ch
end
-- Ends the call's answers with a failure at answer `at` (dropping any after it).
local function fail_at(at, err)
  for i = #answers, at, -1 do answers[i] = nil end
  answers[at] = {-1, reason(err)}
end
-- Appends and sends the run; false when it failed (the answers then end with the failure).
local function flush()
  local ch, frames, first = run.ch, run.frames, run.first
  if not ch or #frames == 0 then return true end
  local claims, base = run.claims, run.base
  run = {frames = {}, claims = {}}
  local appended, err = pcall(function()
    if ch.new then
      redis.call('DEL', ch.history)
      ch.new = nil
    end
    redis.call('RPUSH', ch.history, unpack(frames))
  end)
  if not appended then
    -- The answers first: whatever else fails, none of the run is taken for published.
    fail_at(first, err)
    ch.offset = base
    for _, key in ipairs(claims) do pcall(redis.call, 'DEL', key) end
    return false
  end
  if not ch.published then
    ch.published = true
    published[#published + 1] = ch
  end
  local payload = frames[1]
  if #frames > 1 then
    local parts = {}
    for i, frame in ipairs(frames) do
      parts[2 * i - 1] = string.format('%d:', #frame)
      parts[2 * i] = frame
    end
    payload = table.concat(parts)
  end
  local sent, perr = pcall(redis.call, 'PUBLISH', ch.topic, payload)
  if not sent then
    -- Kept in history with its offsets and claims, so subscribers fill it from history and
    -- a retry of a deduplicated message (every stream entry is one) is answered as a
    -- duplicate; an HTTP publication without an event id, retried, is published again.
    fail_at(first, perr)
    return false
  end
  return true
end
local function publish(c, tail, dedup)
  -- (A channel not loaded yet is not the run's: `channels[c]` is nil.)
  if run.ch and (run.ch ~= channels[c] or #run.frames >= RUN) then
    if not flush() then return false end
  end
  local ch = load(c)
  local offset = ch.offset + 1
  if dedup then
    -- One command for the check and the claim: the value is what a repeat is answered.
    local position = string.format('%d', offset) .. ':' .. ch.epoch
    if not redis.call('SET', dedup, position, 'NX', 'EX', window) then
      -- Only a position is a duplicate's answer (and acknowledges a stream entry): anything
      -- else under the key fails the step, so the entry waits rather than being dropped.
      local seen = redis.call('GET', dedup)
      if type(seen) ~= 'string' or not string.match(seen, '^%d+:%w+$') then
        error('the dedup key ' .. dedup .. ' holds no position')
      end
      answers[#answers + 1] = seen
      return true
    end
    claimed = dedup
  end
  local frame = ch.head .. string.format('%d', offset) .. ',"epoch":"' .. ch.epoch .. '",' .. tail
  if #run.frames == 0 then
    run.ch, run.base, run.first = ch, ch.offset, #answers + 1
  end
  run.frames[#run.frames + 1] = frame
  if claimed then run.claims[#run.claims + 1] = claimed end
  claimed = nil
  ch.offset = offset
  answers[#answers + 1] = offset
  return true
end
local function finish()
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
  -- Every entry answered, but a failure, is published (or was before): acknowledge them.
  local acknowledged = 0
  local settled = #answers
  if settled > 0 and type(answers[settled]) == 'table' then settled = settled - 1 end
  if group ~= '' and settled > 0 then
    local ids = {}
    for i = 1, settled do ids[i] = ARGV[first_message + 3 * i - 1] end
    if pcall(redis.call, 'XACK', KEYS[#KEYS], group, unpack(ids)) then acknowledged = 1 end
  end
  return {epochs, answers, acknowledged}
end
local ok, went_on = pcall(function()
  for a = first_message, #ARGV - 2, 3 do
    local c, dedup = tonumber(ARGV[a]), nil
    if c < 0 then
      c, dedups = -c, dedups + 1
      dedup = KEYS[dedups]
    end
    if not publish(c, ARGV[a + 1], dedup) then return false end
  end
  return true
end)
if not ok then
  -- The step under way failed: what came before it still goes out, then its failure ends
  -- the call.
  if claimed then pcall(redis.call, 'DEL', claimed) end
  local failed = #answers + 1
  if flush() then fail_at(failed, went_on) end
elseif went_on then
  flush()
end
return finish()
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
