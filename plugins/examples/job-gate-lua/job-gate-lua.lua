-- job-gate, in Lua: the same queue hook as the Rust component in job-gate/ (reject, delay,
-- prioritize, deduplicate each pushed job), for comparison.
--
-- Config (every field optional):
--   { require: [to], delays: { digest: 1m }, urgent_header: X-Urgent, dedup_field: order }
--
-- The hook gets the request facts and the payload decoded (tables; JSON null is nil) and
-- returns nil (accept as pushed), { reject = reason } (422), or
-- { delay_ms =, priority =, dedup_id = } (each optional: what it leaves out keeps the push's).
local cfg

local UNITS = { ms = 1, s = 1000, m = 60000, h = 3600000, d = 86400000 }

local function duration_ms(text)
  local n, unit = string.match(tostring(text), '^(%d+)(%a+)$')
  if n == nil or UNITS[unit] == nil then return nil end
  return tonumber(n) * UNITS[unit]
end

local function init(config)
  if config == nil then config = {} end
  if type(config) ~= 'table' then return 'job-gate-lua: config must be a mapping' end
  cfg = { require = config.require or {}, delays = {}, dedup_field = config.dedup_field }
  if config.urgent_header then cfg.urgent_header = string.lower(config.urgent_header) end
  for kind, d in pairs(config.delays or {}) do
    local ms = duration_ms(d)
    if ms == nil then return 'job-gate-lua: delay of `' .. kind .. '` is not a duration' end
    cfg.delays[kind] = ms
  end
end

local function queue(req, job)
  if type(job) ~= 'table' then return { reject = 'a job must be a JSON object' } end
  for _, field in ipairs(cfg.require) do
    if job[field] == nil then return { reject = 'a job needs `' .. field .. '`' } end
  end
  local choice = {}
  if type(job.kind) == 'string' then choice.delay_ms = cfg.delays[job.kind] end
  if cfg.urgent_header and req.headers[cfg.urgent_header] == '1' then choice.priority = 9 end
  local v = cfg.dedup_field and job[cfg.dedup_field]
  if type(v) == 'string' or type(v) == 'number' then
    local id = cfg.dedup_field .. '-' .. tostring(v)
    if #id <= 256 and string.find(id, '^[%w%._:%-]+$') then choice.dedup_id = id end
  end
  return choice
end

return { init = init, queue = queue }
