-- Adds items to a period's RedisBloom filter. KEYS: the filter, the count of adds that were
-- new. ARGV: the period and expiry (prelude), capacity, error rate, then the items (at most
-- max_batch). BF.INSERT creates the filter on first use with the rule's capacity and error
-- rate. RedisBloom's own scaling is left on: past capacity it stacks a sub-filter twice as
-- large, so nothing added is ever answered absent and the rate stays near error_rate, while
-- memory grows with the distinct items of the period (until the period's keys expire).
-- Returns {'ok', count, added per item (1: new)}, or {'period', index}.
local wrong = wrong_period()
if wrong then
  return wrong
end
local out = { 'ok', 0 }
local new = 0
chunks(8, function(i, j)
  local r = redis.call('BF.INSERT', KEYS[1], 'CAPACITY', ARGV[6], 'ERROR', ARGV[7], 'ITEMS', unpack(ARGV, i, j))
  for x = 1, #r do
    out[#out + 1] = r[x]
    new = new + r[x]
  end
end)
out[2] = redis.call('INCRBY', KEYS[2], new)
expire(KEYS[1])
expire(KEYS[2])
return out
