-- Extends a job's visibility to end `ms` from now; only the receipt holding its lease can.
-- KEYS: inflight, meta. ARGV: job id, receipt, ms. Returns {1, ms}, or {0} when the receipt
-- holds no lease.
-- Writes without expiry: the queue's keys are bounded by max_len and dead_max_len, not by
-- a TTL (see prelude.lua).
local K = { inflight = KEYS[1], meta = KEYS[2] }
local id, receipt, ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = clock()
if not leased(K, id, receipt, now) then
  return { 0 }
end
redis.call('ZADD', K.inflight, 'XX', fmt(now + ms), id)
return { 1, int_text(ms) }
