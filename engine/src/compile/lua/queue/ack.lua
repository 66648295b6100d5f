-- Acknowledges a job: it is done, and gone. KEYS: inflight, jobs, meta (the prelude's names).
-- ARGV: job id, receipt. Returns 1, or 0 when the receipt holds no lease (the job was
-- acknowledged already, or its visibility lapsed: it is, or will be, delivered again).
local K = { inflight = KEYS[1], jobs = KEYS[2], meta = KEYS[3] }
local id, receipt = ARGV[1], ARGV[2]
local now = clock()
if not leased(K, id, receipt, now) then
  return 0
end
redis.call('ZREM', K.inflight, id)
redis.call('HDEL', K.jobs, id)
redis.call('HDEL', K.meta, id)
return 1
