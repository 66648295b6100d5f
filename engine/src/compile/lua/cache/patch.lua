-- patternd cache PATCH (format: hash): updates the given top-level members of a stored
-- object (a JSON null deletes the member, as in JSON Merge Patch, RFC 7396, at the top level),
-- re-stores it through cache_store (fresh again, same tags), and for `write: behind` journals
-- the WHOLE resulting object in the same script, so every journal entry is a full state and
-- the newest one per id supersedes all older ones.
-- KEYS[1] the value HASH; KEYS[2] the refresh lease; KEYS[3] the journal STREAM (behind),
-- or the held copy (through: the value as it was when the write began, which is what gets
-- patched; see through_begin.lua)
-- ARGV[1] tag version key prefix; ARGV[2] ttl ms; ARGV[3] stale ms; ARGV[4] 'c' (cache),
-- 't' (through, after the origin accepted) or 'b' (behind); ARGV[5] journal_max_len ('b'),
-- or the write's token ('t'); ARGV[6] the id; ARGV[7] ms the write marker 'W' is held
-- (through, see below)
-- ARGV[8] the value's id when a plugin chose a key other than the client's id ('' otherwise;
-- journaled as `k`)
-- ARGV[9] If-Match, ARGV[10] If-None-Match, as `preconditions_hold` (common.lua) takes
-- them, compared with the live value's version ('t' checked them in through_begin.lua)
-- ARGV[11 ..] name, json pairs; an empty json deletes the member
-- Returns { 1, journal entry id or '', the object's JSON text, the new version }, { 0 } when
-- there is no live value to patch (absent, a negative entry, or invalidated by a tag),
-- { -1, backlog } when the journal is full, or { -2 } when a precondition failed (then
-- nothing was written).
local vkey, lkey, jkey = KEYS[1], KEYS[2], KEYS[3]
local mode = ARGV[4]
local tagpfx = ARGV[1]
-- Where the object to patch is: the value, or for 't' the copy set aside by the write's begin.
local src = vkey
if mode == 't' then
  src, jkey = KEYS[3], nil
  if redis.call('GET', lkey) ~= ARGV[5] then
    -- A later write or a DELETE came while the origin had this one (or the marker lapsed):
    -- which write the origin applied last is not known here, so the id holds no value and
    -- reads go to the origin.
    redis.call('DEL', vkey, src)
    return { 0 }
  end
end

local function live_fields()
  local st = redis.call('HGET', src, 'st')
  if st ~= '200' then return nil end
  local meta = redis.call('HMGET', src, 'tags', 'tv', 'jp')
  local tags, tv = split_commas(meta[1]), split_commas(meta[2])
  -- A value whose newest write is still journaled is live whatever its tags say (as in the
  -- read script): a tag invalidation takes effect once that write reached the origin.
  local pending = meta[3] and jkey and #redis.call('XRANGE', jkey, meta[3], meta[3]) > 0
  for i = 1, #tags do
    local cur = redis.call('GET', tagpfx .. tags[i]) or '0'
    if cur ~= tv[i] and not pending then return nil end
  end
  local all = redis.call('HGETALL', src)
  local fields, order, ver = {}, {}, ''
  for i = 1, #all, 2 do
    local name = all[i]
    if string.sub(name, 1, 2) == 'f:' then
      name = string.sub(name, 3)
      fields[name] = all[i + 1]
      order[#order + 1] = name
    elseif name == 'ver' then
      ver = all[i + 1]
    end
  end
  return fields, order, tags, ver
end

local fields, order, tags, ver = live_fields()
if not fields then
  -- Through: the origin accepted the PATCH, so a negative or invalidated entry is now wrong.
  -- A fill already in flight read the origin before the PATCH: the lease becomes the write
  -- marker 'W' (not a DEL: with no lease and no value, that fill would store its pre-patch
  -- answer), held as long as such a fill can take; readers take it over as a free lease.
  if mode == 't' then
    redis.call('DEL', vkey, src)
    redis.call('SET', lkey, 'W', 'PX', tonumber(ARGV[7]))
  end
  return { 0 }
end
if not preconditions_hold(ver, ARGV[9], ARGV[10]) then return { -2 } end
if mode == 'b' then
  local backlog = redis.call('XLEN', jkey)
  if backlog >= tonumber(ARGV[5]) then return { -1, backlog } end
end
for i = 11, #ARGV, 2 do
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
  key = vkey, tagpfx = tagpfx, now = now_ms(), st = '200', ct = 'application/json',
  ttl = tonumber(ARGV[2]), stale = tonumber(ARGV[3]), delta = 0, tags = tags, fields = flat,
  prev = ver,
})
if src ~= vkey then redis.call('DEL', src) end
redis.call('DEL', lkey)
local eid = ''
if mode == 'b' then
  if ARGV[8] ~= '' then
    eid = redis.call('XADD', jkey, '*', 'id', ARGV[6], 'ct', 'application/json', 'b', object,
      'k', ARGV[8])
  else
    eid = redis.call('XADD', jkey, '*', 'id', ARGV[6], 'ct', 'application/json', 'b', object)
  end
  redis.call('HSET', vkey, 'jp', eid)
end
return { 1, eid, object, new_ver }
