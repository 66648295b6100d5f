-- patternd cache: helpers shared by the cache scripts (after the prelude).

-- Splits 'a,b,c' into { 'a', 'b', 'c' }; '' gives {}.
local function split_commas(s)
  local out = {}
  if s == nil or s == '' then return out end
  for part in string.gmatch(s, '([^,]+)') do out[#out + 1] = part end
  return out
end
