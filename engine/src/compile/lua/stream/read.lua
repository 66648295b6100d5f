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
local s, dead = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local count, idle = tonumber(ARGV[3]), ARGV[4]
local max_deliveries, dead_len = tonumber(ARGV[5]), ARGV[6]

local claimed = redis.pcall('XAUTOCLAIM', s, group, consumer, idle, '0-0', 'COUNT', count)
if type(claimed) == 'table' and claimed.err then
  if string.find(claimed.err, 'NOGROUP', 1, true) then
    redis.call('XGROUP', 'CREATE', s, group, '0', 'MKSTREAM')
    claimed = { '0-0', {} }
  else
    return redis.error_reply(claimed.err)
  end
end

local out = { 0 }
local dead_n = 0
local got = 0
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

if got < count then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - got,
    'STREAMS', s, '>')
  if r and r[1] then
    for _, e in ipairs(r[1][2]) do
      out[#out + 1] = e[1]
      out[#out + 1] = field(e[2], 'd') or ''
      out[#out + 1] = 1
    end
  end
end
out[1] = dead_n
return out
