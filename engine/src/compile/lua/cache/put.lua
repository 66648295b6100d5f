-- patternd cache PUT: stores a value written by a client, and for `write: behind` appends the
-- journal entry in the SAME script: the value and the journal entry exist together or not at
-- all, so a 202 means the write is durable in Redis and will reach the origin.
-- KEYS[1] the value HASH; KEYS[2] the refresh lease; KEYS[3] the slot group's tag versions
-- (ZSET, see common.lua); KEYS[4] the group's journal STREAM (behind), or the held copy
-- (through: see through_begin.lua)
-- ARGV[1] ttl ms; ARGV[2] stale ms; ARGV[3] 'c' (store only: write: cache), 't' (through,
-- after the origin accepted) or 'b' (behind: store + journal)
-- ARGV[4] the group journal's bound, ceil(journal_max_len / slot_groups) ('b'), or the
-- write's token ('t'); ARGV[5] the id; ARGV[6] content type; ARGV[7] 's' (format: string)
-- or 'h' (format: hash); ARGV[8] the value's id when a plugin chose a key other than the
-- client's id ('' otherwise; journaled as `k`, the origin still gets ARGV[5]'s URL)
-- ARGV[9] If-Match, ARGV[10] If-None-Match, as `preconditions_hold` (common.lua) takes
-- them ('' and '': none; 't' checked them in through_begin.lua, before the origin)
-- ARGV[11] n = number of tags; ARGV[12 .. 11+n] the tags
-- ARGV[12+n] the body as sent (stored as `b` for 's'; journaled for 'b'; '' otherwise)
-- ARGV[13+n ..] 'h' only: name, json pairs of the object's top-level members
-- Returns { 1, journal entry id or '', the new version }, { -1, backlog } when the journal is
-- full (then nothing was written), { -2 } when a precondition failed (nothing written), or
-- { 0 } ('t') when the lease no longer holds this write's token.
local vkey, lkey, tkey, jkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local behind = ARGV[3] == 'b'
if ARGV[3] == 't' then
  if redis.call('GET', lkey) ~= ARGV[4] then
    -- A later write or a DELETE came while the origin had this one (or the marker lapsed):
    -- which write the origin applied last is not known here, so the id holds no value and
    -- reads go to the origin.
    redis.call('DEL', vkey, KEYS[4])
    return { 0 }
  end
  redis.call('DEL', KEYS[4])
end
if (ARGV[9] ~= '' or ARGV[10] ~= '')
  and not preconditions_hold(current_version(vkey, tkey, behind and jkey or nil), ARGV[9],
    ARGV[10]) then
  return { -2 }
end
local n = tonumber(ARGV[11])
local tags = {}
for i = 1, n do tags[i] = ARGV[11 + i] end
local body = ARGV[12 + n]
if behind then
  local backlog = redis.call('XLEN', jkey)
  if backlog >= tonumber(ARGV[4]) then return { -1, backlog } end
end
local v = {
  key = vkey, tkey = tkey, now = now_ms(), st = '200', ct = ARGV[6],
  ttl = tonumber(ARGV[1]), stale = tonumber(ARGV[2]), delta = 0, tags = tags,
}
if ARGV[7] == 'h' then
  v.fields = {}
  for i = 13 + n, #ARGV do v.fields[#v.fields + 1] = ARGV[i] end
else
  v.body = body
end
local _, ver = cache_store(v)
-- A fill that started before this write must not overwrite it: without its lease (and with
-- a value present) the fill script stores nothing.
redis.call('DEL', lkey)
local eid = ''
if behind then
  if ARGV[8] ~= '' then
    eid = redis.call('XADD', jkey, '*', 'id', ARGV[5], 'ct', ARGV[6], 'b', body, 'k', ARGV[8])
  else
    eid = redis.call('XADD', jkey, '*', 'id', ARGV[5], 'ct', ARGV[6], 'b', body)
  end
  -- The newest journaled write of this id: older entries are superseded (coalescing).
  redis.call('HSET', vkey, 'jp', eid)
end
return { 1, eid, ver }
