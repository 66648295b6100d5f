-- patternd rate limiting: what every algorithm returns, and how a rule's limits combine.
-- Included by every script that checks limits (a rule's own, and the plugin-decided ones),
-- after shared/clock.lua and before the algorithms (ratelimit/<algorithm>.lua).
-- An algorithm is `local function name(key, limit, window, burst, cost, now[, ...])` and
-- returns { ok, remaining, reset, retry, commit } (times in ms). `commit` writes the admission
-- (`noop` when there is nothing to write); `decide` calls it only when every limit allows.

local function noop() end

-- A duration reported to the client, in whole ms, rounded up with a microsecond (the clock's
-- resolution) to spare: a client that waits exactly that long must find the quota back, and
-- times are doubles (an epoch in ms with a fraction is not exact), so a wait computed to land
-- exactly on the moment could land a rounding error short of it. Redis also keeps a key
-- through its expiry millisecond, so a PTTL of n means the key is gone after n + 1 ms.
local function up(ms)
  if ms <= 0 then return 0 end
  return math.ceil(ms + 0.001)
end

-- Combines the checks of every limit of a rule: all allowed -> commit all; any denied ->
-- commit none ("a denial charges none of them"). Reports the limit that matters most: the
-- denying one with the longest wait, or else the one with the least remaining.
local function decide(results)
  local allowed = true
  for i = 1, #results do
    if not results[i].ok then allowed = false end
  end
  if allowed then
    for i = 1, #results do results[i].commit() end
  end
  local pick = 1
  for i = 2, #results do
    local r, p = results[i], results[pick]
    if allowed then
      if r.remaining < p.remaining then pick = i end
    elseif (not r.ok) and (p.ok or r.retry > p.retry) then
      pick = i
    end
  end
  local r = results[pick]
  return { allowed and 1 or 0, pick - 1, math.floor(r.remaining), up(r.reset), up(r.retry) }
end

-- `decide` of a rule with one limit, without the table of results: the same answer.
local function decide_one(r)
  if r.ok then r.commit() end
  return { r.ok and 1 or 0, 0, math.floor(r.remaining), up(r.reset), up(r.retry) }
end
