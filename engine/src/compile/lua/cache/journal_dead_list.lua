-- patternd cache write-behind: one page of dead letters, without their payloads.
-- KEYS[1] the dead-letter STREAM
-- ARGV[1] the first id to include ('-' for the start, '(' .. id to start after an id)
-- ARGV[2] page size
-- Returns { total, { entry id, id, attempts, error, failed_at, payload bytes, content type,
-- original journal id }... }
local out = { redis.call('XLEN', KEYS[1]) }
local page = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
for _, e in ipairs(page) do
  local rec = { id = '', attempts = '0', error = '', failed_at = '0', b = '', ct = '', oid = '' }
  for i = 1, #e[2], 2 do rec[e[2][i]] = e[2][i + 1] end
  out[#out + 1] = { e[1], rec.id, rec.attempts, rec.error, rec.failed_at, tostring(#rec.b),
    rec.ct, rec.oid }
end
return out
