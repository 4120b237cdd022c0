"""The one decoder of the Redis layout (api/lua.py) for tests: what Redis holds, read back directly."""

import collections

from api.store import unescape

SESSION_KEYS = "cs:*"

Entry = collections.namedtuple("Entry", "user device stream expires_ms")


def redis_now_ms(client):
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def _fields(client):
    for key in client.scan_iter(match=SESSION_KEYS):
        for sid, value in client.hgetall(key).items():
            yield sid.decode(), value.decode()


def stored_sessions(client, live_only=False):
    """Return {sid: Entry} of every stored session; with `live_only`, only those not yet expired."""
    now_ms = redis_now_ms(client)
    found = {}
    for sid, value in _fields(client):
        if value.startswith("~"):  # the tombstone of an ended session
            continue
        expires, _started, user, device, stream = value.split("|")
        entry = Entry(unescape(user), unescape(device), unescape(stream), int(expires, 36))
        if not live_only or entry.expires_ms > now_ms:
            found[sid] = entry
    return found


def tombstones(client):
    """Return {sid: reason} of the ended sessions whose tombstones have not expired."""
    now_ms = redis_now_ms(client)
    found = {}
    for sid, value in _fields(client):
        if value.startswith("~"):
            until, _, reason = value[1:].partition("|")
            if int(until, 36) > now_ms:
                found[sid] = reason
    return found


def live_sessions(client, user=None):
    """Return {sid: (user, device, stream)} of the live sessions (of `user`, if given)."""
    return {
        sid: (e.user, e.device, e.stream)
        for sid, e in stored_sessions(client, live_only=True).items()
        if user is None or e.user == user
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
