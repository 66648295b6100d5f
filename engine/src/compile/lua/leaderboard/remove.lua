-- Removes a member. KEYS: the board. ARGV[6]: member. Returns {'ok', 1|0} or the marker.
-- Removing writes nothing new, so the board keeps the expiry its submits set.
local chk = period_check()
if chk then
  return chk
end
return { 'ok', redis.call('ZREM', KEYS[1], ARGV[6]) }
