-- score-gate, in Lua: an anti-cheat leaderboard hook (world `plugin-leaderboard`'s
-- `leaderboard` export, as a Lua plugin).
--
-- Config (every field optional):
--   { cap: 5000, banned: [mallory], client_header: X-Client, boards: [chess, go] }
--
-- The hook gets the request facts (`req.id` is the member; `req.headers` by lowercase name) and
-- the submit `{ app, rule, board, member, score }`, and returns nil (accept), { reject = reason }
-- (422 `score-rejected`, nothing recorded) or { score = n } (record n instead; the rule's
-- `max_score` still applies to it).
local cfg

local function set_of(list)
  local s = {}
  for _, v in ipairs(list or {}) do s[v] = true end
  return s
end

local function init(config)
  if config == nil then config = {} end
  if type(config) ~= 'table' then return 'score-gate-lua: config must be a mapping' end
  if config.cap ~= nil and type(config.cap) ~= 'number' then
    return 'score-gate-lua: `cap` must be a number'
  end
  cfg = { cap = config.cap, banned = set_of(config.banned) }
  if config.boards then cfg.boards = set_of(config.boards) end
  if config.client_header then cfg.client_header = string.lower(config.client_header) end
end

local function leaderboard(req, s)
  if cfg.client_header and req.headers[cfg.client_header] == nil then
    return { reject = 'a submit needs the `' .. cfg.client_header .. '` header' }
  end
  if cfg.banned[s.member] then
    return { reject = '`' .. s.member .. '` may not submit scores' }
  end
  if cfg.boards and not cfg.boards[s.board] then
    return { reject = 'no board `' .. s.board .. '` here' }
  end
  if cfg.cap and s.score > cfg.cap then
    return { score = cfg.cap }
  end
  return nil
end

return { init = init, leaderboard = leaderboard }
