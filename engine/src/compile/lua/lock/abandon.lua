-- Takes back a permit whose acquire answered too late for its caller (Redis stalled past the
-- engine's timeout): the engine sends this on the acquire's connection, so it runs after the
-- acquire, and removes the holder the acquire added, if it did. KEYS: holders. ARGV: the
-- random part of the token the engine generated (the fence part was chosen by the acquire
-- script, so the engine does not know the whole token). Returns 1 when a holder was removed.
-- The holders walked are at most the rule's permits (at most 10000): the policy's bound.
local holders = KEYS[1]
local suffix = '.' .. ARGV[1]
local now = clock()
prune(holders, now)
local members = redis.call('ZRANGE', holders, 0, -1)
for i = 1, #members do
  local m = members[i]
  if string.sub(m, -#suffix) == suffix then
    redis.call('ZREM', holders, m)
    holders_expiry(holders, now)
    return 1
  end
end
return 0
