-- Acks entries of a group. KEYS: stream. ARGV: group, then the ids (at most the rule's
-- max_batch). Returns how many were pending and are acked now; a group that does not
-- exist yet has nothing pending (0).
local r = redis.pcall('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
if type(r) == 'table' and r.err then
  if string.find(r.err, 'NOGROUP', 1, true) then
    return 0
  end
  return redis.error_reply(r.err)
end
return r
