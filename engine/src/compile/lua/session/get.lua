-- Reads a session and (when ARGV[3] is 1) slides its idle expiry. KEYS: session.
-- ARGV: sid, idle_ms, slide (1|0), base. Returns false when the session is gone, else
-- {user, created_ms, expires_in_ms, last_seen_ms, field1, json1, ...}: last_seen_ms is the
-- previous touch (a sliding read is a touch and records now for the next one).
local key = KEYS[1]
local sid, idle, move, base = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]
local now = clock()
local h = redis.call('HGETALL', key)
if #h == 0 then
  -- Gone (expired or destroyed): its index entry, if any, is pruned by score.
  return false
end
local user, i, created, a, seen
local out = { '', '', '', '' }
for j = 1, #h, 2 do
  local f = h[j]
  if f == 'u' then
    user = h[j + 1]
  elseif f == 'i' then
    i = h[j + 1]
  elseif f == 'c' then
    created = tonumber(h[j + 1])
  elseif f == 'a' then
    a = tonumber(h[j + 1])
  elseif f == 'l' then
    seen = tonumber(h[j + 1])
  elseif string.sub(f, 1, 2) == 'd:' then
    out[#out + 1] = string.sub(f, 3)
    out[#out + 1] = h[j + 1]
  end
end
if user == nil or i == nil or created == nil or a == nil then
  return redis.error_reply('patternd: malformed session hash')
end
local ue, uc = index_keys(base, i)
local exp = expiry(a, idle, now)
if exp == nil then
  redis.call('DEL', key)
  unindex(ue, uc, sid)
  return false
end
local ttl
if move then
  slide(key, ue, uc, sid, created, exp, now)
  redis.call('HSET', key, 'l', int(now))
  prune(ue, uc, now)
  index_expiry(ue, uc, now)
  ttl = exp - now
else
  ttl = redis.call('PTTL', key)
end
-- A session written before `l` existed was last seen, as far as anyone knows, when created.
out[1], out[2], out[3], out[4] = user, int(created), int(ttl), int(seen or created)
return out
