-- The hit path of `cache read` (read.lua), for the calls of its batch script (compile/batch.rs):
-- a batch decides a fresh hit of a `format: string` value here, without the per-call tables,
-- pcall and TIME of running the whole script; every other call (a miss, a stale or tagged
-- value, an early refresh due, `fields`, write-behind) returns nil and runs read.lua itself.
-- The batch reads the clock once: its calls are taken at one instant, in order, as calls
-- within the same microsecond would be. (Key expiry in a script uses its start time too.)
local batch_time = redis.call('TIME')
local batch_now = tonumber(batch_time[1]) * 1000 + tonumber(batch_time[2]) / 1000
-- k, a: the offsets of the call's keys in KEYS and arguments in ARGV; nk, na: their counts.
-- Writes the call's reply into the batch's flat reply `out` after `o` (its element count, then
-- the reply read.lua would give; or 2, -1, error when HMGET failed) and returns the new end;
-- or returns nil, having written nothing. Raises nothing: it runs outside the call's pcall.
local function fast(k, a, nk, na, out, o)
  if nk ~= 3 or na ~= 4 or ARGV[a + 1] ~= 'body' then return nil end
  -- read.lua's members less `tv`, which only a tagged value needs.
  local meta = redis.pcall('HMGET', KEYS[k + 1], 'st', 'ct', 'fresh', 'delta', 'tags', 'ver', 'b')
  if meta.err then
    out[o + 1], out[o + 2], out[o + 3] = 2, -1, tostring(meta.err)
    return o + 3
  end
  local st, fresh = meta[1], tonumber(meta[3])
  -- Tags are checked by read.lua (a ZSCORE per tag, and the value dropped when one moved on).
  if not st or not fresh or (meta[5] and meta[5] ~= '') then return nil end
  local left = fresh - batch_now
  if left <= 0 then return nil end
  local delta = tonumber(meta[4]) or 0
  -- XFetch due: read.lua grants the lease (or not) and answers 'refresh' or 'hit'. The gap is
  -- read only here, as read.lua reads it: only for a 200 that took time to fetch.
  if st == '200' and delta > 0 then
    local gap = tonumber(ARGV[a + 2])
    if not gap or delta * gap >= left then return nil end
  end
  out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = 8, 'hit', '', st, meta[2] or ''
  out[o + 6], out[o + 7], out[o + 8], out[o + 9] = math.floor(left), meta[7] or '',
    math.floor(delta), meta[6] or ''
  return o + 9
end
