-- patternd streams: how an entry is stored, and the helpers every stream script uses.
-- Included by every stream script, after shared/clock.lua where it needs the clock.
-- A stream rule is one Redis stream per rule (KEYS: the rule's `s`, and its dead-letter
-- stream `dead`, both under the rule's own hash tag, so every call is one slot). An entry
-- has one field, `d`: the JSON text the client appended. Both streams are bounded by
-- MAXLEN ~ (and the main one by MINID ~ when the rule has a retention): they never expire,
-- and need not.

-- The value of `name` in a flat field list {k1, v1, k2, v2, ...}, or false.
local function field(fields, name)
  if type(fields) ~= 'table' then
    return false
  end
  for i = 1, #fields, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return false
end
