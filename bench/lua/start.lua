-- START: POST /concurrency, a new user for every request, so every start admits a new session.
-- args: [1] user prefix, [2] optional file to append "sessionKey token" of admitted sessions to.

local headers = {["Content-Type"] = "application/json"}
local prefix, harvest
local n = 0

function init(args)
  prefix = args[1] .. id .. "-"
  if args[2] then harvest = io.open(args[2] .. "." .. id, "w") end
end

function request()
  n = n + 1
  local body = '{"userId":"' .. prefix .. n .. '","deviceId":"laptop","streamId":"seattleSeahawks"}'
  return wrk.format("POST", "/concurrency", headers, body)
end

function response(status, _, body)
  count(status)
  if harvest and status == 200 then
    local sid = body:match('"sessionKey"%s*:%s*"([^"]+)"')
    local token = body:match('"token"%s*:%s*"([^"]+)"')
    if sid and token then harvest:write(sid, " ", token, "\n") end
  end
end
