-- Moves a live session to a new id: same user, data, creation time and absolute deadline
-- (rotation never extends a session's life); the old id is dead at once. Both ids carry the
-- user's shard as hash tag, so this copies within one slot instead of RENAME across slots.
-- KEYS: old session, new session, ue, uc. ARGV: old sid, new sid, idle_ms.
-- Returns false when the old session is gone (or unindexed, see `lost`), an error when its
-- hash is malformed (see `live`) or the new id is taken, else expires_in_ms.
local old, new, ue, uc = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local old_sid, new_sid, idle = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = clock()
local h = redis.call('HGETALL', old)
local user, i, created, a, seen, o
for j = 1, #h, 2 do
  if h[j] == 'u' then
    user = h[j + 1]
  elseif h[j] == 'i' then
    i = h[j + 1]
  elseif h[j] == 'c' then
    created = tonumber(h[j + 1])
  elseif h[j] == 'a' then
    a = tonumber(h[j + 1])
  elseif h[j] == 'l' then
    seen = tonumber(h[j + 1])
  elseif h[j] == 'o' then
    o = h[j + 1]
  end
end
local m, exp, stop = live(old, old_sid, ue, uc, idle, now, user, i, created, a, seen, o)
if stop ~= nil then return stop end
if redis.call('EXISTS', new) == 1 then
  return redis.error_reply('patternd: session id collision')
end
if lost(old, ue, uc, m, o, unindex(ue, uc, m)) then
  return false
end
-- Copied in slices: unpack of a large hash would overflow Lua's C stack.
for j = 1, #h, 200 do
  redis.call('HSET', new, unpack(h, j, math.min(j + 199, #h)))
end
redis.call('DEL', old)
local order = order_of(o, created)
redis.call('HSET', new, 'l', int(now), 'o', order)
redis.call('PEXPIRE', new, int(exp - now))
local n = member(i, order, new_sid)
redis.call('ZADD', ue, int(exp), n)
redis.call('ZADD', uc, 0, n)
prune(ue, uc, now)
index_expiry(ue, uc, now)
return int(exp - now)
