-- Releases a lease; only the holder of the token can. KEYS: holders, recently released.
-- ARGV: token, ttl ms of the released-token memory. Returns 1 when released, 0 when this
-- token was already released (a repeated release is not an error), -1 when the token holds
-- nothing (wrong token, or its lease lapsed: the caller must learn it lost the lock).
local holders, released = KEYS[1], KEYS[2]
local token, keep = ARGV[1], tonumber(ARGV[2])
local now = clock()
prune(holders, now)
if redis.call('ZREM', holders, token) == 1 then
  -- Remember the last few released tokens, for idempotent repeats.
  redis.call('ZADD', released, fmt(now), token)
  redis.call('ZREMRANGEBYRANK', released, 0, -33)
  redis.call('PEXPIRE', released, int_text(keep))
  return 1
end
if redis.call('ZSCORE', released, token) then
  return 0
end
return -1
