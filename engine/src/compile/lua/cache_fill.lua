-- patternd cache fill: stores what the origin answered, unless a newer write won meanwhile.
-- KEYS[1] the value HASH; KEYS[2] the refresh lease; KEYS[3] (write: behind only) the journal
-- ARGV[1] the filler's lease token; ARGV[2] tag version key prefix; ARGV[3] st ('200'|'404')
-- ARGV[4] content type; ARGV[5] ttl ms; ARGV[6] stale ms; ARGV[7] delta ms (fill duration)
-- ARGV[8] n = number of tags; ARGV[9 .. 8+n] the tags
-- ARGV[9+n] 'b' (then ARGV[10+n] is the body), 'f' (then name, json pairs follow) or '-'
-- Stores only if the lease is still this filler's, or nobody holds it and no value exists: a
-- PUT/PATCH or another filler that came later must not be overwritten by a slow origin answer.
-- A write DELs the lease when it stores a value, and leaves the marker 'W' when it changed the
-- origin without storing one (write-through PATCH of an id not cached), so a fill that started
-- before the write finds a lease that is not its own and stores nothing. A lease held by
-- another token means a newer fill is under way: it stores, not this one.
-- Never replaces a value whose newest write (`jp`) is still in the write-behind journal: the
-- origin's copy is older than it until the write is delivered.
-- Returns 1 if stored, 0 if not.
local token = ARGV[1]
local holder = redis.call('GET', KEYS[2])
if holder ~= token and (holder or redis.call('EXISTS', KEYS[1]) == 1) then return 0 end
local jp = KEYS[3] and redis.call('HGET', KEYS[1], 'jp')
if jp and #redis.call('XRANGE', KEYS[3], jp, jp) > 0 then
  if holder == token then redis.call('DEL', KEYS[2]) end
  return 0
end
if holder == token then redis.call('DEL', KEYS[2]) end
local n = tonumber(ARGV[8])
local tags = {}
for i = 1, n do tags[i] = ARGV[8 + i] end
local kind = ARGV[9 + n]
local body, fields = nil, nil
if kind == 'b' then
  body = ARGV[10 + n]
elseif kind == 'f' then
  fields = {}
  for i = 10 + n, #ARGV do fields[#fields + 1] = ARGV[i] end
end
cache_store({
  key = KEYS[1], tagpfx = ARGV[2], now = now_ms(), st = ARGV[3], ct = ARGV[4],
  body = body, fields = fields, ttl = tonumber(ARGV[5]), stale = tonumber(ARGV[6]),
  delta = tonumber(ARGV[7]), tags = tags,
})
return 1
