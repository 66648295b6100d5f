-- patternd cache write-through, before the origin is written: the id's value is set aside
-- and the lease becomes this write's marker (its token), in one script. From here on no read
-- serves the value this write may replace, whatever happens next: the origin refuses, times
-- out, or accepts while Redis stalls or fails the script that would store the new value.
-- Readers find no value and a lease held by someone else, so they wait as for a fill and,
-- past fill_wait, read the origin without storing; a fill already in flight (it read the
-- origin before this write) has lost its lease and stores nothing.
-- The write then ends with put.lua / patch.lua (mode 't': the origin accepted)
-- or through_abort.lua; each acts only while the lease still holds this token.
-- KEYS[1] the value HASH; KEYS[2] the refresh lease; KEYS[3] the slot group's tag versions
-- (ZSET, see common.lua); KEYS[4] the held copy (HASH)
-- ARGV[1] this write's token; ARGV[2] ms the marker lives (longer than the origin write can
-- take: max(refresh_lease, origin_timeout + 1s)); if the write's end never runs (Redis
-- failed it), the marker lapses and reads fill from the origin, which is the truth then.
-- ARGV[3] If-Match, ARGV[4] If-None-Match, as
-- `preconditions_hold` (common.lua) takes them: checked here, before the origin is
-- written, so a write whose precondition fails changes nothing anywhere. From here on the
-- lease holds this write's token, and the write's end stores only while it still does, so no
-- other write lands between this check and that store.
-- The held copy keeps the value's own expiry (RENAME keeps it), so a copy whose write
-- never ended is gone when the value would have been. No other script reads it.
-- Returns 1, or 0 when a precondition failed (nothing changed).
if (ARGV[3] ~= '' or ARGV[4] ~= '')
  and not preconditions_hold(current_version(KEYS[1], KEYS[3], nil), ARGV[3], ARGV[4]) then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[4])
else
  -- A copy left by an earlier write that never ended must not be restored or patched.
  redis.call('DEL', KEYS[4])
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
