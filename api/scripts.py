"""Lua scripts: one per operation, so each costs one Redis round trip.

Data model. Users are spread over a fixed number of buckets by a hash of their id; a bucket is
one Redis hash `cs:{<bucket>}` (the braces make it one cluster slot), holding one field per
session:

    field  sid (16 url-safe chars)
    value  <expires>|<started>|<user>|<device>|<stream>

Times are milliseconds of the Redis server clock (`TIME`) in base 36; ids are escaped by the app
so they contain no `|`. Small buckets stay in Redis's compact listpack encoding, which is what
keeps a session smaller than the seed's one key per slot. The bucket's own TTL is pushed to the
latest expiry it holds, so an idle bucket disappears by itself; expired fields are pruned
whenever a start scans the bucket.
"""

PRELUDE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
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
local function parse(v)
  local exp, start, user, device, stream = string.match(v, '^(%w+)|(%w+)|([^|]*)|([^|]*)|(.*)$')
  return tonumber(exp, 36), start, user, device, stream
end
local function pack(exp, start, user, device, stream)
  return b36(exp) .. '|' .. start .. '|' .. user .. '|' .. device .. '|' .. stream
end
local function keep_until(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS[1] bucket; ARGV[1] user, ARGV[2] device, ARGV[3] stream, ARGV[4] new sid,
# ARGV[5] ttl ms, ARGV[6] limit.
# Returns {'initiated', sid, now} | {'updated', sid, now}
#       | {'limit', now, sid, started, device, stream, ...} listing the sessions that hold it.
ADMIT = (
    PRELUDE
    + """
local key, user, device, stream = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local ttl, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local holders = {}
local entries = redis.call('HGETALL', key)
for i = 1, #entries, 2 do
  local sid = entries[i]
  local exp, start, u, d, s = parse(entries[i + 1])
  if exp <= now then
    redis.call('HDEL', key, sid)
  elseif u == user then
    if d == device and s == stream then
      redis.call('HSET', key, sid, pack(now + ttl, start, u, d, s))
      keep_until(key, ttl)
      return {'updated', sid, now}
    end
    for _, x in ipairs({sid, start, d, s}) do holders[#holders + 1] = x end
  end
end
if #holders / 4 >= limit then
  return {'limit', now, unpack(holders)}
end
redis.call('HSET', key, ARGV[4], pack(now + ttl, b36(now), user, device, stream))
keep_until(key, ttl)
return {'initiated', ARGV[4], now}
"""
)

# KEYS[1] bucket; ARGV[1] sid, ARGV[2] user, ARGV[3] ttl ms.
# Returns {'updated', now} | {'gone', now} when the session ended or expired; never recreates one.
REFRESH = (
    PRELUDE
    + """
local key, sid = KEYS[1], ARGV[1]
local v = redis.call('HGET', key, sid)
if not v then return {'gone', now} end
local exp, start, u, d, s = parse(v)
if u ~= ARGV[2] then return {'gone', now} end
if exp <= now then
  redis.call('HDEL', key, sid)
  return {'gone', now}
end
local ttl = tonumber(ARGV[3])
redis.call('HSET', key, sid, pack(now + ttl, start, u, d, s))
keep_until(key, ttl)
return {'updated', now}
"""
)

# KEYS[1] bucket; ARGV[1] sid, ARGV[2] user.
# Returns 1 when a session was removed, 0 when there was none.
RELEASE = (
    PRELUDE
    + """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local exp, start, u = parse(v)
if u ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""
)
