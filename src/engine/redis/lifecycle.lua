-- The lifecycle rules of `src/lifecycle/tracker.rs`, cluster-wide: each call decides and
-- emits atomically, so a transition is emitted once however many nodes see it.
--
-- State per subject S (`u:<user>`, `c:<channel>`, `m:<channel>\n<user>`):
--   <p>:lc:{S}:holders  hash client -> node of the connections holding S
--   <p>:lc:{S}:up       present while S is up; holds the pending reason while a grace runs
--   <p>:lc:grace        zset S -> grace deadline (ms, Redis clock), shared
--   <p>:lc:node:<node>  set of `S\t<client>` the node holds (for node_lost)
-- An event is appended to the stream (when KEYS[2] is one) and to every webhook queue.
--
-- KEYS: 1 grace zset, [2 stream], then the webhook queues.
-- ARGV: 1 op, 2 prefix, 3 id base (unique per call), 4 types to emit (`,a,b,`), 5 stream
--       MAXLEN, 6 '1' with a stream, then per op:
--   add      7 subject, 8 client, 9 node, 10 info JSON ('' none)
--   remove   7 subject, 8 client, 9 node, 10 reason, 11 grace ms
--   sweep    7 most subjects to take down
--   lost     7 the dead node, 8 most entries, 9 tombstone ms
--   check    7 node              -> {lost (0/1), entries held in Redis}
--   restore  7 node, 8 '1' to announce, then (subject, client, info) triples
-- Returns the types emitted (check: see above; lost: {types, entries left}).
local op, prefix, idbase, allowed = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local maxlen, has_stream = ARGV[5], ARGV[6] == '1'
local first_queue = has_stream and 3 or 2
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local emitted, n = {}, 0

local function holders_key(s) return prefix .. ':lc:{' .. s .. '}:holders' end
local function up_key(s) return prefix .. ':lc:{' .. s .. '}:up' end
local function node_key(node) return prefix .. ':lc:node:' .. node end

local TYPES = {
  u = {'user.online', 'user.offline'},
  c = {'channel.occupied', 'channel.vacated'},
  m = {'member.added', 'member.removed'},
}

local function emit(s, up, reason, info)
  local kind, body = string.sub(s, 1, 1), string.sub(s, 3)
  local typ = TYPES[kind][up and 1 or 2]
  if not string.find(allowed, ',' .. typ .. ',', 1, true) then return end
  n = n + 1
  local fields
  if kind == 'u' then
    fields = ',"user":' .. cjson.encode(body)
  elseif kind == 'c' then
    fields = ',"channel":' .. cjson.encode(body)
  else
    local nl = string.find(body, '\n', 1, true)
    fields = ',"channel":' .. cjson.encode(string.sub(body, 1, nl - 1))
      .. ',"user":' .. cjson.encode(string.sub(body, nl + 1))
  end
  if up then
    if kind == 'm' then
      fields = fields .. ',"info":' .. ((info and info ~= '') and info or 'null')
    end
  else
    fields = fields .. ',"reason":' .. cjson.encode(reason)
  end
  local json = '{"id":' .. cjson.encode(idbase .. '-' .. n) .. ',"type":"' .. typ
    .. '","ts":' .. now .. fields .. '}'
  if has_stream then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'event', json)
  end
  for i = first_queue, #KEYS do
    redis.call('RPUSH', KEYS[i], json)
  end
  emitted[#emitted + 1] = typ
end

-- `client` (on `node`) holds S; S goes up unless it is up already (a grace is cancelled).
local function add(s, client, node, info, announce)
  redis.call('HSET', holders_key(s), client, node)
  redis.call('SADD', node_key(node), s .. '\t' .. client)
  local up = up_key(s)
  if redis.call('EXISTS', up) == 1 then
    redis.call('ZREM', KEYS[1], s)
    redis.call('SET', up, '')
  else
    redis.call('SET', up, '')
    if announce then emit(s, true, nil, info) end
  end
end

-- S has lost its last holder: down now, or after the grace.
local function last_left(s, reason, grace)
  local up = up_key(s)
  if redis.call('EXISTS', up) == 0 then return end
  if grace <= 0 or reason == 'node_lost' then
    redis.call('DEL', up)
    redis.call('ZREM', KEYS[1], s)
    emit(s, false, reason)
  else
    redis.call('SET', up, reason)
    redis.call('ZADD', KEYS[1], now + grace, s)
  end
end

if op == 'add' then
  add(ARGV[7], ARGV[8], ARGV[9], ARGV[10], true)
elseif op == 'remove' then
  local s, client, node = ARGV[7], ARGV[8], ARGV[9]
  local h = holders_key(s)
  redis.call('SREM', node_key(node), s .. '\t' .. client)
  if redis.call('HDEL', h, client) == 1 and redis.call('HLEN', h) == 0 then
    last_left(s, ARGV[10], tonumber(ARGV[11]))
  end
elseif op == 'sweep' then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))
  for _, s in ipairs(due) do
    redis.call('ZREM', KEYS[1], s)
    local up = up_key(s)
    local reason = redis.call('GET', up)
    if reason and redis.call('HLEN', holders_key(s)) == 0 then
      redis.call('DEL', up)
      emit(s, false, reason ~= '' and reason or 'closed')
    end
  end
elseif op == 'lost' then
  local dead = ARGV[7]
  local nk = node_key(dead)
  redis.call('SET', nk .. ':lost', '1', 'PX', tonumber(ARGV[9]))
  local entries = redis.call('SPOP', nk, tonumber(ARGV[8]))
  for _, entry in ipairs(entries) do
    local s, client = string.match(entry, '^(.*)\t([^\t]*)$')
    if s then
      local h = holders_key(s)
      if redis.call('HGET', h, client) == dead then
        redis.call('HDEL', h, client)
        if redis.call('HLEN', h) == 0 then last_left(s, 'node_lost', 0) end
      end
    end
  end
  return {emitted, redis.call('SCARD', nk)}
elseif op == 'check' then
  local lost = redis.call('DEL', node_key(ARGV[7]) .. ':lost')
  return {lost, redis.call('SCARD', node_key(ARGV[7]))}
elseif op == 'restore' then
  local node, announce = ARGV[7], ARGV[8] == '1'
  for i = 9, #ARGV, 3 do
    add(ARGV[i], ARGV[i + 1], node, ARGV[i + 2], announce)
  end
end
return emitted
