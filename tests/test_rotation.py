"""Key rotation on the real server (two workers) under continuous heartbeats, driven by the CLI.

Nothing may fail: every heartbeat succeeds through `keys rotate --force` and `keys prune`, new tokens carry
the new kid once the scheduled switch comes, and at every moment the JWKS holds the kid of every unexpired
token.
"""

import base64
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from processes import ServerProcess, request, wait_until

from api.config import Config
from keys.store import KeyStore

pytestmark = [pytest.mark.http, pytest.mark.redis]

TTL_S = 3
LEEWAY_S = 1
RELOAD_S = 0.2
PROPAGATION_S = 0  # one instance reading the directory the commands write


def kid_of(token):
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]


def exp_of(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]


def keys_cli(directory, *args, **env):
    """Run `concurrency-service keys ARGS --dir DIR` as a separate process; return its stdout."""
    environ = {**os.environ, **{Config.env_name(k): str(v) for k, v in env.items()}}
    command = [sys.executable, "-m", "api.cli", "keys", *args, "--dir", directory]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


class Player(threading.Thread):
    """Start a session, then heartbeat it continuously; record every answer."""

    def __init__(self, port, name):
        super().__init__(daemon=True)
        self._port = port
        self.user = name
        self.stopping = threading.Event()
        self.beats = []  # (received at, status, token)
        self.failures = []
        answer = request(port, "POST", "/v1/sessions", {"userId": name, "deviceId": "tv", "streamId": "film"})
        assert answer.status == 201, answer.body
        self.sid, self.token = answer.json()["sessionId"], answer.json()["token"]
        self.tokens = [(time.time(), self.token)]

    def heartbeat(self, token):
        headers = {"Authorization": f"Bearer {token}"}
        return request(self._port, "PUT", f"/v1/sessions/{self.sid}", headers=headers)

    def run(self):
        while not self.stopping.is_set():
            answer = self.heartbeat(self.token)
            if answer.status != 200:
                self.failures.append((time.time(), answer.status, answer.body))
                continue
            self.token = answer.json()["token"]
            self.tokens.append((time.time(), self.token))
            time.sleep(0.02)


class JwksWatcher(threading.Thread):
    """Fetch the JWKS continuously; record (sent at, kids)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self._port = port
        self.stopping = threading.Event()
        self.seen = []

    def run(self):
        while not self.stopping.is_set():
            sent = time.time()
            answer = request(self._port, "GET", "/.well-known/jwks.json")
            assert answer.status == 200
            self.seen.append((sent, {k["kid"] for k in answer.json()["keys"]}))
            time.sleep(0.01)


@pytest.fixture
def rotation_server(redis_server, tmp_path):
    directory = str(tmp_path / "keys")
    KeyStore(directory).generate("ES256")
    server = ServerProcess(
        redis_server.url,
        directory,
        workers=2,
        threads=4,
        session_ttl_s=TTL_S,
        token_leeway_s=LEEWAY_S,
        keys_reload_s=RELOAD_S,
        keys_propagation_s=PROPAGATION_S,
    )
    yield server, directory
    server.stop()


def test_rotation_under_traffic_loses_nothing(rotation_server):
    server, directory = rotation_server
    env = {
        "session_ttl_s": TTL_S,
        "token_leeway_s": LEEWAY_S,
        "keys_reload_s": RELOAD_S,
        "keys_propagation_s": PROPAGATION_S,
    }
    players = [Player(server.port, f"rotation-{i}-{time.monotonic_ns()}") for i in range(4)]
    watcher = JwksWatcher(server.port)
    for thread in (*players, watcher):
        thread.start()
    try:
        time.sleep(0.5)
        old = kid_of(players[0].token)
        said = keys_cli(directory, "rotate", "--force", **env)
        new = next(r.kid for r in KeyStore(directory).records() if r.state == "active")
        assert f"{new} signs from" in said
        wait_until(
            lambda: all(kid_of(p.token) == new for p in players), timeout_s=5, what="tokens with the new kid"
        )

        # old tokens keep working until pruned: the last token each player got from the old key
        for player in players:
            last_old = [t for _, t in player.tokens if kid_of(t) == old][-1]
            assert player.heartbeat(last_old).status == 200

        prunable = next(r for r in KeyStore(directory).records() if r.kid == old).times["retiring"]
        time.sleep(max(0, prunable + TTL_S + LEEWAY_S + PROPAGATION_S + RELOAD_S - time.time()) + 0.1)
        said = keys_cli(directory, "prune", **env)
        assert f"{old} is retired" in said
        time.sleep(RELOAD_S * 2 + 0.3)
    finally:
        for thread in (*players, watcher):
            thread.stopping.set()
        for thread in (*players, watcher):
            thread.join(timeout=10)

    assert [f for p in players for f in p.failures] == []
    beats = sum(len(p.tokens) for p in players)
    assert beats > 100
    issued = sorted((at, kid_of(t), exp_of(t)) for p in players for at, t in p.tokens)
    assert {kid for _, kid, _ in issued} == {old, new}
    switch_at = max(at for at, kid, _ in issued if kid == old)
    assert all(kid == new for at, kid, _ in issued if at > switch_at)  # no worker went back to the old key
    # at every moment the JWKS held the kid of every unexpired token handed out before it was asked
    for sent, kids in watcher.seen:
        live = {kid for at, kid, exp in issued if at < sent and exp > sent}
        assert live <= kids, (sent, live - kids)
    assert old not in watcher.seen[-1][1] and new in watcher.seen[-1][1]
    assert players[0].heartbeat(players[0].tokens[0][1]).status == 401  # pruned (and expired)


def test_a_rotation_reaches_every_worker_within_the_reload_interval(redis_server, tmp_path):
    """Measure how long a key change takes to show in the JWKS of every worker (default 1 s polling)."""
    directory = str(tmp_path / "keys")
    KeyStore(directory).generate("ES256")
    server = ServerProcess(redis_server.url, directory, workers=2, threads=4)
    try:
        before = request(server.port, "GET", "/.well-known/jwks.json").headers["etag"]
        answers = []
        stopping = threading.Event()

        def poll():
            while not stopping.is_set():
                sent = time.time()
                etag = request(server.port, "GET", "/.well-known/jwks.json").headers["etag"]
                answers.append((sent, etag))

        pollers = [threading.Thread(target=poll, daemon=True) for _ in range(6)]
        for poller in pollers:
            poller.start()
        time.sleep(0.3)
        keys_cli(directory, "generate")  # a new next key: the JWKS of every worker must show it
        written = os.stat(os.path.join(directory, "keys.json")).st_mtime  # when the manifest was renamed in
        time.sleep(1.6)
        stopping.set()
        for poller in pollers:
            poller.join(timeout=10)
    finally:
        server.stop()
    stale = [sent - written for sent, etag in answers if etag == before and sent > written]
    fresh = [sent - written for sent, etag in answers if etag != before]
    last_stale_s = max(stale, default=0.0)
    print(
        f"\nkey change reached every worker: last stale JWKS asked {last_stale_s * 1000:.0f} ms after the"
        f" manifest was written; first fresh at {min(fresh) * 1000:.0f} ms; {len(answers)} JWKS requests"
    )
    assert fresh and last_stale_s < 1.0 + 0.3
