-- token_bucket: `burst` tokens at most, refilled continuously at limit / window.
-- One HASH key: t = tokens, ts = time of the last update. A missing key is a full bucket,
-- so the key expires exactly when the bucket would be full again.
local function token_bucket(key, limit, window, burst, cost, now)
  local rate = limit / window
  local st = redis.call('HMGET', key, 't', 'ts')
  local tokens, ts = tonumber(st[1]), tonumber(st[2])
  if tokens == nil or ts == nil then
    tokens = burst
  else
    tokens = math.min(burst, tokens + math.max(now - ts, 0) * rate)
  end
  local r = { retry = 0, commit = noop }
  if tokens >= cost then
    r.ok = true
    local left = tokens - cost
    r.remaining = left
    r.reset = (burst - left) / rate
    if cost > 0 then
      r.commit = function()
        redis.call('HSET', key, 't', string.format('%.17g', left), 'ts', fmt(now))
        redis.call('PEXPIRE', key, math.max(math.ceil(r.reset), 1))
      end
    end
  else
    r.ok = false
    r.remaining = tokens
    r.retry = math.max((cost - tokens) / rate, 1)
    r.reset = (burst - tokens) / rate
  end
  return r
end
