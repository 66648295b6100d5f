-- Checks items against a period's Bloom filter (the bitmap). KEYS: the bitmap, the count of
-- adds. ARGV: the period (prelude), m, k, then the items (at most max_batch). An item is
-- present (1) when all its k bits are set: maybe a false positive, at about error_rate up to
-- capacity; absent (0) is certain. Returns {'ok', count, present per item}, or
-- {'period', index}.
local wrong = wrong_period()
if wrong then
  return wrong
end
local m, k = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = { 'ok', redis.call('GET', KEYS[2]) or '0' }
for i = 6, #ARGV do
  local yes = 1
  local pos = positions(ARGV[i], m, k)
  for j = 1, k do
    if redis.call('GETBIT', KEYS[1], pos[j]) == 0 then
      yes = 0
      break
    end
  end
  out[#out + 1] = yes
end
return out
