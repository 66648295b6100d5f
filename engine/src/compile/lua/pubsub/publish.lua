-- patternd pubsub publish. KEYS: the channel (from the key builder: a channel is namespaced
-- and hash-tagged like a key, and sharded pub/sub hashes it to a slot like one). ARGV: the
-- message. Returns how many subscriber connections received it: engines, not SSE clients
-- (each engine holds one subscription per channel). One server: PUBLISH (every engine
-- subscribes with SUBSCRIBE).
return redis.call('PUBLISH', KEYS[1], ARGV[1])
