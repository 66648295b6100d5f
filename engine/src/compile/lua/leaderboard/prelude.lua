-- patternd leaderboards: the rule's settings, the tie encoding, ranks and pages.
-- Included by every leaderboard script, after shared/clock.lua and shared/period.lua.
-- ARGV[1..5] of every script: period kind, period length ms, ties (0 for `shared`; for
-- `first` the tiebreak's range 2^t), order (1 desc, 0 asc), and the current period index the
-- engine computed ('' when the call reads a named period and needs no clock check). The
-- script's own ARGV start at 6.
-- A board is a ZSET member → score. With ties `first` the score is encoded in one double:
-- score · 2^t + tiebreak, the tiebreak being the time the member reached its score (in the
-- rule's time unit from the period's start), inverted for `desc` so earlier ranks higher.
-- Score < 2^(53-t), tiebreak < 2^t (t = 21 by default): every encoded value is an integer
-- below 2^53, exact (compile/leaderboard.rs).
local KIND, LEN = tonumber(ARGV[1]), tonumber(ARGV[2])
local TIE, DESC = tonumber(ARGV[3]), ARGV[4] == '1'
local FIRST = TIE > 0

-- Nil when the engine's period is Redis', else the marker that makes it call again.
local function period_check()
  if ARGV[5] == '' then
    return nil
  end
  local actual = period_index(KIND, LEN, now_ms())
  if actual ~= tonumber(ARGV[5]) then
    return { 'period', int_text(actual) }
  end
  return nil
end

-- A score exactly as Redis and the engine read it back (%.17g round-trips a double).
local function num(x)
  if x == math.floor(x) and math.abs(x) < 2 ^ 53 then
    return string.format('%.0f', x)
  end
  return string.format('%.17g', x)
end

local function decode(enc, first)
  if first then
    return math.floor(enc / TIE)
  end
  return enc
end

-- True when a is a better score than b in the rule's order.
local function better(a, b)
  if DESC then
    return a > b
  end
  return a < b
end

-- 0-based place of a member, best first, or nil.
local function place(key, member)
  if DESC then
    return redis.call('ZREVRANK', key, member)
  end
  return redis.call('ZRANK', key, member)
end

local function range(key, start, stop)
  if DESC then
    return redis.call('ZREVRANGE', key, start, stop, 'WITHSCORES')
  end
  return redis.call('ZRANGE', key, start, stop, 'WITHSCORES')
end

-- Members with a strictly better stored score than enc: competition rank - 1.
local function better_count(key, enc)
  if DESC then
    return redis.call('ZCOUNT', key, '(' .. num(enc), '+inf')
  end
  return redis.call('ZCOUNT', key, '-inf', '(' .. num(enc))
end

-- The rank of a member at place pos with stored score enc: with `first` every place is its
-- own rank; with `shared` it is 1 + the members strictly better (1-2-2-4).
local function rank_at(key, pos, enc, first)
  if first then
    return pos + 1
  end
  return better_count(key, enc) + 1
end

-- Places start..stop as a flat list member, score, rank. With `shared` only the first
-- entry may need a ZCOUNT: after it, an entry with the previous score shares its rank, and
-- any other has exactly its place's count of better members before it.
local function entries(key, start, stop, first, out)
  local r = range(key, start, stop)
  local prev, prev_rank
  for i = 1, #r, 2 do
    local enc = tonumber(r[i + 1])
    local pos = start + (i - 1) / 2
    local rank
    if first then
      rank = pos + 1
    elseif prev ~= nil and enc == prev then
      rank = prev_rank
    elseif prev == nil and pos > 0 then
      rank = better_count(key, enc) + 1
    else
      rank = pos + 1
    end
    prev, prev_rank = enc, rank
    out[#out + 1] = r[i]
    out[#out + 1] = num(decode(enc, first))
    out[#out + 1] = rank
  end
  return out
end
