"""Call Lua scripts with the least work per call: EVALSHA over one pipelined connection per process.

redis-py's `Script` goes through the client's command machinery (pool checkout and return, retry
wrapper, response callbacks, observability hooks) on every call: about 80 µs of CPU against 30 µs
for the same EVALSHA sent on a connection directly. And each round trip costs system calls that
dwarf both when Redis runs on another core (about 50 µs more on the reference machine): so calls
that arrive while a round trip is under way wait for it to end and then go together, in one write
and one read. Under load a worker pays one round trip for many heartbeats.
"""

import _thread
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from .lua import Script

PAUSE_AFTER_TIMEOUT_S = 0.5


def _paused_error() -> ConnectionError:
    return ConnectionError("redis timed out less than a moment ago; not trying again yet")


class _Call:
    __slots__ = ("packed", "reply", "error", "leads", "_ready")

    def __init__(self, packed: list[bytes]) -> None:
        self.packed = packed
        self.reply: Any = None
        self.error: Exception | None = None
        self.leads = False
        self._ready = _thread.allocate_lock()
        self._ready.acquire()

    def wait(self) -> None:
        self._ready.acquire()

    def wake(self) -> None:
        self._ready.release()


class Pipeline:
    """One connection of a redis-py client's pool, shared by the threads of a process.

    The first caller leads: it sends every call waiting, reads their replies and wakes their threads,
    then hands the lead to the oldest call that came in meanwhile. After a timeout every call fails at
    once for `pause_s`: while Redis hangs, requests would otherwise queue far past the timeout. (A
    refused connection fails at once anyway.)"""

    def __init__(self, client: redis.Redis, pause_s: float = PAUSE_AFTER_TIMEOUT_S) -> None:
        self.client = client
        self._connection = client.connection_pool.make_connection()
        self._pause_s = pause_s
        self._down_until = 0.0
        self._lock = threading.Lock()
        self._waiting: list[_Call] = []
        self._busy = False

    def execute(self, *args: object) -> Any:
        """Send one command and return its reply; raise its error."""
        if self._paused():
            raise _paused_error()
        call = _Call(self._connection.pack_command(*args))
        with self._lock:
            self._waiting.append(call)
            leads = not self._busy
            self._busy = True
        if not leads:
            call.wait()
            leads = call.leads
        if leads:
            try:
                with self._lock:
                    batch, self._waiting = self._waiting, []
                self._round_trip(batch)
            finally:  # whatever happened, hand the lead on: a follower must never wait forever
                with self._lock:
                    if self._waiting:
                        successor = self._waiting[0]
                        successor.leads = True
                        successor.wake()
                    else:
                        self._busy = False
        if call.error is not None:
            raise call.error
        return call.reply

    def close(self) -> None:
        """Close the connection; a later call opens a new one."""
        self._connection.disconnect()

    def _paused(self) -> bool:
        return time.monotonic() < self._down_until

    def _round_trip(self, batch: list[_Call]) -> None:
        """Send `batch` once, give each call its reply or error, wake the threads waiting on them.

        Never sent again: a connection lost after the scripts ran would run them twice (a start would
        meet its own new session and be refused). A connection the server has closed since the last
        batch (a restart, a kill) is replaced before sending instead."""
        if self._paused():  # Redis timed out while these calls waited
            return self._finish(batch, 0, _paused_error())
        done = 0
        try:
            self._drop_if_closed()
            parts = [part for call in batch for part in call.packed]
            self._connection.send_packed_command(parts, check_health=False)
            for call in batch:
                try:
                    call.reply = self._connection.read_response()
                except ResponseError as exc:
                    call.error = exc
                done += 1
        except Exception as exc:  # noqa: BLE001 -- every error must reach its calls, or they wait forever
            self._connection.disconnect()  # replies still on the way must not be read as later calls'
            if isinstance(exc, TimeoutError):
                self._down_until = time.monotonic() + self._pause_s
            return self._finish(batch, done, exc)
        return self._finish(batch, done, None)

    def _drop_if_closed(self) -> None:
        """Disconnect a connection the server closed, or one with bytes waiting (none are due)."""
        try:
            stale = self._connection.can_read(timeout=0)  # connects, if not connected
        except ConnectionError:  # closed by the server (or it cannot connect: sending tries once more)
            stale = True
        if stale:
            self._connection.disconnect()

    @staticmethod
    def _finish(batch: list[_Call], done: int, error: Exception | None) -> None:
        for call in batch[done:]:
            call.error = error
        for call in batch:
            if not call.leads:
                call.wake()


class PipelineRunner:
    """Run scripts through a Pipeline: EVALSHA; where Redis lacks the script (a new or restarted server,
    SCRIPT FLUSH), EVAL, which loads it too: the same two commands as in cluster mode (api/cluster.py), and
    the least the Redis user needs.

    Its coroutines never suspend: they block the calling thread for the round trip (api/sync.py)."""

    def __init__(self, client: redis.Redis) -> None:
        self._pipeline = Pipeline(client)

    async def run(self, script: Script, key: str, args: Sequence[object]) -> Any:
        try:
            return self._pipeline.execute("EVALSHA", script.sha, 1, key, *args)
        except NoScriptError:  # EVAL runs it and keeps it for the next EVALSHA: no SCRIPT LOAD to allow
            return self._pipeline.execute("EVAL", script.source, 1, key, *args)

    async def ping(self) -> bool:
        return self._pipeline.execute("PING") in (b"PONG", "PONG")

    def close(self) -> None:
        self._pipeline.close()
