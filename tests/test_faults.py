"""Redis faults under load, against the real server process and a real redis-server.

Players run a steady mix of starts, heartbeats and stops while the test hangs redis-server (SIGSTOP), stops
it and starts a new, empty one on the same port. Every request must come back within MAX_LATENCY_S; closed
mode answers 503 with Retry-After, open mode keeps players playing on degraded tokens; the service recovers
by itself, and afterwards Redis holds exactly the sessions the players believe they have. Run with -s to see
the worst latencies measured during each fault."""

import collections
import random
import signal
import threading
import time
import types

import pytest
import redis
from layout import live_sessions, user_key
from players import (
    admitted,
    assert_error,
    assert_gone,
    bearer,
    counted,
    heartbeat,
    log_entries,
    metric_values,
    new_user,
    session_claims,
    start,
    stop,
    unverified_claims,
)
from processes import RedisServer, ServerProcess, wait_until

pytestmark = [pytest.mark.http, pytest.mark.redis]

MAX_LATENCY_S = 1.5  # the bound every request must meet while Redis is down or hung
REDIS_TIMEOUT_S = 0.25
LIMIT = 5  # room for the sessions a hang leaves behind (see the steady-mix test)
TTL_S = 60
DEGRADED_TTL_S = 30
FAULT_S = 1.5
RECOVER_S = 2.0
GRACE_S = 1.0  # after a fault ends, requests may see it for one Retry-After (1 s)


class FlakyRedis:
    """A redis-server on one port that a test can hang, stop, and start again empty."""

    def __init__(self, workdir):
        self._workdir = workdir
        self._server = RedisServer(workdir)
        self.port, self.url = self._server.port, self._server.url
        self._hung = False
        self._stopped = False
        self.client = redis.Redis(port=self.port, socket_timeout=5)

    def hang(self):
        self._server.signal(signal.SIGSTOP)
        self._hung = True

    def resume(self):
        self._server.signal(signal.SIGCONT)
        self._hung = False

    def stop(self):
        """Terminate redis-server: whatever it held is lost."""
        self._server.stop()
        self._hung = False
        self._stopped = True

    def start(self):
        """Start a new, empty redis-server on the same port."""
        self._server = RedisServer(self._workdir, port=self.port)
        self._stopped = False

    def ensure_resumed(self):
        if self._hung:
            self.resume()

    def ensure_up(self):
        """Undo whatever fault a test left behind, and empty Redis."""
        if self._hung:
            self.resume()
        if self._stopped:
            self.start()
        self.client.flushall()

    def close(self):
        self.stop()
        self.client.close()


def fault_pair(workdir, keys_dir, **env):
    """Return a FlakyRedis and the real service over it."""
    flaky = FlakyRedis(workdir)
    try:
        service = ServerProcess(
            flaky.url,
            keys_dir,
            workers=2,
            threads=4,
            redis_timeout_s=REDIS_TIMEOUT_S,
            max_streams=LIMIT,
            session_ttl_s=TTL_S,
            degraded_ttl_s=DEGRADED_TTL_S,
            **env,
        )
    except BaseException:
        flaky.close()
        raise
    return types.SimpleNamespace(redis=flaky, server=service)


@pytest.fixture(scope="module")
def closed_pair(tmp_path_factory, keys_dir):
    pair = fault_pair(tmp_path_factory.mktemp("redis-closed"), keys_dir, on_store_error="closed")
    yield pair
    pair.server.stop()
    pair.redis.close()


@pytest.fixture(scope="module")
def open_pair(tmp_path_factory, keys_dir):
    pair = fault_pair(tmp_path_factory.mktemp("redis-open"), keys_dir, on_store_error="open")
    yield pair
    pair.server.stop()
    pair.redis.close()


@pytest.fixture
def closed(closed_pair):
    closed_pair.redis.ensure_up()
    yield closed_pair
    closed_pair.redis.ensure_up()


@pytest.fixture
def opened(open_pair):
    open_pair.redis.ensure_up()
    yield open_pair
    open_pair.redis.ensure_up()


@pytest.fixture
def extra_server(keys_dir):
    """Start more service processes over a pair's Redis, each with settings of its own; stop them after."""
    started = []

    def make(pair, **env):
        process = ServerProcess(pair.redis.url, keys_dir, redis_timeout_s=REDIS_TIMEOUT_S, **env)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


def timed(call):
    began = time.monotonic()
    answer = call()
    return answer, time.monotonic() - began


