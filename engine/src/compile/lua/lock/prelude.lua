-- patternd locks: what a lock is, and the helpers every lock script uses.
-- Included by every lock script (acquire, extend, release, abandon), after shared/clock.lua.
-- A lock is a ZSET of holders: member = token, score = the lease's expiry in ms (µs
-- precision). A mutex is the case permits = 1. A crashed holder's lease lapses by score, so
-- its permit frees itself; the key expires with its longest lease.

-- Drops lapsed leases.
local function prune(holders, now)
  redis.call('ZREMRANGEBYSCORE', holders, '-inf', fmt(now))
end

-- The holders key lives exactly as long as its longest lease.
local function holders_expiry(holders, now)
  local last = redis.call('ZRANGE', holders, -1, -1, 'WITHSCORES')
  if last[2] ~= nil then
    redis.call('PEXPIRE', holders, int_text(math.max(math.ceil(tonumber(last[2]) - now), 1)))
  end
end
