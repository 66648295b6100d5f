-- Logs a user out everywhere: destroys the user's sessions the shard index names, and their
-- entries (no KEYS, no SCAN: the index names them).
-- KEYS: ue, uc, then the session keys of the members in ARGV (see `slice`).
-- ARGV: n, n members, then base64url(user), the most per call (the user's max).
-- Returns {'ok', destroyed, {}} when the user has no session left; {'stale', 0, members}
-- when the members differ from those declared (the first call declares none): nothing was
-- done, call again with these declared; or {'more', destroyed, members}: the declared ones
-- are destroyed, call again for these (a user holds more than the max only after the max
-- was lowered).
local ue, uc = KEYS[1], KEYS[2]
local b = tonumber(ARGV[1]) + 1
local i, n = ARGV[b + 1], tonumber(ARGV[b + 2])
local lo = '[' .. i .. '|'
local now = clock()
prune(ue, uc, now)
local members, _, same = slice(uc, i, lo, n)
if not same then
  return { 'stale', 0, members }
end
local destroyed = 0
for j = 1, #members do
  destroyed = destroyed + redis.call('DEL', KEYS[2 + j])
  unindex(ue, uc, members[j])
end
index_expiry(ue, uc, now)
local rest = slice(uc, i, lo, n)
if #rest > 0 then
  return { 'more', destroyed, rest }
end
return { 'ok', destroyed, {} }
