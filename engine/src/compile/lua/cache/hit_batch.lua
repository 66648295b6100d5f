-- patternd cache hit batch: answers the reads of a batch that are fresh hits, and only those,
-- as the read script (read.lua) would answer them at this instant. Read-only: it grants no
-- lease and changes nothing, so a read it cannot answer loses nothing by asking it first;
-- the engine then runs the read script for that read (patterns/cache/read.rs `probe`).
-- Needs meta.lua before it.
--
-- Why a script of its own: a hit needs the value's key and the XFetch gap, not the lease and
-- tag keys, the lease token or the rule's numbers the read script takes. Every key and
-- argument of a script call is a Redis object and a Lua string made per call, and a hit is
-- the call that matters (docs/performance.md, fourth round).
--
-- Calls of one `format: string` rule that is not `write: behind` (store::batch, Layout::Fixed
-- with width 3): KEYS[i] the i-th read's value HASH; ARGV[i] its XFetch gap (read.lua's
-- ARGV[2]). Replies one flat array, three elements per read: a hit is its packed meta `m` as
-- stored (the engine reads st, ct, delta and ver from it: patterns/cache/reply.rs `hit`), its
-- body and its ms left; anything else (absent, stale, tagged, an early refresh due, a value of
-- the earlier layout) is 0, 0, 0; a read whose HMGET failed (a key of another type) is -1, the
-- error, 0. The meta goes out as it is stored rather than as four elements: each element is
-- one more for Redis to write and for the engine's client to parse.
-- The batch reads the clock once: its calls are taken at one instant, in order, as calls
-- within the same microsecond would be. (Key expiry in a script uses its start time too.)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
-- The reply, all 0s, made at its full size at once rather than grown (each growth copies
-- it): string.byte returns one 0 per byte, at most 3 * 256 (a batch is at most 256 calls,
-- and Lua 5.1 takes up to 8000 values on its stack).
local out, o = { string.byte(string.rep('\0', 3 * #KEYS), 1, -1) }, 0
for i = 1, #KEYS do
  -- The packed meta and the body: two members (meta.lua).
  local mb = redis.pcall('HMGET', KEYS[i], 'm', 'b')
  if mb.err then
    out[o + 1], out[o + 2] = -1, tostring(mb.err)
  elseif mb[1] then
    local st, _, fresh, delta, tags = unpack_hit(mb[1])
    -- Tags are checked by read.lua (a ZSCORE per tag, and the value dropped when one moved on).
    if st and tags == '' then
      local left = fresh - now
      -- XFetch due (only for a 200 that took time to fetch): read.lua grants the lease or not.
      if left > 0 and not (st == '200' and delta > 0 and delta * tonumber(ARGV[i]) >= left) then
        out[o + 1], out[o + 2], out[o + 3] = mb[1], mb[2] or '', math.floor(left)
      end
    end
  end
  o = o + 3
end
return out
