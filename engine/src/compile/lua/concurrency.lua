-- concurrency: in-flight leases. One ZSET key: a member per held unit, scored by the time
-- its lease expires, so a crashed client's slot frees itself.
local function concurrency(key, limit, lease_ms, burst, cost, now, lease)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
  local held = redis.call('ZCARD', key)
  local r = { retry = 0, commit = noop }
  if held + cost <= limit then
    r.ok = true
    r.remaining = limit - held - cost
    r.reset = lease_ms
    if cost > 0 then
      r.commit = function()
        local expires = fmt(now + lease_ms)
        for i = 1, cost do
          redis.call('ZADD', key, expires, lease .. '#' .. i)
        end
        if redis.call('PTTL', key) < lease_ms then
          redis.call('PEXPIRE', key, lease_ms)
        end
      end
    end
  else
    r.ok = false
    r.remaining = math.max(limit - held, 0)
    -- A slot frees when the (held + cost - limit)-th earliest lease expires (or is released).
    local idx = held + cost - limit - 1
    local e = redis.call('ZRANGE', key, idx, idx, 'WITHSCORES')
    if e[2] then r.retry = math.max(tonumber(e[2]) - now, 1) else r.retry = lease_ms end
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if last[2] then r.reset = math.max(tonumber(last[2]) - now, 0) else r.reset = 0 end
  end
  return r
end
