-- patternd cache read: ONE script decides hit, miss or early refresh, and grants the refresh
-- lease to one caller.
-- KEYS[1] the value HASH; KEYS[2] the refresh lease; KEYS[3] the slot group's tag versions
-- (ZSET, see common.lua); KEYS[4] (write: behind only) the group's journal
-- ARGV[1] 'body' (format: string: the member `b`), 'all' (format: hash: every member) or
--         'fields' (format: hash, only the members ARGV[5..])
-- ARGV[2] the XFetch gap: -beta * ln(rand), rand a random number in (0, 1] from the engine
--         (math.random in Redis 7 is seeded identically per call, so it would make every
--         replica refresh at the same moment); '0' when the rule has no origin (nothing can
--         refresh early)
-- ARGV[3] this caller's lease token
-- ARGV[4] the rule's numbers, read only when the value is not a fresh hit:
--         '<lease ms> <stale_while_revalidate ms> <stale_if_error ms> <1 if the rule has an
--         origin, else 0>'
-- A fresh hit is the hot path, and its cost is the script's: one TIME, one HMGET of the
-- members it serves (the value is read with ONE hash command, HMGET or HGETALL, not a meta
-- read followed by a body read), no closure, no formatting. Everything a hit does not need
-- (the rule's numbers, the value's own stale windows, the lease helpers, the fill's `start`)
-- is read or made after the hit has returned.
-- Returns { action, start, st, ct, ms left of freshness (negative: stale), body, delta ms,
-- ver, name1, json1, ... } ({ action, start } without a value). `start` is Redis TIME in µs at
-- this read ('' for 'hit': nothing follows a hit): a fill that follows it passes it back, and
-- the fill script refuses to store what a DELETE or tag invalidation after this moment made
-- stale. `ver` is the value's version (its ETag; '' for a value stored before versions
-- existed).
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
local vkey = KEYS[1]
local mode = ARGV[1]
-- One TIME call gives both clocks: ms for freshness, µs (as text, without float formatting)
-- for the fill's start.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

-- The value's meta (meta.lua: the packed `m`, or the members of the earlier layout), its
-- newest journal entry `jp` (write: behind only), the body `b` ('body' mode), and members:
-- name, json, ... (format: hash). One hash command reads them all: an HMGET (`r`), or for
-- 'all' an HGETALL (the members other than `f:` ones by name: `by`).
local r, by, jp, body, members
if mode == 'body' then
  r = redis.call('HMGET', vkey, 'b', 'jp', 'm', 'st', 'ct', 'fresh', 'delta', 'tags', 'tv', 'ver',
    'sw', 'se')
  body, jp = r[1], r[2]
