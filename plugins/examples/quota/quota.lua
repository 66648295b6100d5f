-- quota: a per-id daily quota, as a Redis-side operation.
--
-- Policy:   daily: { ops: { plugin: quota, op: daily-quota } }
-- Call:     POST /v1/ops/{app}/daily  {"id": "user-42", "args": [1000]}
-- Answer:   {"result": {"used": 3, "remaining": 997}}, or 429 with "denied": true past the quota;
--           400 when args[1] is not a quota (an op refuses input with `redis.error_reply('BADARG why')`).
--
-- The counter resets at UTC midnight: the key expires then (EXPIREAT, from Redis TIME, so
-- every patternd replica agrees on when "today" ends). The engine builds KEYS[1] from the id
-- with its key builder; the script can touch nothing else.
return {
  ops = {
    ["daily-quota"] = {
      keys = { "count" },
      script = [[
local quota = tonumber(ARGV[1])
if quota == nil or quota < 0 then
  return redis.error_reply('BADARG args[1] must be the quota, a number >= 0')
end
local now = tonumber(redis.call('TIME')[1])
local midnight = now - (now % 86400) + 86400
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + 1 > quota then
  return cjson.encode({ used = used, remaining = 0, denied = true })
end
used = redis.call('INCR', KEYS[1])
redis.call('EXPIREAT', KEYS[1], midnight)
return cjson.encode({ used = used, remaining = quota - used })
]],
    },
  },
}
