"""Key rotation on the real server (two workers) under continuous heartbeats, driven by the CLI.

Nothing may fail: every heartbeat succeeds through `keys rotate --force` and `keys prune`, new tokens carry
the new kid once the scheduled switch comes, and at every moment the JWKS holds the kid of every unexpired
token.
"""

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from players import admitted, heartbeat, jwks, legacy_heartbeat, legacy_started, start
from processes import ServerProcess, request, wait_until

from api.config import Config
from keys.store import KeyStore

pytestmark = [pytest.mark.http, pytest.mark.redis]

TTL_S = 6  # players heartbeat all along: a stall of most of a TTL would end a session
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

    def __init__(self, port, pause_s=0.01):
        super().__init__(daemon=True)
        self._port = port
        self._pause_s = pause_s
        self.stopping = threading.Event()
        self.seen = []

    def run(self):
        while not self.stopping.is_set():
            sent = time.time()
            answer = request(self._port, "GET", "/.well-known/jwks.json")
            assert answer.status == 200
            self.seen.append((sent, {k["kid"] for k in answer.json()["keys"]}))
            time.sleep(self._pause_s)


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
        wait_until(lambda: old not in watcher.seen[-1][1], timeout_s=5, what="the old kid gone from the JWKS")
        time.sleep(RELOAD_S * 2 + 0.3)  # every worker, polled meanwhile, has finished its own reload
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


# -- a fleet whose instances see the key directory 30 s apart ----------------------------------------

FLEET = {
    "session_ttl_s": TTL_S,
    "token_leeway_s": LEEWAY_S,
    "keys_reload_s": RELOAD_S,
    "jwks_max_age_s": 2,
    # The bound the commands plan with. The second instance lags 30 s, beyond it: it still has the old
    # manifest when the first switches, so only verify-next and prune's lag headroom keep it working.
    "keys_propagation_s": 16,
}
SYNC_LAG_S = 30


def key_files(directory):
    """Return {name: bytes} of the manifest and the PEMs: what a sync of the directory carries."""
    files = {}
    for name in sorted(os.listdir(directory)):
        if name == "keys.json" or name.endswith(".pem"):
            with open(os.path.join(directory, name), "rb") as file:
                files[name] = file.read()
    return files


def install(files, directory):
    """Write `files` into `directory` as a sync does: each by an atomic rename, PEMs before the manifest."""
    present = key_files(directory)
    for name in sorted(files, key=lambda n: n == "keys.json"):
        if present.get(name) == files[name]:
            continue
        temporary = os.path.join(directory, f".sync-{name}")
        mode = 0o644 if name == "keys.json" else 0o600  # the service refuses PEMs that others can read
        with os.fdopen(os.open(temporary, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode), "wb") as file:
            file.write(files[name])
        os.replace(temporary, os.path.join(directory, name))
    for name in set(present) - set(files):
        os.unlink(os.path.join(directory, name))


class LaggingSync(threading.Thread):
    """Copy a key directory to another, each change `lag_s` after it happened."""

    def __init__(self, source, target, lag_s):
        super().__init__(daemon=True)
        self._source, self._target, self._lag_s = source, target, lag_s
        self.stopping = threading.Event()
        self.copies = []  # (changed at, copied at, the manifest's states by kid)

    def run(self):
        seen, pending = key_files(self._source), []
        while not self.stopping.is_set():
            now = time.time()
            files = key_files(self._source)
            if files != seen:
                pending.append((now, files))
                seen = files
            while pending and pending[0][0] + self._lag_s <= now:
                changed, files = pending.pop(0)
                install(files, self._target)
                states = {k["kid"]: k["state"] for k in json.loads(files["keys.json"])["keys"]}
                self.copies.append((changed, time.time(), states))
            time.sleep(0.05)


class FleetPlayer(threading.Thread):
    """Heartbeat one session continuously, each call to the next instance in turn; record every answer."""

    def __init__(self, instances, name, legacy):
        super().__init__(daemon=True)
        self._instances = instances
        self._legacy = legacy
        self.stopping = threading.Event()
        self.beats = []  # (answered at, instance index, kid presented, kid received)
        self.failures = []
        if legacy:
            self.sid, self.token = legacy_started(instances[0], name, "tv")
        else:
            self.sid, self.token = admitted(start(instances[0], user=name))

    def heartbeat(self, instance, token):
        call = legacy_heartbeat if self._legacy else heartbeat
        return call(self._instances[instance], self.sid, token)

    def run(self):
        turn = 0
        while not self.stopping.is_set():
            turn = 1 - turn
            answer = self.heartbeat(turn, self.token)
            if answer.status != 200:
                self.failures.append((time.time(), turn, kid_of(self.token), answer.status, answer.body))
                continue
            token = answer.json()["token"]
            self.beats.append((time.time(), turn, kid_of(self.token), kid_of(token), exp_of(token)))
            self.token = token
            time.sleep(0.03)


