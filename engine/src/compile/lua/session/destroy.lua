-- Destroys one session and its index entry. KEYS: session, ue, uc. ARGV: sid.
-- Returns 1 when a live session was destroyed, 0 when there was none (or it had left its
-- index: evicted, see `lost`).
local key, ue, uc, sid = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local meta = redis.call('HMGET', key, 'i', 'o', 'c')
local n = redis.call('DEL', key)
local now = clock()
if meta[1] and meta[3] then
  local present = unindex(ue, uc, member(meta[1], order_of(meta[2] or nil, tonumber(meta[3])), sid))
  if meta[2] and present < 2 then
    n = 0
  end
end
prune(ue, uc, now)
index_expiry(ue, uc, now)
return n
