-- patternd counters: the period check and the expiry every counter script shares.
-- Included by every counter script, after shared/clock.lua and shared/period.lua.
-- ARGV[1]: the rule's period kind, ARGV[2]: its length in ms (fixed-length periods), ARGV[3]:
-- the period index the engine built the keys for from its own clock, or '' when the keys
-- name periods the client chose by label (nothing to check). Redis TIME decides which period
-- is current: a wrong guess writes and reads nothing and answers {'period', actual index}, and
-- the engine calls again with the keys of that period (one extra round trip, near a boundary).
-- Writers then take ARGV[4]: the expiry, ARGV[5]: 'at' (ARGV[4] is the Unix ms the period's
-- keys expire at: `keep` periods after the period closes, compared with Redis' own clock) or
-- 'in' (no period: ms after this write).

local function wrong_period()
  if ARGV[3] == '' then
    return nil
  end
  local actual = period_index(tonumber(ARGV[1]), tonumber(ARGV[2]), now_ms())
  if actual ~= tonumber(ARGV[3]) then
    return { 'period', int_text(actual) }
  end
  return nil
end

local function expire(key)
  if ARGV[5] == 'at' then
    redis.call('PEXPIREAT', key, ARGV[4])
  else
    redis.call('PEXPIRE', key, ARGV[4])
  end
end

-- unpack() of more than a few thousand values overflows Lua's C stack (LUAI_MAXCSTACK):
-- a batch goes to Redis in chunks of at most CHUNK items. f(first, last) gets each chunk's
-- ARGV positions.
local CHUNK = 1000
local function chunks(first, f)
  local i = first
  while i <= #ARGV do
    local j = math.min(i + CHUNK - 1, #ARGV)
    f(i, j)
    i = j + 1
  end
end
