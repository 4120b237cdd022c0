"""Lua scripts: one per operation, so each costs one Redis round trip.

Data model. Each user's sessions live in one Redis hash of their own, `c:<digest>`, where the digest
is 72 bits of BLAKE2b of the user id in base64url (api/store.py): no id, whatever it holds, can pick a
cluster slot, break a key or share another user's key, and every script touches that one key only. One
field per session:

    field  sid (12 url-safe chars)
    value  <expires><started><device>|<stream>     a live session
           ~<until><reason>                        an ended one (stopped, kicked, evicted)

Times are milliseconds of the Redis server clock (`TIME`) since 2025-01-01, 8 base-36 digits each (good
until 2114); device and stream ids are escaped by the app so they contain no `|`. Every byte counts: a
live session costs less than 1.3 times the seed's one string key per session (docs/performance.md).

An ended session leaves a tombstone until every token it was given has expired, so a heartbeat can tell
the player why it ended and can never resume it. A user keeps at most MAX_TOMBSTONES of them (the
stopped ones go first, then the oldest): a start/stop loop cannot grow its hash, and whatever a dropped
tombstone would let back in is held out by a mark (the field `~`, which no sid can be: the latest end of
the tombstones dropped, and its reason): while it lives no session of the user is resumed, and a heartbeat
of a session without an entry answers 410 with the mark's reason. Every script reads only its user's hash,
so one account's work is bounded by its own sessions and tombstones. Small hashes stay in Redis's
compact listpack encoding. The key's TTL is pushed to the latest time it must keep, so an idle user's
hash disappears by itself; whatever expired is pruned whenever a script reads the hash.
"""

import hashlib
from typing import NamedTuple

MAX_TOMBSTONES = 16
EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: times are stored relative to it

PRELUDE = (
    f"local EPOCH_MS, MAX_TOMBSTONES = {EPOCH_MS}, {MAX_TOMBSTONES}\n"
    + """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000) - EPOCH_MS
local key = KEYS[1]
local DIGITS = '0123456789abcdefghijklmnopqrstuvwxyz'
local MARK = '~'  -- a field no sid can be: what `bury` dropped still ends sessions (see `mark`)
-- A time in 8 base-36 digits.
local function b36(n)
  local s = ''
  for _ = 1, 8 do
    local d = n % 36
    s = string.sub(DIGITS, d + 1, d + 1) .. s
    n = (n - d) / 36
  end
  return s
end
-- Returns {sid, exp, start, device, stream} for a live session, {sid, exp, reason} for a tombstone.
local function parse(sid, v)
  if string.sub(v, 1, 1) == '~' then
    return {sid = sid, exp = tonumber(string.sub(v, 2, 9), 36), reason = string.sub(v, 10)}
  end
  local device, stream = string.match(string.sub(v, 17), '^([^|]*)|(.*)$')
  return {sid = sid, exp = tonumber(string.sub(v, 1, 8), 36), start = string.sub(v, 9, 16),
          device = device, stream = stream}
end
local function keep_until(ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
local function put(sid, exp, start, device, stream, ttl)
  redis.call('HSET', key, sid, b36(exp) .. start .. device .. '|' .. stream)
  keep_until(ttl)
end
local function renew(s, ttl)
  put(s.sid, now + ttl, s.start, s.device, s.stream, ttl)
end
local function add(sid, device, stream, ttl)
  put(sid, now + ttl, b36(now), device, stream, ttl)
end
-- Reads the user's hash, deleting what expired; returns the live sessions and the tombstones.
local function load()
  local live, tombs = {}, {}
  local entries = redis.call('HGETALL', key)
  for i = 1, #entries, 2 do
    local s = parse(entries[i], entries[i + 1])
    if s.exp <= now then
      redis.call('HDEL', key, s.sid)
    elseif s.sid == MARK then
      -- not a session
    elseif s.reason then
      tombs[#tombs + 1] = s
    else
      live[#live + 1] = s
    end
  end
  return live, tombs
end
local function oldest_first(sessions)
  table.sort(sessions, function(a, b) return tonumber(a.start, 36) < tonumber(b.start, 36) end)
  return sessions
end
-- Replaces a session with a tombstone that lives `ttl`; keeps at most MAX_TOMBSTONES of them.
local function bury(sid, reason, ttl, tombs)
  redis.call('HSET', key, sid, '~' .. b36(now + ttl) .. reason)
  keep_until(ttl)
  tombs[#tombs + 1] = {sid = sid, exp = now + ttl, reason = reason}
  if #tombs <= MAX_TOMBSTONES then return end
  table.sort(tombs, function(a, b)
    if (a.reason == 'stopped') ~= (b.reason == 'stopped') then return a.reason == 'stopped' end
    return a.exp < b.exp
  end)
  while #tombs > MAX_TOMBSTONES do
    local dropped = table.remove(tombs, 1)
    redis.call('HDEL', key, dropped.sid)
    local kept = redis.call('HGET', key, MARK)
    if not kept or parse(MARK, kept).exp < dropped.exp then
      redis.call('HSET', key, MARK, '~' .. b36(dropped.exp) .. dropped.reason)
    end
  end
end
-- The mark, while a tombstone dropped by `bury` would still live: {exp, reason} of the latest one.
local function mark()
  local v = redis.call('HGET', key, MARK)
  if not v then return nil end
  local m = parse(MARK, v)
  if m.exp > now then return m end
  return nil
end
-- Appends the sessions to `reply` as sid, started, expires, device, stream (no unpack: its limit is
-- about 8,000 values, and a user's limit may be larger).
local function listed(reply, sessions)
  for _, s in ipairs(sessions) do
    for _, x in ipairs({s.sid, s.start, b36(s.exp), s.device, s.stream}) do reply[#reply + 1] = x end
  end
  return reply
end
"""
)


