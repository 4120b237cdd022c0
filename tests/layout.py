"""The one decoder of the Redis layout (api/lua.py) for tests: what Redis holds, read back directly.

A user's sessions live under `user_key(user)`: entries name that key, not the user (it is not stored)."""

import collections

from api.lua import EPOCH_MS
from api.store import KEY_PREFIX, unescape, user_key

SESSION_KEYS = f"{KEY_PREFIX}*"
MARK = "~"  # the field of a user's mark, which no sid can be

Entry = collections.namedtuple("Entry", "key device stream expires_ms")


def redis_now_ms(client):
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def _fields(client):
    for key in client.scan_iter(match=SESSION_KEYS):
        for sid, value in client.hgetall(key).items():
            yield key.decode(), sid.decode(), value.decode()


def stored_sessions(client, live_only=False):
    """Return {sid: Entry} of every stored session; with `live_only`, only those not yet expired."""
    now_ms = redis_now_ms(client)
    found = {}
    for key, sid, value in _fields(client):
        if value.startswith("~"):  # the tombstone of an ended session
            continue
        device, _, stream = value[16:].partition("|")
        entry = Entry(key, unescape(device), unescape(stream), int(value[:8], 36) + EPOCH_MS)
        if not live_only or entry.expires_ms > now_ms:
            found[sid] = entry
    return found


def tombstones(client):
    """Return {sid: reason} of the ended sessions whose tombstones have not expired."""
    now_ms = redis_now_ms(client)
    found = {}
    for _key, sid, value in _fields(client):
        if sid != MARK and value.startswith("~") and int(value[1:9], 36) + EPOCH_MS > now_ms:
            found[sid] = value[9:]
    return found


def marks(client):
    """Return {key: reason} of the users' marks: what dropped tombstones hold out (api/lua.py)."""
    return {key: value[9:] for key, sid, value in _fields(client) if sid == MARK}


def live_sessions(client, user=None):
    """Return {sid: (user_key(user), device, stream)} of the live sessions (of `user`, if given)."""
    return {
        sid: (e.key, e.device, e.stream)
        for sid, e in stored_sessions(client, live_only=True).items()
        if user is None or e.key == user_key(user)
    }


def stored(client):
    """Return (live_sessions, tombstones)."""
    return live_sessions(client), tombstones(client)


def redis_state(client):
    """Return every key with its type and content: equal before and after means nothing was written."""
    state = {}
    for key in client.scan_iter():
        kind = client.type(key).decode()
        content = client.hgetall(key) if kind == "hash" else client.dump(key)
        state[key] = (kind, content)
    return state
