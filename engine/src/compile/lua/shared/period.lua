-- STUB (branch `counter`): the lead's shared/period.lua interface; replaced by main's on merge.
local function period_index(kind, len_ms, t_ms)
  local day = math.floor(t_ms / 86400000)
  if kind == 0 then
    return 0
  elseif kind == 1 then
    return day
  elseif kind == 2 then
    return math.floor((day + 3) / 7)
  elseif kind == 3 then
    local z = day + 719468
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
