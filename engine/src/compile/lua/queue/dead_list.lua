-- Lists dead letters, oldest first. KEYS: dead, jobs, meta. ARGV: the id to list after (''
-- for the oldest), count (at most 1000, the admin route's bound). Returns {-1} when `after`
-- is no dead letter (any more), else {total, then per letter: id, dead-lettered at ms,
-- attempts, priority, reason, payload}.
local K = { dead = KEYS[1], jobs = KEYS[2], meta = KEYS[3] }
local after, count = ARGV[1], tonumber(ARGV[2])
local start = 0
if after ~= '' then
  local r = redis.call('ZRANK', K.dead, after)
  if not r then
    return { -1 }
  end
  start = r + 1
end
local out = { redis.call('ZCARD', K.dead) }
local page = redis.call('ZRANGE', K.dead, start, start + count - 1, 'WITHSCORES')
for i = 1, #page, 2 do
  local id = page[i]
  local m = get_meta(K.meta, id) or { attempts = 0, prio = 0, receipt = '-', why = '-' }
  out[#out + 1] = id
  out[#out + 1] = int_text(math.floor(tonumber(page[i + 1])))
  out[#out + 1] = m.attempts
  out[#out + 1] = m.prio
  out[#out + 1] = m.why
  out[#out + 1] = redis.call('HGET', K.jobs, id) or 'null'
end
return out
