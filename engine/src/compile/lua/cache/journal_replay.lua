-- patternd cache write-behind: dead letters back into the journal, atomically (each entry is
-- in exactly one stream). The original entry id travels along as `oid`, so a replayed write
-- that was superseded meanwhile is still recognised as older than the newer one and is not
-- delivered over it.
-- Two calls: 'peek' names the entries and the ids whose values they belong to (the engine
-- builds those value keys with KeySpace), then 'move' moves them, given the value keys.
-- When the dead letter is still the newest write of its id (the value's `jp` names the
-- journal entry it was dead-lettered from), `jp` is set to the new journal entry in this
-- script: reads keep serving the value instead of the origin's older copy, and the flusher
-- sees the replayed entry as the newest write. Otherwise (a newer write came, or the value is
-- gone or was refilled from the origin) `jp` is left alone.
-- KEYS[1] the dead-letter STREAM; KEYS[2] the journal STREAM
-- KEYS[3 ..] ('move' only) the value HASH of each entry in ARGV[4 ..], in order
-- ARGV[1] 'peek' | 'move'; ARGV[2] the group journal's bound; ARGV[3] at most this many ('peek'
-- without ids: the oldest ARGV[3])
-- ARGV[4 ..] dead-letter entry ids ('move': required)
-- peek returns { { entry id, value id (`k`, else `id`) }... } of the entries that exist.
-- move returns { replayed, not found, 1 if stopped because the journal is full else 0 }.
local dkey, jkey = KEYS[1], KEYS[2]
local maxlen = tonumber(ARGV[2])

local function record(e)
  local rec = { id = '', ct = '', b = '', oid = e[1], jid = '', k = '' }
  for i = 1, #e[2], 2 do rec[e[2][i]] = e[2][i + 1] end
  return rec
end

if ARGV[1] == 'peek' then
  local entries = {}
  if #ARGV >= 4 then
    for i = 4, #ARGV do
      local e = redis.call('XRANGE', dkey, ARGV[i], ARGV[i])
      if e[1] then entries[#entries + 1] = e[1] end
    end
  else
    entries = redis.call('XRANGE', dkey, '-', '+', 'COUNT', tonumber(ARGV[3]))
  end
  local out = {}
  for _, e in ipairs(entries) do
    local rec = record(e)
    local vid = rec.k
    if vid == '' then vid = rec.id end
    out[#out + 1] = { e[1], vid }
  end
  return out
end

local replayed, missing, full = 0, 0, 0
for i = 4, #ARGV do
  local e = redis.call('XRANGE', dkey, ARGV[i], ARGV[i])[1]
  if not e then
    missing = missing + 1
  else
    if redis.call('XLEN', jkey) >= maxlen then
      full = 1
      break
    end
    local rec = record(e)
    local fields = { 'id', rec.id, 'ct', rec.ct, 'b', rec.b, 'oid', rec.oid }
    if rec.k ~= '' then
      fields[#fields + 1] = 'k'
      fields[#fields + 1] = rec.k
    end
    local eid = redis.call('XADD', jkey, '*', unpack(fields))
    redis.call('XDEL', dkey, e[1])
    local vkey = KEYS[i - 1]
    local jp = vkey and redis.call('HGET', vkey, 'jp')
    if jp and (jp == rec.jid or jp == rec.oid) then redis.call('HSET', vkey, 'jp', eid) end
    replayed = replayed + 1
  end
end
return { replayed, missing, full }
