"""Lua scripts: one per operation, so each costs one Redis round trip.

Data model. Users are spread over a fixed number of buckets by a hash of their id; a bucket is
one Redis hash `cs:{<bucket>}` (the braces make it one cluster slot), holding one field per
session:

    field  sid (16 url-safe chars)
    value  <expires>|<started>|<user>|<device>|<stream>     a live session
           ~<until>|<reason>                                an ended one (stopped, kicked, evicted)

Times are milliseconds of the Redis server clock (`TIME`) in base 36; ids are escaped by the app
so they contain no `|`. An ended session leaves a tombstone until every token it was given has
expired, so a heartbeat can tell the player why it ended and can never resume it. Small buckets
stay in Redis's compact listpack encoding, which keeps a session smaller than the seed's one key
per slot. The bucket's TTL is pushed to the latest time it must keep, so an idle bucket
disappears by itself; whatever expired is pruned whenever a script scans the bucket.
"""

PRELUDE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local key = KEYS[1]
local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'
local function b36(n)
  local s = ''
  repeat
    local d = n % 36
    s = string.sub(DIGITS, d + 1, d + 1) .. s
    n = (n - d) / 36
  until n == 0
  return s
end
-- Returns a table {sid, exp, start, user, device, stream} for a live session,
-- {sid, until, reason = ...} for a tombstone.
local function parse(sid, v)
  if string.sub(v, 1, 1) == '~' then
    local untl, reason = string.match(v, '^~(%w+)|(.*)$')
    return {sid = sid, exp = tonumber(untl, 36), reason = reason}
  end
  local exp, start, user, device, stream = string.match(v, '^(%w+)|(%w+)|([^|]*)|([^|]*)|(.*)$')
  return {sid = sid, exp = tonumber(exp, 36), start = start, user = user, device = device, stream = stream}
end
local function pack(exp, s)
  return b36(exp) .. '|' .. s.start .. '|' .. s.user .. '|' .. s.device .. '|' .. s.stream
