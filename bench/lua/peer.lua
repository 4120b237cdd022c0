-- PEER: PUT / to the Node peer (bench/peer.py), always with the one token it printed at start. The peer
-- verifies every token it is given, so this is the work of a heartbeat whose token another worker signed.
-- args: [1] file of one "sessionKey token" line.

local headers = {["Content-Type"] = "application/json"}
local body

function init(args)
  local sid, token = io.lines(args[1])():match("^(%S+) (%S+)$")
  body = json_body(sid, token)
end

function request()
  return wrk.format("PUT", "/", headers, body)
end

function response(status)
  count(status)
end