class Script(NamedTuple):
    """A script: its name, its source and the SHA1 that EVALSHA calls it by."""

    name: str
    source: str
    sha: str


def _script(name: str, body: str) -> Script:
    source = PRELUDE + body
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


# KEYS[1] the user's hash; ARGV[1] device, ARGV[2] stream, ARGV[3] new sid, ARGV[4] ttl ms, ARGV[5] limit,
# ARGV[6] per-stream limit (0: none), ARGV[7] '1' to evict the oldest at a limit, ARGV[8] tombstone ms,
# ARGV[9] deadline (Redis ms; 0: none), ARGV[10] which session to renew: '*' the one of this device and
# stream, a sid that one session only (its holder showed its token), '' none (always a new session),
# ARGV[11] device limit: distinct devices among the user's sessions (0: none).
# The limits are checked in this order: the stream's, the devices', the account's. A device that already
# plays for the user is no new device. At the device limit, evict-oldest ends every session of the least
# recently started device (the one whose latest start is oldest), so the count of devices drops; sessions
# it ends count for the account limit checked next.
# Returns {'late', now} past the deadline | {'initiated', now, sid, evicted sids...} | {'updated', now, sid}
#       | {'limit', 'stream_limit' or 'device_limit', now, holders...} with holders flattened as
#         sid, started, expires, device, stream (times in base 36).
ADMIT = _script(
    "admit",
    """
local deadline = tonumber(ARGV[9])
if deadline > 0 and now + EPOCH_MS > deadline then return {'late', now} end
local device, stream, sid = ARGV[1], ARGV[2], ARGV[3]
local ttl, limit, stream_limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local evict, tomb, renewing = ARGV[7] == '1', tonumber(ARGV[8]), ARGV[10]
local device_limit = tonumber(ARGV[11])
local mine, tombs = load()
local same_stream = {}
for _, s in ipairs(mine) do
  local same = s.device == device and s.stream == stream
  if same and (renewing == '*' or renewing == s.sid) then
    renew(s, ttl)
    return {'updated', now, s.sid}
  end
  if s.stream == stream then same_stream[#same_stream + 1] = s end
end
local evicted = {}
local function evict_session(s)
  s.evicted = true
  bury(s.sid, 'evicted', tomb, tombs)
  evicted[#evicted + 1] = s.sid
end
local function not_evicted()
  local left = {}
  for _, s in ipairs(mine) do if not s.evicted then left[#left + 1] = s end end
  return left
end
local function make_room(holders, max, refusal)
  local excess = #holders - max + 1
  if excess <= 0 then return nil end
  oldest_first(holders)
  if not evict then return listed({refusal, now}, holders) end
  for i = 1, excess do evict_session(holders[i]) end
  return nil
end
if stream_limit > 0 then
  local refused = make_room(same_stream, stream_limit, 'stream_limit')
  if refused then return refused end
end
if device_limit > 0 then
  local left, devices, by_id = not_evicted(), {}, {}
  for _, s in ipairs(left) do
    local d = by_id[s.device]
    if not d then
      d = {id = s.device, latest = -1, sessions = {}}
      by_id[s.device] = d
      devices[#devices + 1] = d
    end
    d.latest = math.max(d.latest, tonumber(s.start, 36))
    d.sessions[#d.sessions + 1] = s
  end
  local excess = #devices - device_limit + 1
  if not by_id[device] and excess > 0 then
    if not evict then return listed({'device_limit', now}, oldest_first(left)) end
    table.sort(devices, function(a, b)
      if a.latest ~= b.latest then return a.latest < b.latest end
      return a.id < b.id
    end)
    for i = 1, excess do
      for _, s in ipairs(devices[i].sessions) do evict_session(s) end
    end
  end
end
local refused = make_room(not_evicted(), limit, 'limit')
if refused then return refused end
add(sid, device, stream, ttl)
local reply = {'initiated', now, sid}
for _, e in ipairs(evicted) do reply[#reply + 1] = e end
return reply
""",
)

