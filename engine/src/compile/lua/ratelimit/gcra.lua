-- gcra: generic cell rate algorithm. One STRING key holding the theoretical arrival time
-- (TAT). Emission interval T = window / limit; a fresh id may send `burst` at once.
local function gcra(key, limit, window, burst, cost, now)
  local T = window / limit
  local eps = T * 1e-9
  local tat = tonumber(redis.call('GET', key) or '') or now
  if tat < now then tat = now end
  local new_tat = tat + cost * T
  local allow_at = new_tat - burst * T
  local r = { retry = 0, commit = noop }
  if now + eps >= allow_at then
    r.ok = true
    r.remaining = math.floor((now + burst * T - new_tat) / T + 1e-9)
    r.reset = new_tat - now
    if cost > 0 then
      r.commit = function()
        redis.call('SET', key, fmt(new_tat), 'PX', math.max(math.ceil(new_tat - now), 1))
      end
    end
  else
    r.ok = false
    r.remaining = math.max(math.floor((now + burst * T - tat) / T + 1e-9), 0)
    r.retry = math.max(allow_at - now, 1)
    r.reset = tat - now
  end
  return r
end