def assert_store_unavailable(answer):
    assert_error(answer, 503, "store_unavailable")
    assert int(answer.headers["retry-after"]) >= 1


def degraded(token):
    return unverified_claims(token).get("degraded") is True


# --- a steady mix of players through a hang, a stop and a restart ---------------------------------


class Record:
    """One request as a player saw it."""

    __slots__ = ("op", "began", "seconds", "status", "retry_after", "error", "degraded_in", "degraded_out")

    def __init__(self, op, began, seconds, answer, degraded_in, degraded_out):
        self.op, self.began, self.seconds, self.status = op, began, seconds, answer.status
        self.retry_after = answer.headers.get("retry-after")
        body = (
            answer.json()
            if answer.body and answer.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        self.error = body.get("error")
        self.degraded_in, self.degraded_out = degraded_in, degraded_out


class Player(threading.Thread):
    """A watcher plays one long session; a zapper starts, watches a little and stops, again and again.

    A start is retried until admitted (the viewer waits for the picture); a heartbeat that fails is retried at
    the next beat with the same token; a stop is retried until it goes through (the app sends it in the
    background), so the player always knows which session it holds."""

    def __init__(self, server, kind, index, quit_event, records, lock):
        super().__init__(daemon=True)
        self._server = server
        self.kind = kind
        self.user = new_user(f"{kind}{index}")
        self.device = f"{kind}-device"
        self._quit = quit_event
        self._records = records
        self._lock = lock
        self._random = random.Random(index)
        self.session = None  # (sid, token, stream) the player believes is live
        self.failure = None

    def run(self):
        try:
            cycle = 0
            while not self._quit.is_set():
                stream = f"stream-{cycle}"
                self._play(stream)
                for _ in range(10**6 if self.kind == "watcher" else 2):
                    if self._quit.is_set():
                        return
                    time.sleep(0.05 + self._random.random() * 0.05)
                    self.beat()
                self._leave()
                cycle += 1
        except BaseException as exc:  # reported on the test's thread
            self.failure = exc

    def _call(self, op, method, path, body=None, token=None):
        began = time.monotonic()
        answer = self._server.request(method, path, body, bearer(token) if token else {})
        seconds = time.monotonic() - began
        fresh = answer.json().get("token") if answer.status in (200, 201) and answer.body else None
        record = Record(
            op, began, seconds, answer, token is not None and degraded(token), bool(fresh and degraded(fresh))
        )
        with self._lock:
            self._records.append(record)
        return answer

    def _play(self, stream):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.try_start(stream):
                return
            time.sleep(0.05)
        raise AssertionError("a start was not admitted within 30 s")

    def try_start(self, stream):
        """Ask once to start a session; return whether it was admitted."""
        body = {"userId": self.user, "deviceId": self.device, "streamId": stream}
        answer = self._call("start", "POST", "/v1/sessions", body)
        if answer.status in (200, 201):
            self.session = (answer.json()["sessionId"], answer.json()["token"], stream)
            return True
        if answer.status != 503:
            raise AssertionError(f"start answered {answer.status}: {answer.body!r}")
        return False

    def beat(self):
        sid, token, stream = self.session
        answer = self._call("heartbeat", "PUT", f"/v1/sessions/{sid}", token=token)
        if answer.status == 200:
            self.session = (sid, answer.json()["token"], stream)
        elif answer.status != 503:
            raise AssertionError(f"heartbeat answered {answer.status}: {answer.body!r}")

    def _leave(self):
        sid, token, _stream = self.session
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = self._call("stop", "DELETE", f"/v1/sessions/{sid}", token=token)
            if answer.status == 204:
                self.session = None
                return
            if answer.status != 503:
                raise AssertionError(f"stop answered {answer.status}: {answer.body!r}")
            time.sleep(0.05)
        raise AssertionError("a stop did not go through within 30 s")


class Prober(threading.Thread):
    """An orchestrator's readiness probe: /readyz must answer within the bound too."""

    def __init__(self, server, quit_event, records, lock):
        super().__init__(daemon=True)
        self._server, self._quit, self._records, self._lock = server, quit_event, records, lock

    def run(self):
        while not self._quit.is_set():
            began = time.monotonic()
            answer = self._server.request("GET", "/readyz")
            with self._lock:
                self._records.append(Record("ready", began, time.monotonic() - began, answer, False, False))
            time.sleep(0.1)


ALLOWED = {
    # mode -> op -> statuses a player may see while Redis misbehaves
    "closed": {"start": {200, 201, 503}, "heartbeat": {200, 503}, "stop": {204, 503}, "ready": {200, 503}},
    "open": {"start": {200, 201}, "heartbeat": {200}, "stop": {204, 503}, "ready": {200, 503}},
}


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_players_ride_out_a_hang_a_stop_and_a_restart(request, mode):
    pair = request.getfixturevalue("closed" if mode == "closed" else "opened")
    server, flaky = pair.server, pair.redis
    records, lock, quit_event = [], threading.Lock(), threading.Event()
    players = [Player(server, "watcher", i, quit_event, records, lock) for i in range(3)]
    players += [Player(server, "zapper", i, quit_event, records, lock) for i in range(2)]
    prober = Prober(server, quit_event, records, lock)
    newcomers = []  # one viewer arriving in the middle of each fault, driven from here
    faults = {}

    def fault(name, begin, end):
        began = time.monotonic()
        begin()
        time.sleep(FAULT_S / 3)
        newcomer = Player(server, "newcomer", len(newcomers), quit_event, records, lock)
        newcomers.append(newcomer)
        if newcomer.try_start(f"stream-{name}"):
            newcomer.beat()
        time.sleep(max(0.0, began + FAULT_S - time.monotonic()))
        end()
        faults[name] = (began, time.monotonic())
        time.sleep(RECOVER_S)

    try:
        for thread in [*players, prober]:
            thread.start()
        time.sleep(0.8)
        fault("hang (SIGSTOP)", flaky.hang, flaky.resume)
        fault("stop and restart", flaky.stop, flaky.start)
    finally:
        quit_event.set()
        flaky.ensure_resumed()
        for thread in [*players, prober]:
            thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in [*players, prober]), "a player hung"
    for player in players:
        assert player.failure is None, f"{player.user}: {player.failure}"
    players += newcomers

    def fault_of(record):
        """Name the fault a request overlapped, if any."""
        for name, (began, ended) in faults.items():
            if record.began + record.seconds >= began and record.began <= ended + GRACE_S:
                return name
        return "steady"

    by_phase = collections.defaultdict(list)
    for record in records:
        by_phase[fault_of(record)].append(record)
    for phase in ["steady", *faults]:
        phase_records = by_phase[phase]
        worst = max(phase_records, key=lambda r: r.seconds)
        unavailable = sum(r.status == 503 for r in phase_records)
        degraded_out = sum(r.degraded_out for r in phase_records)
        print(
            f"\n[faults, {mode} mode] {phase}: worst latency {worst.seconds * 1000:.0f} ms ({worst.op}), "
            f"{len(phase_records)} requests, {unavailable} answered 503, {degraded_out} degraded tokens"
        )

    worst = max(records, key=lambda r: r.seconds)
    assert worst.seconds < MAX_LATENCY_S, f"a {worst.op} took {worst.seconds:.2f} s"
    for record in records:
        assert record.status in ALLOWED[mode][record.op], (record.op, record.status, record.error)
        if record.status == 503 and record.op != "ready":
            assert record.error == "store_unavailable" and int(record.retry_after) >= 1
        if record.status == 503 or record.degraded_out:
            assert fault_of(record) != "steady", (record.op, record.status, "outside a fault")
        if mode == "closed":
            assert not record.degraded_out, "closed mode handed out a degraded token"

    for name, (_began, ended) in faults.items():
        during = [r for r in by_phase[name] if r.op != "ready"]
        if mode == "closed":
            assert any(r.status == 503 for r in during), f"no request noticed the {name}"
        else:
            assert any(r.op == "start" and r.degraded_out for r in during), f"no degraded start in the {name}"
            assert any(r.op == "heartbeat" and r.degraded_in and r.status == 200 for r in during)
        after = [r for r in records if ended + GRACE_S < r.began < ended + RECOVER_S]
        assert len([r for r in after if r.op != "ready"]) >= 10, f"too few requests after the {name}"
        assert all(r.status in (200, 201, 204) and not r.degraded_out for r in after), (
            f"the service did not recover from the {name} by itself"
        )

    # Settle: each player's session is confirmed once more, then Redis must hold exactly those sessions.
    believed = {}
    for player in players:
        if player.session is None:
            continue
        sid, token, stream = player.session
        answer = heartbeat(server, sid, token)
        assert answer.status == 200, (player.user, answer.status, answer.body)
        assert not degraded(answer.json()["token"])
        believed[sid] = (user_key(player.user), player.device, stream)
    assert len(believed) >= 3  # at least the watchers
    assert live_sessions(flaky.client) == believed


