-- Creates a session, first evicting the user's oldest beyond the max. KEYS: session, ue, uc.
-- ARGV: sid, user, idle_ms, absolute_ms, max sessions per user (min(max_per_user,
-- user_cap): always set, so the user's slice and a logout-everywhere stay bounded; 0 = none,
-- kept for safety), base64url(user), then field/JSON pairs.
-- Returns {expires_in_ms, evicted member, ...}. Eviction takes the oldest out of the index
-- only: their keys are not declared here, so the engine deletes them in a second call
-- (`session reap`), and until then they are dead anyway: a session its index does not name
-- is destroyed at its next touch (see `lost` in live.lua).
local key, ue, uc = KEYS[1], KEYS[2], KEYS[3]
local sid, user = ARGV[1], ARGV[2]
local idle, absolute, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local i = ARGV[6]
local now, now_us = clock()
if redis.call('EXISTS', key) == 1 then
  return redis.error_reply('patternd: session id collision')
end
prune(ue, uc, now)
local a = now + absolute
local exp = math.min(now + idle, a)
local out = { int(exp - now) }
if max > 0 then
  -- Make room for the new session: the oldest beyond max - 1 leave the index.
  local lo, hi = '[' .. i .. '|', '(' .. i .. '}'
  local over = redis.call('ZLEXCOUNT', uc, lo, hi) - max + 1
  if over > 0 then
    local old = redis.call('ZRANGEBYLEX', uc, lo, hi, 'LIMIT', 0, over)
    for j = 1, #old do
      unindex(ue, uc, old[j])
      out[#out + 1] = old[j]
    end
  end
end
local o = string.format('%016.0f', now_us)
local fields = { 'u', user, 'i', i, 'c', int(now), 'a', int(a), 'l', int(now), 'o', o }
for j = 7, #ARGV, 2 do
  fields[#fields + 1] = 'd:' .. ARGV[j]
  fields[#fields + 1] = ARGV[j + 1]
end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, int(exp - now))
local m = member(i, o, sid)
redis.call('ZADD', ue, int(exp), m)
redis.call('ZADD', uc, 0, m)
index_expiry(ue, uc, now)
return out
