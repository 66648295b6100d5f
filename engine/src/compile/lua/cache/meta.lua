-- patternd cache: a value's meta, packed into one member `m` of its HASH.
-- Included by every script that reads or writes a value's meta (read, the hit batch, and the
-- scripts that store or check a value: common.lua's users and store.lua's). Needs nothing
-- before it.
--
-- Why one packed member: a hit reads the meta and the body with one HMGET of two members
-- instead of seven, and no number in it is text (no strtod). Each member of an HMGET reply
-- becomes a Lua string, which cost a hit more than the command itself (docs/performance.md,
-- fourth round). It also keeps one hash entry instead of seven per value.
--
-- Layout 1, struct '<BddI4c0I4c0I4c0I4c0I4c0dd':
--   1 (the layout), fresh (epoch ms, Redis TIME, until which the value is fresh), delta (ms
--   the origin fill took), then st, ct, tags (joined by ','), ver (text) and tv (µs, text),
--   each after its length, then sw and se (ms: the value's own stale_while_revalidate and
--   stale_if_error; -1: the rule's apply). What a fresh hit needs comes first: `unpack_hit`
--   stops after ver (each string unpacked is a Lua string made).
-- A value written before this layout has these as members of their own (`st`, `ct`, `fresh`,
-- `delta`, `tags`, `tv`, `ver`, `sw`, `se`, numbers as text) and no `m`: `meta_at` reads
-- both, and the next store of the id writes `m` (store.lua DELs the hash first).
local META = '<BddI4c0I4c0I4c0I4c0I4c0dd'
local META_HIT = '<BddI4c0I4c0I4c0I4c0'

-- The members of the earlier layout, in the order `meta_at` expects them after `m`: 'st',
-- 'ct', 'fresh', 'delta', 'tags', 'tv', 'ver', 'sw', 'se' (written out where they are read,
-- rather than kept in a table every call of every script that includes this would make).

local function pack_meta(st, ct, fresh, delta, tags, tv, ver, sw, se)
  return struct.pack(META, 1, fresh, delta, #st, st, #ct, ct, #tags, tags, #ver, ver, #tv, tv,
    sw or -1, se or -1)
end

-- st, ct, fresh, delta, tags, tv, ver, sw, se of a packed `m` (sw, se nil: the rule's), or
-- nothing when `m` is not a layout this script knows (the value is then treated as absent).
local function unpack_meta(m)
  local ok, lay, fresh, delta, st, ct, tags, ver, tv, sw, se = pcall(struct.unpack, META, m)
  if not ok or lay ~= 1 then return nil end
  if sw < 0 then sw = nil end
  if se < 0 then se = nil end
  return st, ct, fresh, delta, tags, tv, ver, sw, se
end

-- What a fresh hit needs of a packed `m`: st, ct, fresh, delta, tags, ver; nothing when `m`
-- is not a layout this script knows.
local function unpack_hit(m)
  local ok, lay, fresh, delta, st, ct, tags, ver = pcall(struct.unpack, META_HIT, m)
  if not ok or lay ~= 1 then return nil end
  return st, ct, fresh, delta, tags, ver
end

-- The meta of a value from `r`, a reply with `m` at index i and the earlier layout's members
-- (above) after it:
-- st, ct, fresh, delta, tags, tv, ver, sw, se; st nil when there is no value.
local function meta_at(r, i)
  if r[i] then return unpack_meta(r[i]) end
  if not r[i + 1] then return nil end
  return r[i + 1], r[i + 2] or '', tonumber(r[i + 3]), tonumber(r[i + 4]) or 0, r[i + 5] or '',
    r[i + 6], r[i + 7] or '', tonumber(r[i + 8]), tonumber(r[i + 9])
end

-- The same from `by`, a value's members by name other than its `f:` ones (an HGETALL's).
local function meta_of(by)
  return meta_at({ by.m, by.st, by.ct, by.fresh, by.delta, by.tags, by.tv, by.ver, by.sw, by.se },
    1)
end
