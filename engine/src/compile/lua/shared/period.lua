-- patternd: the period of an instant (STUB against the lead's interface; main's replaces it).
-- kind: 0 none, 1 day, 2 week, 3 month, 4 every len_ms. Same index as Period::index_at.
local function period_index(kind, len_ms, t_ms)
  local days = math.floor(t_ms / 86400000)
  if kind == 0 then
    return 0
  elseif kind == 1 then
    return days
  elseif kind == 2 then
    return math.floor((days + 3) / 7)
  elseif kind == 3 then
    local z = days + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local m = mp < 10 and mp + 3 or mp - 9
    if m <= 2 then y = y + 1 end
    return y * 12 + m - 1
  end
  return math.floor(t_ms / len_ms)
end
