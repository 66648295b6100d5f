-- Extends a held lease to end `lease ms` from now; only the current holder of the token
-- can. KEYS: holders. ARGV: token, lease ms. Returns {1, lease ms}, or {0} when the token
-- holds nothing (never held, released, or lapsed).
local holders = KEYS[1]
local token, lease = ARGV[1], tonumber(ARGV[2])
local now = clock()
prune(holders, now)
if not redis.call('ZSCORE', holders, token) then
  return { 0 }
end
redis.call('ZADD', holders, 'XX', fmt(now + lease), token)
holders_expiry(holders, now)
return { 1, int_text(lease) }
