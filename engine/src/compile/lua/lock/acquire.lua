-- Acquires a permit. KEYS: holders, fence counter. ARGV: random token part, lease ms, permits,
-- fence counter ttl ms. Returns {1, token, lease ms} or {0, ms until the next lease lapses}.
-- The fence is max(last fence + 1, Redis TIME in µs): strictly increasing per resource, and
-- still increasing after the counter key expired, because time moved on meanwhile.
local holders, fence = KEYS[1], KEYS[2]
local lease, permits, fence_ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now, us = clock()
prune(holders, now)
local held = redis.call('ZCARD', holders)
if held >= permits then
  -- The (held - permits + 1)-th earliest lease must lapse (or be released) first.
  local e = redis.call('ZRANGE', holders, held - permits, held - permits, 'WITHSCORES')
  local wait = lease
  if e[2] then
    wait = math.max(math.ceil(tonumber(e[2]) - now), 1)
  end
  return { 0, int_text(wait) }
end
local last = tonumber(redis.call('GET', fence) or '0') or 0
local f = math.max(last + 1, us)
redis.call('SET', fence, int_text(f), 'PX', int_text(fence_ttl))
local token = int_text(f) .. '.' .. ARGV[1]
redis.call('ZADD', holders, fmt(now + lease), token)
holders_expiry(holders, now)
return { 1, token, int_text(lease) }
