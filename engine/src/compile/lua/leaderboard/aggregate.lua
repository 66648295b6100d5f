-- The board over its last n periods. KEYS: the cached aggregate, then the n period boards,
-- newest first. ARGV[6..]: offset, limit, member ('' for none), cache ms, max_size, update.
-- Returns {'ok', count, member's score, member's rank ('' , '' without one), member,
-- score, rank, ...} or the period marker.
-- Computed at most once per `aggregate_cache`: kept briefly in KEYS[1], in the boards' slot.
-- Scores are combined as the rule updates them (sum: added; best: the best; latest: the
-- newest period's), decoded first: an encoded tiebreak must not be added up. Equal
-- aggregates share a rank: who reached a total over several periods first is not defined.
-- Cost: n · max_size members read (n ≤ keep + 1), once per cache period.
local chk = period_check()
if chk then
  return chk
end
local agg = KEYS[1]
local offset, limit, member = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local cache_ms, max_size, mode = ARGV[9], tonumber(ARGV[10]), ARGV[11]
if redis.call('EXISTS', agg) == 0 then
  if not FIRST and mode ~= 'latest' then
    local how = 'SUM'
    if mode == 'best' then
      how = DESC and 'MAX' or 'MIN'
    end
    local args = { agg, #KEYS - 1 }
    for i = 2, #KEYS do
      args[#args + 1] = KEYS[i]
    end
    args[#args + 1] = 'AGGREGATE'
    args[#args + 1] = how
    redis.call('ZUNIONSTORE', unpack(args))
  else
    local total = {}
    local names = {}
    for i = 2, #KEYS do
      local r = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
      for j = 1, #r, 2 do
        local m, v = r[j], decode(tonumber(r[j + 1]), FIRST)
        local had = total[m]
        if had == nil then
          names[#names + 1] = m
          total[m] = v
        elseif mode == 'sum' then
          total[m] = had + v
        elseif mode == 'best' and better(v, had) then
          total[m] = v
        end
      end
    end
    local args = {}
    for i = 1, #names do
      args[#args + 1] = num(total[names[i]])
      args[#args + 1] = names[i]
      if #args >= 1000 then
        redis.call('ZADD', agg, unpack(args))
        args = {}
      end
    end
    if #args > 0 then
      redis.call('ZADD', agg, unpack(args))
    end
  end
  local n = redis.call('ZCARD', agg)
  if n > max_size then
    if DESC then
      redis.call('ZREMRANGEBYRANK', agg, 0, n - max_size - 1)
    else
      redis.call('ZREMRANGEBYRANK', agg, max_size, -1)
    end
  end
  redis.call('PEXPIRE', agg, cache_ms)
end
local out = { 'ok', redis.call('ZCARD', agg), '', '' }
if member ~= '' then
  local pos = place(agg, member)
  if pos then
    local enc = tonumber(redis.call('ZSCORE', agg, member))
    out[3], out[4] = num(enc), rank_at(agg, pos, enc, false)
  end
end
if limit > 0 then
  entries(agg, offset, offset + limit - 1, false, out)
end
return out
