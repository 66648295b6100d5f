-- patternd cache: the one function that writes a value. Included by the origin fill script
-- (cache-read) and the PUT/PATCH scripts (cache-write), so a value looks the same whoever
-- wrote it. Needs shared/clock.lua (now_us, fmt, int_text) before it.
--
-- cache_store(v) with v a table:
--   v.key     the value HASH, ks.key(id, "v")                              (a KEYS entry)
--   v.tagpfx  ks.rule_key("tag:"); tag T's version key is v.tagpfx .. T    (ARGV: the tags are
--             only known per request; the prefix comes from KeySpace, so the keys do too)
--   v.now     now_ms() of the calling script (one clock)
--   v.st      '200', or '404' for a negative entry
--   v.ct      content type ('' for a negative entry)
--   v.body    the body (format: string), or nil
--   v.fields  format: hash: a flat array { name1, json1, name2, json2, ... } of top-level
--             members (names without the 'f:' prefix), or nil
--   v.ttl     ms the value is fresh: fresh = now + ttl
--   v.stale   ms the value is kept after `fresh` (max(stale_while_revalidate, stale_if_error));
--             0 for a negative entry
--   v.delta   ms the origin fill took (XFetch's recompute time); 0 for PUT/PATCH
--   v.tags    array of tags (validated by the engine: 1-128 bytes, no ',' and no whitespace)
--   v.swr, v.sie  (optional) this value's own stale_while_revalidate / stale_if_error in ms
--             (`ttl_from_origin`: from the origin's Cache-Control, already bounded by the
--             rule's); stored as `sw`/`se`, and the read script takes the smaller of them and
--             the rule's. Absent: the rule's apply.
--   v.prev    (optional) the version of the value this one replaces when it is not in v.key
--             (a write-through PATCH patches the copy set aside under another key)
-- Replaces the whole HASH (no field of an older value survives), records the current version
-- of every tag (creating a version key at 0 when absent, so a later bump is seen), and
-- PEXPIREs every tag key to at least this value's hard lifetime, never shortening it: a tag
-- key must outlive every value that references it, or an invalidated value would come back
-- when its version key expired and read as 0 again.
-- Gives the value a new version `ver` (its ETag): max(previous version + 1, Redis TIME in µs),
-- so it changes with every store, and a value deleted and written again never repeats an old
-- version (unless Redis' clock went back further than the time between the two writes).
-- Returns the hard lifetime in ms (the value's PEXPIRE) and the new version (text).
local function cache_store(v)
  local hard = v.ttl + v.stale
  if hard < 1 then hard = 1 end
  local prev = tonumber(redis.call('HGET', v.key, 'ver') or '') or tonumber(v.prev or '') or 0
  local ver = int_text(math.max(prev + 1, now_us()))
  local versions = {}
  for i = 1, #v.tags do
    local tk = v.tagpfx .. v.tags[i]
    local cur = redis.call('GET', tk)
    if not cur then
      cur = '0'
      redis.call('SET', tk, cur, 'PX', hard)
    elseif redis.call('PTTL', tk) < hard then
      redis.call('PEXPIRE', tk, hard)
    end
    versions[i] = cur
  end
  redis.call('DEL', v.key)
  local h = {
    'st', v.st,
    'ct', v.ct or '',
    'fresh', fmt(v.now + v.ttl),
    'delta', tostring(math.floor(v.delta or 0)),
    'tags', table.concat(v.tags, ','),
    'tv', table.concat(versions, ','),
    'ver', ver,
  }
  if v.swr then
    h[#h + 1] = 'sw'
    h[#h + 1] = tostring(math.floor(v.swr))
    h[#h + 1] = 'se'
    h[#h + 1] = tostring(math.floor(v.sie or 0))
  end
  if v.body then
    h[#h + 1] = 'b'
    h[#h + 1] = v.body
  end
  if v.fields then
    for i = 1, #v.fields, 2 do
      h[#h + 1] = 'f:' .. v.fields[i]
      h[#h + 1] = v.fields[i + 1]
    end
  end
  -- In chunks: unpack of a long table would overflow Lua's C stack.
  for i = 1, #h, 400 do
    redis.call('HSET', v.key, unpack(h, i, math.min(i + 399, #h)))
  end
  redis.call('PEXPIRE', v.key, hard)
  return hard, ver
end
