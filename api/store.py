"""The Redis session store: admit, refresh and release sessions, one script call each."""

import dataclasses
import functools
import hashlib
import logging
import secrets
import time

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from . import scripts
from .cluster import LazyCluster
from .errors import LimitReached, SessionGone, StoreUnavailable
from .scripting import FastScript, Pipeline

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
    """Return a redis-py client whose calls fail within the configured timeout.

    In cluster mode CONCURRENCY_REDIS_URL is one URL or a comma-separated list of them (startup nodes;
    the first one's credentials and TLS apply to all), and an unreachable cluster is not an error yet."""
    options = {
        "socket_timeout": config.redis_timeout_s,
        "socket_connect_timeout": config.redis_timeout_s,
    }
    if config.redis_mode == "cluster":
        return LazyCluster(config.redis_url, options, retry_after_s=max(1.0, config.redis_timeout_s))
    return redis.Redis.from_url(config.redis_url, retry=Retry(NoBackoff(), 1), **options)


class RedisStore:
    """Sessions of all users in Redis hashes, one bucket per group of users."""

    def __init__(self, client, buckets, new_sid=new_session_id, timeout_s=0.25):
        self._client = client
        self._buckets = buckets
        self._new_sid = new_sid
        self._timeout_ms = int(timeout_s * 1000)
        self._server_offset_ms = None  # Redis clock minus this process's monotonic clock
        self._pipeline = None
        if isinstance(client, redis.Redis):  # the fast path; a cluster routes each call by its key
            self._pipeline = Pipeline(client)
            register = functools.partial(FastScript, self._pipeline)
        else:
            register = client.register_script
        self._admit = register(scripts.ADMIT)
        self._refresh = register(scripts.REFRESH)
        self._release = register(scripts.RELEASE)
        self._kick = register(scripts.KICK)
        self._list = register(scripts.LIST)

    def _learn_server_time(self, now_ms):
        self._server_offset_ms = now_ms - time.monotonic_ns() // 1_000_000

    def _deadline_ms(self):
        """Return the Redis time after which a start must not run (0: not known yet).

        A start sent just before Redis hangs runs when it wakes, long after its player was told 503:
        it would hold a slot nobody plays. Redis refuses it once its answer would come too late."""
        if self._server_offset_ms is None:  # learned from the first answer of Redis
            return 0
        return time.monotonic_ns() // 1_000_000 + self._server_offset_ms + self._timeout_ms

    def bucket_key(self, user):
        """Return the hash holding `user`'s sessions; its tag is a hash, so ids never pick a slot."""
        digest = hashlib.blake2b(user.encode(), digest_size=8).digest()
        return "cs:{%x}" % (int.from_bytes(digest, "big") % self._buckets)

    def admit(self, user, device, stream, policy, ttl_ms, tombstone_ms):
        """Start a session or renew the same user+device+stream; at a limit evict or raise LimitReached."""
        evict = "1" if policy.evict_oldest else "0"
        args = (escape(user), escape(device), escape(stream), self._new_sid(), ttl_ms)
        args += (policy.limit, policy.stream_limit, evict, tombstone_ms, self._deadline_ms())
        reply = self._call(self._admit, user, args)
        status, now_ms = reply[0].decode(), int(reply[1])
        self._learn_server_time(now_ms)
        if status == "late":
            raise StoreUnavailable("session store answered too late; retry shortly")
        if status == "limit":
            limit = policy.limit
            raise _limit_reached(
                f"user already plays {limit} of {limit} allowed streams", limit, "account", user, reply
            )
        if status == "stream_limit":
            limit = policy.stream_limit
            raise _limit_reached(
                f"this stream already plays on {limit} devices", limit, "stream", user, reply
            )
        session = Session(user, reply[2].decode(), device, stream)
        return Admission(session, status, now_ms, tuple(sid.decode() for sid in reply[3:]))

    def refresh(self, session, ttl_ms, token_exp_ms=0, limit=0, stream_limit=0):
        """Extend a live session, or resume a lost one; raise SessionGone(reason) if it ended.

        Return (status, server ms) with status "updated" or "resumed"."""
        args = (session.sid, escape(session.user), ttl_ms, token_exp_ms, limit)
        args += (escape(session.device), escape(session.stream), stream_limit)
        reply = self._call(self._refresh, session.user, args)
        status, now_ms = reply[0].decode(), int(reply[1])
        self._learn_server_time(now_ms)
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
        """Whether Redis answers, through the same gate as the scripts."""
        try:
            if self._pipeline:
                return self._pipeline.execute("PING") in (b"PONG", "PONG")
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


def _limit_reached(message, limit, scope, user, reply):
    """Return the refusal of a start, listing the sessions that hold the limit (the reply's tail)."""
    sessions = [_public(s) for s in _sessions(user, reply[2:])]
    return LimitReached(message, limit=limit, scope=scope, sessions=sessions)


def _public(session):
    """Return a session as the 403 listing shows it."""
    return {
        "sessionKey": session.sid,
        "deviceId": session.device,
        "streamId": session.stream,
        "started": session.started_ms // 1000,
    }
