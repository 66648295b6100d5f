-- tiered-limits, in Lua: the same decision as the Rust component in tiered-limits/, for
-- comparison (and for trying plugins without a wasm toolchain).
--
-- Config: { header: X-Tier, default: free,
--           tiers: { free: { limit: 2, window: 1m }, pro: { limit: 5, window: 1m } } }
local cfg

local UNITS = { ms = 1, s = 1000, m = 60000, h = 3600000, d = 86400000 }

local function window_ms(text)
  local n, unit = string.match(tostring(text), '^(%d+)(%a+)$')
  if n == nil or UNITS[unit] == nil then return nil end
  return tonumber(n) * UNITS[unit]
end

local function init(config)
  if type(config) ~= 'table' or type(config.tiers) ~= 'table' then
    return 'config needs `tiers`'
  end
  cfg = { header = string.lower(config.header or 'x-tier'), default = config.default, tiers = {} }
  for name, t in pairs(config.tiers) do
    local w = window_ms(t.window)
    if w == nil or type(t.limit) ~= 'number' then
      return 'tier `' .. name .. '` needs `limit` and `window` (e.g. 1m)'
    end
    cfg.tiers[name] = { limit = t.limit, window_ms = w }
  end
  if cfg.tiers[cfg.default] == nil then return '`default` must name a tier' end
end

local function rate_limit(req)
  local tier = req.headers[cfg.header]
  if cfg.tiers[tier] == nil then tier = cfg.default end
  local t = cfg.tiers[tier]
  return { check = { { key_suffix = tier, limit = t.limit, window_ms = t.window_ms,
                       algorithm = 'fixed_window' } } }
end

return { init = init, rate_limit = rate_limit }
