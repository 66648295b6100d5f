-- Pushes a job. KEYS: ready, delayed, inflight, jobs, meta, seq, dedup, dedup ids.
-- ARGV: job id (random, from the engine), payload, delay ms, priority 0-9, dedup id ('' for
-- none), dedup window ms, max_len. Returns {1, id} when pushed, {0, first id} when the dedup
-- id was pushed within the window (no second job), {-1, jobs held} when the queue is full.
-- The dedup ZSET (dedup id -> end of its window) and HASH (dedup id -> job id) expire with
-- their last window; each push with a dedup id drops up to 8 ended windows, more than it adds.
local K = { ready = KEYS[1], delayed = KEYS[2], inflight = KEYS[3], jobs = KEYS[4],
  meta = KEYS[5], seq = KEYS[6] }
local dedup, dedup_ids = KEYS[7], KEYS[8]
local id, payload, delay, prio = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local dedup_id, window, max_len = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local now = clock()
if dedup_id ~= '' then
  local ended = redis.call('ZRANGEBYSCORE', dedup, '-inf', fmt(now), 'LIMIT', 0, 8)
  for i = 1, #ended do
    redis.call('ZREM', dedup, ended[i])
    redis.call('HDEL', dedup_ids, ended[i])
  end
  local ends = redis.call('ZSCORE', dedup, dedup_id)
  if ends and tonumber(ends) > now then
    local first = redis.call('HGET', dedup_ids, dedup_id)
    if first then
      return { 0, first }
    end
  end
end
local held = redis.call('ZCARD', K.ready) + redis.call('ZCARD', K.delayed)
  + redis.call('ZCARD', K.inflight)
if held >= max_len then
  return { -1, int_text(held) }
end
redis.call('HSET', K.jobs, id, payload)
set_meta(K.meta, id, { attempts = 0, prio = prio, receipt = '-', why = '-' })
if delay > 0 then
  redis.call('ZADD', K.delayed, fmt(now + delay), id)
else
  make_ready(K, id, prio)
end
if dedup_id ~= '' then
  redis.call('ZADD', dedup, fmt(now + window), dedup_id)
  redis.call('HSET', dedup_ids, dedup_id, id)
  redis.call('PEXPIRE', dedup, int_text(window))
  redis.call('PEXPIRE', dedup_ids, int_text(window))
end
return { 1, id }
