-- Submits a score. KEYS: the period's board. ARGV[6..]: member, score, update (best |
-- latest | sum), max_size, max_score, expire-at ms ('' for a board without period), the
-- period's start ms, the tiebreak's time unit ms. Returns {'ok', score, rank ('' when
-- trimmed away), improved 1|0}, {'too_large', score}, {'negative', score} or the period
-- marker. Every write sets the board's expiry (its period's end + keep periods).
local chk = period_check()
if chk then
  return chk
end
local board, member = KEYS[1], ARGV[6]
local s, mode = tonumber(ARGV[7]), ARGV[8]
local max_size, max_score = tonumber(ARGV[9]), tonumber(ARGV[10])
local stored = redis.call('ZSCORE', board, member)
local old
if stored then
  old = decode(tonumber(stored), FIRST)
end
local new = s
if mode == 'sum' then
  new = (old or 0) + s
elseif mode == 'best' and old ~= nil and not better(s, old) then
  new = old
end
if math.abs(new) > max_score then
  return { 'too_large', num(new) }
end
if FIRST and new < 0 then
  return { 'negative', num(new) }
end
local improved = old == nil or better(new, old)
if old == nil or new ~= old then
  local enc = new
  if FIRST then
    local t = math.floor((now_ms() - tonumber(ARGV[12])) / tonumber(ARGV[13]))
    t = math.max(0, math.min(TIE - 1, t))
    if DESC then
      t = TIE - 1 - t
    end
    enc = new * TIE + t
  end
  redis.call('ZADD', board, num(enc), member)
end
-- Each submit adds at most one member, so this drops at most one (more only after
-- max_size was lowered by a reload): the worst.
local n = redis.call('ZCARD', board)
if n > max_size then
  if DESC then
    redis.call('ZREMRANGEBYRANK', board, 0, n - max_size - 1)
  else
    redis.call('ZREMRANGEBYRANK', board, max_size, -1)
  end
end
if ARGV[11] ~= '' then
  redis.call('PEXPIREAT', board, ARGV[11])
end
local pos = place(board, member)
local rank = ''
if pos then
  rank = rank_at(board, pos, tonumber(redis.call('ZSCORE', board, member)), FIRST)
end
return { 'ok', num(new), rank, improved and 1 or 0 }
