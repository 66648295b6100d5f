-- patternd cache fill: stores what the origin answered, unless a newer write, a DELETE or a
-- tag invalidation won meanwhile.
-- KEYS[1] the value HASH; KEYS[2] the refresh lease; KEYS[3] the slot group's tag versions
-- (ZSET, see common.lua); KEYS[4] (write: behind only) the group's journal
-- ARGV[1] the filler's lease token
-- ARGV[2] st: '200', '404', or 'pass' (the origin's answer must not be stored: see below)
-- ARGV[3] content type; ARGV[4] ttl ms ('pass': ms the marker 'P' is held); ARGV[5] stale ms
-- ARGV[6] delta ms (fill duration)
-- ARGV[7] start: Redis TIME in µs of the read script call this fill follows (before the
-- origin was asked); ARGV[8] the longest a fill may take from its start, in ms (the time a
-- DELETE's marker and an invalidated tag's version key are kept at least)
-- ARGV[9] the value's own stale_while_revalidate ms, ARGV[10] its stale_if_error ms ('' and
-- '': the rule's apply; see cache_store)
-- ARGV[11] n = number of tags; ARGV[12 .. 11+n] the tags
-- ARGV[12+n] 'b' (then ARGV[13+n] is the body), 'f' (then name, json pairs follow) or '-'
--
-- Stores only if the lease is still this filler's, or nobody holds it (or only the pass
-- marker 'P') and no value exists: a PUT/PATCH or another filler that came later must not be
-- overwritten by a slow origin answer. A write DELs the lease when it stores a value, and
-- leaves the marker 'W' when it changed the origin without storing one (write-through PATCH
-- of an id not cached); DELETE leaves 'W' too. So a fill that started before them finds a
-- lease that is not its own and stores nothing. A lease held by another token means a newer
-- fill is under way: it stores, not this one.
-- Never stores what an invalidation after its start made stale: invalidation sets each tag's
-- version to at least Redis TIME in µs (keeping it at least ARGV[8] ms), so a tag of this
-- value whose version is >= start was invalidated after the origin was asked. The value is
-- stamped with `start` (its `tv`): an invalidation from then on makes it a miss. A fill
-- older than ARGV[8] stores nothing either: the markers that would stop it may have lapsed.
-- Never replaces a value whose newest write (`jp`) is still in the write-behind journal: the
-- origin's copy is older than it until the write is delivered.
-- 'pass': drops the value this fill would have replaced and holds 'P' in the lease, so
-- readers go to the origin without waiting for one another (nothing is stored to wait for).
-- Returns { 1, the stored version } or { 0 }.
local token = ARGV[1]
local holder = redis.call('GET', KEYS[2])
local mine = holder == token
local free = holder == false or holder == 'P'
if not mine and not (free and redis.call('EXISTS', KEYS[1]) == 0) then return { 0 } end
local function refuse()
  if mine then redis.call('DEL', KEYS[2]) end
  return { 0 }
end
local jp = KEYS[4] and redis.call('HGET', KEYS[1], 'jp')
if jp and #redis.call('XRANGE', KEYS[4], jp, jp) > 0 then return refuse() end
if ARGV[2] == 'pass' then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], 'P', 'PX', tonumber(ARGV[4]))
  return { 0 }
end
local start = tonumber(ARGV[7])
if now_us() - start > tonumber(ARGV[8]) * 1000 then return refuse() end
local n = tonumber(ARGV[11])
local tags = {}
for i = 1, n do tags[i] = ARGV[11 + i] end
if invalidated_since(KEYS[3], tags, start) then return refuse() end
if mine or holder == 'P' then redis.call('DEL', KEYS[2]) end
local kind = ARGV[12 + n]
local body, fields = nil, nil
if kind == 'b' then
  body = ARGV[13 + n]
elseif kind == 'f' then
  fields = {}
  for i = 13 + n, #ARGV do fields[#fields + 1] = ARGV[i] end
end
local _, ver = cache_store({
  key = KEYS[1], tkey = KEYS[3], stamp = start, now = now_ms(), st = ARGV[2], ct = ARGV[3],
  body = body, fields = fields, ttl = tonumber(ARGV[4]), stale = tonumber(ARGV[5]),
  delta = tonumber(ARGV[6]), tags = tags,
  swr = tonumber(ARGV[9]), sie = tonumber(ARGV[10]),
})
return { 1, ver }
