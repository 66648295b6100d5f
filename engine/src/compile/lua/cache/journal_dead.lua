-- patternd cache write-behind: an entry that failed max_attempts times moves to the dead
-- letters, atomically: it is in exactly one of the two streams at any time.
-- KEYS[1] the journal STREAM; KEYS[2] the dead-letter STREAM; KEYS[3] the id's flush lease
-- ARGV[1] the attempt's token; ARGV[2] the entry id; ARGV[3] attempts made
-- ARGV[4] the last error; ARGV[5] how many dead letters are kept (oldest trimmed first)
-- Returns 1 if moved, 0 if the entry was gone already.
local jkey, dkey = KEYS[1], KEYS[2]
local e = redis.call('XRANGE', jkey, ARGV[2], ARGV[2])
local moved = 0
if e[1] then
  local f = e[1][2]
  local rec = { id = '', ct = '', b = '', oid = ARGV[2], k = '' }
  for i = 1, #f, 2 do rec[f[i]] = f[i + 1] end
  local t = redis.call('TIME')
  local at = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  -- `jid`: the journal entry it leaves, which the value's `jp` names while this write is the
  -- id's newest (replay checks it); `k`: the value's id when a plugin chose another key.
  redis.call('XADD', dkey, 'MAXLEN', tonumber(ARGV[5]), '*', 'id', rec.id, 'ct', rec.ct,
    'b', rec.b, 'oid', rec.oid, 'jid', ARGV[2], 'k', rec.k, 'attempts', ARGV[3],
    'error', ARGV[4], 'failed_at', at)
  moved = 1
end
journal_done(jkey, { ARGV[2] })
release_flush(KEYS[3], ARGV[1])
return moved
