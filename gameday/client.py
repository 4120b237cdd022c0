"""A small HTTP/1.1 client on asyncio streams: a pool of keep-alive connections shared by the players."""

import asyncio
import time


class Failure(Exception):
    """A request that got no HTTP answer; `label` says how it failed (e.g. `timeout`, `reset`)."""

    def __init__(self, label):
        super().__init__(label)
        self.label = label


class Answer:
    __slots__ = ("status", "headers", "body", "sent", "received")

    def __init__(self, status, headers, body, sent, received):
        self.status, self.headers, self.body = status, headers, body
        self.sent, self.received = sent, received


class _Connection:
    def __init__(self, host, port):
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.used = False  # has answered a request: the server may have closed it since

    async def request(self, payload):
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
            self.used = False
        assert self._reader is not None
        self._writer.write(payload)
        status_line = await self._reader.readline()
        if not status_line:
            raise ConnectionResetError("closed before answering")
        parts = status_line.split(None, 2)
        status = int(parts[1])
        headers = {}
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ConnectionResetError("closed in the headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:
            body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        self.used = True
        return status, headers, body

    async def _chunked(self):
        assert self._reader is not None
        body = b""
        while True:
            size = int((await self._reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self._reader.readline()
                return body
            body += await self._reader.readexactly(size)
            await self._reader.readline()

    def close(self):
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class Pool:
    """`size` keep-alive connections to one host; a request waits for a free one."""

    def __init__(self, host, port, size, timeout_s):
        self._host = host
        self._timeout_s = timeout_s
        self._idle: asyncio.Queue[_Connection] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(_Connection(host, port))

    async def request(self, method, path, headers=None, body=b""):
        """Send one request; return an Answer, or raise Failure when no HTTP answer came."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        connection = await self._idle.get()
        try:
            for attempt in (1, 2):
                reused = connection.used
                sent = time.monotonic()
                try:
                    status, answer_headers, answer_body = await asyncio.wait_for(
                        connection.request(payload), self._timeout_s
                    )
                    return Answer(status, answer_headers, answer_body, sent, time.monotonic())
                except TimeoutError:
                    connection.close()
                    raise Failure("timeout") from None
                except (OSError, EOFError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    connection.close()
                    # A keep-alive connection the server closed while idle: try once on a new one,
                    # as HTTP clients do. Anything else is the answer.
                    if attempt == 1 and reused and isinstance(exc, ConnectionResetError | BrokenPipeError):
                        continue
                    raise Failure(_label(exc)) from None
            raise AssertionError("unreachable")
        finally:
            self._idle.put_nowait(connection)

    def close(self):
        while not self._idle.empty():
            self._idle.get_nowait().close()


def _label(exc):
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | asyncio.IncompleteReadError | EOFError):
        return "reset"
    return type(exc).__name__
