-- patternd cache DELETE: drops values and their refresh leases in one atomic step. With its
-- lease gone, a fill already in flight for one of these ids may still store into the now
-- absent value (cache-aside: the origin's answer is the truth), but never over a value written
-- after the DELETE (see cache_fill.lua).
-- KEYS: pairs (value, lease) of the id and of every related id. Returns how many values existed.
local n = 0
for i = 1, #KEYS, 2 do
  n = n + redis.call('DEL', KEYS[i])
  if KEYS[i + 1] then redis.call('DEL', KEYS[i + 1]) end
end
return n
