-- HEARTBEAT: PUT /concurrency over many live sessions, in turn. Each heartbeat carries the token
-- that the previous heartbeat of the same session returned: a session waits in a queue from the
-- moment its answer arrives until its next turn.
-- args: [1] file of "sessionKey token" lines, [2] number of wrk threads (they share the file out).

local headers = {["Content-Type"] = "application/json"}
local queue, head, tail = {}, 1, 0
local last

function init(args)
  for _, session in ipairs(read_sessions(args[1], tonumber(args[2]))) do
    tail = tail + 1
    queue[tail] = session
  end
end

function request()
  local session
  if head <= tail then
    session = queue[head]
    queue[head] = nil
    head = head + 1
  else
    -- More requests in flight than sessions left (only after failures): reuse the last one.
    session = last
    reused = reused + 1
  end
  last = session
  return wrk.format("PUT", "/concurrency", headers, json_body(session[1], session[2]))
end

function response(status, _, body)
  count(status)
  if status == 200 then
    local sid = body:match('"sessionKey"%s*:%s*"([^"]+)"')
    local token = body:match('"token"%s*:%s*"([^"]+)"')
    if sid and token then
      tail = tail + 1
      queue[tail] = {sid, token}
    end
  end
end
