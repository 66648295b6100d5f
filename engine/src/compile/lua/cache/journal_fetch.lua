-- patternd cache write-behind: one poll of one rule's journal by one engine's flusher.
-- KEYS[1] the journal STREAM; KEYS[2] the dead-letter STREAM
-- ARGV[1] this flusher's consumer name (unique per process); ARGV[2] batch size
-- ARGV[3] ms an entry of ANOTHER consumer must be idle before it is taken over (longer than
--         one delivery attempt can take, so a live consumer's attempt is never stolen; past
--         it, the consumer is presumed dead: this is how a write survives an engine killed
--         mid-flush)
-- ARGV[4] retry_backoff ms; ARGV[5] the longest backoff ms
-- ARGV[6] ms after which a consumer with nothing pending is removed from the group
-- Creates the consumer group on first use (from '0': entries written before it existed are
-- delivered too). Takes back pending entries whose backoff has passed (the attempt number is
-- the entry's delivery count, kept by Redis, so it survives restarts), then reads new ones.
-- Returns { journal length, dead-letter length, { entry id, attempt, { field, value, ... } }... }
local jkey, dkey = KEYS[1], KEYS[2]
if redis.call('EXISTS', jkey) == 0 then return { 0, redis.call('XLEN', dkey) } end
redis.pcall('XGROUP', 'CREATE', jkey, GROUP, '0')
local me, batch = ARGV[1], tonumber(ARGV[2])
local floor, base, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out = { 0, 0 }

local function backoff(deliveries)
  local b = base * (2 ^ (deliveries - 1))
  if b > cap then b = cap end
  return b
end

-- Pending entries idle at least one base backoff: the cheapest filter Redis can apply; the
-- exact per-entry backoff is checked here. XCLAIM with the same min-idle is atomic, so when
-- two replicas race for one entry only one gets it.
local pending = redis.call('XPENDING', jkey, GROUP, 'IDLE', base, '-', '+', batch * 4)
for _, p in ipairs(pending) do
  if #out - 2 >= batch then break end
  local eid, owner, idle, deliveries = p[1], p[2], tonumber(p[3]), tonumber(p[4])
  local need = backoff(deliveries)
  if owner ~= me and need < floor then need = floor end
  if idle >= need then
    local got = redis.call('XCLAIM', jkey, GROUP, me, need, eid)
    -- An entry deleted meanwhile is dropped from the pending list by XCLAIM and not returned.
    if got[1] then out[#out + 1] = { got[1][1], deliveries + 1, got[1][2] } end
  end
end
if #out - 2 < batch then
  local r = redis.call('XREADGROUP', 'GROUP', GROUP, me, 'COUNT', batch - (#out - 2),
    'STREAMS', jkey, '>')
  if r and r[1] then
    for _, e in ipairs(r[1][2]) do out[#out + 1] = { e[1], 1, e[2] } end
  end
end

-- Consumers of engines that are gone, with nothing pending, are only clutter in XINFO.
local consumers = redis.call('XINFO', 'CONSUMERS', jkey, GROUP)
local idle_limit = tonumber(ARGV[6])
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= me and tonumber(info['pending']) == 0
      and tonumber(info['idle']) > idle_limit then
    redis.call('XGROUP', 'DELCONSUMER', jkey, GROUP, info['name'])
  end
end

out[1] = redis.call('XLEN', jkey)
out[2] = redis.call('XLEN', dkey)
return out
