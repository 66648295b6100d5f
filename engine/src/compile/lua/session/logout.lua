-- Logs a user out everywhere: destroys every session in the user's index and the index, in
-- one atomic call (no KEYS, no SCAN: the index names them). KEYS: ue, uc. ARGV: base. Returns the number of live sessions destroyed.
local ue, uc, base = KEYS[1], KEYS[2], ARGV[1]
local n = 0
local seen = {}
for _, idx in ipairs({ uc, ue }) do
  local members = redis.call('ZRANGE', idx, 0, -1)
  for i = 1, #members do
    local sid = members[i]
    if not seen[sid] then
      seen[sid] = true
      n = n + redis.call('DEL', session_key(base, sid))
    end
  end
end
redis.call('DEL', ue, uc)
return n
