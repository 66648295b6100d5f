-- patternd sessions: a live session, for the scripts that read or change one (get, patch,
-- rotate), so that each finds a session gone, expired or malformed alike. Needs
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
-- absent field) when absent; and `l` (`seen`, last touch: a number, absent in sessions
-- written before it existed).
-- Returns the user's index keys and the expiry the session gets if touched now; or else
-- nil, nil, nil and the script's reply:
--   false  the session is gone: no hash (expired or destroyed; its index entry, if any, is
--          pruned by score), past its absolute deadline, or idle for `idle` ms (dropped now,
--          with its entry);
--   error  the hash lacks one of those fields: another client wrote the key. Not a 404, like
--          WRONGTYPE: the id is unusable until the key is fixed, and the caller should know.
local function live(key, sid, base, idle, now, user, i, created, a, seen)
  if not (user and i and created and a) then
    if redis.call('EXISTS', key) == 0 then
      return nil, nil, nil, false
    end
    return nil, nil, nil, redis.error_reply('patternd: malformed session hash')
  end
  local ue, uc = index_keys(base, i)
  local exp = expiry(a, idle, now)
  -- Idle since its last touch (`l`, or creation): the index scores the session at that
  -- expiry and `prune` drops it in that very millisecond, while Redis keeps the key through
  -- it. Without this check a read in that millisecond would find (and slide) a session a
  -- listing had just found gone. Costs no command: `l` comes with the fields read anyway.
  if exp == nil or (seen or created) + idle <= now then
    redis.call('DEL', key)
    unindex(ue, uc, sid)
    return nil, nil, nil, false
  end
  return ue, uc, exp
end

-- A touch (a sliding read, a patch): the session and its index entry expire at `exp`, `l`
-- records now, and the user's index is pruned and lives as long as its longest session.
local function touch(key, ue, uc, sid, created, exp, now)
  redis.call('PEXPIRE', key, int(exp - now))
  redis.call('ZADD', ue, int(exp), sid)
  redis.call('ZADD', uc, 'NX', int(created * 1000), sid)
  redis.call('HSET', key, 'l', int(now))
  prune(ue, uc, now)
  index_expiry(ue, uc, now)
end
