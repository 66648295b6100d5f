-- patternd sessions: a live session, for the scripts that read or change one (get, patch,
-- rotate), so that each finds a session gone, expired, malformed or unindexed alike. Needs
-- session/prelude.lua before it.

-- The expiry of a live session touched now: idle_ttl from now, never past its absolute
-- deadline. Nil when the session is past its deadline.
local function expiry(a, idle, now)
  local exp = math.min(now + idle, a)
  if exp <= now then
    return nil
  end
  return exp
end

-- Whether the session in `key` is live, from the fields every session has: `u` (user), `i`
-- (base64url user), `c` and `a` (created, absolute deadline: numbers); nil or false (HMGET's
-- absent field) when absent; `l` (`seen`, last touch: a number) and `o` (creation order),
-- absent in sessions written before they existed.
-- Returns the session's index member and the expiry the session gets if touched now; or else
-- nil, nil and the script's reply:
--   false  the session is gone: no hash (expired or destroyed; its index entry, if any, is
--          pruned by score), past its absolute deadline, or idle for `idle` ms (dropped now,
--          with its entry);
--   error  the hash lacks one of those fields: another client wrote the key. Not a 404, like
--          WRONGTYPE: the id is unusable until the key is fixed, and the caller should know.
local function live(key, sid, ue, uc, idle, now, user, i, created, a, seen, o)
  if not (user and i and created and a) then
    if redis.call('EXISTS', key) == 0 then
      return nil, nil, false
    end
    return nil, nil, redis.error_reply('patternd: malformed session hash')
  end
  local m = member(i, order_of(o, created), sid)
  local exp = expiry(a, idle, now)
  -- Idle since its last touch (`l`, or creation): the index scores the session at that
  -- expiry and `prune` drops it in that very millisecond, while Redis keeps the key through
  -- it. Without this check a read in that millisecond would find (and slide) a session a
  -- listing had just found gone. Costs no command: `l` comes with the fields read anyway.
  if exp == nil or (seen or created) + idle <= now then
    redis.call('DEL', key)
    unindex(ue, uc, m)
    return nil, nil, false
  end
  return m, exp
end

-- A session its index does not name, although it has `o` (so it was indexed when created):
-- the index was lost (evicted under maxmemory, deleted by hand). It is destroyed rather than
-- served, so that a logout-everywhere, which finds sessions only through the index, never
-- misses a live one (fail closed). `present` is how many of `ue`, `uc` held the member.
local function lost(key, ue, uc, m, o, present)
  if o and present < 2 then
    redis.call('DEL', key)
    unindex(ue, uc, m)
    return true
  end
  return false
end

-- A touch (a sliding read, a patch): the session and its index entry expire at `exp`, `l`
-- records now, and the shard's index is pruned and lives as long as its longest session. A
-- session written before `o` existed gets it now, and with it its place in the index.
-- Returns false (and destroys the session) when the index had lost it, see `lost`.
local function touch(key, ue, uc, m, o, created, exp, now)
  -- ZADD answers 1 for a member it added: 0 from both means the entry was there.
  local added = redis.call('ZADD', ue, int(exp), m) + redis.call('ZADD', uc, 0, m)
  if lost(key, ue, uc, m, o, 2 - added) then
    return false
  end
  redis.call('PEXPIRE', key, int(exp - now))
  if o then
    redis.call('HSET', key, 'l', int(now))
  else
    redis.call('HSET', key, 'l', int(now), 'o', order_of(o, created))
  end
  prune(ue, uc, now)
  index_expiry(ue, uc, now)
  return true
end
