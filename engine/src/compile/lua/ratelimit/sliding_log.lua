-- sliding_log: exact sliding window, weighted. One ZSET key with one member per admitted
-- request (never per unit of cost), scored by its time. A member is "<total>:<cost>", where
-- <total> is the running total of every cost admitted on this key up to and including this
-- request (modulo LOG_MOD). The units inside the window are then the newest member's total
-- minus the total before the oldest member still inside: two lookups, however many entries
-- or however large the costs. Scores strictly increase (a request in the same microsecond as
-- the newest entry is stamped 1 µs after it), so rank order is admission order and running
-- totals increase along ranks.
-- Work per call: O(log n) lookups, at most LOG_CLEAN removals, and for a denial a binary
-- search over ranks (at most log2(entries) + 1 lookups). Entries are admitted requests of
-- cost >= 1, so a window holds at most `limit` of them: every bound is the policy's, none is
-- the client's.

-- 2^52: totals and their differences stay exact in a double; the units inside a window are at
-- most the largest limit (10^12), far below it, so differences modulo LOG_MOD are exact.
local LOG_MOD = 4503599627370496
-- Expired entries removed per call at most. Each call adds at most one entry, so any backlog
-- shrinks; entries not yet removed are never counted (counting starts past them).
local LOG_CLEAN = 64

-- {member, score} -> running total, cost, score.
local function log_entry(e)
  local sep = string.find(e[1], ':', 1, true)
  return tonumber(string.sub(e[1], 1, sep - 1)), tonumber(string.sub(e[1], sep + 1)), tonumber(e[2])
end

local function sliding_log_commit(key, total, cost, score, ttl)
  redis.call('ZADD', key, fmt(score), string.format('%.0f:%.0f', total, cost))
  redis.call('PEXPIRE', key, ttl)
end

local function sliding_log(key, limit, window, burst, cost, now)
  -- Dropping entries that left the window changes no decision, so it is safe even when
  -- another limit of the rule denies.
  local stale = redis.call('ZCOUNT', key, '-inf', fmt(now - window))
  if stale > 0 then
    local drop = math.min(stale, LOG_CLEAN)
    redis.call('ZREMRANGEBYRANK', key, 0, drop - 1)
    stale = stale - drop
  end
  -- Ranks [stale, n - 1] are inside the window.
  local n = redis.call('ZCARD', key)
  local last_total, last_score = 0, nil
  if n > 0 then
    local _
    last_total, _, last_score = log_entry(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES'))
  end
  local count, base = 0, 0
  if n > stale then
    local first_total, first_cost = log_entry(redis.call('ZRANGE', key, stale, stale, 'WITHSCORES'))
    base = (first_total - first_cost) % LOG_MOD
    count = (last_total - base) % LOG_MOD
  end
  if count + cost <= limit then
    if cost > 0 then
      local score = now
      if last_score ~= nil and last_score + 0.001 > score then score = last_score + 0.001 end
      local reset = score + window - now
      return true, limit - count - cost, reset, 0,
        sliding_log_commit, key, (last_total + cost) % LOG_MOD, cost, score, math.ceil(reset)
    end
  end
  local ok, remaining, retry = true, limit - count - cost, 0
  if count + cost > limit then
    ok = false
    remaining = math.max(limit - count, 0)
    -- The request fits once `need` units have left: when the oldest entry whose running
    -- total (counted from the window's start) reaches `need` leaves the window.
    local need = count + cost - limit
    if need > count then
      retry = window
    else
      local lo, hi = stale, n - 1
      while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        local t = log_entry(redis.call('ZRANGE', key, mid, mid, 'WITHSCORES'))
        if (t - base) % LOG_MOD >= need then hi = mid else lo = mid + 1 end
      end
      local _, _, s = log_entry(redis.call('ZRANGE', key, lo, lo, 'WITHSCORES'))
      retry = math.max(s + window - now, 1)
    end
  end
  -- Full quota is back once the newest entry inside the window has left it.
  local reset = 0
  if count > 0 then reset = math.max(last_score + window - now, 0) end
  return ok, remaining, reset, retry, noop
end
