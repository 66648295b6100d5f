-- Merges fields into a live session, field by field; an empty value deletes the field (JSON
-- text is never empty). Writes nothing when the session is gone, so a late write never
-- resurrects a destroyed or expired session. KEYS: session. ARGV: sid, idle_ms, base,
-- max data fields, then field/JSON pairs. Returns false when gone, -1 (and writes nothing)
-- when the session would hold more than the max fields, else expires_in_ms.
local key = KEYS[1]
local sid, idle, base, max_fields = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
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
-- Bound the session's size before writing anything: count the fields this patch adds and
-- removes.
local fields = redis.call('HLEN', key) - 4 - redis.call('HEXISTS', key, 'l')
for j = 5, #ARGV, 2 do
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
for j = 5, #ARGV, 2 do
  if ARGV[j + 1] == '' then
    redis.call('HDEL', key, 'd:' .. ARGV[j])
  else
    redis.call('HSET', key, 'd:' .. ARGV[j], ARGV[j + 1])
  end
end
slide(key, ue, uc, sid, created, exp, now)
redis.call('HSET', key, 'l', int(now))
prune(ue, uc, now)
index_expiry(ue, uc, now)
return int(exp - now)
