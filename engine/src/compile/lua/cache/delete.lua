-- patternd cache DELETE: drops values in one atomic step and puts the write marker 'W' in
-- each one's lease (PX ARGV[2]: longer than any fill may take, see fill.lua): a fill
-- already in flight asked the origin before the DELETE, so what it brings may be exactly what
-- the DELETE meant to drop; it finds a lease not its own and stores nothing. Readers take
-- 'W' over like a free lease, so the next read fills from the origin at once.
-- write: behind: a value whose newest write (`jp`) is still in the journal is KEPT, with its
-- `jp`: the origin's copy is older than that acknowledged write until the flusher delivers
-- it, so dropping the value would make the next read fill (and serve) the older copy. Once
-- the write is delivered the value is an ordinary cached copy again.
-- KEYS: pairs (value, lease) of the id and of every related id; then, when ARGV[1] is '1'
-- (write: behind), the journal STREAM last. ARGV[2] ms the marker 'W' lives.
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
  if KEYS[i + 1] and i + 1 <= last then
    redis.call('SET', KEYS[i + 1], 'W', 'PX', tonumber(ARGV[2]))
  end
end
return { n, kept }
