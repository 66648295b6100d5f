-- Creates a session, first evicting the user's oldest beyond the max.
-- KEYS: session, ue, uc, then the session keys of the members in ARGV (see `slice`): the
-- user's oldest, to evict, as an earlier call answered; none on a first call.
-- ARGV: n, n members, then sid, user, idle_ms, absolute_ms, max sessions per user
-- (min(max_per_user, user_cap): always set, so the user's slice and a logout-everywhere stay
-- bounded; 0 = none, kept for safety), base64url(user), then field/JSON pairs.
-- Returns {'ok', evicted, {expires_in_ms}}; or, with the session not created yet, {'stale', 0,
-- members} when the oldest to evict differ from those declared (nothing was done), or
-- {'more', evicted, members} when the declared ones are evicted and more must go (only after
-- the max was lowered): call again with those members declared. `evicted` counts the
-- sessions this call destroyed.
local key, ue, uc = KEYS[1], KEYS[2], KEYS[3]
local b = tonumber(ARGV[1]) + 1
local sid, user = ARGV[b + 1], ARGV[b + 2]
local idle, absolute, max = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
local i = ARGV[b + 6]
local now, now_us = clock()
if redis.call('EXISTS', key) == 1 then
  return redis.error_reply('patternd: session id collision')
end
prune(ue, uc, now)
local evicted = 0
if max > 0 then
  -- Make room for the new session: destroy the oldest beyond max - 1, at most max per call
  -- (the declared keys stay bounded by the policy; more only after the max was lowered).
  local lo = '[' .. i .. '|'
  local over = redis.call('ZLEXCOUNT', uc, lo, '(' .. i .. '}') - max + 1
  if over > 0 then
    local old, _, same = slice(uc, i, lo, math.min(over, max))
    if not same then
      return { 'stale', 0, old }
    end
    for j = 1, #old do
      evicted = evicted + redis.call('DEL', KEYS[3 + j])
      unindex(ue, uc, old[j])
    end
    if over > #old then
      index_expiry(ue, uc, now)
      local rest = slice(uc, i, lo, math.min(over - #old, max))
      return { 'more', evicted, rest }
    end
  end
end
local a = now + absolute
local exp = math.min(now + idle, a)
local o = string.format('%016.0f', now_us)
local fields = { 'u', user, 'i', i, 'c', int(now), 'a', int(a), 'l', int(now), 'o', o }
for j = b + 7, #ARGV, 2 do
  fields[#fields + 1] = 'd:' .. ARGV[j]
  fields[#fields + 1] = ARGV[j + 1]
end
redis.call('HSET', key, unpack(fields))
redis.call('PEXPIRE', key, int(exp - now))
local m = member(i, o, sid)
redis.call('ZADD', ue, int(exp), m)
redis.call('ZADD', uc, 0, m)
index_expiry(ue, uc, now)
return { 'ok', evicted, { int(exp - now) } }
