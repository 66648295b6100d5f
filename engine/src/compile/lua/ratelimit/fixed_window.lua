-- fixed_window: a counter that lives for one window from the first request of that window.
-- One STRING key; its PTTL is the time left in the window. It reads no clock: a rule of fixed
-- windows only passes `now` = 0 (compile/ratelimit.rs `generate`).
local function fixed_window_commit(key, cost, pttl, window)
  redis.call('INCRBY', key, cost)
  -- pttl < 0: the key is new (a lost expiry was repaired before).
  if pttl < 0 then redis.call('PEXPIRE', key, window) end
end

local function fixed_window(key, limit, window, burst, cost, now)
  local used = tonumber(redis.call('GET', key) or '0')
  local pttl = redis.call('PTTL', key)
  if pttl == -1 then
    -- The counter lost its expiry (PERSIST, a restore or a replica without TTLs): it gets a
    -- whole window now, on every path, denials included. Repaired only when allowing, a
    -- counter at the limit would deny its id forever.
    redis.call('PEXPIRE', key, window)
    pttl = window
  end
  local reset = pttl
  if reset < 0 then reset = window end
  if used + cost <= limit then
    if cost > 0 then
      return true, limit - used - cost, reset, 0, fixed_window_commit, key, cost, pttl, window
    end
    return true, limit - used - cost, reset, 0, noop
  end
  return false, math.max(limit - used, 0), reset, reset, noop
end
