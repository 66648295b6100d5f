-- A page of a user's live sessions, oldest first. Prunes entries of sessions that expired or
-- were evicted by Redis (maxmemory), so the index heals itself.
-- KEYS: ue, uc, then the session keys of the members in ARGV (see `slice`).
-- ARGV: n, n members, then base64url(user), page size (the user's max), the page's lex start
-- (`[<i>|` for the first page, `(<last member>` after it).
-- Returns {'ok', more (1|0), {sid, created_ms, last_seen_ms, expires_in_ms, ...}}, or
-- {'stale', 0, members}: the members differ from those declared, nothing was
-- done; call again with these declared.
local ue, uc = KEYS[1], KEYS[2]
local b = tonumber(ARGV[1]) + 1
local i, n, start = ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3]
local now = clock()
prune(ue, uc, now)
local members, more, same = slice(uc, i, start, n)
if not same then
  return { 'stale', 0, members }
end
local out = {}
for j = 1, #members do
  local key = KEYS[2 + j]
  local meta = redis.call('HMGET', key, 'c', 'l')
  local created = meta[1]
  local ttl = redis.call('PTTL', key)
  if not created or ttl < 0 then
    unindex(ue, uc, members[j])
  else
    out[#out + 1] = string.match(members[j], '[^|]*$')
    out[#out + 1] = created
    -- A session written before `l` existed: last seen, as far as anyone knows, at creation.
    out[#out + 1] = meta[2] or created
    out[#out + 1] = int(ttl)
  end
end
index_expiry(ue, uc, now)
return { 'ok', more and 1 or 0, out }
