-- Appends entries and trims. KEYS: stream. ARGV: max_len ('' for none), retention ms ('' for
-- none), then one JSON text per entry (at most the rule's max_batch: the engine refuses more).
-- Returns the new entry ids, in order. Trimming by length is approximate (`~`: whole radix
-- nodes), so the stream holds max_len entries and at most about 100 more. Trimming by age is
-- exact (a retention is a promise about age): MINID is Redis TIME minus the retention, so
-- every engine replica trims at the same instant, and each entry is removed once (amortised
-- over the appends that made it).
local s = KEYS[1]
local max_len, retention = ARGV[1], ARGV[2]
local ids = {}
for i = 3, #ARGV do
  if max_len ~= '' then
    ids[#ids + 1] = redis.call('XADD', s, 'MAXLEN', '~', max_len, '*', 'd', ARGV[i])
  else
    ids[#ids + 1] = redis.call('XADD', s, '*', 'd', ARGV[i])
  end
end
if retention ~= '' then
  local ms = now_ms()
  local min_id = int_text(math.max(math.floor(ms) - tonumber(retention), 0))
  redis.call('XTRIM', s, 'MINID', min_id)
end
return ids
