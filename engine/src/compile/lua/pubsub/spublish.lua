-- patternd pubsub publish on a cluster. KEYS: the channel (its slot picks the shard). ARGV:
-- the message. SPUBLISH: the message stays in the channel's shard, where every engine holds
-- an SSUBSCRIBE connection, instead of being broadcast over the whole cluster bus. Returns
-- the subscriber connections (engines) that received it.
return redis.call('SPUBLISH', KEYS[1], ARGV[1])
