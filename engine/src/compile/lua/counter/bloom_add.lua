-- Adds items to a period's Bloom filter (the bitmap). KEYS: the bitmap, the count of adds that
-- set a new bit. ARGV: the period and expiry (prelude), m, k, then the items (at most
-- max_batch: work is max_batch·k SETBITs). An item that set at least one new bit was not in
-- the filter: it is added (1), and counted; one whose bits were all set was probably there
-- already (0). The count is about the distinct items (a false positive is not counted).
-- Returns {'ok', count, added per item}, or {'period', index}.
local wrong = wrong_period()
if wrong then
  return wrong
end
local m, k = tonumber(ARGV[6]), tonumber(ARGV[7])
local out = { 'ok', 0 }
local new = 0
for i = 8, #ARGV do
  local fresh = 0
  local pos = positions(ARGV[i], m, k)
  for j = 1, k do
    if redis.call('SETBIT', KEYS[1], pos[j], 1) == 0 then
      fresh = 1
    end
  end
  out[#out + 1] = fresh
  new = new + fresh
end
out[2] = redis.call('INCRBY', KEYS[2], new)
expire(KEYS[1])
expire(KEYS[2])
return out
