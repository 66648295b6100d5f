-- patternd cache write-through, after the origin did not accept the write (see
-- through_begin.lua).
-- KEYS[1] the value HASH; KEYS[2] the refresh lease; KEYS[3] the slot group's tag versions
-- (unused here: the write keys are shared with through-begin); KEYS[4] the held copy
-- ARGV[1] this write's token; ARGV[2] 'restore' (the origin answered with a refusal, or
-- could not be connected to: it did not apply the write, so the held value is still the
-- origin's) or 'drop' (a timeout or a connection lost mid-request: the origin may have
-- applied it, so the held value may be the replaced one); ARGV[3] ms of the write marker 'W'
-- Returns 1 if the value was restored, 0 if not.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  -- A later write, or a DELETE, took the lease after this write's marker: the held copy
  -- predates it and is dropped; the later one decides what the id holds.
  redis.call('DEL', KEYS[4])
  return 0
end
if ARGV[2] == 'restore' then
  redis.call('DEL', KEYS[2])
  if redis.call('EXISTS', KEYS[4]) == 1 and redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('RENAME', KEYS[4], KEYS[1])
    return 1
  end
  redis.call('DEL', KEYS[4])
  return 0
end
redis.call('DEL', KEYS[4])
-- The value stays absent; a fill that began before this write may still bring the origin's
-- older answer, so the lease becomes the write marker 'W' (readers take it over like a free
-- lease, that fill finds a lease not its own and stores nothing).
redis.call('SET', KEYS[2], 'W', 'PX', tonumber(ARGV[3]))
return 0
