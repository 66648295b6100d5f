-- A range of entries, for replay. KEYS: stream (or the dead-letter stream). ARGV: start
-- (inclusive, or `(id` exclusive), end, count (at most the rule's max_count). Returns XRANGE's
-- reply: {{id, {field, value, ...}}, ...}.
return redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
