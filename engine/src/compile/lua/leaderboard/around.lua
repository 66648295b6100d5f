-- The members around one: up to k above and k below (fewer at the top and bottom edges).
-- KEYS: the board. ARGV[6..]: member, k (bounded by the engine). Returns {'ok', count,
-- member, score, rank, ...}, {'none'} or the period marker.
local chk = period_check()
if chk then
  return chk
end
local pos = place(KEYS[1], ARGV[6])
if not pos then
  return { 'none' }
end
local k = tonumber(ARGV[7])
local out = { 'ok', redis.call('ZCARD', KEYS[1]) }
return entries(KEYS[1], math.max(0, pos - k), pos + k, FIRST, out)
