-- patternd cache tag invalidation: bumps each tag's version. O(tags) per call: no index of
-- values to walk. A tag key that does not exist is referenced by no live value (the store
-- creates it, with a TTL at least as long as every value recording it), so it is left absent.
-- INCR keeps the key's TTL, which already covers every value referencing it.
-- KEYS: the tag version keys. Returns how many tags were bumped.
local bumped = 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCR', KEYS[i])
    bumped = bumped + 1
  end
end
return bumped
