-- Members on the board. KEYS: the board. Returns {'ok', count} or the period marker.
local chk = period_check()
if chk then
  return chk
end
return { 'ok', redis.call('ZCARD', KEYS[1]) }
