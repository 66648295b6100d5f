-- patternd cache: gives back a refresh lease after a fill that failed or was not stored.
-- KEYS[1] the lease; ARGV[1] the token; ARGV[2] (optional) ms to hold the failure marker 'E'
-- instead: the origin just failed, so for that long readers get the stale value at once (or,
-- without one, share the failure) and nobody asks the failing origin (one probe per period).
-- Without ARGV[2] the lease is deleted, so the next caller can try at once.
-- Returns 1 if the lease was still this token's.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] then
  redis.call('SET', KEYS[1], 'E', 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
