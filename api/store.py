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


@dataclasses.dataclass(frozen=True)
class Admission:
    session: Session
    status: str  # "initiated" or "updated"
    now_ms: int


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

    def bucket_key(self, user):
        """Return the hash holding `user`'s sessions; its tag is a hash, so ids never pick a slot."""
        digest = hashlib.blake2b(user.encode(), digest_size=8).digest()
        return "cs:{%x}" % (int.from_bytes(digest, "big") % self._buckets)

    def admit(self, user, device, stream, limit, ttl_ms):
        """Start a session, or renew the same user+device+stream; raise LimitReached at the limit."""
        args = (
            escape(user),
            escape(device),
            escape(stream),
            self._new_sid(),
            ttl_ms,
            limit,
        )
        reply = self._call(self._admit, user, args)
        status = reply[0].decode()
        if status == "limit":
            raise LimitReached(
                f"user already plays {limit} of {limit} allowed streams",
                sessions=_holders(reply[2:]),
            )
        session = Session(user, reply[1].decode(), device, stream)
        return Admission(session, status, int(reply[2]))

    def refresh(self, session, ttl_ms):
        """Extend a live session; raise SessionGone if it ended or expired. Return server ms."""
        reply = self._call(self._refresh, session.user, (session.sid, escape(session.user), ttl_ms))
        if reply[0] == b"gone":
            raise SessionGone("session has ended or expired; stop playback", reason="ended")
        return int(reply[1])

    def release(self, session):
        """End a session at once; return whether it was live."""
        return bool(self._call(self._release, session.user, (session.sid, escape(session.user))))

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


def _holders(flat):
    return [
        {
            "sessionKey": flat[i].decode(),
            "started": int(flat[i + 1], 36) // 1000,
            "deviceId": unescape(flat[i + 2].decode()),
            "streamId": unescape(flat[i + 3].decode()),
        }
        for i in range(0, len(flat), 4)
    ]
