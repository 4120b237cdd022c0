"""Each worker's HTTP front: the request id, then the player calls on the loop, the rest through Falcon.

The default server (api/httpserver.py) reads each request whole on the worker's event loop and calls
`handle`. Under granian this is its RSGI app: granian parses HTTP in Rust and cuts off a client that
sends its headers too slowly (CONCURRENCY_HEADER_TIMEOUT); `__rsgi__` then reads the body on the loop,
within CONCURRENCY_BODY_TIMEOUT (else 408) and CONCURRENCY_MAX_BODY_BYTES (else 413). Either way no thread
ever waits on a client. Then:

- the player calls (start, heartbeat and stop: nearly all the traffic) are answered by api/playback.py:
  on the loop itself over the asyncio runner (api/aio.py), or on a thread in cluster mode;
- everything else goes to the Falcon app on a thread of a small pool, as a WSGI server would run it.

Both paths answer alike: the player calls are the same code, and the request id, metrics and access log
are api/observability.py's either way.
"""

import asyncio
import concurrent.futures
import io
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import falcon

from . import sync
from .errors import PayloadTooLarge
from .observability import REQUEST_ID_HEADER, Observer
from .playback import LEGACY, NATIVE, Answer, Playback, Request
from .responses import INTERNAL_ERROR

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]
SESSION_ROUTE = NATIVE + "/{session_id}"
_SESSION_PATH = re.compile(r"/v1/sessions/([A-Za-z0-9_-]{1,256})")
_BODY_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Front:
    """The RSGI app: read each request whole, answer player calls on the loop, the rest through Falcon."""

    def __init__(
        self,
        app: WsgiApp,
        playback: Playback,
        observer: Observer,
        *,
        inline: bool,
        threads: int,
        max_body_bytes: int,
        body_timeout_s: float,
    ) -> None:
        self._app = app
        self._playback = playback
        self._observer = observer
        self._inline = inline  # the playback's store awaits the asyncio runner; else it blocks a thread
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="front")
        self._max_body_bytes = max_body_bytes
        self._body_timeout_s = body_timeout_s

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        """granian's entry: read the body on the loop, within its time and size limits, then answer."""
        started = time.perf_counter()
        try:
            body = await self._body(scope.method, scope.headers, proto)
        except TimeoutError:
            self.refuse(scope, proto, TIMEOUT, started)
        except PayloadTooLarge as exc:
            self.refuse(scope, proto, too_large(exc), started)
        else:
            await self.handle(scope, body, proto, started)

    async def handle(self, scope: Any, body: bytes, proto: Any, started: float) -> None:
        """Answer a request whose body was read whole (api/httpserver.py reads it before calling)."""
        method, path, headers = scope.method, scope.path, scope.headers
        rid = self._observer.begin(headers.get(REQUEST_ID_HEADER))
        call = self._player_call(method, path, headers, body)
        if call is None:
            await self._wsgi(scope, body, proto, rid)
            return
        route, coroutine = call
        try:
            answer = await coroutine if self._inline else await self._on_thread(coroutine)
        except Exception:  # a bug: answered and counted like any request, under its request id
            log.exception("unexpected error on %s %s", method, path)
            answer = Answer(500, INTERNAL_ERROR)
        self._respond(proto, answer, rid)
        self._observer.end(route, method, path, answer.status, answer.media, answer.caller, started)

    def refuse(self, scope: Any, proto: Any, answer: Answer, started: float) -> None:
        """Answer a request refused before any route ran (too slow, too large), counted like the others."""
        rid = self._observer.begin(scope.headers.get(REQUEST_ID_HEADER))
        self._respond(proto, answer, rid)
        method, path = scope.method, scope.path
        self._observer.end(_route(path), method, path, answer.status, answer.media, None, started)

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    async def _body(self, method: str, headers: Any, proto: Any) -> bytes:
        """Read the whole body, or raise TimeoutError (too slow) or PayloadTooLarge (too long)."""
        if method not in _BODY_METHODS:
            return b""
        limit = self._max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge.over(limit)
        chunks, size = [], 0
        async with asyncio.timeout(self._body_timeout_s):
            async for chunk in proto:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge.over(limit)
                chunks.append(chunk)
        return b"".join(chunks)

    def _player_call(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[str, Coroutine[Any, Any, Answer]] | None:
        """Return (route, coroutine) for a start, heartbeat or stop; None for anything else."""
        if path in (LEGACY, NATIVE):
            request = Request(headers.get("authorization"), headers.get("content-type"), body)
            if method == "POST":
                return path, self._playback.start(path, request)
            if path == LEGACY and method == "PUT":
                return path, self._playback.heartbeat(None, request)
            if path == LEGACY and method == "DELETE":
                return path, self._playback.stop(None, request)
            return None
        match = _SESSION_PATH.fullmatch(path)
        if match is None or method not in ("PUT", "DELETE"):
            return None
        request = Request(headers.get("authorization"))
        call = self._playback.heartbeat if method == "PUT" else self._playback.stop
        return SESSION_ROUTE, call(match[1], request)

    async def _on_thread(self, coroutine: Coroutine[Any, Any, Answer]) -> Answer:
        return await asyncio.get_running_loop().run_in_executor(self._pool, sync.run, coroutine)

    @staticmethod
    def _respond(proto: Any, answer: Answer, rid: str) -> None:
        headers = [(REQUEST_ID_HEADER, rid), *answer.headers]
        if answer.media is None:
            proto.response_empty(answer.status, headers)
            return
        headers.append(("content-type", falcon.MEDIA_JSON))
        proto.response_bytes(answer.status, headers, _ENCODE(answer.media).encode())

    async def _wsgi(self, scope: Any, body: bytes, proto: Any, rid: str) -> None:
        """Answer through the Falcon app on a thread of the pool, under the request id given."""
        environ = _environ(scope, body)
        environ["HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")] = rid
        loop = asyncio.get_running_loop()
        status, headers, content = await loop.run_in_executor(self._pool, self._call_app, environ)
        proto.response_bytes(status, headers, content)

    def _call_app(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [int(status[:3]), headers]

        chunks = self._app(environ, start_response)
        try:
            content = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return started[0], started[1], content


_SLOW_BODY = {"error": "request_timeout", "message": "the request body came too slowly"}
TIMEOUT = Answer(408, _SLOW_BODY, (("connection", "close"),))


def too_large(exc: PayloadTooLarge) -> Answer:
    return Answer(413, {"error": exc.code, "message": exc.message}, (("connection", "close"),))


def _route(path: str) -> str:
    """Return the route label of a request the front answers before any route ran."""
    if path in (LEGACY, NATIVE):
        return path
    return SESSION_ROUTE if _SESSION_PATH.fullmatch(path) else "unmatched"


def _environ(scope: Any, body: bytes) -> dict[str, Any]:
    """Return the WSGI environ of an RSGI request, as a WSGI server would make it (PEP 3333)."""
    server_host, _, server_port = (scope.server or "localhost:80").rpartition(":")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": scope.path.encode().decode("latin-1"),
        "QUERY_STRING": scope.query_string,
        "SERVER_NAME": server_host,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
        "REMOTE_ADDR": (scope.client or "").rpartition(":")[0],
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name in dict.fromkeys(scope.headers.keys()):
        key = name.upper().replace("-", "_")
        if "_" in name:  # If_None_Match would pass for If-None-Match, which a cache in front did not see
            continue
        if key != "CONTENT_LENGTH":  # the body read is the length
            value = ",".join(scope.headers.get_all(name))
            environ["CONTENT_TYPE" if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
    return environ
