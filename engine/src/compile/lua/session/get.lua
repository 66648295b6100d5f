-- Reads a session and (when ARGV[3] is 1) slides its idle expiry. KEYS: session.
-- ARGV: sid, idle_ms, slide (1|0), base. Returns false when the session is gone, an error
-- when its hash is malformed (see `live`), else
-- {user, created_ms, expires_in_ms, last_seen_ms, field1, json1, ...}: last_seen_ms is the
-- previous touch (a sliding read is a touch and records now for the next one).
local key = KEYS[1]
local sid, idle, move, base = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]
local now = clock()
local h = redis.call('HGETALL', key)
local user, i, created, a, seen
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
  elseif string.sub(f, 1, 2) == 'd:' then
    out[#out + 1] = string.sub(f, 3)
    out[#out + 1] = h[j + 1]
  end
end
local ue, uc, exp, stop = live(key, sid, base, idle, now, user, i, created, a, seen)
if stop ~= nil then return stop end
local ttl
if move then
  touch(key, ue, uc, sid, created, exp, now)
  ttl = exp - now
else
  ttl = redis.call('PTTL', key)
end
-- A session written before `l` existed was last seen, as far as anyone knows, when created.
out[1], out[2], out[3], out[4] = user, int(created), int(ttl), int(seen or created)
return out
