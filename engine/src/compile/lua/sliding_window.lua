-- sliding_window: the weighted two-bucket counter. Windows are aligned to the epoch; the
-- estimate is previous * (share of the previous window still inside the sliding window)
-- + current. One HASH key: w = current window number, c = its count, p = previous count.
local function sliding_window(key, limit, window, burst, cost, now)
  local cur = math.floor(now / window)
  local st = redis.call('HMGET', key, 'w', 'c', 'p')
  local w, c, p = tonumber(st[1]), tonumber(st[2]) or 0, tonumber(st[3]) or 0
  if w == cur - 1 then
    p, c = c, 0
  elseif w ~= cur then
    p, c = 0, 0
  end
  local elapsed = now - cur * window
  local est = p * (window - elapsed) / window + c
  local r = { retry = 0, commit = noop }
  if est + cost <= limit then
    r.ok = true
    r.remaining = limit - est - cost
    c = c + cost
    if cost > 0 then
      r.commit = function()
        redis.call('HSET', key, 'w', cur, 'c', c, 'p', p)
        -- Needed until the end of the next window, where this window is "previous".
        redis.call('PEXPIRE', key, math.ceil(2 * window - elapsed))
      end
    end
  else
    r.ok = false
    r.remaining = math.max(limit - est, 0)
    local retry
    if p > 0 and limit - c - cost >= 0 then
      -- Still in this window: p * (1 - x / window) + c + cost <= limit.
      retry = window * (1 - (limit - c - cost) / p) - elapsed
    else
      -- In the next window, where c becomes the previous count: c * (1 - y / window) + cost <= limit.
      local y = 0
      if c > 0 then y = math.max(window * (1 - (limit - cost) / c), 0) end
      retry = (window - elapsed) + y
    end
    r.retry = math.max(retry, 1)
  end
  -- Full quota is back once nothing counted remains inside the sliding window.
  if c > 0 then
    r.reset = 2 * window - elapsed
  elseif p > 0 then
    r.reset = window - elapsed
  else
    r.reset = 0
  end
  return r
end
