-- patternd cache: the one function that writes a value. Included by the origin fill script
-- (cache-read) and the PUT/PATCH scripts (cache-write), so a value looks the same whoever
-- wrote it. Needs shared/clock.lua (now_us, int_text) and meta.lua before it.
--
-- cache_store(v) with v a table:
--   v.key     the value HASH, ks.key(id, "v")                              (a KEYS entry)
--   v.tkey    the slot group's tag versions (ZSET, see common.lua)           (a KEYS entry)
--   v.stamp   (optional) µs: when the value's data was read from its source (a fill: its
--             `start`); absent: now, or just past the newest invalidation of its tags
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
--             rule's); packed into `m` (meta.lua), and the read script takes the smaller of them and
--             the rule's. Absent: the rule's apply.
--   v.prev    (optional) the version of the value this one replaces when it is not in v.key
--             (a write-through PATCH patches the copy set aside under another key)
-- Replaces the whole HASH (no field of an older value survives) and stamps it (`tv`): a tag
-- invalidated at or after the stamp makes it a miss. Records each tag that has no version as
-- referenced until this value expires (a negative score, which only ever grows), and
-- PEXPIREs the group's tag versions to at least this value's hard lifetime, never shortening
-- them: they must outlive every value of the group, or an invalidated value would come back
-- when its tag's version vanished. Referenced-only members whose values are all gone are
-- pruned here (one ZREMRANGEBYSCORE, O(log n + pruned)).
-- Gives the value a new version `ver` (its ETag): max(previous version + 1, Redis TIME in µs),
-- so it changes with every store, and a value deleted and written again never repeats an old
-- version (unless Redis' clock went back further than the time between the two writes).
-- Returns the hard lifetime in ms (the value's PEXPIRE) and the new version (text).
local function cache_store(v)
  local hard = v.ttl + v.stale
  if hard < 1 then hard = 1 end
  -- The version of the value replaced: from its packed meta (what a hit reads is enough), or
  -- the earlier layout's `ver`.
  local old = redis.call('HMGET', v.key, 'm', 'ver')
  local prev_ver = old[2]
  if old[1] then prev_ver = select(6, unpack_hit(old[1])) end
  local prev = tonumber(prev_ver or '') or tonumber(v.prev or '') or 0
  local now_u = now_us()
  local ver = int_text(math.max(prev + 1, now_u))
  local until_ms = -math.floor(v.now + hard)
  local newest = 0
  for i = 1, #v.tags do
    local cur = tonumber(redis.call('ZSCORE', v.tkey, v.tags[i]))
    if cur == nil or (cur < 0 and cur > until_ms) then
      redis.call('ZADD', v.tkey, int_text(until_ms), v.tags[i])
    elseif cur > newest then
      newest = cur
    end
  end
  if #v.tags > 0 then
    redis.call('ZREMRANGEBYSCORE', v.tkey, '(' .. int_text(-math.floor(v.now)), '(0')
    if redis.call('PTTL', v.tkey) < hard then redis.call('PEXPIRE', v.tkey, hard) end
  end
  local stamp = v.stamp or math.max(now_u, newest + 1)
  redis.call('DEL', v.key)
  -- The meta packed into one member (meta.lua); the value's own stale windows only with
  -- `ttl_from_origin`.
  local sw, se
  if v.swr then sw, se = math.floor(v.swr), math.floor(v.sie or 0) end
  local h = {
    'm', pack_meta(v.st, v.ct or '', v.now + v.ttl, math.floor(v.delta or 0),
      table.concat(v.tags, ','), int_text(stamp), ver, sw, se),
  }
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
