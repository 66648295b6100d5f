-- A user's live sessions, oldest first. Prunes entries of sessions that expired or were
-- evicted by Redis (maxmemory), so the index heals itself. KEYS: ue, uc. ARGV: base.
-- Returns {sid, created_ms, last_seen_ms, expires_in_ms, ...}.
local ue, uc, base = KEYS[1], KEYS[2], ARGV[1]
local now = clock()
prune(ue, uc, now)
local members = redis.call('ZRANGE', uc, 0, -1)
local out = {}
for j = 1, #members do
  local sid = members[j]
  local key = session_key(base, sid)
  local meta = redis.call('HMGET', key, 'c', 'l')
  local created = meta[1]
  local ttl = redis.call('PTTL', key)
  if not created or ttl < 0 then
    unindex(ue, uc, sid)
  else
    out[#out + 1] = sid
    out[#out + 1] = created
    -- A session written before `l` existed: last seen, as far as anyone knows, at creation.
    out[#out + 1] = meta[2] or created
    out[#out + 1] = int(ttl)
  end
end
index_expiry(ue, uc, now)
return out
