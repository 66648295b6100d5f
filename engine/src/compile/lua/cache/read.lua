-- patternd cache read: ONE script decides hit, miss or early refresh, and grants the refresh
-- lease to one caller.
-- KEYS[1] the value HASH; KEYS[2] the refresh lease; KEYS[3] the slot group's tag versions
-- (ZSET, see common.lua); KEYS[4] (write: behind only) the group's journal
-- ARGV[1] a random number in (0, 1] from the engine (XFetch; math.random in Redis 7 is seeded
--         identically per call, so it would make every replica refresh at the same moment)
-- ARGV[2] this caller's lease token; ARGV[3] lease ms; ARGV[4] stale_while_revalidate ms
-- ARGV[5] XFetch beta; ARGV[6] '1' if the rule has an origin
-- ARGV[7] stale_if_error ms
-- ARGV[8] 'body' (format: string: the member `b`), 'all' (format: hash: every member) or
--         'fields' (format: hash, only the members ARGV[9..])
-- The value is read with ONE hash command (HMGET of the meta fields plus the body, or HGETALL),
-- not a meta read followed by a body read: on a hit, the script is the whole Redis cost.
-- Returns { action, start, st, ct, ms left of freshness (negative: stale), body, delta ms, ver,
-- name1, json1, ... } ({ action, start } without a value). `start` is Redis TIME in µs at this
-- read: a fill that follows it passes it back, and the fill script refuses to store what a
-- DELETE or tag invalidation after this moment made stale. `ver` is the value's version (its
-- ETag; '' for a value stored before versions existed).
-- action: 'absent' (no value, no origin), 'hit', 'refresh' (fresh, but this caller got the
-- lease for an early XFetch refresh: serve it and fill in the background), 'stale' (inside
-- stale_while_revalidate, another caller refreshes), 'stale_refresh' (same, and this caller
-- refreshes in the background), 'fetch' (this caller got the lease and must fill; a value
-- returned with it is only usable under stale_if_error), 'wait' (another caller fills),
-- 'stale_error' (past stale_while_revalidate but inside stale_if_error, and the origin failed
-- within refresh_lease: the lease holds the failure marker 'E'; serve the stale value without
-- asking the origin again), 'failed' (no usable value, and the origin failed moments ago on
-- another caller's fill: share that failure instead of asking again), 'pass' (no value, and
-- the origin's last answer for this id must not be stored (`ttl_from_origin`: no-store,
-- private, no-cache): the lease holds the marker 'P', so callers ask the origin themselves
-- instead of queueing behind one fill at a time).
-- A value may carry its own stale windows (`sw`, `se`: from the origin's Cache-Control); the
-- smaller of each and the rule's applies.
-- A value whose newest write (`jp`) is still in the write-behind journal is newer than the
-- origin's copy: it is a 'hit' however old it is (its ms left may be negative), and no lease is
-- granted for it, so no fill replaces it with the origin's older copy before the write reaches
-- the origin.
-- The lease may hold the write marker 'W' (a write-through PATCH of an id that was not cached):
-- it only stops fills that started before that write; a reader takes it over like a free lease.
local vkey, lkey = KEYS[1], KEYS[2]
local rand, token = tonumber(ARGV[1]), ARGV[2]
local lease_ms, swr, beta = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local has_origin = ARGV[6] == '1'
local sie = tonumber(ARGV[7])
-- One TIME call gives both clocks: ms for freshness, µs (as text, without float formatting)
-- for the fill's start.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local start = t[1] .. string.sub('00000' .. t[2], -6)

local function take_lease()
  if redis.call('SET', lkey, token, 'NX', 'PX', lease_ms) ~= false then return true end
  if redis.call('GET', lkey) == 'W' then
    redis.call('SET', lkey, token, 'PX', lease_ms)
    return true
  end
  return false
end

local mode = ARGV[8]
-- meta: st, ct, fresh, delta, tags, tv, jp, ver, sw, se; body: the `b` member ('body' mode);
-- members: name, json, ... (format: hash).
local meta, body, members
if mode == 'all' then
  local all = redis.call('HGETALL', vkey)
  local pos = { st = 1, ct = 2, fresh = 3, delta = 4, tags = 5, tv = 6, jp = 7, ver = 8, sw = 9,
    se = 10 }
  meta, members = {}, {}
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 2) == 'f:' then
      members[#members + 1] = string.sub(f, 3)
      members[#members + 1] = all[i + 1]
    elseif f == 'b' then
      body = all[i + 1]
    else
      local p = pos[f]
      if p then meta[p] = all[i + 1] end
    end
  end
elseif mode == 'fields' then
  local names = { 'st', 'ct', 'fresh', 'delta', 'tags', 'tv', 'jp', 'ver', 'sw', 'se' }
  local base = #names
  for i = 9, #ARGV do names[#names + 1] = 'f:' .. ARGV[i] end
  meta = redis.call('HMGET', vkey, unpack(names))
  members = {}
  for i = 9, #ARGV do
    local v = meta[base + i - 8]
    if v then
      members[#members + 1] = ARGV[i]
      members[#members + 1] = v
    end
  end
else
  meta = redis.call('HMGET', vkey, 'st', 'ct', 'fresh', 'delta', 'tags', 'tv', 'jp', 'ver', 'sw',
    'se', 'b')
  body = meta[11]
end
-- The value's own stale windows, never longer than the rule's.
if meta[9] then swr = math.min(swr, tonumber(meta[9]) or swr) end
if meta[10] then sie = math.min(sie, tonumber(meta[10]) or sie) end
local st = meta[1]
-- The newest write of this value is not yet on the origin (XRANGE of one id: O(log n)).
local pending = st == '200' and meta[7] and KEYS[4]
  and #redis.call('XRANGE', KEYS[4], meta[7], meta[7]) > 0
-- A pending value survives a tag invalidation until its write is delivered (the origin's copy
-- is older); the next read after delivery sees the bumped version and drops it.
-- A value whose tags were invalidated since it was written is a miss (and is dropped, so it
-- is never served stale either).
if st and not pending and not tags_current(KEYS[3], meta[5], meta[6]) then
  redis.call('DEL', vkey)
  st = nil
end
local left = 0
if st then
  left = tonumber(meta[3]) - now
  -- A negative entry has no staleness; one that outlived its freshness by a rounding ms is gone.
  if st ~= '200' and left <= 0 then st = nil end
  -- Without an origin nothing can refresh a stale value: it is absent.
  if not has_origin and left <= 0 then st = nil end
end

pending = pending and st == '200'

local action
if pending then
  action = 'hit'
elseif not st then
  if not has_origin then return { 'absent', start } end
  if take_lease() then return { 'fetch', start } end
  local marker = redis.call('GET', lkey)
  if marker == 'E' then return { 'failed', start } end
  if marker == 'P' then return { 'pass', start } end
  return { 'wait', start }
elseif left > 0 then
  action = 'hit'
  local delta = tonumber(meta[4]) or 0
  -- XFetch (Vattani et al.): refresh early with a probability that grows as expiry nears and
  -- with the time a recompute takes.
  if has_origin and st == '200' and delta > 0 and rand > 0
    and now - delta * beta * math.log(rand) >= tonumber(meta[3]) and take_lease() then
    action = 'refresh'
  end
elseif -left <= swr then
  if take_lease() then action = 'stale_refresh' else action = 'stale' end
elseif take_lease() then
  action = 'fetch'
elseif redis.call('GET', lkey) == 'E' then
  if st == '200' and -left <= sie then action = 'stale_error' else return { 'failed', start } end
else
  action = 'wait'
end

local out = { action, start, st, meta[2] or '', math.floor(left), body or '',
  math.floor(tonumber(meta[4]) or 0), meta[8] or '' }
if members then
  for i = 1, #members do out[8 + i] = members[i] end
end
return out
