-- Shared by every bench script (the bench prepends it to the op's script).
-- Counts responses by status in each thread and, at the end, prints one machine-readable line:
--   bench-result {"requests": N, "duration_us": N, ..., "statuses": {"200": N}, "reused": N}
-- `reused` counts requests that had to reuse a session because the list of fresh ones ran out.

local threads = {}

-- Pace each connection (a run below saturation) when the bench sets BENCH_DELAY_MS.
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")
if delay_ms then
  function delay()
    return delay_ms
  end
end

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("id", #threads)
end

statuses = {}
reused = 0

function count(status)
  statuses[status] = (statuses[status] or 0) + 1
end

function json_body(sid, token)
  return '{"sessionKey":"' .. sid .. '","token":"' .. token .. '"}'
end

-- Return this thread's share of a file of "sessionKey token" lines: every `threads`-th one.
function read_sessions(path, threads)
  local sessions, i = {}, 0
  for line in io.lines(path) do
    local sid, token = line:match("^(%S+) (%S+)$")
    if sid then
      i = i + 1
      if (i - 1) % threads == id - 1 then sessions[#sessions + 1] = {sid, token} end
    end
  end
  return sessions
end

function done(summary, latency, requests)
  local merged, reused_total = {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + n
    end
    reused_total = reused_total + thread:get("reused")
  end
  local parts = {}
  for status, n in pairs(merged) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    'bench-result {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
    '"statuses": {%s}, "reused": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout,
    table.concat(parts, ", "), reused_total))
end
