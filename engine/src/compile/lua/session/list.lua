-- A page of a user's live sessions, oldest first, as of the cutoff (see `slice`). Prunes
-- entries of sessions that expired or were evicted by Redis (maxmemory), so the index heals
-- itself.
-- KEYS: ue, uc, then the session keys of the members in ARGV (see `slice`).
-- ARGV: n, n members, cutoff, then base64url(user), page size (the user's max), the page's
-- lex start (`[<i>|` for the first page, `(<last member>` after it).
-- Returns {'ok', 0, {sid, created_ms, last_seen_ms, expires_in_ms, ...}, next start ('' for
-- none)}, or {'stale', 0, members, cutoff}: nothing was read; call again with those declared.
local ue, uc = KEYS[1], KEYS[2]
local nd = tonumber(ARGV[1])
local i, n, start = ARGV[nd + 3], tonumber(ARGV[nd + 4]), ARGV[nd + 5]
local now, now_us = clock()
prune(ue, uc, now)
local members, cutoff, more, same = slice(uc, i, start, n, now_us)
if not same then
  return { 'stale', 0, members, cutoff }
end
local key = {}
for j = 1, nd do
  key[ARGV[j + 1]] = KEYS[2 + j]
end
local out = {}
for j = 1, #members do
  local k = key[members[j]]
  local meta = redis.call('HMGET', k, 'c', 'l')
  local created = meta[1]
  local ttl = redis.call('PTTL', k)
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
local next = ''
if more then
  next = '(' .. members[#members]
end
return { 'ok', 0, out, next }
