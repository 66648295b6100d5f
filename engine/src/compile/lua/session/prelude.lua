-- patternd sessions: what a session is, its keys, its clock, and its user's index.
-- Included by every session script, after `local SHARD_LEN` (the recipe's constant).
-- One clock: every engine replica reads Redis TIME. Session times are whole milliseconds
-- (exact in a Lua double), written with string.format so Redis never rounds them: hence a
-- clock of their own rather than shared/clock.lua's (ms with a µs fraction).
-- A session is a HASH {u = user, i = base64url(user), c = created ms, a = absolute deadline ms,
-- l = last touch ms (create, sliding read, patch, rotate), d:<field> = JSON}; its user's index is two ZSETs: `ue:<i>` (member = session id, score = the
-- session's current expiry ms) and `uc:<i>` (same members, score = creation time in µs, for
-- evicting the oldest). Every script that touches a session keeps both in step.
-- Keys: `base` (ARGV) is the KeySpace key of the user's shard with an empty sub, so every key
-- below shares the shard's hash tag and one script touches one cluster slot. Keys a script
-- can only learn from data (the index from a session's `i`, sessions from an index) are built
-- from `base` in the script: Redis Cluster runs them, as they are in the slot of KEYS[1].
local function int(n)
  return string.format('%d', n)
end

local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us
end

-- The session key of an id `<shard>.<random>`.
local function session_key(base, sid)
  return base .. 's:' .. string.sub(sid, SHARD_LEN + 2)
end

-- The index keys of a user, from the session's `i` field.
local function index_keys(base, i)
  return base .. 'ue:' .. i, base .. 'uc:' .. i
end

local function unindex(ue, uc, sid)
  redis.call('ZREM', ue, sid)
  redis.call('ZREM', uc, sid)
end

-- Drops index entries whose session is past its expiry (self-pruning index).
local function prune(ue, uc, now)
  local dead = redis.call('ZRANGEBYSCORE', ue, '-inf', int(now))
  for i = 1, #dead do
    redis.call('ZREM', uc, dead[i])
  end
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', ue, '-inf', int(now))
  end
end

-- The index lives exactly as long as its longest-lived session.
local function index_expiry(ue, uc, now)
  local last = redis.call('ZRANGE', ue, -1, -1, 'WITHSCORES')
  if last[2] == nil then
    redis.call('DEL', ue, uc)
    return
  end
  local ttl = math.max(tonumber(last[2]) - now, 1)
  redis.call('PEXPIRE', ue, int(ttl))
  redis.call('PEXPIRE', uc, int(ttl))
end
