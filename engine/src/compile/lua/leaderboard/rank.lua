-- A member's score and rank. KEYS: the board. ARGV[6]: member.
-- Returns {'ok', score, rank}, {'none'} or the period marker.
local chk = period_check()
if chk then
  return chk
end
local pos = place(KEYS[1], ARGV[6])
if not pos then
  return { 'none' }
end
local enc = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[6]))
return { 'ok', num(decode(enc, FIRST)), rank_at(KEYS[1], pos, enc, FIRST) }
