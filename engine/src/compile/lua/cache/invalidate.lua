-- patternd cache tag invalidation, in one slot group: moves each tag's version forward.
-- O(tags) per call: no index of values to walk. The engine calls it once per slot group of the
-- rule (each group's values are checked against their own group's versions), so an
-- invalidation is atomic within a group, not across groups.
-- A version is set to max(version + 1, Redis TIME in µs), so it is at least the moment of the
-- invalidation: a value stamped before it is a miss from now on (read.lua), and a fill in
-- flight that asked the origin before it stores nothing (fill.lua).
-- KEYS[1] the group's tag versions (ZSET tag → µs of its last invalidation; a negative score:
-- referenced by a value until -score ms, never invalidated; see common.lua).
-- ARGV[1] ms the key lives at least from now (longer than any fill may take, so a fill in
-- flight sees the new version); ARGV[2] ms after which an invalidation is forgotten (longer
-- than any value stamped before it can live, so no such value can come back)
-- ARGV[3 ..] the tags
-- Returns, per tag, 1 if the group knew it (a value recorded it, or it was invalidated
-- before), else 0.
local key = KEYS[1]
local now = now_us()
local known = {}
for i = 3, #ARGV do
  local cur = tonumber(redis.call('ZSCORE', key, ARGV[i]))
  local v = now
  if cur and cur > 0 then v = math.max(cur + 1, now) end
  redis.call('ZADD', key, int_text(v), ARGV[i])
  known[#known + 1] = cur and 1 or 0
end
-- Invalidations every value they concern has outlived: memory stays bounded by the tags
-- invalidated within ARGV[2].
redis.call('ZREMRANGEBYSCORE', key, '(0', '(' .. int_text(now - tonumber(ARGV[2]) * 1000))
if redis.call('PTTL', key) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', key, tonumber(ARGV[1]))
end
return known
