-- entry-gate, in Lua: the same stream hook as the Rust component in entry-gate/ (check each
-- appended entry), for comparison.
--
-- Config (every field optional):
--   { require: [type], types: [click, view], source_header: X-Source }
--
-- The hook gets the request facts and one entry decoded (tables; JSON null is nil) and returns
-- nil (accept) or { reject = reason }: one rejected entry refuses the whole append (422).
local cfg

local function init(config)
  if config == nil then config = {} end
  if type(config) ~= 'table' then return 'entry-gate-lua: config must be a mapping' end
  cfg = { require = config.require or {}, types = nil }
  if config.types then
    cfg.types = {}
    for _, t in ipairs(config.types) do cfg.types[t] = true end
  end
  if config.source_header then cfg.source_header = string.lower(config.source_header) end
end

local function stream(req, entry)
  if cfg.source_header and req.headers[cfg.source_header] == nil then
    return { reject = 'an append needs the `' .. cfg.source_header .. '` header' }
  end
  -- A JSON array decodes to a table too: one with a first element is not an object.
  if type(entry) ~= 'table' or entry[1] ~= nil then
    return { reject = 'an entry must be a JSON object' }
  end
  for _, field in ipairs(cfg.require) do
    if entry[field] == nil then return { reject = 'an entry needs `' .. field .. '`' } end
  end
  if cfg.types then
    local t = entry.type
    if type(t) ~= 'string' then t = '' end
    if not cfg.types[t] then return { reject = 'unknown type `' .. t .. '`' } end
  end
  return nil
end

return { init = init, stream = stream }