elseif mode == 'all' then
  local all = redis.call('HGETALL', vkey)
  by, members = {}, {}
  for i = 1, #all, 2 do
    local f = all[i]
    if string.sub(f, 1, 2) == 'f:' then
      members[#members + 1] = string.sub(f, 3)
      members[#members + 1] = all[i + 1]
    else
      by[f] = all[i + 1]
    end
  end
  jp = by.jp
else
  local names = { 'b', 'jp', 'm', 'st', 'ct', 'fresh', 'delta', 'tags', 'tv', 'ver', 'sw', 'se' }
  local base = #names
  for i = 5, #ARGV do names[#names + 1] = 'f:' .. ARGV[i] end
  r = redis.call('HMGET', vkey, unpack(names))
  jp = r[2]
  members = {}
  for i = 5, #ARGV do
    local v = r[base + i - 4]
    if v then
      members[#members + 1] = ARGV[i]
      members[#members + 1] = v
    end
  end
end
-- st nil: no value. own_sw, own_se: the value's own stale windows (nil: the rule's).
local st, ct, fresh, delta, tags, tv, ver, own_sw, own_se
if by then
  st, ct, fresh, delta, tags, tv, ver, own_sw, own_se = meta_of(by)
else
  st, ct, fresh, delta, tags, tv, ver, own_sw, own_se = meta_at(r, 3)
end
-- The newest write of this value is not yet on the origin (XRANGE of one id: O(log n)).
local pending = st == '200' and jp and KEYS[4] and #redis.call('XRANGE', KEYS[4], jp, jp) > 0
-- A pending value survives a tag invalidation until its write is delivered (the origin's copy
-- is older); the next read after delivery sees the bumped version and drops it.
-- A value whose tags were invalidated since it was written is a miss (and is dropped, so it
-- is never served stale either). The check of common.lua's `tags_current`, inline: that
-- block's helpers would be closures made on every call.
if st and not pending and tags and tags ~= '' then
  local stamp = tonumber(tv)
  local valid = stamp ~= nil
  if valid then
    for tag in string.gmatch(tags, '[^,]+') do
      local v = tonumber(redis.call('ZSCORE', KEYS[3], tag))
      if v and v >= stamp then valid = false break end
    end
  end
  if not valid then
    redis.call('DEL', vkey)
    st = nil
  end
end
local left = st and fresh - now or 0
delta = delta or 0

-- XFetch (Vattani et al.): refresh early with a probability that grows as expiry nears and
-- with the time a recompute takes: now - delta * beta * ln(rand) >= fresh, that is
-- delta * gap >= ms left. A gap of 0 (no origin) never refreshes a fresh value.
local early = st == '200' and not pending and delta > 0 and delta * tonumber(ARGV[2]) >= left
local action, start
if pending or (st and left > 0 and not early) then
  -- A fresh hit (or a value whose write is pending): served as it is; nothing follows it.
  action, start = 'hit', ''
else
  -- A miss, a stale or negative value past its freshness, or an early refresh due: the lease
  -- decides who fetches. (Locals of this block, take_lease included, are made only here.)
  local lease_ms, swr, sie, origin = string.match(ARGV[4], '^(%d+) (%d+) (%d+) ([01])$')
  local has_origin = origin == '1'
  local lkey, token = KEYS[2], ARGV[3]
  start = t[1] .. string.sub('00000' .. t[2], -6)

  local function take_lease()
    if redis.call('SET', lkey, token, 'NX', 'PX', lease_ms) ~= false then return true end
    if redis.call('GET', lkey) == 'W' then
      redis.call('SET', lkey, token, 'PX', lease_ms)
      return true
    end
    return false
  end

  -- A negative entry has no staleness; one that outlived its freshness by a rounding ms is
  -- gone. Without an origin nothing can refresh a stale value: it is absent.
  if st and left <= 0 and (st ~= '200' or not has_origin) then st = nil end

  if not st then
    if not has_origin then return { 'absent', start } end
    if take_lease() then return { 'fetch', start } end
    local marker = redis.call('GET', lkey)
    if marker == 'E' then return { 'failed', start } end
    if marker == 'P' then return { 'pass', start } end
    return { 'wait', start }
  end
  if left > 0 then
    -- Fresh, and XFetch says refresh early: the caller that gets the lease does.
    if take_lease() then action = 'refresh' else action = 'hit' end
  else
    -- Stale: the value's own stale windows (read only here), never longer than the rule's.
    swr, sie = tonumber(swr), tonumber(sie)
    if own_sw then swr = math.min(swr, own_sw) end
    if own_se then sie = math.min(sie, own_se) end
    if -left <= swr then
      if take_lease() then action = 'stale_refresh' else action = 'stale' end
    elseif take_lease() then
      action = 'fetch'
    elseif redis.call('GET', lkey) == 'E' then
      if -left > sie then return { 'failed', start } end
      action = 'stale_error'
    else
      action = 'wait'
    end
  end
end

local out = { action, start, st, ct or '', math.floor(left), body or '', math.floor(delta),
  ver or '' }
if members then
  for i = 1, #members do out[8 + i] = members[i] end
end
return out
