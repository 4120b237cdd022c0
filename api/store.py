"""The Redis session store: admit, refresh and release sessions, one script call each."""

import base64
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from . import lua
from .errors import LimitReached, SessionGone, StoreFailed, StoreUnavailable
from .lua import EPOCH_MS
from .pipeline import PipelineRunner
from .sessions import Admission, Limits, Session, new_session_id

log = logging.getLogger(__name__)

RENEW_SAME, RENEW_NONE = "*", ""
_REFUSALS = {"limit": "account", "stream_limit": "stream", "device_limit": "device"}
ROUNDING_MS = 10  # what the two clocks' whole milliseconds can put a bound off by, with room to spare
KEY_PREFIX = "c:"  # short: a key of at most 14 bytes takes 8 bytes less of Redis's memory


def user_key(user: str) -> str:
    """Return the Redis hash of `user`'s sessions: 72 bits of BLAKE2b, so no id can pick or share a key."""
    digest = hashlib.blake2b(user.encode(), digest_size=9, person=b"concurrency").digest()
    return KEY_PREFIX + base64.urlsafe_b64encode(digest).decode()


def escape(value: str) -> str:
    """Make an id safe to store between `|` separators."""
    return value.replace("%", "%25").replace("|", "%7C")


def unescape(value: str) -> str:
    return value.replace("%7C", "|").replace("%25", "%")


class Runner(Protocol):
    """What runs the scripts: over one pipelined connection, a cluster client, or asyncio (api/aio.py)."""

    async def run(self, script: lua.Script, key: str, args: Sequence[object]) -> Any: ...

    async def ping(self) -> bool: ...

    def close(self) -> None: ...


class RedisStore:
    """The sessions of each user in a Redis hash of their own.

    Its calls are coroutines. Over a blocking runner (a redis-py client) they never suspend and run to
    completion on the calling thread (api/sync.py); over the asyncio runner they await the reply."""

    def __init__(
        self,
        client: Runner | redis.Redis | RedisCluster,
        new_sid: Callable[[], str] = new_session_id,
        timeout_s: float = 0.25,
    ) -> None:
        self._runner = _runner_of(client)
        self._new_sid = new_sid
        self._timeout_ms = int(timeout_s * 1000)
        self._server_offset_ms: int | None = None  # Redis clock minus this process's monotonic clock

    def _learn_server_time(self, now_ms: int, sent_ms: int) -> None:
        """Learn the Redis clock from a script that ran at Redis time `now_ms`, sent at local `sent_ms`.

        The script ran between its sending and now, so the offset lies between `now_ms - now` and
        `now_ms - sent_ms`. The highest lower bound seen is kept: a deadline built on it is never later
        than the player's own timeout (no start runs after its player was told 503), and an answer read
        late (a stall, the GIL) lowers no bound, so it never makes the next start late. An upper bound
        clearly under the kept one (past the milliseconds both clocks round off) means the Redis clock
        went back: start again from this answer."""
        lower, upper = now_ms - _local_ms(), now_ms - sent_ms
        known = self._server_offset_ms
        if known is None or upper < known - ROUNDING_MS or lower > known:
            self._server_offset_ms = lower

    def _deadline_ms(self, sent_ms: int) -> int:
        """Return the Redis time after which a start sent at local `sent_ms` must not run (0: none yet).

        A start sent just before Redis hangs runs when it wakes, long after its player was told 503:
        it would hold a slot nobody plays. Redis refuses it once its answer would come too late."""
        if self._server_offset_ms is None:  # learned from the first answer of Redis
            return 0
        return sent_ms + self._server_offset_ms + self._timeout_ms

    async def admit(
        self,
        user: str,
        device: str,
        stream: str,
        limits: Limits,
        ttl_ms: int,
        tombstone_ms: int,
        renew: str = RENEW_SAME,
    ) -> Admission:
        """Start a session, or renew one of the same device and stream; at a limit evict or refuse.

        `renew` says which may be renewed: RENEW_SAME (the caller speaks for the user), a sid (the caller
        showed that session's token) or RENEW_NONE (anyone could be asking: always a new session)."""
        evict = "1" if limits.evict_oldest else "0"
        sent_ms = _local_ms()
        deadline = self._deadline_ms(sent_ms)
        args: tuple[object, ...] = (escape(device), escape(stream), self._new_sid(), ttl_ms, limits.limit)
        args += (limits.stream_limit, evict, tombstone_ms, deadline, renew, limits.device_limit)
        reply = await self._call(lua.ADMIT, user, args)
        status, now_ms = reply[0].decode(), int(reply[1]) + EPOCH_MS
        self._learn_server_time(now_ms, sent_ms)
        if status == "late":
            raise StoreUnavailable("session store answered too late; retry shortly")
        if status in _REFUSALS:
            scope = _REFUSALS[status]
            limit = getattr(limits, status)  # each refusal is named after the field of Limits it hit
            raise LimitReached(scope, limit, _sessions(user, reply[2:]))
        session = Session(user, reply[2].decode(), device, stream)
        return Admission(session, status, now_ms, tuple(sid.decode() for sid in reply[3:]))

    async def refresh(
        self,
        session: Session,
        ttl_ms: int,
        token_exp_ms: int = 0,
        limit: int = 0,
        stream_limit: int = 0,
        device_limit: int = 0,
    ) -> tuple[str, int]:
        """Extend a live session, or resume a lost one; raise SessionGone(reason) if it ended.

        Return (status, server ms) with status "updated" or "resumed"."""
        args: tuple[object, ...] = (session.sid, ttl_ms, token_exp_ms, limit, escape(session.device))
        args += (escape(session.stream), stream_limit, device_limit)
        sent_ms = _local_ms()
        reply = await self._call(lua.REFRESH, session.user, args)
        status, now_ms = reply[0].decode(), int(reply[1]) + EPOCH_MS
        self._learn_server_time(now_ms, sent_ms)
        if status == "gone":
            raise SessionGone(reply[2].decode())
        return status, now_ms

    async def release(self, session: Session, tombstone_ms: int) -> bool:
        """End a session at once; return whether it was live."""
        return bool(await self._call(lua.RELEASE, session.user, (session.sid, tombstone_ms)))

    async def kick(self, user: str, sid: str | None, tombstone_ms: int) -> list[str]:
        """End one session of `user` (or all when `sid` is None); return the sids ended."""
        reply = await self._call(lua.KICK, user, (sid or "", tombstone_ms))
        return [sid.decode() for sid in reply]

    async def sessions(self, user: str) -> tuple[int, list[Session]]:
        """Return (server ms, the live sessions of `user`, oldest first)."""
        reply = await self._call(lua.LIST, user, ())
        return int(reply[0]) + EPOCH_MS, _sessions(user, reply[1:])

    async def ping(self) -> bool:
        """Whether Redis answers, through the same gate as the scripts."""
        try:
            return await self._runner.ping()
        except (RedisError, RedisClusterException, OSError):
            return False

    def close(self) -> None:
        """Close this store's own connections (a client's pool is the caller's to close)."""
        self._runner.close()

    async def _call(self, script: lua.Script, user: str, args: Sequence[object]) -> Any:
        try:
            return await self._runner.run(script, user_key(user), args)
        except (RedisError, RedisClusterException, OSError) as exc:
            if _script_failed(exc):
                log.error("the %s script failed: %s", script.name, exc)
                raise StoreFailed() from None
            log.warning("redis unavailable: %s", exc)
            raise StoreUnavailable() from None


