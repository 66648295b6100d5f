-- patternd queues: what a queue is, and the helpers every queue script uses.
-- Included by every queue script, after shared/clock.lua.
-- A queue is a fixed set of keys of the rule, all with the rule's hash tag (one cluster
-- slot), never a key per job: a pop cannot know the ids it will take before it runs.
--   ready    ZSET id -> (9 - priority) * BAND + sequence: a pop takes the lowest scores
--   delayed  ZSET id -> due time, ms
--   inflight ZSET id -> visibility deadline, ms
--   dead     ZSET id -> when it was dead-lettered, ms
--   jobs     HASH id -> payload (JSON text)
--   meta     HASH id -> '<attempts> <priority> <receipt or -> <last reason or ->'
--   seq      STRING: the counter that orders ready jobs of one priority
-- A job is in exactly one of the four ZSETs, and in jobs and meta, from its push until it
-- is acknowledged (or dropped as the oldest dead letter beyond dead_max_len).
-- These keys never expire: they hold jobs whose push was acknowledged (201), which must not
-- be lost to a TTL. Their bound is the policy's instead: at most max_len jobs (push refuses
-- beyond it, replay stops at it) plus dead_max_len dead letters (the oldest beyond are
-- dropped), and one counter; compile/queue.rs declares it in the key layout. Only the dedup
-- keys (push.lua) carry a TTL: their window.

-- Sequences stay below BAND (a trillion pushes, then it wraps), so scores are exact doubles.
local BAND = 1000000000000

local function get_meta(meta, id)
  local m = redis.call('HGET', meta, id)
  if not m then
    return nil
  end
  local a, p, r, why = string.match(m, '^(%d+) (%d+) (%S+) (%S+)$')
  if not a then
    return nil
  end
  return { attempts = tonumber(a), prio = tonumber(p), receipt = r, why = why }
end

local function set_meta(meta, id, m)
  redis.call('HSET', meta, id,
    int_text(m.attempts) .. ' ' .. int_text(m.prio) .. ' ' .. m.receipt .. ' ' .. m.why)
end

-- Makes a job ready, behind every ready job of its priority.
local function make_ready(K, id, prio)
  local n = redis.call('INCR', K.seq) % BAND
  redis.call('ZADD', K.ready, int_text((9 - prio) * BAND + n), id)
end

-- Moves a job (already out of the other ZSETs) to the dead letters, keeping its payload and
-- meta for listing and replay, and drops the oldest dead letters beyond dead_max (at most
-- 100 per call, so a lowered dead_max_len is worked off over a few calls).
local function to_dead(K, id, m, why, now, dead_max)
  m.receipt = '-'
  m.why = why
  set_meta(K.meta, id, m)
  redis.call('ZADD', K.dead, fmt(now), id)
  local over = math.min(redis.call('ZCARD', K.dead) - dead_max, 100)
  if over > 0 then
    local old = redis.call('ZPOPMIN', K.dead, over)
    for i = 1, #old, 2 do
      redis.call('HDEL', K.jobs, old[i])
      redis.call('HDEL', K.meta, old[i])
    end
  end
end

-- A receipt holds its job's lease while the job is in flight, its visibility has not lapsed
-- and the receipt is the job's current one (a redelivery gives it another). Returns the meta.
local function leased(K, id, receipt, now)
  local deadline = redis.call('ZSCORE', K.inflight, id)
  if not deadline or tonumber(deadline) <= now then
    return nil
  end
  local m = get_meta(K.meta, id)
  if not m or m.receipt ~= receipt then
    return nil
  end
  return m
end

-- Due delayed jobs become ready, in due order; in-flight jobs whose visibility lapsed go back
-- to ready with their attempt count, or to the dead letters once they had max_attempts
-- deliveries. At most `batch` of each per call. Returns (requeued, dead-lettered).
local function maintain(K, now, max_attempts, dead_max, batch)
  local due = redis.call('ZRANGEBYSCORE', K.delayed, '-inf', fmt(now), 'LIMIT', 0, batch)
  for i = 1, #due do
    local id = due[i]
    redis.call('ZREM', K.delayed, id)
    local m = get_meta(K.meta, id)
    make_ready(K, id, m and m.prio or 0)
  end
  local back, died = 0, 0
  local lapsed = redis.call('ZRANGEBYSCORE', K.inflight, '-inf', fmt(now), 'LIMIT', 0, batch)
  for i = 1, #lapsed do
    local id = lapsed[i]
    redis.call('ZREM', K.inflight, id)
    local m = get_meta(K.meta, id)
    if not m then
      -- Payload and meta are written together: an id without meta is no job; drop it.
      redis.call('HDEL', K.jobs, id)
    elseif m.attempts >= max_attempts then
      to_dead(K, id, m, 'lapsed', now, dead_max)
      died = died + 1
    else
      m.receipt = '-'
      m.why = 'lapsed'
      set_meta(K.meta, id, m)
      make_ready(K, id, m.prio)
      back = back + 1
    end
  end
  return back, died
end

-- ms until the next delayed job is due or the next in-flight job lapses; -1 when neither.
local function next_due(K, now)
  local hint = -1
  local firsts = { redis.call('ZRANGE', K.delayed, 0, 0, 'WITHSCORES'),
    redis.call('ZRANGE', K.inflight, 0, 0, 'WITHSCORES') }
  for i = 1, 2 do
    local f = firsts[i]
    if f[2] then
      local d = math.max(math.ceil(tonumber(f[2]) - now), 0)
      if hint < 0 or d < hint then
        hint = d
      end
    end
  end
  return hint
end
