-- patternd cache write-behind: the journal's consumer group and helpers, for the scripts
-- that read or acknowledge the journal: journal-fetch, journal-begin, journal-ack,
-- journal-dead. Needs nothing before it.
-- The consumer group every engine replica reads the journal with.
local GROUP = 'patternd'

-- Stream entry ids 'ms-seq' compared as numbers (string order would put '9-0' after '10-0').
local function stream_id_lt(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am or not bm then return false end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am ~= bm then return am < bm end
  return as < bs
end

-- Acknowledges journal entries and deletes them: the journal then holds exactly the writes
-- not yet delivered, so XLEN is the backlog the PUT script bounds (instead of MAXLEN trimming,
-- which could drop an acknowledged write that was never delivered).
local function journal_done(jkey, ids)
  if #ids == 0 then return 0 end
  redis.call('XACK', jkey, GROUP, unpack(ids))
  return redis.call('XDEL', jkey, unpack(ids))
end

-- Drops the per-id flush lease if this flusher still holds it.
local function release_flush(lkey, token)
  if redis.call('GET', lkey) == token then redis.call('DEL', lkey) end
end
