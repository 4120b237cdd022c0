"""Scripts over asyncio: one connection per worker's event loop, the calls of one loop turn in one write.

The event loop's fast path (api/front.py) awaits the store's calls here instead of giving each request
a thread: no thread hand-off, no lock, and every call made while the loop runs one batch of requests
goes to Redis in one write, its replies read back in order by hiredis. A call fails (with redis-py's
ConnectionError or TimeoutError, as the blocking runner's do) when Redis does not answer within the
timeout; after a timeout every call fails at once for a moment, as api/pipeline.py does, so a hung
Redis cannot pile requests up. Only a standalone Redis: in cluster mode the front runs the calls on
threads over the cluster client instead.
"""

import asyncio
import collections
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as StoreConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as StoreTimeoutError

from .lua import Script

PAUSE_AFTER_TIMEOUT_S = 0.5


class AsyncRunner:
    """Run scripts on a standalone Redis over one asyncio connection."""

    def __init__(self, url: str, timeout_s: float, options: Mapping[str, Any]) -> None:
        """Connect to `url` with the options api/connection.py gives redis-py: credentials and TLS."""
        parsed = parse_url(url)
        self._host = parsed.get("host", "127.0.0.1")
        self._port = int(parsed.get("port", 6379))
        self._db = int(parsed.get("db", 0))
        self._username, self._password = options.get("username"), options.get("password")
        self._ssl = None
        if url.startswith("rediss://"):
            self._ssl = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
            self._ssl.check_hostname = bool(
                parsed.get("ssl_check_hostname", options.get("ssl_check_hostname"))
            )
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._down_until = 0.0

    async def run(self, script: Script, key: str, args: Sequence[object]) -> Any:
        reply = await self._call((b"EVALSHA", script.sha, 1, key, *args))
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
            reply = await self._call((b"EVAL", script.source, 1, key, *args))  # it loads the script too
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def ping(self) -> bool:
        return await self._call((b"PING",)) == b"PONG"

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close(StoreConnectionError("the store was closed"))

    async def _call(self, args: tuple[object, ...]) -> Any:
        if time.monotonic() < self._down_until:
            raise StoreConnectionError("redis timed out less than a moment ago; not trying again yet")
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        try:
            return await connection.call(_encode(args))
        except StoreTimeoutError:
            self._down_until = time.monotonic() + PAUSE_AFTER_TIMEOUT_S
            raise

    async def _connect(self) -> "_Connection":
        """Open the connection once, however many calls are waiting for it."""
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            try:
                self._connection = await self._open()
                self._connecting.set_result(self._connection)
            except Exception as exc:
                self._connecting.set_exception(exc)
                self._connecting.exception()  # retrieved: the callers waiting get it
                raise
            finally:
                self._connecting = None
            return self._connection
        return await self._connecting

    async def _open(self) -> "_Connection":
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(loop, self._timeout_s),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                ),
                self._timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise StoreConnectionError(
                f"cannot connect to redis at {self._host}:{self._port}: {exc}"
            ) from None
        hello: list[tuple[object, ...]] = []
        if self._password is not None:
            credentials = (self._username, self._password) if self._username else (self._password,)
            hello.append((b"AUTH", *credentials))
        if self._db:
            hello.append((b"SELECT", self._db))
        for reply in await asyncio.gather(*(connection.call(_encode(args)) for args in hello)):
            if isinstance(reply, ResponseError):
                connection.close(StoreConnectionError(str(reply)))
                raise StoreConnectionError(f"redis refused the connection: {reply}")
        return connection


class _Connection(asyncio.Protocol):
    """One connection: writes go out once per loop turn, replies come back in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        self._waiting: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self._watch: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def call(self, packed: bytes) -> "asyncio.Future[Any]":
        """Send one command; return the future of its reply (a ResponseError reply is a result)."""
        if self.closed:
            raise StoreConnectionError("the connection to redis is closed")
        future = self._loop.create_future()
        self._waiting.append((self._loop.time() + self._timeout_s, future))
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(packed)
        if self._watch is None:
            self._watch = self._loop.call_at(self._waiting[0][0], self._check_deadline)
        return future

    def _flush(self) -> None:
        if self._transport is not None and not self.closed and self._outgoing:
            self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while self._waiting:
            reply = self._reader.gets()
            if reply is False:
                break
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def _check_deadline(self) -> None:
        self._watch = None
        if not self._waiting:
            return
        deadline = self._waiting[0][0]
        if self._loop.time() >= deadline:
            self.close(StoreTimeoutError("redis did not answer in time"))
        else:
            self._watch = self._loop.call_at(deadline, self._check_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(StoreConnectionError(f"the connection to redis was lost: {exc or 'closed by the server'}"))

    def close(self, error: Exception) -> None:
        """Close the connection and fail every call still waiting, with `error`."""
        self.closed = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._transport is not None:
            self._transport.abort()  # replies still on the way must not be read as later calls'
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)


def _encode(args: tuple[object, ...]) -> bytes:
    """Return a command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)
