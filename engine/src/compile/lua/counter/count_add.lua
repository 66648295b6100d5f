-- Adds to a period's counter. KEYS: the counter. ARGV: the period and expiry (prelude), then
-- the amount. Returns {'ok', the new value as text} (text: a Lua number would round past
-- 2^53), or {'period', index}.
local wrong = wrong_period()
if wrong then
  return wrong
end
redis.call('INCRBY', KEYS[1], ARGV[6])
expire(KEYS[1])
return { 'ok', redis.call('GET', KEYS[1]) }
