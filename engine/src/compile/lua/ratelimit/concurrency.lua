-- concurrency: in-flight leases. Two keys per id:
--   leases: a ZSET with one member per lease, "<lease id>:<cost>", scored by the time the
--           lease lapses, so a crashed client's units free themselves;
--   held:   a STRING, the units all of those leases hold.
-- A lease is one member whatever its cost, and its cost is part of the member: a release
-- removes the exact member that was granted (a token claiming another cost names no member),
-- so no script ever walks a lease's units or trusts a cost from the client.
-- The rule's lease length is fixed, so members lapse in the order they were granted.

-- The leases walked at most to tell a denied request when enough units come back.
local LEASE_WALK = 64

local function lease_units(member)
  local sep = string.find(member, ':', 1, true)
  return tonumber(string.sub(member, sep + 1)) or 0
end

local function concurrency_commit(key, held_key, expires, member, cost, lease_ms)
  redis.call('ZADD', key, fmt(expires), member)
  redis.call('INCRBY', held_key, string.format('%.0f', cost))
  -- Both keys live as long as the longest lease, which is this newest one.
  redis.call('PEXPIRE', key, lease_ms)
  redis.call('PEXPIRE', held_key, lease_ms)
end

local function concurrency(key, limit, lease_ms, burst, cost, now, lease, held_key)
  local held = tonumber(redis.call('GET', held_key) or '0') or 0
  -- Lapsed leases give their units back. The walk is bounded by the number of leases, which
  -- is at most `limit` (each holds at least one unit): the policy's bound, not the client's,
  -- and each lease is walked once in its life.
  local lapsed = redis.call('ZRANGEBYSCORE', key, '-inf', fmt(now))
  local back = 0
  if #lapsed > 0 then
    for i = 1, #lapsed do back = back + lease_units(lapsed[i]) end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
  end
  if redis.call('EXISTS', key) == 0 then
    -- No lease left, so nothing is held (this also heals a sum that drifted, e.g. after an
    -- eviction of one key but not the other).
    if held ~= 0 then redis.call('DEL', held_key) end
    held = 0
  elseif back > 0 then
    held = held - back
    redis.call('DECRBY', held_key, string.format('%.0f', back))
  end
  if held < 0 then held = 0 end
  if held + cost <= limit then
    if cost > 0 then
      return true, limit - held - cost, lease_ms, 0, concurrency_commit,
        key, held_key, now + lease_ms, lease .. ':' .. string.format('%.0f', cost), cost, lease_ms
    end
    return true, limit - held - cost, lease_ms, 0, noop
  end
  -- Enough units are back when the leases lapsed (or released) since now add up to
  -- held + cost - limit. Walked over the earliest LEASE_WALK leases at most; past them the
  -- answer is when the last one walked lapses (the earliest it can fit).
  local need = held + cost - limit
  local early = redis.call('ZRANGE', key, 0, LEASE_WALK - 1, 'WITHSCORES')
  local retry = lease_ms
  local freed = 0
  for i = 1, #early, 2 do
    freed = freed + lease_units(early[i])
    retry = math.max(tonumber(early[i + 1]) - now, 1)
    if freed >= need then break end
  end
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local reset = 0
  if last[2] then reset = math.max(tonumber(last[2]) - now, 0) end
  return false, math.max(limit - held, 0), reset, retry, noop
end
