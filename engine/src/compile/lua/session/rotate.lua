-- Moves a live session to a new id: same user, data, creation time and absolute deadline
-- (rotation never extends a session's life); the old id is dead at once. Both ids carry the
-- user's shard as hash tag, so this copies within one slot instead of RENAME across slots.
-- KEYS: old session, new session. ARGV: old sid, new sid, idle_ms, base.
-- Returns false when the old session is gone, an error when its hash is malformed (see
-- `live`) or the new id is taken, else expires_in_ms.
local old, new = KEYS[1], KEYS[2]
local old_sid, new_sid, idle, base = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = clock()
local h = redis.call('HGETALL', old)
local user, i, created, a, seen
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
  end
end
local ue, uc, exp, stop = live(old, old_sid, base, idle, now, user, i, created, a, seen)
if stop ~= nil then return stop end
if redis.call('EXISTS', new) == 1 then
  return redis.error_reply('patternd: session id collision')
end
local order = redis.call('ZSCORE', uc, old_sid) or int(created * 1000)
-- Copied in slices: unpack of a large hash would overflow Lua's C stack.
for j = 1, #h, 200 do
  redis.call('HSET', new, unpack(h, j, math.min(j + 199, #h)))
end
redis.call('DEL', old)
unindex(ue, uc, old_sid)
redis.call('HSET', new, 'l', int(now))
redis.call('PEXPIRE', new, int(exp - now))
redis.call('ZADD', ue, int(exp), new_sid)
redis.call('ZADD', uc, order, new_sid)
prune(ue, uc, now)
index_expiry(ue, uc, now)
return int(exp - now)
