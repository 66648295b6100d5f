-- patternd: which period an instant is in (policy/period.rs, `Period::index_at`).
-- Included by the scripts of rules that keep one structure per period (leaderboards,
-- counters), after shared/clock.lua. The engine names the keys of the period its own clock
-- guesses and passes that index; the script computes the index from Redis TIME with this
-- function and refuses a wrong guess, so every engine replica agrees on the boundaries.
-- kind: 0 none, 1 UTC day, 2 ISO week, 3 UTC month, 4 fixed length `len_ms` from the epoch.
-- `t_ms` may carry µs; it is floored first, so every division below is of integers below
-- 2^53 and floors exactly.
local function period_index(kind, len_ms, t_ms)
  if kind == 0 then
    return 0
  end
  local ms = math.floor(t_ms)
  if kind == 4 then
    return math.floor(ms / len_ms)
  end
  local day = math.floor(ms / 86400000)
  if kind == 1 then
    return day
  end
  if kind == 2 then
    -- 1970-01-01 was a Thursday; ISO weeks start on Monday.
    return math.floor((day + 3) / 7)
  end
  -- kind 3: the month of `day` (Howard Hinnant's civil_from_days), as year * 12 + month - 1.
  local z = day + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local y = yoe + era * 400
  local m
  if mp < 10 then
    m = mp + 3
  else
    m = mp - 9
  end
  if m <= 2 then
    y = y + 1
  end
  return y * 12 + m - 1
end
