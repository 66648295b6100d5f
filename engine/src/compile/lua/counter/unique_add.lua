-- Adds items to a period's HyperLogLog. KEYS: the HLL. ARGV: the period and expiry (prelude),
-- then the items (at most the rule's max_batch). Returns {'ok', 1 when an estimate register
-- changed, else 0}, or the prelude's {'period', index}.
local wrong = wrong_period()
if wrong then
  return wrong
end
local changed = 0
chunks(6, function(i, j)
  if redis.call('PFADD', KEYS[1], unpack(ARGV, i, j)) == 1 then
    changed = 1
  end
end)
expire(KEYS[1])
return { 'ok', changed }
