-- gcra: generic cell rate algorithm. One STRING key holding the theoretical arrival time
-- (TAT). Emission interval T = window / limit; a fresh id may send `burst` at once.
local function gcra_commit(key, tat, ttl)
  redis.call('SET', key, tat, 'PX', ttl)
end

local function gcra(key, limit, window, burst, cost, now)
  local T = window / limit
  local eps = T * 1e-9
  local tat = tonumber(redis.call('GET', key) or '') or now
  if tat < now then tat = now end
  local new_tat = tat + cost * T
  local allow_at = new_tat - burst * T
  if now + eps >= allow_at then
    local remaining = math.floor((now + burst * T - new_tat) / T + 1e-9)
    if cost > 0 then
      return true, remaining, new_tat - now, 0, gcra_commit, key, fmt(new_tat), math.max(math.ceil(new_tat - now), 1)
    end
    return true, remaining, new_tat - now, 0, noop
  end
  return false, math.max(math.floor((now + burst * T - tat) / T + 1e-9), 0), tat - now, math.max(allow_at - now, 1), noop
end
