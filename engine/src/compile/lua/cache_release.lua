-- patternd cache: gives back a refresh lease (the fill failed or was not stored), so the next
-- caller can try at once instead of waiting for the lease to expire.
-- KEYS[1] the lease; ARGV[1] the token. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
