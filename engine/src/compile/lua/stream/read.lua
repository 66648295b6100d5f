-- A group read: claims, dead letters and new entries in one step. KEYS: stream, dead-letter
-- stream. ARGV: group, consumer, count, claim_after ms, max_deliveries, dead max_len.
-- Returns {dead-lettered count, id1, data1, deliveries1, id2, ...}: at most `count` entries
-- (the engine caps it by the rule's max_count), claimed ones first.
-- 1. The group is created on first use (from the oldest retained entry, MKSTREAM: an empty
--    stream is the bounded state of a rule nobody appended to yet).
-- 2. Entries idle past claim_after are claimed (XAUTOCLAIM, COUNT bounded). XAUTOCLAIM counts
--    the delivery; XPENDING then tells how many there were. An entry now past max_deliveries
--    is not delivered: it is added to the dead-letter stream and acked in the group, both
--    here, so it is never in both places or in neither.
-- 3. The rest of `count` is filled with new entries (XREADGROUP >, never blocking in a
--    script; the engine waits between calls).
-- 4. Consumers are named by clients, so their records are kept bounded: a consumer left with
--    nothing pending is deleted when its entries were claimed away, or when its own read
--    found nothing (XGROUP DELCONSUMER, only with nothing pending: no entry is dropped). The
--    group then holds the consumers with pending entries and those whose last read got some.
local s, dead = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local count, idle = tonumber(ARGV[3]), ARGV[4]
local max_deliveries, dead_len = tonumber(ARGV[5]), ARGV[6]

-- The owners of the entries about to be claimed (at most `count`), to tidy up after.
local idle_list = redis.pcall('XPENDING', s, group, 'IDLE', idle, '-', '+', count)
if type(idle_list) == 'table' and idle_list.err then
  if string.find(idle_list.err, 'NOGROUP', 1, true) then
    redis.call('XGROUP', 'CREATE', s, group, '0', 'MKSTREAM')
    idle_list = {}
  else
    return redis.error_reply(idle_list.err)
  end
end

local out = { 0 }
local dead_n = 0
local got = 0
if #idle_list > 0 then
  local claimed = redis.call('XAUTOCLAIM', s, group, consumer, idle, '0-0', 'COUNT', count)
  for _, e in ipairs(claimed[2]) do
    local id = e[1]
    local p = redis.call('XPENDING', s, group, id, id, 1)
    local n = 1
    if p[1] then
      n = tonumber(p[1][4])
    end
    local data = field(e[2], 'd') or ''
    if n > max_deliveries then
      redis.call('XADD', dead, 'MAXLEN', '~', dead_len, '*', 'id', id, 'group', group,
        'consumer', consumer, 'deliveries', tostring(n - 1), 'd', data)
      redis.call('XACK', s, group, id)
      dead_n = dead_n + 1
    else
      out[#out + 1] = id
      out[#out + 1] = data
      out[#out + 1] = n
      got = got + 1
    end
  end
  local seen = {}
  for _, p in ipairs(idle_list) do
    local owner = p[2]
    if owner ~= consumer and not seen[owner] then
      seen[owner] = true
      if #redis.call('XPENDING', s, group, '-', '+', 1, owner) == 0 then
        redis.call('XGROUP', 'DELCONSUMER', s, group, owner)
      end
    end
  end
end

if got < count then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - got,
    'STREAMS', s, '>')
  if r and r[1] then
    for _, e in ipairs(r[1][2]) do
      out[#out + 1] = e[1]
      out[#out + 1] = field(e[2], 'd') or ''
      out[#out + 1] = 1
      got = got + 1
    end
  end
end
if got == 0 and #redis.call('XPENDING', s, group, '-', '+', 1, consumer) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', s, group, consumer)
end
out[1] = dead_n
return out
