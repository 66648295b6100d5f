-- patternd cache write-behind: before one delivery of an id's newest journal entry.
-- KEYS[1] the journal STREAM; KEYS[2] the id's value HASH; KEYS[3] the id's flush lease
-- ARGV[1] this attempt's token; ARGV[2] flush lease ms; ARGV[3] the entry to deliver
-- ARGV[4] the write's original entry id (differs after a dead-letter replay)
-- ARGV[5] this flusher's consumer name; ARGV[6] the attempt number
-- ARGV[7] ms the value must live at least while this write is pending (past the next attempt)
-- ARGV[8 ..] older entries of the same id in this batch: superseded, acknowledged now
-- Returns 'go' (the lease is ours: deliver), 'skip' (a newer write of the id is in the journal
-- or was delivered: acknowledged without a call) or 'busy' (another flusher is delivering
-- this id right now: try later; the attempt is given back).
local jkey, vkey, lkey = KEYS[1], KEYS[2], KEYS[3]
local older = {}
for i = 8, #ARGV do older[#older + 1] = ARGV[i] end
-- Safe: the entry delivered instead (ARGV[3]) stays in the journal until it is delivered or
-- dead-lettered, and it carries the newer value.
journal_done(jkey, older)
-- `jp` is the newest journaled write of the id (set by PUT/PATCH with the value). If it is
-- newer than this write, delivering this one could put an older value on the origin after
-- the newer one.
-- A replayed dead letter that was still the newest write has `jp` naming its new entry.
local jp = redis.call('HGET', vkey, 'jp')
if jp and jp ~= ARGV[3] and stream_id_lt(ARGV[4], jp) then
  journal_done(jkey, { ARGV[3] })
  return 'skip'
end
-- One delivery per id at a time across replicas: the origin sees an id's writes in order.
if not redis.call('SET', lkey, ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('XCLAIM', jkey, GROUP, ARGV[5], 0, ARGV[3], 'RETRYCOUNT',
    math.max(tonumber(ARGV[6]) - 1, 0), 'JUSTID')
  return 'busy'
end
-- While its newest write is undelivered the value is newer than the origin's copy, and reads
-- serve it instead of refreshing from the origin; if it expired first, a read would fill the
-- origin's older copy. So each attempt keeps it alive past the next one (never shortening).
if jp == ARGV[4] or jp == ARGV[3] then
  local pttl = redis.call('PTTL', vkey)
  if pttl >= 0 and pttl < tonumber(ARGV[7]) then redis.call('PEXPIRE', vkey, ARGV[7]) end
end
return 'go'
