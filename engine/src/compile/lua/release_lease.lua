-- Releases a concurrency lease: removes its members (one per cost unit). Releasing a lease
-- that expired or was already released removes nothing and is not an error.
-- KEYS[1] = the rule's concurrency key for the id; ARGV[1] = lease member base; ARGV[2] = cost.
local removed = 0
for i = 1, tonumber(ARGV[2]) do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[1] .. '#' .. i)
end
return removed
