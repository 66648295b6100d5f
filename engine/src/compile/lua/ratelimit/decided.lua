-- patternd rate limit with limits chosen per request by a plugin: the main of the
-- plugin-decided scripts. Comes after the algorithms it may call and `ALGS` (algorithm code ->
-- function), which the recipe generates (compile/ratelimit.rs).
-- KEYS[i]: the key of limit i; ARGV[5i-4 .. 5i]: algorithm code, cost, limit, window_ms, burst
-- Returns what every rate-limit script returns (see `decide`).
local now = now_ms()
local results = {}
for i = 1, #KEYS do
  local b = (i - 1) * 5
  local f = ALGS[ARGV[b + 1]]
  if f == nil then return redis.error_reply('patternd: unknown algorithm ' .. tostring(ARGV[b + 1])) end
  results[i] = { f(KEYS[i], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5]), tonumber(ARGV[b + 2]), now) }
end
return { decide(results) }
