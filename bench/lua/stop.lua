-- STOP: DELETE /concurrency, each request ending another live session from the list. Should the
-- list run out, it starts over (those stops find the session already ended) and `reused` says so.
-- args: [1] file of "sessionKey token" lines, [2] number of wrk threads (they share the file out).

local headers = {["Content-Type"] = "application/json"}
local sessions
local n = 0

function init(args)
  sessions = read_sessions(args[1], tonumber(args[2]))
end

function request()
  n = n + 1
  if n > #sessions then
    reused = reused + 1
  end
  local session = sessions[(n - 1) % #sessions + 1]
  return wrk.format("DELETE", "/concurrency", headers, json_body(session[1], session[2]))
end

function response(status)
  count(status)
end
