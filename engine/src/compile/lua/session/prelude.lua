-- patternd sessions: what a session is, its clock, and its shard's index.
-- One clock: every engine replica reads Redis TIME. Session times are whole milliseconds
-- (exact in a Lua double), written with string.format so Redis never rounds them: hence a
-- clock of their own rather than shared/clock.lua's (ms with a µs fraction).
-- A session is a HASH {u = user, i = base64url(user), c = created ms, a = absolute deadline ms,
-- l = last touch ms (create, sliding read, patch, rotate), o = creation order (µs, 16
-- digits), d:<field> = JSON}. Its shard (the user's, the hash tag of every key here) has one
-- index in two ZSETs with the same members `<i>|<o>|<sid>`: `ue` scored by the session's
-- current expiry ms (pruning, the index's TTL) and `uc` scored 0, so ZRANGEBYLEX over
-- `[<i>|` … `(<i>}` is one user's sessions, oldest first. base64url has no `|` (nor any
-- byte ≥ `|`), so one user's range never holds another's member.
-- Every key a script touches is in KEYS: the session, `ue`, `uc` (computable from the session
-- id, whose shard is the user's), and for the scripts that act on a user's sessions (list,
-- logout, the reap after an evicting create) the session keys of the members the engine read
-- in an earlier call; list and logout check those are still the user's (`slice` below).
local function int(n)
  return string.format('%d', n)
end

local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us
end

-- The creation order of a session: `o`, or for a session written before `o` existed its
-- creation ms in µs (such a session is not in the shard index until its next touch).
local function order_of(o, created)
  return o or string.format('%016.0f', created * 1000)
end

-- A session's member in its shard's index.
local function member(i, o, sid)
  return i .. '|' .. o .. '|' .. sid
end

-- Removes an index member; returns how many of the two ZSETs held it.
local function unindex(ue, uc, m)
  return redis.call('ZREM', ue, m) + redis.call('ZREM', uc, m)
end

-- Drops index entries whose session is past its expiry (self-pruning index). Each entry is
-- dropped once, so the work is amortised over the writes that made the entries.
local function prune(ue, uc, now)
  local dead = redis.call('ZRANGEBYSCORE', ue, '-inf', int(now))
  for i = 1, #dead do
    redis.call('ZREM', uc, dead[i])
  end
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', ue, '-inf', int(now))
  end
end

-- The index lives exactly as long as the longest-lived session of the shard: its highest
-- `ue` score. An empty index is deleted.
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

-- The scripts that act on a user's sessions (list, logout) take the members the engine read
-- in an earlier call, with their session keys declared: ARGV[1] is their count n,
-- ARGV[2..n+1] the members, ARGV[n+2] the cutoff: the creation order (16 digits) up to which
-- the user's members must all be declared, '' on a first call. Members created after the
-- cutoff sort last in the user's range (their order is later) and are left alone: they are
-- newer than the read, like a login after the request. The script checks that every member
-- up to the cutoff is declared (a rotation keeps the order under a new id), and answers
-- {'stale', 0, members, cutoff} when one is not, or on a first call: the engine declares
-- those and calls again.
local function order_in(m, i)
  return string.sub(m, #i + 2, #i + 17)
end

-- The first `n` of user `i`'s members from lex bound `start`, up to the cutoff; the cutoff
-- (now's order on a first call); whether more members up to it follow; and whether every
-- member returned is declared (on a first call: whether there is none).
local function slice(uc, i, start, n, now_us)
  local nd = tonumber(ARGV[1])
  local cutoff = ARGV[nd + 2]
  local got = redis.call('ZRANGEBYLEX', uc, start, '(' .. i .. '}', 'LIMIT', 0, n + 1)
  local first = cutoff == ''
  if first then
    cutoff = string.format('%016.0f', now_us)
  end
  local declared = {}
  for j = 2, nd + 1 do
    declared[ARGV[j]] = true
  end
  local old, same = {}, true
  for j = 1, math.min(#got, n) do
    if order_in(got[j], i) <= cutoff then
      old[#old + 1] = got[j]
      same = same and declared[got[j]] == true
    end
  end
  local more = #got > n and order_in(got[n + 1], i) <= cutoff
  return old, cutoff, more, same
end
