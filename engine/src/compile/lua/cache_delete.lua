-- patternd cache DELETE: drops values and their refresh leases in one atomic step. With its
-- lease gone, a fill already in flight for one of these ids may still store into the now
-- absent value (cache-aside: the origin's answer is the truth), but never over a value written
-- after the DELETE (see cache_fill.lua).
-- write: behind: a value whose newest write (`jp`) is still in the journal is KEPT, with its
-- `jp`: the origin's copy is older than that acknowledged write until the flusher delivers
-- it, so dropping the value would make the next read fill (and serve) the older copy. Once
-- the write is delivered the value is an ordinary cached copy again.
-- KEYS: pairs (value, lease) of the id and of every related id; then, when ARGV[1] is '1'
-- (write: behind), the journal STREAM last.
-- Returns { values dropped, values kept because their write is pending }.
local last = #KEYS
local jkey = nil
if ARGV[1] == '1' then
  jkey = KEYS[last]
  last = last - 1
end
local n, kept = 0, 0
for i = 1, last, 2 do
  local jp = jkey and redis.call('HGET', KEYS[i], 'jp')
  if jp and #redis.call('XRANGE', jkey, jp, jp) > 0 then
    kept = kept + 1
  else
    n = n + redis.call('DEL', KEYS[i])
  end
  if KEYS[i + 1] and i + 1 <= last then redis.call('DEL', KEYS[i + 1]) end
end
return { n, kept }