# KEYS[1] the user's hash; ARGV[1] sid, ARGV[2] ttl ms, ARGV[3] token expiry ms (0: never resume),
# ARGV[4] limit, ARGV[5] device, ARGV[6] stream, ARGV[7] per-stream limit (0: none), ARGV[8] device limit
# (0: none).
# Extends a live session. A session with no entry at all (lost in a failover or flush) whose token
# is still valid is re-admitted when the user is under all three limits (its device is no new device
# while another session of the user plays on it). Never revives an ended session.
# Returns {'updated', now} | {'resumed', now} | {'gone', now, reason}.
REFRESH = _script(
    "refresh",
    """
local sid, ttl = ARGV[1], tonumber(ARGV[2])
local v = redis.call('HGET', key, sid)
if v then
  local s = parse(sid, v)
  if s.reason then return {'gone', now, s.reason} end
  if s.exp > now then
    renew(s, ttl)
    return {'updated', now}
  end
  -- Expired: gone like a lost session, so the answer never depends on whether a start pruned it.
  redis.call('HDEL', key, sid)
end
local ended = mark()
if ended then return {'gone', now, ended.reason} end
if tonumber(ARGV[3]) - EPOCH_MS <= now then return {'gone', now, 'expired'} end
local mine, same_stream, devices, seen = load(), 0, 0, {}
for _, s in ipairs(mine) do
  if s.stream == ARGV[6] then same_stream = same_stream + 1 end
  if not seen[s.device] then
    seen[s.device] = true
    devices = devices + 1
  end
end
local stream_limit, device_limit = tonumber(ARGV[7]), tonumber(ARGV[8])
if #mine >= tonumber(ARGV[4]) or (stream_limit > 0 and same_stream >= stream_limit)
    or (device_limit > 0 and not seen[ARGV[5]] and devices >= device_limit) then
  return {'gone', now, 'limit'}
end
add(sid, ARGV[5], ARGV[6], ttl)
return {'resumed', now}
""",
)

# KEYS[1] the user's hash; ARGV[1] sid, ARGV[2] tombstone ms.
# Ends the session; its tombstone outlives every token it was given.
# Returns 1 when a live session was ended, 0 otherwise.
RELEASE = _script(
    "release",
    """
local mine, tombs = load()
for _, s in ipairs(tombs) do
  if s.sid == ARGV[1] then return 0 end
end
bury(ARGV[1], 'stopped', tonumber(ARGV[2]), tombs)
for _, s in ipairs(mine) do
  if s.sid == ARGV[1] then return 1 end
end
return 0
""",
)

# KEYS[1] the user's hash; ARGV[1] sid ('' for all of the user's sessions), ARGV[2] tombstone ms.
# Returns the sids it ended.
KICK = _script(
    "kick",
    """
local ended = {}
local mine, tombs = load()
for _, s in ipairs(mine) do
  if ARGV[1] == '' or s.sid == ARGV[1] then
    bury(s.sid, 'kicked', tonumber(ARGV[2]), tombs)
    ended[#ended + 1] = s.sid
  end
end
return ended
""",
)

# KEYS[1] the user's hash.
# Returns {now, sid, started, expires, device, stream, ...} for the user's live sessions, oldest first.
LIST = _script(
    "list",
    """
local mine = load()
return listed({now}, oldest_first(mine))
""",
)

SCRIPTS = (ADMIT, REFRESH, RELEASE, KICK, LIST)
