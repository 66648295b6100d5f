-- patternd cache write-behind: after a delivery. The origin accepted: acknowledge (and
-- delete) the entries, or after a failed attempt give back the flush lease only (no ids):
-- the entry stays pending and is retried after its backoff.
-- KEYS[1] the journal STREAM; KEYS[2] the id's flush lease
-- ARGV[1] the attempt's token; ARGV[2 ..] entry ids to acknowledge
-- Returns how many entries were deleted.
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
local n = journal_done(KEYS[1], ids)
release_flush(KEYS[2], ARGV[1])
return n
