-- Deletes the sessions a create evicted from the index. KEYS: ue, uc, then their session
-- keys. ARGV: their members, in the same order. A member back in the index (which no script
-- does: a touch destroys a session its index lost) keeps its session. Returns how many
-- sessions were deleted.
local ue, uc = KEYS[1], KEYS[2]
local n = 0
for j = 1, #ARGV do
  if not redis.call('ZSCORE', uc, ARGV[j]) and not redis.call('ZSCORE', ue, ARGV[j]) then
    n = n + redis.call('DEL', KEYS[2 + j])
  end
end
return n
