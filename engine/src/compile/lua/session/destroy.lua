-- Destroys one session and its index entry. KEYS: session. ARGV: sid, base.
-- Returns 1 when a live session was destroyed, 0 when there was none.
local key, sid, base = KEYS[1], ARGV[1], ARGV[2]
local i = redis.call('HGET', key, 'i')
local n = redis.call('DEL', key)
if i then
  local ue, uc = index_keys(base, i)
  unindex(ue, uc, sid)
  local now = clock()
  prune(ue, uc, now)
  index_expiry(ue, uc, now)
end
return n
