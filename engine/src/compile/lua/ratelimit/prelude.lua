-- patternd rate limiting: what every algorithm returns, and how a rule's limits combine.
-- Included by every script that checks limits (a rule's own, and the plugin-decided ones),
-- after shared/clock.lua and before the algorithms (ratelimit/<algorithm>.lua).
-- An algorithm is `local function name(key, limit, window, burst, cost, now[, ...])` and
-- returns ok, remaining, reset, retry, commit, ... (times in ms). `commit(...)` writes the
-- admission with the values after it (`noop` when there is nothing to write); `decide` calls
-- it only when every limit allows. Multiple values and a top-level `commit` rather than a
-- result table and a closure: a decision then allocates nothing in Lua but its reply, which
-- is measurable in Redis' CPU per decision (docs/performance.md).

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

-- Combines the checks of every limit of a rule, each packed as { algorithm(...) } (so
-- r[1] = ok, r[2] = remaining, r[3] = reset, r[4] = retry, r[5] = commit, then its values):
-- all allowed -> commit all; any denied -> commit none ("a denial charges none of them").
-- Reports the limit that matters most: the denying one with the longest wait, or else the
-- one with the least remaining.
-- Returns the reply's five numbers as values, not a table: a script's main wraps them in one
-- (`return { decide(...) }`), a batch writes them into its one flat reply array, which costs
-- Redis less to send than an array per decision (docs/performance.md).
local function decide(results)
  local allowed = true
  for i = 1, #results do
    if not results[i][1] then allowed = false end
  end
  if allowed then
    for i = 1, #results do
      local r = results[i]
      r[5](unpack(r, 6))
    end
  end
  local pick = 1
  for i = 2, #results do
    local r, p = results[i], results[pick]
    if allowed then
      if r[2] < p[2] then pick = i end
    elseif (not r[1]) and (p[1] or r[4] > p[4]) then
      pick = i
    end
  end
  local r = results[pick]
  return allowed and 1 or 0, pick - 1, math.floor(r[2]), up(r[3]), up(r[4])
end

-- `decide` of a rule with one limit, straight from the algorithm's values: the same answer.
local function decide_one(ok, remaining, reset, retry, commit, ...)
  if ok then commit(...) end
  return ok and 1 or 0, 0, math.floor(remaining), up(reset), up(retry)
end
