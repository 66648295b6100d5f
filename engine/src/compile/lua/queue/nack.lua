-- Gives a job back: retried after `delay` ms, or (delay -1) after the rule's backoff
-- base · 2^(attempts-1), at most cap; dead-lettered once it had max_attempts deliveries.
-- KEYS: ready, delayed, inflight, dead, jobs, meta, seq. ARGV: job id, receipt, delay ms,
-- backoff base ms, cap ms, max_attempts, dead_max_len. Returns {1, delay ms} when it will be
-- retried, {2, 0} when dead-lettered, {0, 0} when the receipt holds no lease.
-- Writes without expiry: the queue's keys are bounded by max_len and dead_max_len, not by
-- a TTL (see prelude.lua).
local K = { ready = KEYS[1], delayed = KEYS[2], inflight = KEYS[3], dead = KEYS[4],
  jobs = KEYS[5], meta = KEYS[6], seq = KEYS[7] }
local id, receipt, delay = ARGV[1], ARGV[2], tonumber(ARGV[3])
local base, cap = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_attempts, dead_max = tonumber(ARGV[6]), tonumber(ARGV[7])
local now = clock()
local m = leased(K, id, receipt, now)
if not m then
  return { 0, 0 }
end
redis.call('ZREM', K.inflight, id)
if m.attempts >= max_attempts then
  to_dead(K, id, m, 'nacked', now, dead_max)
  return { 2, 0 }
end
if delay < 0 then
  delay = math.min(base * math.pow(2, math.max(m.attempts - 1, 0)), cap)
end
m.receipt = '-'
m.why = 'nacked'
set_meta(K.meta, id, m)
if delay > 0 then
  redis.call('ZADD', K.delayed, fmt(now + delay), id)
else
  make_ready(K, id, m.prio)
end
return { 1, int_text(delay) }
