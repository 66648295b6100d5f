-- Moves dead letters back to ready, attempts reset, atomically (each job is in exactly one
-- of the two). KEYS: ready, delayed, inflight, dead, meta, seq. ARGV: max_len, count, then
-- the ids to replay (none: the oldest `count`; at most 1000 either way, the admin route's
-- bound). Stops when the queue is full. Returns {replayed, not found, 1 if it was full}.
local K = { ready = KEYS[1], delayed = KEYS[2], inflight = KEYS[3], dead = KEYS[4],
  meta = KEYS[5], seq = KEYS[6] }
local max_len, count = tonumber(ARGV[1]), tonumber(ARGV[2])
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do
    ids[#ids + 1] = ARGV[i]
  end
else
  ids = redis.call('ZRANGE', K.dead, 0, count - 1)
end
local held = redis.call('ZCARD', K.ready) + redis.call('ZCARD', K.delayed)
  + redis.call('ZCARD', K.inflight)
local replayed, missing, full = 0, 0, 0
for i = 1, #ids do
  local id = ids[i]
  if not redis.call('ZSCORE', K.dead, id) then
    missing = missing + 1
  elseif held >= max_len then
    full = 1
    break
  else
    redis.call('ZREM', K.dead, id)
    local m = get_meta(K.meta, id) or { attempts = 0, prio = 0, receipt = '-', why = '-' }
    m.attempts = 0
    m.receipt = '-'
    m.why = '-'
    set_meta(K.meta, id, m)
    make_ready(K, id, m.prio)
    held = held + 1
    replayed = replayed + 1
  end
end
return { replayed, missing, full }
