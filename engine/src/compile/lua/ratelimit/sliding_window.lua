-- sliding_window: the weighted two-bucket counter. Windows are aligned to the epoch; the
-- estimate is previous * (share of the previous window still inside the sliding window)
-- + current. One STRING key of 32 bytes, struct.pack('<dddd', w, c, p, l): w = current window
-- number, c = its count, p = previous count, l = time of the newest admitted request (ms, to
-- the µs); read with one GET, written with one SET (the commit below says which). Packed
-- doubles rather than a hash or text: a decision is then two Redis commands and no number
-- formatting or parsing, which were most of its cost in Redis (docs/performance.md). Read one
-- in redis-cli with
-- EVAL "return table.concat({struct.unpack('<dddd', redis.call('GET', KEYS[1]))}, ' ')" 1 <key>
-- (the fifth number is unpack's next position).
-- Nothing admitted within the last window means nothing is inside the sliding window, so the
-- estimate is 0 from l + window on: the full quota is back at most one window after the
-- newest request (the two counts alone would keep part of it for up to two windows).
-- The key is needed until the end of the next window, where this window is "previous": the
-- first admission of a window sets that expiry, and later ones of the same window keep it
-- (KEEPTTL: the same moment, and 15% fewer instructions per decision than formatting and
-- setting it again, docs/performance.md). So an expiry lost within a window (PERSIST, a
-- restore without TTLs) comes back with the id's first admission of a later window.
local function sliding_window_commit(key, cur, c, p, now, ttl, same_window)
  if same_window then
    redis.call('SET', key, struct.pack('<dddd', cur, c, p, now), 'KEEPTTL')
  else
    redis.call('SET', key, struct.pack('<dddd', cur, c, p, now), 'PX', ttl)
  end
end

local function sliding_window(key, limit, window, burst, cost, now)
  local cur = math.floor(now / window)
  local st = redis.pcall('GET', key)
  local w, c, p, l
  if type(st) == 'string' then
    -- Anything but the 32 bytes this script writes is no state: the next admission replaces it.
    if #st == 32 then
      w, c, p, l = struct.unpack('<dddd', st)
      -- 32 bytes someone else wrote may hold a NaN, which no comparison below would catch.
      if not (w == w and c == c and p == p and l == l) then w, c, p, l = nil, nil, nil, nil end
    end
  elseif st then
    -- Not a string: a key of the HASH layout {w, c, p, l} that earlier builds wrote (the next
    -- admission replaces it with the string), or else a key of another type, whose WRONGTYPE
    -- error this HMGET raises as the GET would have.
    st = redis.call('HMGET', key, 'w', 'c', 'p', 'l')
    w, c, p, l = tonumber(st[1]), tonumber(st[2]), tonumber(st[3]), tonumber(st[4])
  end
  c, p = c or 0, p or 0
  if w == nil then
    c, p = 0, 0
  elseif w > cur then
    -- The stored window is ahead of the clock: Redis TIME went backwards (a failover to a host
    -- whose clock is behind). Both counts stay, at full weight, in the current window, so no
    -- burst gets through; they decay from the next window on, as usual.
    c, p = c + p, 0
  elseif w == cur - 1 then
    p, c = c, 0
  elseif w ~= cur then
    c, p = 0, 0
  end
  -- A key without `l` (written before it existed), or an `l` ahead of the clock: the newest
  -- request was admitted now at the latest.
  if l == nil or l > now then l = now end
  if l <= now - window then c, p = 0, 0 end
  local elapsed = now - cur * window
  local est = p * (window - elapsed) / window + c
  local ok, remaining, retry, writes = true, 0, 0, false
  if est + cost <= limit then
    remaining = limit - est - cost
    if cost > 0 then
      c = c + cost
      l = now
      writes = true
    end
  else
    ok = false
    remaining = math.max(limit - est, 0)
    if p > 0 and limit - c - cost >= 0 then
      -- Still in this window: p * (1 - x / window) + c + cost <= limit.
      retry = window * (1 - (limit - c - cost) / p) - elapsed
    else
      -- In the next window, where c becomes the previous count: c * (1 - y / window) + cost <= limit.
      local y = 0
      if c > 0 then y = math.max(window * (1 - (limit - cost) / c), 0) end
      retry = (window - elapsed) + y
    end
    -- Or once the newest request has left the window, whichever comes first.
    retry = math.max(math.min(retry, l + window - now), 1)
  end
  -- Full quota is back once the newest request counted has left the window.
  local reset = 0
  if c + p > 0 then reset = math.max(l + window - now, 0) end
  if writes then
    return ok, remaining, reset, retry, sliding_window_commit, key, cur, c, p, now,
      math.ceil(2 * window - elapsed), w == cur
  end
  return ok, remaining, reset, retry, noop
end
