-- patternd locks: shared prelude.
-- A lock is a ZSET of holders: member = token, score = the lease's expiry in ms (µs
-- precision). A mutex is the case permits = 1. A crashed holder's lease lapses by score, so
-- its permit frees itself; the key expires with its longest lease.
-- One clock: Redis TIME. Times are written with string.format, never Lua's 14-digit tostring.
local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + us / 1000, s * 1000000 + us
end

local function fmt(ms)
  return string.format('%.3f', ms)
end

local function int(n)
  return string.format('%.0f', n)
end

-- Drops lapsed leases.
local function prune(holders, now)
  redis.call('ZREMRANGEBYSCORE', holders, '-inf', fmt(now))
end

-- The holders key lives exactly as long as its longest lease.
local function holders_expiry(holders, now)
  local last = redis.call('ZRANGE', holders, -1, -1, 'WITHSCORES')
  if last[2] ~= nil then
    redis.call('PEXPIRE', holders, int(math.max(math.ceil(tonumber(last[2]) - now), 1)))
  end
end
