-- patternd cache write-behind: dead letters back into the journal, atomically (each entry is
-- in exactly one stream). The original entry id travels along as `oid`, so a replayed write
-- that was superseded meanwhile is still recognised as older than the newer one and is not
-- delivered over it.
-- KEYS[1] the dead-letter STREAM; KEYS[2] the journal STREAM
-- ARGV[1] journal_max_len; ARGV[2] at most this many (when no ids are given)
-- ARGV[3 ..] dead-letter entry ids to replay (none: the oldest ARGV[2])
-- Returns { replayed, not found, 1 if stopped because the journal is full else 0 }
local dkey, jkey = KEYS[1], KEYS[2]
local maxlen = tonumber(ARGV[1])
local entries = {}
local missing = 0
if #ARGV >= 3 then
  for i = 3, #ARGV do
    local e = redis.call('XRANGE', dkey, ARGV[i], ARGV[i])
    if e[1] then entries[#entries + 1] = e[1] else missing = missing + 1 end
  end
else
  entries = redis.call('XRANGE', dkey, '-', '+', 'COUNT', tonumber(ARGV[2]))
end
local replayed, full = 0, 0
for _, e in ipairs(entries) do
  if redis.call('XLEN', jkey) >= maxlen then
    full = 1
    break
  end
  local rec = { id = '', ct = '', b = '', oid = e[1] }
  for i = 1, #e[2], 2 do rec[e[2][i]] = e[2][i + 1] end
  redis.call('XADD', jkey, '*', 'id', rec.id, 'ct', rec.ct, 'b', rec.b, 'oid', rec.oid)
  redis.call('XDEL', dkey, e[1])
  replayed = replayed + 1
end
return { replayed, missing, full }
