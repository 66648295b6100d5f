-- Counts the distinct items of one or more periods' HyperLogLogs (PFCOUNT of several keys
-- is the count of their union, merged on the fly). KEYS: the HLLs (at most keep + 1), then,
-- when ARGV[4] > 0, the range's cache key. ARGV: the period (prelude), the cache's ms.
-- Returns {'ok', count, 1 when it came from the cache}, or {'period', index}.
local wrong = wrong_period()
if wrong then
  return wrong
end
local cache_ms = tonumber(ARGV[4])
local n = #KEYS
if cache_ms > 0 then
  n = n - 1
  local hit = redis.call('GET', KEYS[#KEYS])
  if hit then
    return { 'ok', hit, 1 }
  end
end
local count = redis.call('PFCOUNT', unpack(KEYS, 1, n))
if cache_ms > 0 then
  redis.call('SET', KEYS[#KEYS], count, 'PX', cache_ms)
end
return { 'ok', count, 0 }
