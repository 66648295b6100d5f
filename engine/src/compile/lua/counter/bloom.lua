-- patternd Bloom filters without RedisBloom: a bitmap of m bits and k positions per item.
-- Included by the Lua Bloom scripts, after counter/prelude.lua. The positions are
-- Kirsch–Mitzenmacher double hashing, g_j = (h1 + j·h2) mod m for j = 0…k-1, with h1 and h2
-- the first two 48-bit words of the item's SHA-1 (redis.sha1hex): exact in a double, since
-- h1 + 20·h2 < 2^53 (k is at most 20, at error_rate 1e-6).

local function positions(item, m, k)
  local hex = redis.sha1hex(item)
  local h1 = tonumber(string.sub(hex, 1, 12), 16)
  local h2 = tonumber(string.sub(hex, 13, 24), 16)
  local out = {}
  for j = 0, k - 1 do
    out[j + 1] = (h1 + j * h2) % m
  end
  return out
end
