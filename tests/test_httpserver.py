"""The default HTTP server (api/httpserver.py), over raw sockets against the real process and Redis.

HTTP/1.1 as clients and load balancers use it (keep-alive, pipelining, chunked bodies, 100-continue,
HTTP/1.0), the bounds a hostile client meets (header size, idle connections, connections per worker, read
ahead), and the process model (a worker that dies is replaced; one that cannot boot stops the server).
"""

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
from players import new_user
from processes import ServerProcess, wait_until

from api import httpserver
from api.config import Config
from api.httpserver import BOOT_FAILED, LINGER_S, MAX_HEADERS, MAX_PIPELINED, Connection, Worker, serve

pytestmark = [pytest.mark.http, pytest.mark.redis]

IDLE_S = 1.0  # the header and body timeouts
KEEPALIVE_S = 6.0  # far from IDLE_S, so the bounds below tell the two apart with room for a stall
SLACK_S = 2.5  # how late a close may come on a busy machine


@pytest.fixture(scope="module")
def server(redis_server, keys_dir):
    process = ServerProcess(
        redis_server.url,
        keys_dir,
        workers=1,
        header_timeout_s=IDLE_S,
        body_timeout_s=IDLE_S,
        keepalive_timeout_s=KEEPALIVE_S,
        max_requests=4,
    )
    yield process
    process.stop()


def connect(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def read_answers(sock, count):
    """Read `count` answers off the socket; return [(status, headers, body)]."""
    data, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(answers)} answer(s): {data!r}")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", 0))
        while len(data) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in a body")
            data += chunk
        answers.append((status, headers, data[:length]))
        data = data[length:]
    return answers


