-- patternd cache: the value's tags and version, and a write's preconditions (RFC 9110).
-- Included by the scripts that check a precondition or a tag: fill, put, patch,
-- through-begin. Needs meta.lua before it. The read script checks tags itself, the same way as
-- `tags_current` (a hit must not pay for these closures, made on every call): change both.

-- Splits 'a,b,c' into { 'a', 'b', 'c' }; '' gives {}.
local function split_commas(s)
  local out = {}
  if s == nil or s == '' then return out end
  for part in string.gmatch(s, '([^,]+)') do out[#out + 1] = part end
  return out
end

-- Whether any of `tags` (an array) was invalidated at or after `stamp` (µs). `tkey` is the
-- slot group's tag versions: a ZSET of tag → Redis TIME in µs of its last invalidation (a
-- negative score: referenced by a value until -score ms, never invalidated since it was
-- recorded; absent: neither). One ZSCORE per tag of the value, never per tag of the rule.
local function invalidated_since(tkey, tags, stamp)
  for i = 1, #tags do
    local v = tonumber(redis.call('ZSCORE', tkey, tags[i]))
    if v and v >= stamp then return true end
  end
  return false
end

-- Whether a value with tags `tags_text` (joined by ',') and stamp `tv` (µs: when its data was
-- read from where it came from) is still valid: none of its tags invalidated since.
local function tags_current(tkey, tags_text, tv)
  if not tags_text or tags_text == '' then return true end
  local stamp = tonumber(tv)
  if not stamp then return false end
  return not invalidated_since(tkey, split_commas(tags_text), stamp)
end

-- The version (`ver`) of the value a client's precondition is compared with: a live 200 (its
-- tags current, or its newest write still in the write-behind journal `jkey`), '' for a live
-- value written before versions existed, nil when there is no live value.
local function current_version(vkey, tkey, jkey)
  local r = redis.call('HMGET', vkey, 'jp', 'm', 'st', 'ct', 'fresh', 'delta', 'tags', 'tv', 'ver',
    'sw', 'se')
  local st, _, _, _, tags, tv, ver = meta_at(r, 2)
  if st ~= '200' then return nil end
  local jp = r[1]
  local pending = jp and jkey and #redis.call('XRANGE', jkey, jp, jp) > 0
  if not pending and not tags_current(tkey, tags, tv) then return nil end
  return ver
end

-- RFC 9110 §13.1.1 (If-Match, strong comparison) and §13.1.2 (If-None-Match, weak
-- comparison), evaluated against `ver` (nil: no current representation). `im` and `inm` are
-- '' (no such header), '*', or ',v1,v2,': the versions of the entity-tags the engine parsed
-- from the header (for If-Match only strong ones; tags of another form can match nothing).
-- One plain find over a string the engine bounded, not a loop over the client's list.
local function preconditions_hold(ver, im, inm)
  if im ~= '' then
    if ver == nil then return false end
    if im ~= '*' and (ver == '' or not string.find(im, ',' .. ver .. ',', 1, true)) then
      return false
    end
  end
  if inm ~= '' then
    if inm == '*' then
      if ver ~= nil then return false end
    elseif ver and ver ~= '' and string.find(inm, ',' .. ver .. ',', 1, true) then
      return false
    end
  end
  return true
end