def prune_when_due(directory):
    """Run `keys prune` again at the time it names until it retires a key; return what it said."""
    while True:
        said = keys_cli(directory, "prune", **FLEET)
        due = re.search(r"stays retiring until (\S+ \S+)", said)
        if due is None:
            return said
        due_at = time.mktime(
            time.strptime(due[1], "%Y-%m-%d %H:%M:%S")
        )  # printed to the second, rounded down
        time.sleep(max(0.3, due_at - time.time()))


def published_kids(instance):
    return {k["kid"] for k in jwks(instance)["keys"]}


@pytest.fixture
def fleet(redis_server, tmp_path):
    """Start two instances, each on its own copy of the key directory; keep the second copy 30 s behind."""
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    store = KeyStore(first)
    store.generate("ES256")
    store.generate("ES256")  # next: published on both from the start
    os.makedirs(second, mode=0o700)
    install(key_files(first), second)
    instances = [ServerProcess(redis_server.url, first, workers=2, threads=4, **FLEET)]
    try:
        instances.append(ServerProcess(redis_server.url, second, workers=2, threads=4, **FLEET))
        sync = LaggingSync(first, second, SYNC_LAG_S)
        sync.start()
        yield instances, first, sync
        sync.stopping.set()
        sync.join(timeout=10)
    finally:
        for instance in instances:
            instance.stop()


def test_rotation_across_instances_that_see_the_key_directory_30_s_apart(fleet):
    instances, directory, sync = fleet
    old, new = (r.kid for r in KeyStore(directory).records())
    players = [
        FleetPlayer(instances, f"fleet-{i}-{time.monotonic_ns()}", legacy=i % 2 == 1) for i in range(4)
    ]
    watchers = [JwksWatcher(instance.port, pause_s=0.25) for instance in instances]
    threads = [*players, *watchers]
    for thread in threads:
        thread.start()
    try:
        published = KeyStore(directory).records()[1].created
        time.sleep(max(0.5, published + FLEET["jwks_max_age_s"] - time.time()))
        said = keys_cli(
            directory, "rotate", **FLEET
        )  # not forced: the next key has been published long enough
        assert f"{new} signs from" in said
        switch = next(r for r in KeyStore(directory).records() if r.kid == new).times["active"]
        said = prune_when_due(directory)
        assert f"{old} is retired" in said
        pruned = time.time()
        wait_until(
            lambda: all(old not in published_kids(instance) for instance in instances),
            timeout_s=SYNC_LAG_S + 5,
            what="the old key gone from the JWKS of both instances",
        )
        assert all(new in published_kids(instance) for instance in instances)
    finally:
        for thread in threads:
            thread.stopping.set()
        for thread in threads:
            thread.join(timeout=15)

    assert [f for p in players for f in p.failures] == []
    beats = [beat for player in players for beat in player.beats]
    assert len(beats) > 500
    rotated_at, second_saw_it = next((c[0], c[1]) for c in sync.copies if c[2].get(new) == "active")
    pruned_at = next(c[0] for c in sync.copies if c[2][old] == "retired")
    timeline = (rotated_at, switch, second_saw_it, sync.copies)
    assert second_saw_it - rotated_at >= SYNC_LAG_S and rotated_at < switch < second_saw_it, timeline
    # The sync notices a change at its next poll (every 50 ms), which may come after the command returned.
    assert switch < pruned_at < pruned + 5
    for instance in (0, 1):
        assert {received for _, at, _, received, _ in beats if at == instance} == {old, new}
    # the lagging instance, on the old manifest, took new-key tokens while it still signed with the old key
    assert any(at == 1 and presented == new and received == old for _, at, presented, received, _ in beats)
    # the up-to-date instance took old-key tokens signed by the lagging one after its own switch
    assert any(
        when > switch + 1 and at == 0 and presented == old and received == new
        for when, at, presented, received, _ in beats
    )
    # each instance's JWKS always held the kid of every token either instance had handed out and not expired
    for watcher in watchers:
        for sent, kids in watcher.seen:
            live = {kid for when, _, _, kid, exp in beats if when < sent and exp + LEEWAY_S > sent}
            assert live <= kids, (sent, live - kids)
    print(
        f"\nfleet rotation: switch {switch - rotated_at:.1f} s after rotate; second instance updated"
        f" {second_saw_it - rotated_at:.1f} s after; pruned {pruned_at - switch:.1f} s after the switch;"
        f" {len(beats)} heartbeats, none failed"
    )
