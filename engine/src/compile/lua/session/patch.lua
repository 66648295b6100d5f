-- Merges fields into a live session, field by field; an empty value deletes the field (JSON
-- text is never empty). Writes nothing when the session is gone, so a late write never
-- resurrects a destroyed or expired session. KEYS: session, ue, uc. ARGV: sid, idle_ms,
-- max data fields, then field/JSON pairs. Returns false when gone (or unindexed, see `lost`),
-- an error when its hash is malformed (see `live`), -1 (and writes nothing) when the session
-- would hold more than the max fields, else expires_in_ms.
local key, ue, uc = KEYS[1], KEYS[2], KEYS[3]
local sid, idle, max_fields = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = clock()
local meta = redis.call('HMGET', key, 'u', 'i', 'c', 'a', 'l', 'o')
local user, i, created, a = meta[1], meta[2], tonumber(meta[3]), tonumber(meta[4])
local o = meta[6] or nil
local m, exp, stop = live(key, sid, ue, uc, idle, now, user, i, created, a, tonumber(meta[5]), o)
if stop ~= nil then return stop end
-- Bound the session's size before writing anything: count the fields this patch adds and
-- removes (the fields every session has: u, i, c, a, and l, o when present).
local fields = redis.call('HLEN', key) - 4 - redis.call('HEXISTS', key, 'l')
  - (o and 1 or 0)
for j = 4, #ARGV, 2 do
  local present = redis.call('HEXISTS', key, 'd:' .. ARGV[j]) == 1
  if ARGV[j + 1] == '' then
    if present then fields = fields - 1 end
  elseif not present then
    fields = fields + 1
  end
end
if fields > max_fields then
  return -1
end
for j = 4, #ARGV, 2 do
  if ARGV[j + 1] == '' then
    redis.call('HDEL', key, 'd:' .. ARGV[j])
  else
    redis.call('HSET', key, 'd:' .. ARGV[j], ARGV[j + 1])
  end
end
if not touch(key, ue, uc, m, o, created, exp, now) then return false end
return int(exp - now)