def test_a_long_hang_does_not_queue_requests_past_the_bound(closed):
    """While Redis hangs, requests must not queue behind each other for Redis's worker threads.

    24 players (three per server thread) heartbeat every 50 ms through a 3 s hang: well below what the
    service serves when Redis answers, so any wait past the bound is time spent waiting for a hung Redis."""
    server, flaky = closed.server, closed.redis
    sessions = [admitted(start(server, user=new_user())) for _ in range(24)]
    latencies, lock, quit_event = [], threading.Lock(), threading.Event()

    def play(sid, token):
        while not quit_event.is_set():
            began = time.monotonic()
            answer = heartbeat(server, sid, token)
            with lock:
                latencies.append((began, time.monotonic() - began, answer.status))
            time.sleep(0.05)

    threads = [threading.Thread(target=play, args=session, daemon=True) for session in sessions]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        hung = time.monotonic()
        flaky.hang()
        time.sleep(3.0)
    finally:
        flaky.resume()
        resumed = time.monotonic()
        time.sleep(0.5)
        quit_event.set()
        for thread in threads:
            thread.join(timeout=30)
    during = [
        (seconds, status)
        for began, seconds, status in latencies
        if began + seconds >= hung and began <= resumed
    ]
    worst = max(seconds for seconds, _ in during)
    print(
        f"\n[faults, closed mode] 3 s hang, 24 players: worst latency {worst * 1000:.0f} ms, "
        f"{len(during)} requests"
    )
    assert {status for _, status in during} <= {200, 503}
    assert worst < MAX_LATENCY_S, f"a heartbeat waited {worst:.2f} s while Redis hung"


