"""The HTTP/1.1 server (the default): worker processes, each one asyncio loop parsing with httptools.

httptools is llhttp, Node's HTTP parser. The workers accept from the one listening socket, one
connection per wake-up so that they share the connections. Each reads every request whole on its loop
and hands it to its front (api/front.py), which answers the player calls on the loop itself: no thread
and no hand-off between threads on the hot path. A slow client holds its own connection and nothing
more, within these bounds:

- its headers within CONCURRENCY_HEADER_TIMEOUT of the connection's opening, or of the request's first
  byte, else the connection is closed; between requests a kept-alive connection may idle for
  CONCURRENCY_KEEPALIVE_TIMEOUT;
- its body within CONCURRENCY_BODY_TIMEOUT once the headers came, else 408;
- request line and headers of at most CONCURRENCY_MAX_HEADER_BYTES and MAX_HEADERS fields (else 431),
  a body of at most CONCURRENCY_MAX_BODY_BYTES (else 413), malformed HTTP 400; each of these ends the
  connection, after the answers to the requests read before it. A connection that ends (so, also after
  `Connection: close`) stops writing but reads on, dropping what comes, for LINGER_S or until the client
  closes: a client still sending what was refused is not reset before it reads its answer;
- at most CONCURRENCY_MAX_REQUESTS connections per worker (each has one request in progress at most;
  pipelined ones wait their turn): past it the worker stops accepting and connections wait in the listen
  queue, of the same length;
- pipelined requests are read ahead one read at a time (at most 32 requests in it, else the connection
  is closed): while requests wait, the connection is not read, the kernel holds what the client sends
  next, and the time it has to send a request being read stops;
- a client that stops reading its answers has the body timeout to start again, and one that leaves a
  closing connection's last answers unread is reset after it.

SIGTERM: the serve process says not ready and keeps serving for CONCURRENCY_DRAIN (api/shutdown.py), then
each worker stops accepting, closes its idle connections and gives the requests in hand
CONCURRENCY_SHUTDOWN_TIMEOUT. A worker that dies is replaced; one that cannot boot stops the server.
"""

import asyncio
import collections
import contextlib
import email.utils
import functools
import http
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import httptools

from . import shutdown
from .config import MULTIPROC_ENV, Config
from .errors import PayloadTooLarge
from .front import TIMEOUT, Front, too_large
from .playback import Answer

log = logging.getLogger(__name__)

BOOT_FAILED = 3  # a worker's exit status when it could not build its front
MAX_PIPELINED = 32  # requests one read may bring ahead of the one in hand; more: the connection closes
MAX_HEADERS = 100  # header fields in one request; more: 431
_SINGLE = frozenset({"authorization", "content-type"})  # twice in one request: 400
STOP_SIGNAL = signal.SIGUSR1  # from the serve process to its workers: finish and exit
KILL_AFTER_S = 2.0  # past the shutdown timeout, a worker still running is killed
ORPHAN_CHECK_S = 1.0  # a worker whose serve process is gone stops
ACCEPT_RETRY_S = 0.1  # after accept() failed (out of file descriptors): the pause before trying again
LINGER_S = 2.0  # how long an ending connection reads on (and drops) what the client still sends
_REASONS = {status.value: status.phrase.encode() for status in http.HTTPStatus}
_NO_BODY_STATUSES = frozenset({204, 304})


class Headers:
    """A request's headers, names in lower case, as granian's RSGI headers read."""

    __slots__ = ("_items", "_all")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._all: dict[str, list[str]] | None = None

    def get(self, name: str, default: Any = None) -> Any:
        name = name.lower()
        for key, value in self._items:
            if key == name:
                return value
        return default

    def keys(self) -> list[str]:
        return [key for key, _ in self._items]

    def get_all(self, name: str) -> list[str]:
        if self._all is None:  # indexed once: a caller may ask for every name
            self._all = {}
            for key, value in self._items:
                self._all.setdefault(key, []).append(value)
        return self._all.get(name.lower(), [])


class Scope:
    """What the front reads of a request: RSGI's scope, the fields it uses."""

    __slots__ = ("method", "path", "query_string", "headers", "http_version", "server", "client", "scheme")

    def __init__(
        self, method: str, path: str, query: str, headers: Headers, version: str, server: str, client: str
    ) -> None:
        self.method, self.path, self.query_string, self.headers = method, path, query, headers
        self.http_version, self.server, self.client, self.scheme = version, server, client, "http"


