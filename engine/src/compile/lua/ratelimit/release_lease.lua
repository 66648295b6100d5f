-- Releases a concurrency lease: removes its one member and gives its units back. The member
-- names the cost that was granted, so a token claiming another cost names no member and
-- frees nothing. Releasing a lease that lapsed or was already released is not an error: it
-- answers 0 (a lapsed member still here is removed, its units given back).
-- KEYS[1] = the leases ZSET, KEYS[2] = the units held; ARGV[1] = "<lease id>:<cost>".
local now = now_ms()
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expires then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
else
  local sep = string.find(ARGV[1], ':', 1, true)
  redis.call('DECRBY', KEYS[2], string.sub(ARGV[1], sep + 1))
end
if tonumber(expires) > now then return 1 end
return 0
