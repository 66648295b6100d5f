-- Pops up to `count` jobs (0: maintenance and stats only, what the reaper and the stats route
-- call). KEYS: ready, delayed, inflight, dead, jobs, meta, seq. ARGV: count, visibility ms,
-- max_attempts, dead_max_len, maintenance batch, then one fresh receipt per job (count of
-- them). First moves due delayed jobs and lapsed in-flight jobs (at most `batch` of each).
-- Returns {requeued, dead-lettered, ready, delayed, in flight, dead, ms until the next due
-- or lapse (-1: none), then per job: id, receipt, attempts, priority, payload}.
-- Writes without expiry: the queue's keys are bounded by max_len and dead_max_len, not by
-- a TTL (see prelude.lua).
local K = { ready = KEYS[1], delayed = KEYS[2], inflight = KEYS[3], dead = KEYS[4],
  jobs = KEYS[5], meta = KEYS[6], seq = KEYS[7] }
local count, vis = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_attempts, dead_max, batch = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = clock()
local back, died = maintain(K, now, max_attempts, dead_max, batch)
local taken = {}
if count > 0 then
  local ids = redis.call('ZRANGE', K.ready, 0, count - 1)
  for i = 1, #ids do
    local id = ids[i]
    redis.call('ZREM', K.ready, id)
    local m = get_meta(K.meta, id) or { attempts = 0, prio = 0, receipt = '-', why = '-' }
    m.attempts = m.attempts + 1
    m.receipt = ARGV[5 + i]
    set_meta(K.meta, id, m)
    redis.call('ZADD', K.inflight, fmt(now + vis), id)
    local payload = redis.call('HGET', K.jobs, id) or 'null'
    taken[#taken + 1] = { id, m.receipt, m.attempts, m.prio, payload }
  end
end
local out = { back, died, redis.call('ZCARD', K.ready), redis.call('ZCARD', K.delayed),
  redis.call('ZCARD', K.inflight), redis.call('ZCARD', K.dead), next_due(K, now) }
for i = 1, #taken do
  local t = taken[i]
  for j = 1, 5 do
    out[#out + 1] = t[j]
  end
end
return out
