-- Reads a session and (when ARGV[3] is 1) slides its idle expiry. KEYS: session, ue, uc.
-- ARGV: sid, idle_ms, slide (1|0). Returns false when the session is gone (or unindexed, see
-- `lost`), an error when its hash is malformed (see `live`), else
-- {user, created_ms, expires_in_ms, last_seen_ms, field1, json1, ...}: last_seen_ms is the
-- previous touch (a sliding read is a touch and records now for the next one).
local key, ue, uc = KEYS[1], KEYS[2], KEYS[3]
local sid, idle, move = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local now = clock()
local h = redis.call('HGETALL', key)
local user, i, created, a, seen, o
local out = { '', '', '', '' }
for j = 1, #h, 2 do
  local f = h[j]
  if f == 'u' then
    user = h[j + 1]
  elseif f == 'i' then
    i = h[j + 1]
  elseif f == 'c' then
    created = tonumber(h[j + 1])
  elseif f == 'a' then
    a = tonumber(h[j + 1])
  elseif f == 'l' then
    seen = tonumber(h[j + 1])
  elseif f == 'o' then
    o = h[j + 1]
  elseif string.sub(f, 1, 2) == 'd:' then
    out[#out + 1] = string.sub(f, 3)
    out[#out + 1] = h[j + 1]
  end
end
local m, exp, stop = live(key, sid, ue, uc, idle, now, user, i, created, a, seen, o)
if stop ~= nil then return stop end
local ttl
if move then
  if not touch(key, ue, uc, m, o, created, exp, now) then return false end
  ttl = exp - now
else
  ttl = redis.call('PTTL', key)
end
-- A session written before `l` existed was last seen, as far as anyone knows, when created.
out[1], out[2], out[3], out[4] = user, int(created), int(ttl), int(seen or created)
return out
