-- token_bucket: `burst` tokens at most, refilled continuously at limit / window.
-- One HASH key: t = tokens, ts = time of the last update. A missing key is a full bucket,
-- so the key expires exactly when the bucket would be full again.
local function token_bucket_commit(key, left, now, ttl)
  redis.call('HSET', key, 't', string.format('%.17g', left), 'ts', fmt(now))
  redis.call('PEXPIRE', key, ttl)
end

local function token_bucket(key, limit, window, burst, cost, now)
  local rate = limit / window
  local st = redis.call('HMGET', key, 't', 'ts')
  local tokens, ts = tonumber(st[1]), tonumber(st[2])
  if tokens == nil or ts == nil then
    tokens = burst
  else
    tokens = math.min(burst, tokens + math.max(now - ts, 0) * rate)
  end
  if tokens >= cost then
    local left = tokens - cost
    local reset = (burst - left) / rate
    if cost > 0 then
      return true, left, reset, 0, token_bucket_commit, key, left, now, math.max(math.ceil(reset), 1)
    end
    return true, left, reset, 0, noop
  end
  return false, tokens, (burst - tokens) / rate, math.max((cost - tokens) / rate, 1), noop
end