class Responder:
    """The front's way to answer one request (RSGI's `response_bytes` and `response_empty`)."""

    __slots__ = ("_connection", "_head", "_keep_alive", "_say_keep_alive")

    def __init__(
        self, connection: "Connection", head: bool, keep_alive: bool, version_10: bool = False
    ) -> None:
        self._connection, self._head, self._keep_alive = connection, head, keep_alive
        self._say_keep_alive = version_10  # an HTTP/1.0 client closes unless told otherwise

    def response_empty(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.response_bytes(status, headers, b"")

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        keep_alive = self._keep_alive and not self._connection.ending
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")), _date()]
        length = b"%d" % len(body)
        for name, value in headers:
            folded = name.lower()
            if folded == "content-length":
                if self._head:
                    length = value.encode("latin-1")  # a HEAD answer's: that of the GET
                continue
            if folded == "connection":
                keep_alive = keep_alive and value.lower() != "close"
                continue
            lines.append(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        if status not in _NO_BODY_STATUSES:
            lines.append(b"content-length: %s\r\n" % length)
        if keep_alive:
            lines.append(b"connection: keep-alive\r\n\r\n" if self._say_keep_alive else b"\r\n")
        else:
            lines.append(b"connection: close\r\n\r\n")
        if not self._head and status not in _NO_BODY_STATUSES:
            lines.append(body)
        self._connection.answer(b"".join(lines), keep_alive)


_date_line: dict[int, bytes] = {}


def _date() -> bytes:
    """The Date header line, formatted once a second."""
    now = int(time.time())
    line = _date_line.get(now)
    if line is None:
        _date_line.clear()
        line = _date_line[now] = b"date: %s\r\n" % email.utils.formatdate(now, usegmt=True).encode()
    return line


class Connection(asyncio.Protocol):
    """One client connection: parse requests, answer them one at a time, in order, within the limits."""

    def __init__(self, worker: "Worker") -> None:
        self._worker = worker
        self._loop = worker.loop
        self._front = worker.front
        self._config = worker.config
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._server, self._client = "", ""
        # The request being read.
        self._reading_head = False  # from its first byte until its headers are in
        self._reading_body = False  # then until it is whole
        self._began = False  # it began in the read being parsed
        self._followed = False  # and another request ended before it in that read
        self._wire = 0  # its bytes read so far (head, body and framing), as far as they are known
        self._head_size = 0  # its URL and headers as parsed
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._length = 0  # its Content-Length
        self._continue = False  # it expects 100 Continue, not sent yet
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._started = 0.0
        # Answering: what comes next, in the order the requests came (a request, or a refusal that ends all).
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._busy = False  # a request is in hand
        self._answered = False  # the one in hand was answered
        self._last = False  # read nothing more: the connection ends after what is queued
        self._closing = False
        self._paused = False  # requests wait: reading stops until they are in hand
        self._left_s = 0.0  # meanwhile, what was left of the deadline of the request being read
        # One deadline at a time for what the client must send (the headers, or the body), checked by one
        # timer that is moved only when it fires early: a request costs two float writes, not two timers.
        self._deadline = 0.0
        self._on_deadline: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._stalled: asyncio.TimerHandle | None = None  # the client reads no answers
        self._lingering: asyncio.TimerHandle | None = None  # ending: reading on before the close
        self._eof = False  # the client half-closed: it sends nothing more

    def itself(self) -> "Connection":
        """The protocol factory of an accepted socket."""
        return self

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if self._closing:  # the worker stopped before the connection was made
            transport.close()
            return
        self._server = _address(transport.get_extra_info("sockname"))
        self._client = _address(transport.get_extra_info("peername"))
        self._expect(self._config.header_timeout_s, self.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timers()
        self._worker.closed(self)

    def eof_received(self) -> bool:
        """The client sends nothing more (a half-close): answer what came whole, then close."""
        self._eof = True
        if self._lingering is not None:
            self.close()  # nothing more comes: close, and reset if the answers stay unread
        else:
            self._last = True
            self._next()
        return True  # the transport is ours to close

    @property
    def ending(self) -> bool:
        """Whether the connection closes after the answer being written (nothing else is queued, and it
        reads no more or the worker stops): tell the client so."""
        return (self._last or self._worker.stopping) and not self._queue

    def pause_writing(self) -> None:
        """The client does not read its answers: it has the body timeout to start again, then as long
        again to read what was written before a reset (close)."""
        self._stalled = self._loop.call_later(self._config.body_timeout_s, self.close)

    def resume_writing(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        self._next()

    def data_received(self, data: bytes) -> None:
        if self._closing or self._last:
            return
        self._began = self._followed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._last = True  # what follows is not HTTP/1.1: answer what came, then close
            self._next()
            return
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Refused):
                log.error("a request could not be read", exc_info=exc.__context__ or exc)
                self._refuse_raw(500, "internal_error", "the server failed to read the request")
            return
        except httptools.HttpParserError as exc:
            self._refuse_raw(400, "bad_request", f"malformed HTTP request: {_reason(exc)}")
            return
        if self._reading_head or self._reading_body:
            self._count_wire(len(data))
        if self._queue and not self._last:
            self._pause_reading()

    def _count_wire(self, size: int) -> None:
        """Bound what httptools holds of an incomplete request, whatever it is: an unfinished header line,
        chunk framing or a trailer (which httptools reads whole before any callback)."""
        if not self._began:
            self._wire += size
        elif not self._followed:
            self._wire = size  # the request began at this read's first byte
        else:  # it began after another request in this read, somewhere: what was parsed of it
            self._wire = self._head_size + self._body_bytes
        head_limit = self._config.max_header_bytes
        if self._reading_head and self._wire >= head_limit:
            self._refuse_raw(431, "headers_too_large", "the request line and headers are too large")
        elif self._reading_body and self._wire > head_limit + 2 * self._config.max_body_bytes:
            # A body within its limit: the rest is chunk framing or a trailer, up to as much again.
            self._refuse(too_large(PayloadTooLarge.over(self._config.max_body_bytes)))

    # httptools' callbacks

    def on_message_begin(self) -> None:
        self._expect(self._config.header_timeout_s, self.close)
        self._reading_head, self._began, self._wire, self._head_size = True, True, 0, 0
        self._url, self._headers, self._length, self._continue = b"", [], 0, False
        self._body, self._body_bytes = [], 0
        self._started = time.perf_counter()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._reading_head:
            return  # a chunked body's trailer: not a header of the request
        if len(self._headers) == MAX_HEADERS:
            self._refuse_raw(431, "headers_too_large", f"more than {MAX_HEADERS} header fields")
            raise _Refused
        folded = name.decode("latin-1").lower()
        self._headers.append((folded, value.decode("latin-1")))
        self._count_head(len(name) + len(value) + 4)
        if folded == "content-length" and value.isdigit():
            self._length = int(value)
        elif folded == "expect":
            self._continue = value.lower() == b"100-continue"
        elif folded in _SINGLE and any(key == folded for key, _ in self._headers[:-1]):
            # Which one counts is a guess (the first here, both joined through Falcon, the last elsewhere).
            self._refuse_raw(400, "bad_request", f"the {folded} header appears twice")
            raise _Refused

    def _count_head(self, size: int) -> None:
        """The parsed request line and headers: at most the limit, else 431."""
        self._head_size += size
        if self._head_size > self._config.max_header_bytes:
            self._refuse_raw(431, "headers_too_large", "the request line and headers are too large")
            raise _Refused

    def on_headers_complete(self) -> None:
        self._reading_head, self._reading_body = False, True
        if self._continue:
            self._on_deadline = None  # its body is due once invited: _maybe_continue arms the deadline
        else:
            self._expect(self._config.body_timeout_s, self._body_too_slow)
        if self._length > self._config.max_body_bytes:
            self._refuse(too_large(PayloadTooLarge.over(self._config.max_body_bytes)))
            raise _Refused  # feed_data stops here
        self._maybe_continue()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._config.max_body_bytes:
            self._refuse(too_large(PayloadTooLarge.over(self._config.max_body_bytes)))
            raise _Refused
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._reading_body, self._followed = False, True
        self._on_deadline = None
        scope = self._scope()
        version_10 = self._parser.get_http_version() == "1.0"
        responder = Responder(self, scope.method == "HEAD", self._parser.should_keep_alive(), version_10)
        body = b"".join(self._body)
        self._queue.append(functools.partial(self._start, scope, body, responder, self._started))
        if len(self._queue) > MAX_PIPELINED:
            self.close()
            raise _Refused
        self._next()

    # answering

    def _next(self) -> None:
        """Go on with what is queued, when nothing is in hand and the client reads its answers."""
        if self._busy or self._stalled is not None or self._closing:
            return
        if self._queue:
            self._queue.popleft()()
        elif self._last or self._worker.stopping:
            self.close()

    def _start(self, scope: Scope, body: bytes, responder: "Responder", started: float) -> None:
        self._busy, self._answered = True, False
        if self._paused and not self._queue:
            self._resume_reading()  # one read ahead again, while this one is answered
        task = self._loop.create_task(self._front.handle(scope, body, responder, started))
        task.add_done_callback(self._handled)

    def _handled(self, task: "asyncio.Task[None]") -> None:
        self._busy = False
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("a request failed", exc_info=error)
            if not self._answered:
                self._write_raw(500, "internal_error", "the server failed to answer")
            self.close()
            return
        self._maybe_continue()
        if not (self._queue or self._reading_head or self._reading_body):
            # Idle until the next request: checked every header timeout, so that the next request's
            # own deadline (its first byte's, at least as late) never needs the timer moved.
            self._expect(self._config.keepalive_timeout_s, self.close, self._config.header_timeout_s)
        self._next()

    def answer(self, data: bytes, keep_alive: bool) -> None:
        """Send one answer; end the connection after it unless another request may follow."""
        self._answered = True
        if self._closing or self._transport is None:
            return
        self._transport.write(data)
        if not keep_alive:
            self._linger()

    @property
    def idle(self) -> bool:
        """No request in hand, queued, or partly read."""
        return not (self._busy or self._queue or self._reading_head or self._reading_body)

    def close(self) -> None:
        """Close once what was written has gone out; reset if the client leaves it unread for the body
        timeout."""
        self._closing = True
        self._queue.clear()
        self._cancel_timers()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
            if self._transport.get_write_buffer_size():
                self._loop.call_later(self._config.body_timeout_s, self._transport.abort)

    def _maybe_continue(self) -> None:
        """Send 100 Continue to an HTTP/1.1 request whose body is awaited, once no answer comes before it."""
        if self._continue and self._reading_body and not (self._busy or self._queue or self._last):
            self._continue = False
            if self._parser.get_http_version() == "1.1" and self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._expect(self._config.body_timeout_s, self._body_too_slow)  # the body is due from now on

    def _pause_reading(self) -> None:
        """Read no more while requests wait: what one client has read ahead is at most one read (asyncio's
        256 KiB) and the request it ends inside, not 32 requests of the largest size."""
        if self._paused or self._transport is None:
            return
        self._paused = True
        self._transport.pause_reading()
        self._left_s = self._deadline - self._loop.time()  # what it sends now waits unread: its clock stops

    def _resume_reading(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resume_reading()
        if self._on_deadline is not None and not self._closing:
            self._expect(max(self._left_s, 0.0), self._on_deadline)

    # deadlines

    def _expect(
        self, within_s: float, otherwise: Callable[[], None], check_within_s: float = math.inf
    ) -> None:
        """Call `otherwise` unless another deadline replaces this one within `within_s`; look again after
        `check_within_s` at the latest."""
        now = self._loop.time()
        self._deadline = now + within_s
        self._on_deadline = otherwise
        if self._timer is None or self._deadline < self._timer_at:
            self._arm(min(self._deadline, now + check_within_s))

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._on_deadline is None or self._closing or self._paused:
            return  # (paused: _resume_reading sets the deadline again, with the time that was left)
        if self._loop.time() >= self._deadline:
            action, self._on_deadline = self._on_deadline, None
            action()
        else:
            self._arm(self._deadline)

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._stalled, self._lingering):
            if timer is not None:
                timer.cancel()
        self._timer = self._stalled = self._lingering = None

    # refusals: each ends the connection, after the answers to the requests that came before it

    def _body_too_slow(self) -> None:
        self._refuse(TIMEOUT)

    def _refuse(self, answer: Answer) -> None:
        """Refuse the request being read (its headers came) through the front, so it is counted."""
        scope = self._scope()
        responder = Responder(self, scope.method == "HEAD", False)
        self._end_with(functools.partial(self._front.refuse, scope, responder, answer, self._started))

    def _refuse_raw(self, status: int, code: str, message: str) -> None:
        """Refuse what cannot be read as a request."""
        self._end_with(functools.partial(self._write_raw, status, code, message))

    def _end_with(self, refusal: Callable[[], None]) -> None:
        self._last = True
        self._on_deadline = None
        self._queue.append(functools.partial(self._final, refusal))
        self._next()

    def _final(self, refusal: Callable[[], None]) -> None:
        refusal()
        self._linger()

    def _linger(self) -> None:
        """Stop writing, but read on for LINGER_S, or until the client closes too, before closing: closing
        a socket with unread bytes makes the kernel send a reset, which on a real network can destroy the
        answer before the client reads it (a client refused in the middle of a body still sends the rest,
        and one told `Connection: close` may have pipelined more)."""
        transport = self._transport
        if self._closing or transport is None:  # closed, or lingering already
            return
        if self._eof:  # nothing unread can come
            self.close()
            return
        self._closing = True
        self._queue.clear()
        self._cancel_timers()
        if self._paused:
            self._resume_reading()  # to drain what comes (closing: no deadline is set again)
        transport.write_eof()  # after what is buffered: the client reads the answer, then the end
        self._lingering = self._loop.call_later(LINGER_S, self.close)

    def _write_raw(self, status: int, code: str, message: str) -> None:
        if self._transport is not None and not self._closing:
            body = json.dumps({"error": code, "message": message}).encode()
            self._transport.write(
                b"HTTP/1.1 %d %s\r\n%scontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, _REASONS[status], _date(), len(body), body)
            )

    def _scope(self) -> Scope:
        parser = self._parser
        try:
            url = httptools.parse_url(self._url)
            path, query = url.path or b"/", url.query or b""
        except httptools.HttpParserInvalidURLError:
            path, query = self._url, b""
        if b"%" in path:
            path = urllib.parse.unquote_to_bytes(path)
        return Scope(
            parser.get_method().decode("latin-1"),
            path.decode("utf-8", "replace"),  # as granian: the percent-decoded path, as text
            query.decode("latin-1"),
            Headers(self._headers),
            parser.get_http_version(),
            self._server,
            self._client,
        )


class _Refused(Exception):
    """Raised from a parser callback: the request was refused and the connection is closing."""


class Worker:
    """One worker process's loop: accept connections up to the limit; on SIGTERM, finish and stop."""

    def __init__(self, listener: socket.socket, front: Front, config: Config) -> None:
        self.loop = asyncio.get_running_loop()
        self.front, self.config = front, config
        self.stopping = False
        self._listener = listener
        self._connections: set[Connection] = set()
        self._accepting = False
        self._stopped = self.loop.create_future()

    async def run(self) -> None:
        """Serve until SIGTERM, then until the connections are done or the shutdown timeout passed."""
        self._listener.setblocking(False)
        self._accept_again()
        self.loop.add_signal_handler(STOP_SIGNAL, self.stop)
        self._watch_parent(os.getppid())
        await self._stopped

    def _watch_parent(self, parent: int) -> None:
        if os.getppid() != parent:
            log.warning("the serve process is gone; stopping")
            self.stop()
        elif not self.stopping:
            self.loop.call_later(ORPHAN_CHECK_S, self._watch_parent, parent)

    def closed(self, connection: Connection) -> None:
        self._connections.discard(connection)
        if self.stopping:
            if not self._connections and not self._stopped.done():
                self._stopped.set_result(None)
        else:
            self._resume_accepting()

    def stop(self) -> None:
        """Stop accepting, close idle connections, give the others the shutdown timeout."""
        if self.stopping:
            return
        self.stopping = True
        self._stop_accepting()
        for connection in list(self._connections):
            if connection.idle:
                connection.close()
        if not self._connections:
            self._stopped.set_result(None)
            return
        self.loop.call_later(self.config.shutdown_timeout_s, self._give_up)

    def _give_up(self) -> None:
        if not self._stopped.done():
            log.warning("%d connection(s) still busy after the shutdown timeout", len(self._connections))
            self._stopped.set_result(None)

    def _accept_again(self) -> None:
        self._accepting = True
        self.loop.add_reader(self._listener.fileno(), self._accept)

    def _stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            self.loop.remove_reader(self._listener.fileno())

    def _accept(self) -> None:
        """Take one connection: the workers wake together, so the least busy one tends to get the next."""
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker took it
        except OSError as exc:  # out of file descriptors, say: pause, then try again
            log.warning("cannot accept a connection: %s", exc)
            self._stop_accepting()
            self.loop.call_later(ACCEPT_RETRY_S, self._resume_accepting)
            return
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection(self)
        self._connections.add(connection)
        opening = self.loop.create_task(self.loop.connect_accepted_socket(connection.itself, sock))
        opening.add_done_callback(functools.partial(self._opened, connection))
        if len(self._connections) >= self.config.max_requests:
            self._stop_accepting()  # until a connection closes

    def _resume_accepting(self) -> None:
        if not (self.stopping or self._accepting) and len(self._connections) < self.config.max_requests:
            self._accept_again()

    def _opened(self, connection: Connection, task: "asyncio.Task[Any]") -> None:
        if task.cancelled() or task.exception() is not None:
            self.closed(connection)


def serve(host: str, port: int, workers: int, config: Config, front: Callable[[], Front]) -> int:
    """Listen on host:port and run `workers` worker processes, each serving `front()`, until stopped.

    SIGTERM and SIGINT drain first (api/shutdown.py), then stop the workers. Return the exit status."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_server((host, port), family=family, backlog=config.max_requests) as listener:
        return _Supervisor(listener, config, front).run(workers)


class _Supervisor:
    """The serve process: start the workers, replace those that die, stop them all when told."""

    def __init__(self, listener: socket.socket, config: Config, factory: Callable[[], Front]) -> None:
        self._listener, self._config, self._factory = listener, config, factory
        self._children: dict[int, float] = {}  # pid: when it started
        self._stopping = threading.Event()

    def run(self, workers: int) -> int:
        for _ in range(workers):
            self._spawn()

        def drain(*_: object) -> None:
            shutdown.drain_then(self._stop, self._config.drain_s)

        previous = {sig: signal.signal(sig, drain) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _supervise(self) -> int:
        status = 0
        while self._children:
            pid, code = os.wait()
            started = self._children.pop(pid, None)
            if started is None:
                continue
            _mark_dead(pid)
            code = os.waitstatus_to_exitcode(code)
            if self._stopping.is_set():
                continue
            if code == BOOT_FAILED:
                print(f"concurrency-service: worker {pid} could not start; stopping", file=sys.stderr)
                status = 1
                self._stop()
                continue
            log.warning("worker %d exited (status %d); starting another", pid, code)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))  # one that dies at once: not a loop
            if not self._stopping.is_set():
                self._spawn()
        return status

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                status = _work(self._listener, self._config, self._factory)
            finally:
                os._exit(status)  # never back into the serve process's code
        self._children[pid] = time.monotonic()
        if self._stopping.is_set():  # the stop came while it was forking: it missed the signal
            os.kill(pid, STOP_SIGNAL)

    def _stop(self) -> None:
        """Tell every worker to finish (STOP_SIGNAL); kill those still running past the shutdown timeout."""
        self._stopping.set()
        self._signal_all(STOP_SIGNAL)
        kill_at = self._config.shutdown_timeout_s + KILL_AFTER_S
        killer = threading.Timer(kill_at, self._signal_all, (signal.SIGKILL,))
        killer.daemon = True
        killer.start()

    def _signal_all(self, sig: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _work(listener: socket.socket, config: Config, factory: Callable[[], Front]) -> int:
    """A worker process's life: build the front, serve until told to stop, return the exit status.

    A worker ignores SIGTERM and SIGINT: the serve process gets them too (a process group's Ctrl-C,
    systemd's control-group kill) and drains before it sends STOP_SIGNAL."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    try:
        front = factory()
    except Exception:
        log.exception("the worker could not start")
        return BOOT_FAILED

    async def main() -> None:
        await Worker(listener, front, config).run()

    try:
        asyncio.run(main())
    finally:
        front.close()
    return 0


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def _address(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{host}:{address[1]}"
    return ""


def _reason(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__
