-- Creates a session. KEYS: session, ue, uc. ARGV: sid, user, idle_ms, absolute_ms,
-- max sessions per user (min(max_per_user, user_cap): always set, so the user's index and a
-- logout-everywhere stay bounded; 0 = none, kept for safety), base, base64url(user), then
-- field/JSON pairs.
-- Returns {expires_in_ms, evicted}.
local key, ue, uc = KEYS[1], KEYS[2], KEYS[3]
local sid, user = ARGV[1], ARGV[2]
local idle, absolute, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local base, i = ARGV[6], ARGV[7]
local now, now_us = clock()
if redis.call('EXISTS', key) == 1 then
  return redis.error_reply('patternd: session id collision')
end
prune(ue, uc, now)
local evicted = 0
if max > 0 then
  -- Make room for the new session: destroy the oldest beyond max_per_user - 1.
  local over = redis.call('ZCARD', uc) - max + 1
  if over > 0 then
    local old = redis.call('ZRANGE', uc, 0, over - 1)
    for j = 1, #old do
      evicted = evicted + redis.call('DEL', session_key(base, old[j]))
      unindex(ue, uc, old[j])
    end
  end
end
local a = now + absolute
local exp = math.min(now + idle, a)
local fields = { 'u', user, 'i', i, 'c', int(now), 'a', int(a), 'l', int(now) }
for j = 8, #ARGV, 2 do
  fields[#fields + 1] = 'd:' .. ARGV[j]
  fields[#fields + 1] = ARGV[j + 1]
end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, int(exp - now))
redis.call('ZADD', ue, int(exp), sid)
redis.call('ZADD', uc, string.format('%.0f', now_us), sid)
index_expiry(ue, uc, now)
return { int(exp - now), evicted }
