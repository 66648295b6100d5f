-- patternd cache DELETE: drops values and their refresh leases in one atomic step.
-- KEYS: value and lease keys of the id and of every related id. Returns how many existed.
return redis.call('DEL', unpack(KEYS))