# --- closed mode ----------------------------------------------------------------------------------


def test_closed_mode_answers_503_with_retry_after_and_logs_the_request_id(closed):
    server, flaky = closed.server, closed.redis
    user = new_user()
    sid, token = admitted(start(server, user=user))
    flaky.stop()

    calls = {
        "start": lambda: start(server, user=user, device="phone"),
        "heartbeat": lambda: heartbeat(server, sid, token),
        "stop": lambda: stop(server, sid, token),
        "seed heartbeat": lambda: server.request("PUT", "/concurrency", {"sessionKey": sid, "token": token}),
    }
    for name, call in calls.items():
        answer, seconds = timed(call)
        assert seconds < MAX_LATENCY_S, (name, seconds)
        assert_store_unavailable(answer)
    request_id = "down-" + new_user()
    answer = server.request(
        "PUT", f"/v1/sessions/{sid}", headers={**bearer(token), "X-Request-Id": request_id}
    )
    assert_store_unavailable(answer)
    assert answer.headers["x-request-id"] == request_id
    ready = server.request("GET", "/readyz")
    assert ready.status == 503 and ready.json()["checks"]["redis"] is False
    assert server.request("GET", "/healthz").status == 200

    def logged():
        return any(
            e.get("request_id") == request_id
            and e.get("level") == "warning"
            and "redis" in e["message"].lower()
            for e in log_entries(server)
        )

    wait_until(logged, timeout_s=5, what="a JSON warning about Redis with the request id")

    flaky.start()
    wait_until(lambda: server.request("GET", "/readyz").status == 200, timeout_s=5, what="ready again")
    assert heartbeat(server, sid, token).status == 200  # the lost session is resumed
    assert live_sessions(flaky.client) == {sid: (user_key(user), "tv", "stream-1")}
    assert "Traceback" not in server.output()


def test_a_start_that_answered_503_leaves_no_session_behind(closed, extra_server):
    """A start that timed out on a hung Redis must not be admitted later behind the player's back."""
    server = extra_server(closed, workers=1, threads=1, max_streams=LIMIT)  # one Redis connection, kept warm
    flaky = closed.redis
    admitted(start(server, user=new_user()))
    user = new_user()
    flaky.hang()
    try:
        answer, seconds = timed(lambda: start(server, user=user, device="tv"))
    finally:
        flaky.resume()
    assert seconds < MAX_LATENCY_S
    assert_store_unavailable(answer)
    time.sleep(0.2)
    assert live_sessions(flaky.client, user) == {}, "Redis admitted a session its player was told failed"


# --- open mode ------------------------------------------------------------------------------------