def _local_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _script_failed(exc: Exception) -> bool:
    """Whether Redis says one of our scripts failed (a bug: 500), not that it cannot serve now (503).

    Either way the error names the script; a failure of the script itself is an `ERR` (which redis-py
    strips), where Redis being unable to serve has its own code (`OOM`, `READONLY`, `MASTERDOWN`...)."""
    text = str(exc)
    if type(exc) is not ResponseError or "@user_script" not in text:
        return False
    code = text.split(" ", 1)[0]
    return code == "ERR" or not code.isupper()


def _sessions(user: str, flat: Sequence[bytes]) -> list[Session]:
    """Decode the scripts' flattened listing: sid, started, expires, device, stream (times base 36)."""
    return [
        Session(
            user,
            flat[i].decode(),
            unescape(flat[i + 3].decode()),
            unescape(flat[i + 4].decode()),
            started_ms=int(flat[i + 1], 36) + EPOCH_MS,
            expires_ms=int(flat[i + 2], 36) + EPOCH_MS,
        )
        for i in range(0, len(flat), 5)
    ]


class _ClientRunner:
    """Scripts through any redis-py client's own machinery (a plain RedisCluster, in the tests)."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._scripts = {s.name: client.register_script(s.source) for s in lua.SCRIPTS}

    async def run(self, script: lua.Script, key: str, args: Sequence[object]) -> Any:
        return self._scripts[script.name](keys=[key], args=list(args))  # type: ignore[arg-type]

    async def ping(self) -> bool:
        return bool(self._client.ping())

    def close(self) -> None:
        pass  # the client is its owner's


def _runner_of(client: Runner | redis.Redis | RedisCluster) -> Runner:
    if isinstance(client, redis.Redis):
        return PipelineRunner(client)
    if isinstance(client, RedisCluster):
        return _ClientRunner(client)
    return client
