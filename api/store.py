"""The Redis session store: admit, refresh and release sessions, one script call each."""

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import RedisClusterException, RedisError

from . import lua
from .cluster import LazyCluster
from .errors import LimitReached, SessionGone, StoreUnavailable
from .pipeline import FastScript, Pipeline
from .sessions import Admission, Limits, Session, new_session_id

log = logging.getLogger(__name__)

Script = Callable[..., Any]  # called as script(keys=[...], args=[...])
_REFUSALS = {"limit": "account", "stream_limit": "stream"}


def escape(value: str) -> str:
    """Make an id safe to store between `|` separators."""
    return value.replace("%", "%25").replace("|", "%7C")


def unescape(value: str) -> str:
    return value.replace("%7C", "|").replace("%25", "%")


class RedisStore:
    """Sessions of all users in Redis hashes, one bucket per group of users."""

    def __init__(
        self,
        client: redis.Redis | LazyCluster,
        buckets: int,
        new_sid: Callable[[], str] = new_session_id,
        timeout_s: float = 0.25,
    ) -> None:
        self._client = client
        self._buckets = buckets
        self._new_sid = new_sid
        self._timeout_ms = int(timeout_s * 1000)
        self._server_offset_ms: int | None = None  # Redis clock minus this process's monotonic clock
        self._pipeline = None
        register: Callable[[str], Script]
        if isinstance(client, redis.Redis):  # the fast path; a cluster routes each call by its key
            self._pipeline = Pipeline(client)
            register = functools.partial(FastScript, self._pipeline)
        else:
            register = client.register_script
        self._admit = register(lua.ADMIT)
        self._refresh = register(lua.REFRESH)
        self._release = register(lua.RELEASE)
        self._kick = register(lua.KICK)
        self._list = register(lua.LIST)

    def _learn_server_time(self, now_ms: int) -> None:
        self._server_offset_ms = now_ms - time.monotonic_ns() // 1_000_000

    def _deadline_ms(self) -> int:
        """Return the Redis time after which a start must not run (0: not known yet).

        A start sent just before Redis hangs runs when it wakes, long after its player was told 503:
        it would hold a slot nobody plays. Redis refuses it once its answer would come too late."""
        if self._server_offset_ms is None:  # learned from the first answer of Redis
            return 0
        return time.monotonic_ns() // 1_000_000 + self._server_offset_ms + self._timeout_ms

    def bucket_key(self, user: str) -> str:
        """Return the hash holding `user`'s sessions; its tag is a hash, so ids never pick a slot."""
        digest = hashlib.blake2b(user.encode(), digest_size=8).digest()
        return "cs:{%x}" % (int.from_bytes(digest, "big") % self._buckets)

    def admit(
        self, user: str, device: str, stream: str, limits: Limits, ttl_ms: int, tombstone_ms: int
    ) -> Admission:
        """Start a session or renew the same user+device+stream; at a limit evict or raise LimitReached."""
        evict = "1" if limits.evict_oldest else "0"
        args: tuple[object, ...] = (escape(user), escape(device), escape(stream), self._new_sid(), ttl_ms)
        args += (limits.limit, limits.stream_limit, evict, tombstone_ms, self._deadline_ms())
        reply = self._call(self._admit, user, args)
        status, now_ms = reply[0].decode(), int(reply[1])
        self._learn_server_time(now_ms)
        if status == "late":
            raise StoreUnavailable("session store answered too late; retry shortly")
        if status in _REFUSALS:
            scope = _REFUSALS[status]
            limit = limits.limit if scope == "account" else limits.stream_limit
            raise LimitReached(scope, limit, _sessions(user, reply[2:]))
        session = Session(user, reply[2].decode(), device, stream)
        return Admission(session, status, now_ms, tuple(sid.decode() for sid in reply[3:]))

    def refresh(
        self, session: Session, ttl_ms: int, token_exp_ms: int = 0, limit: int = 0, stream_limit: int = 0
    ) -> tuple[str, int]:
        """Extend a live session, or resume a lost one; raise SessionGone(reason) if it ended.

        Return (status, server ms) with status "updated" or "resumed"."""
        args: tuple[object, ...] = (session.sid, escape(session.user), ttl_ms, token_exp_ms, limit)
        args += (escape(session.device), escape(session.stream), stream_limit)
        reply = self._call(self._refresh, session.user, args)
        status, now_ms = reply[0].decode(), int(reply[1])
        self._learn_server_time(now_ms)
        if status == "gone":
            raise SessionGone(reply[2].decode())
        return status, now_ms

    def release(self, session: Session, tombstone_ms: int) -> bool:
        """End a session at once; return whether it was live."""
        args = (session.sid, escape(session.user), tombstone_ms)
        return bool(self._call(self._release, session.user, args))

    def kick(self, user: str, sid: str | None, tombstone_ms: int) -> list[str]:
        """End one session of `user` (or all when `sid` is None); return the sids ended."""
        reply = self._call(self._kick, user, (escape(user), sid or "", tombstone_ms))
        return [sid.decode() for sid in reply]

    def sessions(self, user: str) -> tuple[int, list[Session]]:
        """Return (server ms, the live sessions of `user`, oldest first)."""
        reply = self._call(self._list, user, (escape(user),))
        return int(reply[0]), _sessions(user, reply[1:])

    def ping(self) -> bool:
        """Whether Redis answers, through the same gate as the scripts."""
        try:
            if self._pipeline:
                return self._pipeline.execute("PING") in (b"PONG", "PONG")
            return bool(self._client.ping())
        except (RedisError, RedisClusterException):
            return False

    def _call(self, script: Script, user: str, args: Sequence[object]) -> Any:
        try:
            return script(keys=[self.bucket_key(user)], args=args)
        except (RedisError, RedisClusterException) as exc:
            log.warning("redis unavailable: %s", exc)
            raise StoreUnavailable() from None


def _sessions(user: str, flat: Sequence[bytes]) -> list[Session]:
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