def test_open_mode_admits_degraded_sessions_and_heartbeats_extend_them(opened):
    server, flaky = opened.server, opened.redis
    user = new_user()
    flaky.stop()

    request_id = "degraded-" + new_user()
    answer, seconds = timed(lambda: start(server, user=user, headers={"X-Request-Id": request_id}))
    assert seconds < MAX_LATENCY_S
    sid, token = admitted(answer)
    claims = session_claims(server, token)
    assert claims["degraded"] is True
    assert claims["exp"] - claims["iat"] == DEGRADED_TTL_S
    assert (claims["sub"], claims["sid"], claims["lim"]) == (user, sid, LIMIT)

    beat, seconds = timed(lambda: heartbeat(server, sid, token))
    assert seconds < MAX_LATENCY_S
    assert beat.status == 200, beat.body
    fresh = session_claims(server, beat.json()["token"])
    assert fresh["degraded"] is True and fresh["sid"] == sid and fresh["jti"] != claims["jti"]
    assert_store_unavailable(stop(server, sid, token))  # nothing to end while Redis is away

    wait_until(
        lambda: any(
            e.get("request_id") == request_id and e.get("level") == "warning" for e in log_entries(server)
        ),
        timeout_s=5,
        what="a JSON warning about the degraded admission with its request id",
    )

    flaky.start()
    wait_until(lambda: server.request("GET", "/readyz").status == 200, timeout_s=5, what="ready again")
    back = heartbeat(server, sid, beat.json()["token"])
    assert back.status == 200, back.body
    claims = session_claims(server, back.json()["token"])
    assert "degraded" not in claims and claims["exp"] - claims["iat"] == TTL_S
    assert live_sessions(flaky.client) == {sid: (user_key(user), "tv", "stream-1")}
    new = start(server, user=user, device="phone")
    assert new.status == 201 and not degraded(new.json()["token"])


def test_open_mode_keeps_players_with_regular_tokens_playing(opened):
    """Players who started before the outage hold regular tokens: open mode must not cut them off either."""
    server, flaky = opened.server, opened.redis
    sid, token = admitted(start(server, user=new_user()))
    flaky.stop()
    answer, seconds = timed(lambda: heartbeat(server, sid, token))
    assert seconds < MAX_LATENCY_S
    assert answer.status == 200, (answer.status, answer.body)
    assert degraded(answer.json()["token"])


def test_a_degraded_token_cannot_bring_back_a_stopped_session(opened, extra_server):
    """An ended session's tombstone must outlive every token it was given, degraded ones included."""
    flaky = opened.redis
    server = extra_server(
        opened,
        workers=1,
        threads=2,
        on_store_error="open",
        session_ttl_s=2,
        degraded_ttl_s=60,  # far longer than this test takes on a loaded machine
        token_leeway_s=0,
    )
    flaky.stop()
    sid, token = admitted(start(server, user=new_user()))
    assert degraded(token)
    flaky.start()

    assert stop(server, sid, token).status == 204
    assert_gone(heartbeat(server, sid, token), "stopped")
    time.sleep(2.3)  # past the session TTL, well within the degraded token's 60 s
    assert_gone(heartbeat(server, sid, token), "stopped")


def test_degraded_tokens_never_outlive_the_tombstone_of_a_session_kicked_before_the_outage(
    opened, extra_server
):
    """Kick, hang Redis, heartbeat on degraded tokens past the old tombstone lifetime, resume: 410 kicked."""
    ttl_s, degraded_s, leeway_s = 3, 10, 1  # the chain could last until about 12 s after the kick
    flaky, admin = opened.redis, "s3cret-" + new_user()
    server = extra_server(
        opened,
        workers=1,
        threads=4,
        on_store_error="open",
        session_ttl_s=ttl_s,
        degraded_ttl_s=degraded_s,
        token_leeway_s=leeway_s,
        admin_token=admin,
    )
    user = new_user()
    sid, token = admitted(start(server, user=user))
    confirmed_exp = session_claims(server, token)["exp"]
    kicked_at = time.time()
    assert server.request("DELETE", f"/v1/users/{user}/sessions/{sid}", headers=bearer(admin)).status == 204
    flaky.hang()
    try:
        # The player never heard of the kick: its heartbeats go on degraded tokens while Redis hangs,
        # past the (ttl + leeway) a tombstone used to live, but never past cex + the degraded lifetime.
        beats = []
        while time.time() < kicked_at + ttl_s + leeway_s + 1.0:
            answer = heartbeat(server, sid, token)
            assert answer.status == 200, answer.body
            token = answer.json()["token"]
            claims = unverified_claims(token)
            assert claims["degraded"] is True and claims["cex"] == confirmed_exp
            assert claims["exp"] <= confirmed_exp + degraded_s
            beats.append(claims["exp"])
            time.sleep(0.5)
        assert len(beats) >= 4
    finally:
        flaky.resume()
    assert_gone(heartbeat(server, sid, token), "kicked")