def closed(sock, timeout_s=5.0):
    """Whether the server closed the connection (EOF or reset) within the timeout, reading what it sent."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def start_request(user, version="1.1", extra=""):
    body = json.dumps({"userId": user, "deviceId": "tv", "streamId": "film"}).encode()
    head = (
        f"POST /v1/sessions HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def test_keep_alive_serves_requests_one_after_another(server):
    with connect(server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            ((status, headers, body),) = read_answers(sock, 1)
            assert status == 200 and json.loads(body) == {"status": "ok"}
            assert headers["content-type"] == "application/json" and "date" in headers
            assert "connection" not in headers


def test_pipelined_requests_are_answered_in_order(server):
    user = new_user("pipeline")
    with connect(server) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + start_request(user) + b"GET /nope HTTP/1.1\r\n\r\n"
        )
        statuses = [status for status, _, _ in read_answers(sock, 3)]
    assert statuses == [200, 201, 404]


def test_http_1_0_gets_its_answer_then_the_connection_closes(server):
    with connect(server) as sock:
        sock.sendall(start_request(new_user("old"), version="1.0"))
        ((status, headers, body),) = read_answers(sock, 1)
        assert status == 201 and json.loads(body)["status"] == "initiated"
        assert headers["connection"] == "close"
        assert closed(sock)


def test_connection_close_is_honoured(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        ((status, headers, _),) = read_answers(sock, 1)
        assert status == 200 and headers["connection"] == "close"
        assert closed(sock)


def test_a_chunked_body_is_read_whole(server):
    body = json.dumps({"userId": new_user("chunked"), "deviceId": "tv", "streamId": "film"}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    head = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with connect(server) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
        ((status, _, answer),) = read_answers(sock, 1)
    assert status == 201, answer


def test_expect_100_continue_gets_a_continue_before_the_body(server):
    request = start_request(new_user("expect"), extra="Expect: 100-continue\r\n")
    head, _, body = request.partition(b"\r\n\r\n")
    with connect(server) as sock:
        sock.sendall(head + b"\r\n\r\n")
        ((status, _, _),) = read_answers(sock, 1)
        assert status == 100
        sock.sendall(body)
        ((status, _, _),) = read_answers(sock, 1)
        assert status == 201


@pytest.mark.parametrize("pieces", [1, 64], ids=["one-write", "in-pieces"])
def test_headers_over_the_limit_get_431_and_a_close(server, pieces):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * Config().max_header_bytes + b"\r\n\r\n"
    with connect(server) as sock:
        step = len(head) // pieces + 1
        try:
            for i in range(0, len(head), step):
                sock.sendall(head[i : i + step])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the last piece
        ((status, headers, body),) = read_answers(sock, 1)
        assert status == 431 and headers["connection"] == "close"
        assert json.loads(body)["error"] == "headers_too_large"
        assert closed(sock)


def test_headers_just_under_the_limit_are_served(server):
    filler = Config().max_header_bytes - 200
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * filler + b"\r\n\r\n")
        ((status, _, _),) = read_answers(sock, 1)
    assert status == 200


@pytest.mark.parametrize(
    "raw",
    [b"NOT HTTP\r\n\r\n", b"GET /healthz HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"],
    ids=["garbage", "bad-length", "bad-version"],
)
def test_malformed_requests_get_400_and_a_close(server, raw):
    with connect(server) as sock:
        sock.sendall(raw)
        ((status, headers, body),) = read_answers(sock, 1)
        assert status == 400 and headers["connection"] == "close"
        assert json.loads(body)["error"] == "bad_request"
        assert closed(sock)


POST = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\n"
SMUGGLING = {
    "cl-and-te": POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-lengths": POST + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\n",
    "te-not-chunked-last": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n",
    "te-xchunked": POST + b"Transfer-Encoding: xchunked\r\n\r\n",
    "space-before-colon": POST + b"Content-Length : 4\r\n\r\n",
    "obs-fold": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n",
    "bare-lf": b"GET /healthz HTTP/1.1\nHost: x\n\n",
    # One value each: which of two counts is a guess that a proxy may make otherwise.
    "two-authorizations": POST
    + b"Authorization: Basic YTpi\r\nauthorization: Basic Yzpk\r\nContent-Length: 0\r\n\r\n",
    "two-content-types": POST
    + b"Content-Type: application/json\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("head", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_requests_a_proxy_could_read_otherwise_get_400_and_nothing_behind_them_is_served(server, head):
    """Framing two parsers may disagree on (the ground of request smuggling) is refused outright."""
    with connect(server) as sock:
        sock.sendall(head + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        ((status, headers, _),) = read_answers(sock, 1)
        assert status == 400 and headers["connection"] == "close"
        assert closed(sock)  # the request behind it got no answer


def lifetime(sock, timeout_s):
    """Seconds until the server closes the connection (reading what it sends)."""
    began = time.monotonic()
    assert closed(sock, timeout_s=timeout_s)
    return time.monotonic() - began


def test_a_new_connection_must_send_its_headers_within_the_header_timeout(server):
    with connect(server) as sock:
        assert IDLE_S - 0.2 < lifetime(sock, IDLE_S + 5) < IDLE_S + SLACK_S


def test_a_kept_alive_connection_idles_for_the_keepalive_timeout_then_closes(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        read_answers(sock, 1)
        assert KEEPALIVE_S - 0.2 < lifetime(sock, KEEPALIVE_S + 5) < KEEPALIVE_S + SLACK_S


def test_a_request_begun_after_an_idle_time_has_the_header_timeout_from_its_first_byte(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        read_answers(sock, 1)
        time.sleep(0.5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and no more: closed at 1.5 s, not at the idle 6 s
        assert IDLE_S - 0.2 < lifetime(sock, IDLE_S + 5) < IDLE_S + SLACK_S


def test_a_worker_takes_no_more_connections_than_its_limit(server):
    """max_requests=4, one worker: a fifth connection waits in the listen queue until one of four closes."""
    waiting = []
    held = [connect(server) for _ in range(4)]
    try:
        for sock in held:  # each has been accepted: it is answered
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            read_answers(sock, 1)
        waiting = connect(server)
        waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        waiting.settimeout(0.3)
        with pytest.raises(TimeoutError):
            waiting.recv(1)
        held.pop().close()
        waiting.settimeout(5)
        ((status, _, _),) = read_answers(waiting, 1)
        assert status == 200
    finally:
        for sock in [*held, waiting] if waiting else held:
            sock.close()


def test_a_client_that_reads_nothing_cannot_queue_unbounded_requests(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * (MAX_PIPELINED + 10))
        assert closed(sock)
    assert server.request("GET", "/healthz").status == 200


def test_a_client_that_stops_reading_is_reset(server):
    """A client that sends requests for the 58 KB contract and reads nothing: the server stops writing
    when its buffers fill, then resets the connection, answers unread, within the body timeouts."""
    one = len(server.request("GET", "/openapi.yaml").body)
    sent = 0
    with connect(server) as sock:
        try:
            for _ in range(150):  # ~9 MB of answers: more than loopback's socket buffers hold
                sock.sendall(b"GET /openapi.yaml HTTP/1.1\r\nHost: x\r\n\r\n")
                sent += 1
                time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            pass
        time.sleep(2 * IDLE_S + SLACK_S)
        received, reset = 0, False
        sock.settimeout(5)
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            reset = True
    assert reset and received < sent * one
    assert server.request("GET", "/healthz").status == 200


class StuckTransport(asyncio.Transport):
    """A transport whose peer reads nothing: what is written stays buffered."""

    def __init__(self):
        super().__init__()
        self.closing = self.aborted = self.eof = False
        self.reading = True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1)

    def write(self, data):
        pass

    def get_write_buffer_size(self):
        return 1 << 20

    def write_eof(self):
        self.eof = True

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    def abort(self):
        self.aborted = True


@pytest.mark.parametrize("half_close", [False, True])
def test_a_connection_closed_with_unread_answers_is_reset_after_the_body_timeout(monkeypatch, half_close):
    """It lingers, then closes; what stays unwritten is reset a body timeout later. A client that half-closes
    meanwhile (and reads nothing) ends the linger at once, and must not leave the connection open for ever."""
    monkeypatch.setattr(httpserver, "LINGER_S", 0.3)

    async def scenario():
        listener = socket.create_server(("127.0.0.1", 0))
        worker = Worker(listener, Failing(), Config(body_timeout_s=0.2))
        connection, transport = Connection(worker), StuckTransport()
        connection.connection_made(transport)
        connection.data_received(b"GET /fine HTTP/1.1\r\nConnection: close\r\n\r\n")
        await asyncio.sleep(0.05)
        lingering = transport.eof and not transport.closing
        if half_close and not connection.eof_received():
            transport.close()  # what asyncio does when eof_received answers False
        await asyncio.sleep(0.1)
        aborted_early = transport.aborted
        await asyncio.sleep(0.6)
        listener.close()
        return lingering, transport.closing, aborted_early, transport.aborted

    lingering, closing, aborted_early, aborted = asyncio.run(scenario())
    assert lingering and closing and not aborted_early and aborted


def test_an_upgrade_request_is_answered_then_the_connection_closes(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nPRI *")
        ((status, _, _),) = read_answers(sock, 1)
        assert status == 200
        assert closed(sock)


def workers_of(pid):
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in found.stdout.split()]


def test_a_worker_that_dies_is_replaced(redis_server, keys_dir):
    process = ServerProcess(redis_server.url, keys_dir, workers=2)
    try:
        wait_until(lambda: len(workers_of(process.pid)) == 2, what="two workers")
        victim = workers_of(process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(workers_of(process.pid)) == 2 and victim not in workers_of(process.pid),
            what="a new worker",
        )
        for _ in range(10):
            assert process.request("GET", "/healthz").status == 200
        assert re.search(rf"worker {victim} exited", process.output())
    finally:
        process.stop()


def test_a_worker_that_cannot_boot_stops_the_server(keys_dir):
    def broken():
        raise RuntimeError("no front today")

    config = Config(keys_dir=keys_dir, drain_s=0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert BOOT_FAILED != 0
    assert serve("127.0.0.1", port, 2, config, broken) == 1


class Failing:
    """A front whose handler raises: the server answers 500 and closes, and keeps serving others."""

    async def handle(self, scope, body, responder, started):
        if scope.path == "/boom":
            raise RuntimeError("boom")
        responder.response_bytes(200, [("content-type", "text/plain")], b"fine")

    def refuse(self, scope, responder, answer, started):
        responder.response_bytes(answer.status, [], json.dumps(answer.media).encode())


def test_a_failing_handler_gets_500_not_a_hang():
    async def scenario():
        listener = socket.create_server(("127.0.0.1", 0))
        worker = Worker(listener, Failing(), Config())
        serving = asyncio.ensure_future(worker.run())
        port = listener.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await reader.read()  # until the server closes
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
        writer2.write(b"GET /fine HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        other = await reader2.read()
        worker.stop()
        await serving
        writer.close()
        writer2.close()
        listener.close()
        return answer, other

    answer, other = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 500 ") and b'"internal_error"' in answer
    assert other.startswith(b"HTTP/1.1 200 ") and other.endswith(b"fine")


def test_the_path_is_percent_decoded_before_routing(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health%7A HTTP/1.1\r\nHost: x\r\n\r\n")
        ((status, _, body),) = read_answers(sock, 1)
    assert status == 200 and json.loads(body) == {"status": "ok"}


# --- found by a hostile review: each of these failed before its fix ------------------------------------


def test_a_refusal_behind_pipelined_requests_comes_after_their_answers(server, real_redis):
    """A request read before a malformed one is answered, in order, before the 400 and the close."""
    with connect(server) as sock:
        sock.sendall(start_request(new_user("before-garbage")) + b"NOT HTTP\r\n\r\n")
        statuses = [status for status, _, _ in read_answers(sock, 2)]
        assert closed(sock)
    assert statuses == [201, 400]
    with connect(server) as sock:
        too_long = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n"
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + too_long)
        assert [status for status, _, _ in read_answers(sock, 2)] == [200, 413]


def test_pipelined_requests_whose_bytes_pass_the_header_limit_are_not_refused(server):
    body = json.dumps({"userId": new_user("padded"), "deviceId": "tv", "streamId": "film"}).encode()
    body += b" " * (Config().max_body_bytes - len(body) - 100)  # JSON allows the spaces
    head = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    padded_get = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 860 + b"\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body + padded_get)
        assert [status for status, _, _ in read_answers(sock, 2)] == [201, 200]
        sock.sendall(padded_get * 20)
        assert [status for status, _, _ in read_answers(sock, 20)] == [200] * 20


def test_a_request_with_too_many_header_fields_gets_431(server):
    def get(fields):
        return b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(fields)) + b"\r\n"

    with connect(server) as sock:
        sock.sendall(get(MAX_HEADERS))
        assert read_answers(sock, 1)[0][0] == 200
        sock.sendall(get(MAX_HEADERS + 1))
        assert read_answers(sock, 1)[0][0] == 431


def test_a_chunked_trailer_is_not_a_header(server):
    body = {"userId": new_user("trailer"), "deviceId": "d", "streamId": "s"}
    started = server.request("POST", "/v1/sessions", body).json()
    sid, token = started["sessionId"], started["token"]
    head = f"PUT /v1/sessions/{sid} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    with connect(server) as sock:
        sock.sendall(head + f"0\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        ((status, _, answer),) = read_answers(sock, 1)
    assert status == 401, answer


def test_an_absolute_url_without_a_path_is_the_root(server):
    with connect(server) as sock:
        sock.sendall(b"GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
        sock.sendall(b"GET http://example.com/healthz HTTP/1.1\r\nHost: example.com\r\n\r\n")
        assert [status for status, _, _ in read_answers(sock, 2)] == [404, 200]


def test_http_1_0_keep_alive_is_acknowledged_and_kept(server):
    with connect(server) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            ((status, headers, _),) = read_answers(sock, 1)
            assert status == 200 and headers["connection"] == "keep-alive"


def test_a_refused_head_request_gets_no_body(server):
    with connect(server) as sock:
        sock.sendall(b"HEAD /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n")
        sock.settimeout(5)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and rest == b""


class Slow(Failing):
    async def handle(self, scope, body, responder, started):
        if scope.path == "/slow":
            await asyncio.sleep(0.3)
        await super().handle(scope, body, responder, started)


def run_worker(front, scenario, **config):
    """Run a Worker on a loopback socket in this process; return what `scenario(port)` returns."""

    async def main():
        listener = socket.create_server(("127.0.0.1", 0))
        worker = Worker(listener, front, Config(**config))
        serving = asyncio.ensure_future(worker.run())
        try:
            return await scenario(listener.getsockname()[1])
        finally:
            worker.stop()
            await serving
            listener.close()

    return asyncio.run(main())


def test_100_continue_waits_for_the_answers_before_it():
    async def scenario(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        expecting = b"POST /fine HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        writer.write(b"GET /slow HTTP/1.1\r\n\r\n" + expecting)
        first = await reader.readuntil(b"fine")  # the slow request's answer
        second = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"{}")
        third = await reader.readuntil(b"fine")
        writer.close()
        return first, second, third

    first, second, third = run_worker(Slow(), scenario)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert second == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert third.startswith(b"HTTP/1.1 200 ")


def test_a_client_that_stops_reading_is_closed_even_if_it_sends_more():
    """pause_writing's deadline holds even when a request completes while the client reads nothing."""

    async def scenario():
        listener = socket.create_server(("127.0.0.1", 0))
        worker = Worker(listener, Failing(), Config(body_timeout_s=0.2))
        connection, transport = Connection(worker), StuckTransport()
        connection.connection_made(transport)
        connection.pause_writing()
        connection.data_received(b"GET /fine HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.4)
        listener.close()
        return transport.closing

    assert asyncio.run(scenario())


def test_a_connection_closed_before_it_was_made_closes_its_socket():
    async def scenario():
        listener = socket.create_server(("127.0.0.1", 0))
        connection, transport = Connection(Worker(listener, Failing(), Config())), StuckTransport()
        connection.close()  # the worker stopped
        connection.connection_made(transport)
        listener.close()
        return transport.closing

    assert asyncio.run(scenario())


def test_the_100_continue_body_deadline_runs_from_the_invitation():
    """Held back behind a slow answer longer than the body timeout, the 100 still comes, and the body
    then has its whole timeout (it got 408 uninvited)."""

    async def scenario(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        expecting = b"POST /fine HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        writer.write(b"GET /slow HTTP/1.1\r\n\r\n" + expecting)
        await reader.readuntil(b"fine")
        invited = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        writer.write(b"{}")
        answered = await asyncio.wait_for(reader.readuntil(b"fine"), 2)
        writer.close()
        return invited, answered

    invited, answered = run_worker(Slow(), scenario, body_timeout_s=0.2)
    assert invited == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert answered.startswith(b"HTTP/1.1 200 ")


def test_a_trailer_without_end_is_cut_off_at_the_size_limit(server):
    """httptools reads a trailer line whole before any callback: the bytes of a chunked request are bounded
    (its body's limit, twice, and the header limit) so one connection cannot grow a worker's memory."""
    head = b"PUT /v1/sessions/abc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: "
    limit = Config().max_header_bytes + 2 * Config().max_body_bytes
    with connect(server) as sock:
        sock.sendall(head)
        sent = 0
        try:
            while sent <= 4 * limit:
                sock.sendall(b"a" * 16384)
                sent += 16384
        except OSError:  # reset: the server answered and closed
            pass
        ((status, headers, _),) = read_answers(sock, 1)
    assert status == 413 and headers["connection"] == "close"  # not the body timeout's 408


REFUSED_HEAD = (
    b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000000\r\n\r\n"
)


def test_a_refused_client_still_sending_is_not_reset_while_it_reads_its_answer(server):
    """Closing with unread bytes makes the kernel reset the connection, which on a real network can destroy
    the answer before the client reads it: after a refusal the server half-closes and reads on."""
    with connect(server) as sock:
        sock.sendall(REFUSED_HEAD)
        ((status, headers, _),) = read_answers(sock, 1)
        assert status == 413 and headers["connection"] == "close"
        for _ in range(16):  # 256 KiB more of the body it was refused, within the linger
            sock.sendall(b"a" * 16384)
            time.sleep(0.002)
        assert sock.recv(1) == b""  # the server's half-close, not a reset
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""


def test_a_refused_client_that_sends_on_and_on_is_closed(server):
    with connect(server) as sock:
        sock.sendall(REFUSED_HEAD)
        ((status, _, _),) = read_answers(sock, 1)
        assert status == 413
        until = time.monotonic() + 10 * LINGER_S
        with pytest.raises(OSError):  # reset once the server stops reading
            while time.monotonic() < until:
                sock.sendall(b"a" * 16384)
                time.sleep(0.01)


def test_a_read_that_ends_inside_a_pipelined_head_counts_that_head_alone(server):
    """Bytes of the requests before it in the same read are not the next request's header bytes."""
    body = json.dumps({"userId": new_user("split"), "deviceId": "tv", "streamId": "film"}).encode()
    body += b" " * (Config().max_body_bytes - len(body) - 100)
    post = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    post += b"Content-Length: %d\r\n\r\n" % len(body) + body
    with connect(server) as sock:
        sock.sendall(post + b"GET /healthz HT")
        time.sleep(0.2)  # the server reads the first part alone
        sock.sendall(b"TP/1.1\r\nHost: x\r\n\r\n")
        assert [status for status, _, _ in read_answers(sock, 2)] == [201, 200]


def test_a_client_that_half_closes_after_its_requests_gets_their_answers(server):
    """Answered, then closed, as other servers do; the answers were dropped while the starts took effect."""
    with connect(server) as sock:
        sock.sendall(start_request(new_user("half-close")) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        answers = read_answers(sock, 2)
        assert [status for status, _, _ in answers] == [201, 200]
        assert answers[1][1]["connection"] == "close"
        assert closed(sock)


def test_an_answer_given_while_the_worker_stops_says_connection_close(redis_server, keys_dir):
    """The worker closes after it; a client told keep-alive could send its next request into the close."""
    process = ServerProcess(redis_server.url, keys_dir, workers=1, drain_s=0, shutdown_timeout_s=5)
    try:
        with connect(process) as sock:
            sock.sendall(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            sock.sendall(b"Content-Length: 2\r\n\r\n")
            time.sleep(0.2)
            process.terminate()
            time.sleep(0.5)  # the worker is stopping, the request in hand
            sock.sendall(b"{}")
            ((status, headers, _),) = read_answers(sock, 1)
            assert status == 404 and headers["connection"] == "close"
            assert closed(sock)
    finally:
        process.stop()


def pipelined_fine(count, body_bytes):
    body = b"x" * body_bytes
    request = b"POST /fine HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    return request * count


def test_requests_pipelined_behind_a_slow_one_are_read_as_they_are_answered():
    """1.5 MB of pipelined requests behind a slow answer: the server reads on as it answers, not all of
    them ahead (that was up to 32 requests of the largest size per connection, or a close past 32)."""
    count = 100

    async def scenario(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.05)  # in hand: what follows waits
        writer.write(pipelined_fine(count, 15_000))
        answers = 0
        while answers < count + 1:
            await asyncio.wait_for(reader.readuntil(b"fine"), 5)
            answers += 1
        writer.close()
        return answers

    assert run_worker(Slow(), scenario) == count + 1


def test_a_request_read_ahead_keeps_the_time_it_had_while_the_server_does_not_read():
    """Its head's rest reached the kernel in time, while the server was not reading (a request waited
    behind a slow one): it is not cut off for the server's pause."""

    async def scenario(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.05)
        writer.write(pipelined_fine(1, 10) + b"GET /fine HTTP/1.1\r\n")
        await asyncio.sleep(0.05)
        writer.write(b"Host: x\r\n\r\n")  # within the header timeout, into the kernel's buffer
        answers = [await asyncio.wait_for(reader.readuntil(b"fine"), 5) for _ in range(3)]
        writer.close()
        return answers

    answers = run_worker(Slow(), scenario, header_timeout_s=0.2)
    assert [answer.startswith(b"HTTP/1.1 200 ") for answer in answers] == [True] * 3


def test_a_request_read_ahead_that_never_ends_is_still_cut_off_after_the_pause():
    """Its deadline stops while the server does not read, then runs on: it is not dropped."""

    async def scenario(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.05)
        writer.write(pipelined_fine(1, 10) + b"GET /fine HTTP/1.1\r\n")  # the last never ends
        answers = [await asyncio.wait_for(reader.readuntil(b"fine"), 5) for _ in range(2)]
        rest = await asyncio.wait_for(reader.read(), 5)  # the close, a header timeout after the resume
        writer.close()
        return answers, rest

    answers, rest = run_worker(Slow(), scenario, header_timeout_s=0.2)
    assert [answer.startswith(b"HTTP/1.1 200 ") for answer in answers] == [True] * 2 and rest == b""
