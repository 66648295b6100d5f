-- cache-key: derives a cache key and TTL from the request (the `cache` hook).
--
-- Config: { vary: [accept-language], ttl_ms: { default: 60000, "/v1/cache/shop/prices": 5000 },
--           bypass_header: x-no-cache }
-- The key is the id plus the values of the `vary` headers, so one id can have a cached
-- variant per language; requests with the bypass header skip the cache.
local cfg = {}

local function init(config)
  if type(config) ~= 'table' then return 'config must be a mapping' end
  cfg.vary = config.vary or {}
  cfg.ttl = config.ttl_ms or {}
  cfg.bypass = config.bypass_header
  if type(cfg.vary) ~= 'table' then return '`vary` must be a list of header names' end
end

local function cache(req)
  if cfg.bypass and req.headers[cfg.bypass] then
    return { bypass = true }
  end
  local parts = { req.id }
  for _, h in ipairs(cfg.vary) do
    local v = req.headers[string.lower(h)] or '-'
    -- Keep keys short and tame: only the first 32 safe characters of each value.
    parts[#parts + 1] = (string.gsub(v, '[^%w%-_.]', '')):sub(1, 32)
  end
  return {
    key = table.concat(parts, ':'),
    ttl_ms = cfg.ttl[req.path] or cfg.ttl.default,
    tags = { 'id:' .. req.id },
  }
end

return { init = init, cache = cache }