def test_a_degraded_chain_ends_at_the_confirmed_expiry_plus_the_degraded_lifetime(opened, extra_server):
    server = extra_server(
        opened, workers=1, threads=2, on_store_error="open", session_ttl_s=2, degraded_ttl_s=2
    )
    sid, token = admitted(start(server, user=new_user()))
    confirmed_exp = session_claims(server, token)["exp"]
    opened.redis.stop()
    while time.time() < confirmed_exp + 2:
        answer = heartbeat(server, sid, token)
        if answer.status == 410 and time.time() >= confirmed_exp + 2:
            break  # sent just before the end, answered just after it
        assert answer.status == 200, answer.body
        token = answer.json()["token"]
        assert unverified_claims(token)["exp"] <= confirmed_exp + 2
        time.sleep(0.4)
    time.sleep(max(0.0, confirmed_exp + 2.1 - time.time()))
    assert_gone(heartbeat(server, sid, token), "expired")


# --- resumption -----------------------------------------------------------------------------------


def test_lost_sessions_are_resumed_while_the_user_is_under_the_limit(closed):
    server, flaky = closed.server, closed.redis
    user = new_user()
    sessions = [admitted(start(server, user=user, device=f"device-{i}")) for i in range(LIMIT)]
    ended = admitted(start(server, user=new_user()))
    assert stop(server, *ended).status == 204
    flaky.client.flushall()

    newcomer = admitted(start(server, user=user, device="newcomer"))
    for session in sessions[:-1]:
        assert heartbeat(server, *session).status == 200
    assert_gone(heartbeat(server, *sessions[-1]), "limit")
    expected = {sid: (user_key(user), f"device-{i}", "stream-1") for i, (sid, _) in enumerate(sessions[:-1])}
    assert live_sessions(flaky.client) == {**expected, newcomer[0]: (user_key(user), "newcomer", "stream-1")}


def test_without_resumption_a_lost_session_is_gone(closed, extra_server):
    server = extra_server(closed, workers=1, threads=2, resume="false")
    session = admitted(start(server, user=new_user()))
    closed.redis.client.flushall()
    assert_gone(heartbeat(server, *session), "expired")
    assert live_sessions(closed.redis.client) == {}


def test_resumption_respects_the_per_stream_limit(closed, extra_server):
    server = extra_server(closed, workers=1, threads=2, stream_limit=1)
    user = new_user()
    lost = admitted(start(server, user=user, device="tv", stream="film"))
    closed.redis.client.flushall()
    replacement = admitted(start(server, user=user, device="phone", stream="film"))

    answer = heartbeat(server, *lost)
    film = [sid for sid, entry in live_sessions(closed.redis.client, user).items() if entry[2] == "film"]
    assert film == [replacement[0]], "resumption put a second device on a stream limited to one"
    assert_gone(answer, "limit")


# --- observability --------------------------------------------------------------------------------


def test_store_errors_degraded_admissions_and_resumptions_are_counted(closed, opened):
    before = {"closed": metric_values(closed.server), "open": metric_values(opened.server)}
    session = admitted(start(closed.server, user=new_user()))
    closed.redis.stop()
    opened.redis.stop()
    for _ in range(3):
        assert_store_unavailable(start(closed.server, user=new_user()))
    sid, token = admitted(start(opened.server, user=new_user()))
    assert heartbeat(opened.server, sid, token).status == 200
    closed.redis.start()
    opened.redis.start()
    assert heartbeat(closed.server, *session).status == 200
    assert heartbeat(opened.server, sid, token).status == 200
    after = {"closed": metric_values(closed.server), "open": metric_values(opened.server)}

    events = "concurrency_events_total"
    operations = "concurrency_operations_total"
    assert counted(before["closed"], after["closed"], events, event="store_error") == 3
    assert (
        counted(before["closed"], after["closed"], operations, operation="start", outcome="store_unavailable")
        == 3
    )
    assert counted(before["closed"], after["closed"], events, event="resumed") == 1
    assert counted(before["open"], after["open"], events, event="degraded") == 2
    assert counted(before["open"], after["open"], events, event="resumed") == 1
