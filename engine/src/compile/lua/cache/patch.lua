-- patternd cache PATCH (format: hash): updates the given top-level members of a stored
-- object (a JSON null deletes the member, as in JSON Merge Patch, RFC 7396, at the top level),
-- re-stores it through cache_store (fresh again, same tags), and for `write: behind` journals
-- the WHOLE resulting object in the same script, so every journal entry is a full state and
-- the newest one per id supersedes all older ones.
-- KEYS[1] the value HASH; KEYS[2] the refresh lease; KEYS[3] the slot group's tag versions
-- (ZSET, see common.lua); KEYS[4] the group's journal STREAM (behind), or the held copy
-- (through: the value as it was when the write began, which is what gets patched; see
-- through_begin.lua)
-- ARGV[1] ttl ms; ARGV[2] stale ms; ARGV[3] 'c' (cache), 't' (through, after the origin
-- accepted) or 'b' (behind); ARGV[4] the group journal's bound, ceil(journal_max_len /
-- slot_groups) ('b'), or the write's token ('t'); ARGV[5] the id; ARGV[6] ms the write
-- marker 'W' is held (through, see below)
-- ARGV[7] the value's id when a plugin chose a key other than the client's id ('' otherwise;
-- journaled as `k`)
-- ARGV[8] If-Match, ARGV[9] If-None-Match, as `preconditions_hold` (common.lua) takes
-- them, compared with the live value's version ('t' checked them in through_begin.lua)
-- ARGV[10 ..] name, json pairs; an empty json deletes the member
-- Returns { 1, journal entry id or '', the object's JSON text, the new version }, { 0 } when
-- there is no live value to patch (absent, a negative entry, or invalidated by a tag),
-- { -1, backlog } when the journal is full, or { -2 } when a precondition failed (then
-- nothing was written).
local vkey, lkey, tkey, jkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode = ARGV[3]
-- Where the object to patch is: the value, or for 't' the copy set aside by the write's begin.
local src = vkey
if mode == 't' then
  src, jkey = KEYS[4], nil
  if redis.call('GET', lkey) ~= ARGV[4] then
    -- A later write or a DELETE came while the origin had this one (or the marker lapsed):
    -- which write the origin applied last is not known here, so the id holds no value and
    -- reads go to the origin.
    redis.call('DEL', vkey, src)
    return { 0 }
  end
end

local function live_fields()
  local all = redis.call('HGETALL', src)
  local by, fields, order = {}, {}, {}
  for i = 1, #all, 2 do
    local name = all[i]
    if string.sub(name, 1, 2) == 'f:' then
      name = string.sub(name, 3)
      fields[name] = all[i + 1]
      order[#order + 1] = name
    else
      by[name] = all[i + 1]
    end
  end
  local st, _, _, _, tags_text, tv, ver = meta_of(by)
  if st ~= '200' then return nil end
  -- A value whose newest write is still journaled is live whatever its tags say (as in the
  -- read script): a tag invalidation takes effect once that write reached the origin.
  local pending = by.jp and jkey and #redis.call('XRANGE', jkey, by.jp, by.jp) > 0
  if not pending and not tags_current(tkey, tags_text, tv) then return nil end
  return fields, order, split_commas(tags_text), ver
end

local fields, order, tags, ver = live_fields()
if not fields then
  -- Through: the origin accepted the PATCH, so a negative or invalidated entry is now wrong.
  -- A fill already in flight read the origin before the PATCH: the lease becomes the write
  -- marker 'W' (not a DEL: with no lease and no value, that fill would store its pre-patch
  -- answer), held as long as such a fill can take; readers take it over as a free lease.
  if mode == 't' then
    redis.call('DEL', vkey, src)
    redis.call('SET', lkey, 'W', 'PX', tonumber(ARGV[6]))
  end
  return { 0 }
end
if not preconditions_hold(ver, ARGV[8], ARGV[9]) then return { -2 } end
if mode == 'b' then
  local backlog = redis.call('XLEN', jkey)
  if backlog >= tonumber(ARGV[4]) then return { -1, backlog } end
end
for i = 10, #ARGV, 2 do
  local name, json = ARGV[i], ARGV[i + 1]
  if fields[name] == nil and json ~= '' then order[#order + 1] = name end
  if json == '' then fields[name] = nil else fields[name] = json end
end
local flat, parts = {}, {}
for _, name in ipairs(order) do
  local json = fields[name]
  if json ~= nil then
    flat[#flat + 1] = name
    flat[#flat + 1] = json
    parts[#parts + 1] = cjson.encode(name) .. ':' .. json
  end
end
local object = '{' .. table.concat(parts, ',') .. '}'
local _, new_ver = cache_store({
  key = vkey, tkey = tkey, now = now_ms(), st = '200', ct = 'application/json',
  ttl = tonumber(ARGV[1]), stale = tonumber(ARGV[2]), delta = 0, tags = tags, fields = flat,
  prev = ver,
})
if src ~= vkey then redis.call('DEL', src) end
redis.call('DEL', lkey)
local eid = ''
if mode == 'b' then
  if ARGV[7] ~= '' then
    eid = redis.call('XADD', jkey, '*', 'id', ARGV[5], 'ct', 'application/json', 'b', object,
      'k', ARGV[7])
  else
    eid = redis.call('XADD', jkey, '*', 'id', ARGV[5], 'ct', 'application/json', 'b', object)
  end
  redis.call('HSET', vkey, 'jp', eid)
end
return { 1, eid, object, new_ver }
