-- Reads periods' counters. KEYS: the counters (at most keep + 1). ARGV: the period
-- (prelude). Returns {'ok', value or '0' per key, as text}, or {'period', index}.
local wrong = wrong_period()
if wrong then
  return wrong
end
local values = redis.call('MGET', unpack(KEYS))
local out = { 'ok' }
for i = 1, #KEYS do
  out[i + 1] = values[i] or '0'
end
return out
