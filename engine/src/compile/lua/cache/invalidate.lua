-- patternd cache tag invalidation: moves each tag's version forward. O(tags) per call: no
-- index of values to walk.
-- A version is set to max(version + 1, Redis TIME in µs), so it is at least the moment of the
-- invalidation: a fill in flight compares the versions of its value's tags with the moment it
-- asked the origin (fill.lua), and stores nothing if one was invalidated since.
-- A tag key that exists keeps its TTL (it already covers every value referencing it). A tag
-- key that does not exist is referenced by no stored value, but a fill in flight may be about
-- to store one: it is created with the version and a TTL of ARGV[1] ms, longer than any fill
-- may take, and is not counted as bumped.
-- KEYS: the tag version keys. ARGV[1] ms a created key lives.
-- Returns how many existing tags were bumped.
local now = now_us()
local bumped = 0
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur then
    local v = math.max((tonumber(cur) or 0) + 1, now)
    redis.call('SET', KEYS[i], int_text(v), 'KEEPTTL')
    bumped = bumped + 1
  else
    redis.call('SET', KEYS[i], int_text(now), 'PX', tonumber(ARGV[1]))
  end
end
return bumped
