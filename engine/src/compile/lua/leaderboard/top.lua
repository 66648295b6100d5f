-- A page of the board, best first. KEYS: the board. ARGV[6..]: offset, limit (the engine
-- bounds it by max_page). Returns {'ok', count, member, score, rank, ...} or the marker.
local chk = period_check()
if chk then
  return chk
end
local offset, limit = tonumber(ARGV[6]), tonumber(ARGV[7])
local out = { 'ok', redis.call('ZCARD', KEYS[1]) }
if limit > 0 then
  entries(KEYS[1], offset, offset + limit - 1, FIRST, out)
end
return out
