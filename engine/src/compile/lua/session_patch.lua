-- Merges fields into a live session, field by field; an empty value deletes the field (JSON
-- text is never empty). Writes nothing when the session is gone, so a late write never
-- resurrects a destroyed or expired session. KEYS: session. ARGV: sid, idle_ms, base, then
-- field/JSON pairs. Returns false when gone, else expires_in_ms.
local key = KEYS[1]
local sid, idle, base = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now = clock()
local meta = redis.call('HMGET', key, 'i', 'c', 'a')
local i, created, a = meta[1], tonumber(meta[2]), tonumber(meta[3])
if not i or created == nil or a == nil then
  return false
end
local ue, uc = index_keys(base, i)
local exp = expiry(a, idle, now)
if exp == nil then
  redis.call('DEL', key)
  unindex(ue, uc, sid)
  return false
end
for j = 4, #ARGV, 2 do
  if ARGV[j + 1] == '' then
    redis.call('HDEL', key, 'd:' .. ARGV[j])
  else
    redis.call('HSET', key, 'd:' .. ARGV[j], ARGV[j + 1])
  end
end
slide(key, ue, uc, sid, created, exp, now)
prune(ue, uc, now)
index_expiry(ue, uc, now)
return int(exp - now)
