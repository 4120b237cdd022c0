"""The Redis session store: admit, refresh and release sessions, one script call each."""

import dataclasses
import hashlib
import logging
import secrets

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from . import scripts
from .errors import LimitReached, SessionGone, StoreUnavailable

log = logging.getLogger(__name__)


def new_session_id():
    """Return 96 random bits, url-safe: unguessable and short enough to keep Redis small."""
    return secrets.token_urlsafe(12)


def escape(value):
    """Make an id safe to store between `|` separators."""
    return value.replace("%", "%25").replace("|", "%7C")


def unescape(value):
    return value.replace("%7C", "|").replace("%25", "%")


@dataclasses.dataclass(frozen=True)
class Session:
    user: str
    sid: str
    device: str
    stream: str
    started_ms: int | None = None
    expires_ms: int | None = None


@dataclasses.dataclass(frozen=True)
class Policy:
    """What a user may play: at most `limit` sessions, `stream_limit` of one stream (0: no such limit)."""

    limit: int
    stream_limit: int = 0
    evict_oldest: bool = False


@dataclasses.dataclass(frozen=True)
class Admission:
    session: Session
    status: str  # "initiated" or "updated"
    now_ms: int
    evicted: tuple = ()


def connect(config):
    """Return a redis-py client whose calls fail within the configured timeout."""
    options = {
        "socket_timeout": config.redis_timeout_s,
        "socket_connect_timeout": config.redis_timeout_s,
        "retry": Retry(NoBackoff(), 1),
    }
    if config.redis_mode == "cluster":
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(config.redis_url, cluster_error_retry_attempts=1, **options)
    return redis.Redis.from_url(config.redis_url, **options)


class RedisStore:
    """Sessions of all users in Redis hashes, one bucket per group of users."""

    def __init__(self, client, buckets, new_sid=new_session_id):
        self._client = client
        self._buckets = buckets
        self._new_sid = new_sid
        self._admit = client.register_script(scripts.ADMIT)
        self._refresh = client.register_script(scripts.REFRESH)
        self._release = client.register_script(scripts.RELEASE)
        self._kick = client.register_script(scripts.KICK)
        self._list = client.register_script(scripts.LIST)

    def bucket_key(self, user):
        """Return the hash holding `user`'s sessions; its tag is a hash, so ids never pick a slot."""
        digest = hashlib.blake2b(user.encode(), digest_size=8).digest()
        return "cs:{%x}" % (int.from_bytes(digest, "big") % self._buckets)

    def admit(self, user, device, stream, policy, ttl_ms, tombstone_ms):
        """Start a session or renew the same user+device+stream; at a limit evict or raise LimitReached."""
        evict = "1" if policy.evict_oldest else "0"
        args = (escape(user), escape(device), escape(stream), self._new_sid(), ttl_ms)
        args += (policy.limit, policy.stream_limit, evict, tombstone_ms)
        reply = self._call(self._admit, user, args)
        status, now_ms = reply[0].decode(), int(reply[1])
        if status in ("limit", "stream_limit"):
            limit, what = (policy.limit, "streams") if status == "limit" else (policy.stream_limit, "devices")
            raise LimitReached(
                f"user already plays {limit} of {limit} allowed {what}"
                + (" of this stream" * (what == "devices")),
                limit=limit,
                scope="account" if status == "limit" else "stream",
                sessions=[_public(s) for s in _sessions(user, reply[2:])],
            )
        session = Session(user, reply[2].decode(), device, stream)
        return Admission(session, status, now_ms, tuple(sid.decode() for sid in reply[3:]))

    def refresh(self, session, ttl_ms, token_exp_ms=0, limit=0):
        """Extend a live session, or resume a lost one; raise SessionGone(reason) if it ended.

        Return (status, server ms) with status "updated" or "resumed"."""
        args = (session.sid, escape(session.user), ttl_ms, token_exp_ms, limit)
        args += (escape(session.device), escape(session.stream))
        reply = self._call(self._refresh, session.user, args)
        status, now_ms = reply[0].decode(), int(reply[1])
        if status == "gone":
            reason = reply[2].decode()
            raise SessionGone(f"session has ended ({reason}); stop playback", reason=reason)
        return status, now_ms

    def release(self, session, tombstone_ms):
        """End a session at once; return whether it was live."""
        args = (session.sid, escape(session.user), tombstone_ms)
        return bool(self._call(self._release, session.user, args))

    def kick(self, user, sid, tombstone_ms):
        """End one session of `user` (or all when `sid` is None); return the sids ended."""
        reply = self._call(self._kick, user, (escape(user), sid or "", tombstone_ms))
        return [sid.decode() for sid in reply]

    def sessions(self, user):
        """Return (server ms, the live sessions of `user`, oldest first)."""
        reply = self._call(self._list, user, (escape(user),))
        return int(reply[0]), _sessions(user, reply[1:])

    def ping(self):
        try:
            return bool(self._client.ping())
        except (RedisError, RedisClusterException):
            return False

    def _call(self, script, user, args):
        try:
            return script(keys=[self.bucket_key(user)], args=args)
        except (RedisError, RedisClusterException) as exc:
            log.warning("redis unavailable: %s", exc)
            raise StoreUnavailable("session store is unavailable; retry shortly") from None


def _sessions(user, flat):
    """Decode the scripts' flattened listing: sid, started, expires, device, stream (times base 36)."""
    return [
        Session(
            user,
            flat[i].decode(),
            unescape(flat[i + 3].decode()),
            unescape(flat[i + 4].decode()),
            started_ms=int(flat[i + 1], 36),
            expires_ms=int(flat[i + 2], 36),
        )
        for i in range(0, len(flat), 5)
    ]


def _public(session):
    """Return a session as the 403 listing shows it."""
    return {
        "sessionKey": session.sid,
        "deviceId": session.device,
        "streamId": session.stream,
        "started": session.started_ms // 1000,
    }
