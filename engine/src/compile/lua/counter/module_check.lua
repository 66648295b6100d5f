-- Checks items against a period's RedisBloom filter (BF.MEXISTS answers 0 for every item of a
-- filter that does not exist). KEYS: the filter, the count of adds. ARGV: the period
-- (prelude), then the items (at most max_batch). Returns {'ok', count, present per item}, or
-- {'period', index}.
local wrong = wrong_period()
if wrong then
  return wrong
end
local out = { 'ok', redis.call('GET', KEYS[2]) or '0' }
chunks(4, function(i, j)
  local r = redis.call('BF.MEXISTS', KEYS[1], unpack(ARGV, i, j))
  for x = 1, #r do
    out[#out + 1] = r[x]
  end
end)
return out
