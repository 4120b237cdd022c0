"""SIGTERM: /readyz turns 503 at once, players keep being served through the drain, requests in flight
finish, nothing is cut mid-answer, and the process exits 0 within the drain plus the shutdown timeout."""

import http.client
import json
import threading
import time

import pytest
from players import admitted, new_user, start
from processes import ServerProcess, wait_until

pytestmark = [pytest.mark.http, pytest.mark.redis]

DRAIN_S = 2.0
SHUTDOWN_TIMEOUT_S = 4.0


class Player(threading.Thread):
    """Heartbeat one session on a kept-alive connection; record how each call ended."""

    def __init__(self, server, stopping):
        super().__init__(daemon=True)
        self._server, self._stopping = server, stopping
        self.sid, self.token = admitted(start(server, user=new_user("drain")))
        self.answered, self.refused, self.broken = [], 0, []
        self._connection: http.client.HTTPConnection | None = None

    def run(self):
        try:
            self._play()
        finally:
            self._close()

    def _close(self):
        if self._connection is not None:
            self._connection.close()  # a dropped socket is a ResourceWarning when it is collected
            self._connection = None

    def _play(self):
        while not self._stopping.is_set():
            try:
                if self._connection is None:
                    self._connection = http.client.HTTPConnection("127.0.0.1", self._server.port, timeout=10)
                headers = {"Authorization": f"Bearer {self.token}"}
                self._connection.request("PUT", f"/v1/sessions/{self.sid}", headers=headers)
                answer = self._connection.getresponse()
                body = answer.read()
                self.answered.append((time.monotonic(), answer.status))
                if answer.status == 200:
                    self.token = json.loads(body)["token"]  # a cut answer would not parse
            except ConnectionRefusedError:
                self.refused += 1  # the listener is closed: a load balancer has moved on by now
                self._close()
            except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
                # A kept-alive connection closed between requests is fine (a new one follows); a
                # connection cut while a request was on it is what must never happen, and that shows as an
                # answer missing: the player's own record keeps both apart below.
                self.broken.append((time.monotonic(), repr(exc)))
                self._close()
            except json.JSONDecodeError as exc:
                self.broken.append((time.monotonic(), f"cut answer: {exc}"))
            time.sleep(0.02)


@pytest.mark.parametrize("server_name", ["asyncio", "granian", "gunicorn"])
def test_sigterm_drains_then_exits_without_cutting_an_answer(redis_server, keys_dir, server_name):
    server = ServerProcess(
        redis_server.url,
        keys_dir,
        workers=2,
        server=server_name,
        drain_s=DRAIN_S,
        shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
    )
    stopping = threading.Event()
    players = [Player(server, stopping) for _ in range(8)]
    try:
        for player in players:
            player.start()
        time.sleep(0.5)
        assert server.request("GET", "/readyz").status == 200
        signalled = time.monotonic()
        server.terminate()
        wait_until(lambda: server.request("GET", "/readyz").status == 503, timeout_s=1.5, what="not ready")
        not_ready_after = time.monotonic() - signalled
        ready = server.request("GET", "/readyz").json()
        assert ready["checks"]["serving"] is False and ready["status"] == "not ready"
        status = server.wait(DRAIN_S + SHUTDOWN_TIMEOUT_S + 3)
        exited_after = time.monotonic() - signalled
    finally:
        stopping.set()
        for player in players:
            player.join(timeout=5)
        server.stop()

    took = f"not ready after {not_ready_after * 1000:.0f} ms, exit {status} after {exited_after:.2f} s"
    print(f"\n[shutdown, {server_name}] {took}")
    assert status == 0
    assert DRAIN_S <= exited_after < DRAIN_S + SHUTDOWN_TIMEOUT_S
    for player in players:
        during_drain = [s for at, s in player.answered if signalled < at < signalled + DRAIN_S - 0.2]
        assert during_drain and set(during_drain) == {200}, during_drain  # served all through the drain
        assert all(at > signalled + DRAIN_S - 0.2 for at, _ in player.broken), player.broken
