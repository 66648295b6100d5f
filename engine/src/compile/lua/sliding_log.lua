-- sliding_log: exact sliding window. One ZSET key, one member per admitted unit, scored by
-- its time. Memory grows with the limit, which is why `patternd check` warns on big limits.
local function sliding_log(key, limit, window, burst, cost, now)
  -- Dropping entries that left the window changes no decision, so it is safe even when
  -- another limit of the rule denies.
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now - window))
  local count = redis.call('ZCARD', key)
  local r = { retry = 0, commit = noop }
  if count + cost <= limit then
    r.ok = true
    r.remaining = limit - count - cost
    if cost > 0 then
      r.reset = window
      r.commit = function()
        local score = fmt(now)
        local args = {}
        for i = 1, cost do
          -- count + i is unique among members stamped with the same microsecond.
          args[#args + 1] = score
          args[#args + 1] = score .. '-' .. (count + i)
          if #args >= 1000 then
            redis.call('ZADD', key, unpack(args))
            args = {}
          end
        end
        if #args > 0 then redis.call('ZADD', key, unpack(args)) end
        redis.call('PEXPIRE', key, math.ceil(window))
      end
    end
  else
    r.ok = false
    r.remaining = math.max(limit - count, 0)
    -- The request fits once the (count + cost - limit)-th oldest entry has left the window.
    local idx = count + cost - limit - 1
    local e = redis.call('ZRANGE', key, idx, idx, 'WITHSCORES')
    if e[2] then r.retry = math.max(tonumber(e[2]) + window - now, 1) else r.retry = window end
  end
  if r.reset == nil then
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if newest[2] then r.reset = math.max(tonumber(newest[2]) + window - now, 0) else r.reset = 0 end
  end
  return r
end
