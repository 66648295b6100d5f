-- Logs a user out everywhere: destroys the user's sessions the shard index names, and their
-- entries (no KEYS, no SCAN: the index names them).
-- KEYS: ue, uc, then the session keys of the members in ARGV (see `slice`).
-- ARGV: n, n members, cutoff, then base64url(user), the most per call (the user's max).
-- Returns {'ok', destroyed, {}, cutoff} when no session up to the cutoff is left;
-- {'stale', 0, members, cutoff} (see `slice`): nothing was done; or {'more', destroyed,
-- members, cutoff}: the declared ones are destroyed, call again for these (a user holds
-- more than the max only after the max was lowered).
local ue, uc = KEYS[1], KEYS[2]
local nd = tonumber(ARGV[1])
local i, n = ARGV[nd + 3], tonumber(ARGV[nd + 4])
local lo = '[' .. i .. '|'
local now, now_us = clock()
prune(ue, uc, now)
local members, cutoff, _, same = slice(uc, i, lo, n, now_us)
if not same then
  return { 'stale', 0, members, cutoff }
end
local live = {}
for j = 1, #members do
  live[members[j]] = true
end
-- Every declared session dies, also one that left the index since it was read (destroyed,
-- rotated, evicted: its key is gone or must go); only those still indexed are counted.
local destroyed = 0
for j = 1, nd do
  local m = ARGV[j + 1]
  local gone = redis.call('DEL', KEYS[2 + j])
  if live[m] then
    destroyed = destroyed + gone
  end
  unindex(ue, uc, m)
end
index_expiry(ue, uc, now)
local rest = slice(uc, i, lo, n, now_us)
if #rest > 0 then
  return { 'more', destroyed, rest, cutoff }
end
return { 'ok', destroyed, {}, cutoff }
