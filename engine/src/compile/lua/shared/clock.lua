-- patternd: the one clock, and how times and integers are written back to Redis.
-- Included by: every rate-limit script, the lock scripts, and the cache scripts that store a
-- value or a tag version (fill, put, patch, invalidate). Sessions keep whole milliseconds and
-- have their own clock (session/prelude.lua).
-- Every engine replica reads Redis TIME, never its own clock. Times are milliseconds as Lua
-- numbers (doubles) with microsecond precision, or whole microseconds. They are written back
-- with string.format, because Redis turns a Lua number into a string with only 14 significant
-- digits, which would round epoch milliseconds to 0.1 ms (and a microsecond timestamp).

-- Redis TIME as ms (with µs precision) and as whole µs (exact in a double until the year
-- 2255), from one call: a script that needs both reads one instant.
local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + us / 1000, s * 1000000 + us
end

local function now_ms()
  local ms = clock()
  return ms
end

local function now_us()
  local _, us = clock()
  return us
end

-- A time in ms, to the microsecond.
local function fmt(ms)
  return string.format('%.3f', ms)
end

-- An integer (a µs timestamp, a count, whole ms).
local function int_text(n)
  return string.format('%.0f', n)
end