end
local function keep_until(ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
local function renew(s, ttl)
  redis.call('HSET', key, s.sid, pack(now + ttl, s))
  keep_until(ttl)
end
local function add(sid, user, device, stream, ttl)
  local s = {start = b36(now), user = user, device = device, stream = stream}
  redis.call('HSET', key, sid, pack(now + ttl, s))
  keep_until(ttl)
end
local function bury(sid, reason, ttl)
  redis.call('HSET', key, sid, '~' .. b36(now + ttl) .. '|' .. reason)
  keep_until(ttl)
end
-- Returns the live sessions of `user`, oldest start first, pruning whatever expired on the way.
local function sessions_of(user)
  local found = {}
  local entries = redis.call('HGETALL', key)
  for i = 1, #entries, 2 do
    local s = parse(entries[i], entries[i + 1])
    if s.exp <= now then
      redis.call('HDEL', key, s.sid)
    elseif s.user == user then
      found[#found + 1] = s
    end
  end
  table.sort(found, function(a, b) return tonumber(a.start, 36) < tonumber(b.start, 36) end)
  return found
end
local function flatten(sessions)
  local flat = {}
  for _, s in ipairs(sessions) do
    for _, x in ipairs({s.sid, s.start, b36(s.exp), s.device, s.stream}) do flat[#flat + 1] = x end
  end
  return flat
end
"""

# KEYS[1] bucket; ARGV[1] user, ARGV[2] device, ARGV[3] stream, ARGV[4] new sid, ARGV[5] ttl ms,
# ARGV[6] limit, ARGV[7] per-stream limit (0: none), ARGV[8] '1' to evict the oldest at a limit,
# ARGV[9] tombstone ms, ARGV[10] deadline (Redis ms; 0: none).
# Returns {'late', now} past the deadline | {'initiated', now, sid, evicted sids...} | {'updated', now, sid}
#       | {'limit' or 'stream_limit', now, holders...} with holders flattened as
#         sid, started, expires, device, stream (times in base 36).
ADMIT = (
    PRELUDE
    + """
local deadline = tonumber(ARGV[10])
if deadline > 0 and now > deadline then return {'late', now} end
local user, device, stream, sid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl, limit, stream_limit = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local evict, tomb = ARGV[8] == '1', tonumber(ARGV[9])
local mine, same_stream = sessions_of(user), {}
for _, s in ipairs(mine) do
  if s.device == device and s.stream == stream then
    renew(s, ttl)
    return {'updated', now, s.sid}
  end
  if s.stream == stream then same_stream[#same_stream + 1] = s end
end
local evicted = {}
local function make_room(holders, max, refusal)
  local excess = #holders - max + 1
  if excess <= 0 then return nil end
  if not evict then return {refusal, now, unpack(flatten(holders))} end
  for i = 1, excess do
    local s = holders[i]
    s.evicted = true
    bury(s.sid, 'evicted', tomb)
    evicted[#evicted + 1] = s.sid
  end
  return nil
end
if stream_limit > 0 then
  local refused = make_room(same_stream, stream_limit, 'stream_limit')
  if refused then return refused end
end
local left = {}
for _, s in ipairs(mine) do if not s.evicted then left[#left + 1] = s end end
local refused = make_room(left, limit, 'limit')
if refused then return refused end
add(sid, user, device, stream, ttl)
return {'initiated', now, sid, unpack(evicted)}
"""
)

# KEYS[1] bucket; ARGV[1] sid, ARGV[2] user, ARGV[3] ttl ms, ARGV[4] token expiry ms (0: never
# resume), ARGV[5] limit, ARGV[6] device, ARGV[7] stream, ARGV[8] per-stream limit (0: none).
# Extends a live session. A session with no entry at all (lost in a failover or flush) whose token
# is still valid is re-admitted when the user is under both limits. Never revives an ended session.
# Returns {'updated', now} | {'resumed', now} | {'gone', now, reason}.
REFRESH = (
    PRELUDE
    + """
local sid, user, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local v = redis.call('HGET', key, sid)
if v then
  local s = parse(sid, v)
  if s.reason then return {'gone', now, s.reason} end
  if s.user ~= user then return {'gone', now, 'expired'} end
  if s.exp > now then
    renew(s, ttl)
    return {'updated', now}
  end
  -- Expired: gone like a lost session, so the answer never depends on whether a start pruned it.
  redis.call('HDEL', key, sid)
end
if tonumber(ARGV[4]) <= now then return {'gone', now, 'expired'} end
local mine, same_stream = sessions_of(user), 0
for _, s in ipairs(mine) do
  if s.stream == ARGV[7] then same_stream = same_stream + 1 end
end
local stream_limit = tonumber(ARGV[8])
if #mine >= tonumber(ARGV[5]) or (stream_limit > 0 and same_stream >= stream_limit) then
  return {'gone', now, 'limit'}
end
add(sid, user, ARGV[6], ARGV[7], ttl)
return {'resumed', now}
"""
)

# KEYS[1] bucket; ARGV[1] sid, ARGV[2] user, ARGV[3] tombstone ms.
# Ends the session; its tombstone outlives every token it was given.
# Returns 1 when a live session was ended, 0 otherwise.
RELEASE = (
    PRELUDE
    + """
local v = redis.call('HGET', key, ARGV[1])
if v then
  local s = parse(ARGV[1], v)
  if s.reason or s.user ~= ARGV[2] then return 0 end
end
bury(ARGV[1], 'stopped', tonumber(ARGV[3]))
if v then return 1 end
return 0
"""
)

# KEYS[1] bucket; ARGV[1] user, ARGV[2] sid ('' for all of the user's sessions), ARGV[3] tombstone ms.
# Returns the sids it ended.
KICK = (
    PRELUDE
    + """
local ended = {}
for _, s in ipairs(sessions_of(ARGV[1])) do
  if ARGV[2] == '' or s.sid == ARGV[2] then
    bury(s.sid, 'kicked', tonumber(ARGV[3]))
    ended[#ended + 1] = s.sid
  end
end
return ended
"""
)

# KEYS[1] bucket; ARGV[1] user.
# Returns {now, sid, started, expires, device, stream, ...} for the user's live sessions, oldest first.
LIST = (
    PRELUDE
    + """
return {now, unpack(flatten(sessions_of(ARGV[1])))}
"""
)
