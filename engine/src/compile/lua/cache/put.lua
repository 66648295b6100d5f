-- patternd cache PUT: stores a value written by a client, and for `write: behind` appends the
-- journal entry in the SAME script: the value and the journal entry exist together or not at
-- all, so a 202 means the write is durable in Redis and will reach the origin.
-- KEYS[1] the value HASH; KEYS[2] the refresh lease; KEYS[3] the journal STREAM (behind),
-- or the held copy (through: see through_begin.lua)
-- ARGV[1] tag version key prefix; ARGV[2] ttl ms; ARGV[3] stale ms; ARGV[4] 'c' (store only:
-- write: cache), 't' (through, after the origin accepted) or 'b' (behind: store + journal)
-- ARGV[5] journal_max_len ('b'), or the write's token ('t'); ARGV[6] the id; ARGV[7] content type; ARGV[8] 's' (format: string)
-- or 'h' (format: hash); ARGV[9] the value's id when a plugin chose a key other than the
-- client's id ('' otherwise; journaled as `k`, the origin still gets ARGV[6]'s URL)
-- ARGV[10] If-Match, ARGV[11] If-None-Match, as `preconditions_hold` (common.lua) takes
-- them ('' and '': none; 't' checked them in through_begin.lua, before the origin)
-- ARGV[12] n = number of tags; ARGV[13 .. 12+n] the tags
-- ARGV[13+n] the body as sent (stored as `b` for 's'; journaled for 'b'; '' otherwise)
-- ARGV[14+n ..] 'h' only: name, json pairs of the object's top-level members
-- Returns { 1, journal entry id or '', the new version }, { -1, backlog } when the journal is
-- full (then nothing was written), { -2 } when a precondition failed (nothing written), or
-- { 0 } ('t') when the lease no longer holds this write's token.
local vkey, lkey, jkey = KEYS[1], KEYS[2], KEYS[3]
local behind = ARGV[4] == 'b'
if ARGV[4] == 't' then
  if redis.call('GET', lkey) ~= ARGV[5] then
    -- A later write or a DELETE came while the origin had this one (or the marker lapsed):
    -- which write the origin applied last is not known here, so the id holds no value and
    -- reads go to the origin.
    redis.call('DEL', vkey, KEYS[3])
    return { 0 }
  end
  redis.call('DEL', KEYS[3])
end
if (ARGV[10] ~= '' or ARGV[11] ~= '')
  and not preconditions_hold(current_version(vkey, ARGV[1], behind and jkey or nil), ARGV[10],
    ARGV[11]) then
  return { -2 }
end
local n = tonumber(ARGV[12])
local tags = {}
for i = 1, n do tags[i] = ARGV[12 + i] end
local body = ARGV[13 + n]
if behind then
  local backlog = redis.call('XLEN', jkey)
  if backlog >= tonumber(ARGV[5]) then return { -1, backlog } end
end
local v = {
  key = vkey, tagpfx = ARGV[1], now = now_ms(), st = '200', ct = ARGV[7],
  ttl = tonumber(ARGV[2]), stale = tonumber(ARGV[3]), delta = 0, tags = tags,
}
if ARGV[8] == 'h' then
  v.fields = {}
  for i = 14 + n, #ARGV do v.fields[#v.fields + 1] = ARGV[i] end
else
  v.body = body
end
local _, ver = cache_store(v)
-- A fill that started before this write must not overwrite it: without its lease (and with
-- a value present) the fill script stores nothing.
redis.call('DEL', lkey)
local eid = ''
if behind then
  if ARGV[9] ~= '' then
    eid = redis.call('XADD', jkey, '*', 'id', ARGV[6], 'ct', ARGV[7], 'b', body, 'k', ARGV[9])
  else
    eid = redis.call('XADD', jkey, '*', 'id', ARGV[6], 'ct', ARGV[7], 'b', body)
  end
  -- The newest journaled write of this id: older entries are superseded (coalescing).
  redis.call('HSET', vkey, 'jp', eid)
end
return { 1, eid, ver }
