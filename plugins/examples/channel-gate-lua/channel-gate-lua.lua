-- channel-gate, in Lua: the same pubsub hook as the Rust component in channel-gate/ (who may
-- subscribe to and publish on which channel), for comparison.
--
-- Config (every field optional):
--   { user_header: X-User, open: [lobby], publishers: [ops], banned: [spam] }
--
-- The hook gets the request facts, the channel, the op ('publish' or 'subscribe') and the
-- message (a string; nil for a subscribe), and returns nil (allow) or { reject = reason } (403).
local cfg

local function set(list)
  local s = {}
  for _, v in ipairs(list or {}) do s[v] = true end
  return s
end

local function init(config)
  if config == nil then config = {} end
  if type(config) ~= 'table' then return 'channel-gate-lua: config must be a mapping' end
  cfg = { user_header = string.lower(config.user_header or 'x-user'), open = set(config.open),
          publishers = set(config.publishers), banned = config.banned or {} }
end

local function pubsub(req, channel, op, message)
  local user = req.headers[cfg.user_header]
  if op == 'subscribe' then
    if cfg.open[channel] or (user ~= nil and channel == 'user.' .. user) then return nil end
    return { reject = 'may not subscribe to `' .. channel .. '`' }
  end
  if user == nil or not cfg.publishers[user] then
    return { reject = 'may not publish to `' .. channel .. '`' }
  end
  for _, w in ipairs(cfg.banned) do
    if string.find(message, w, 1, true) then return { reject = 'the message holds `' .. w .. '`' } end
  end
  return nil
end

return { init = init, pubsub = pubsub }
