"""Races against the real server process (2 workers x 4 threads) and a real redis-server."""

import collections
import http.client
import json
import random
import threading
import uuid

import pytest
from layout import live_sessions, stored_sessions, user_key
from players import CALLER
from processes import TEST_TTL_S, ServerProcess, request

from api import lua
from api.config import Config

pytestmark = [pytest.mark.http, pytest.mark.redis]

MAX_STREAMS = Config().max_streams
JSON = {"Content-Type": "application/json"}


DEVICE_LIMIT = 2


@pytest.fixture(scope="module")
def device_server(redis_server, keys_dir):
    """The real service with a device limit of 2 and room for 10 sessions per user."""
    process = ServerProcess(
        redis_server.url, keys_dir, device_limit=DEVICE_LIMIT, max_streams=10, session_ttl_s=TEST_TTL_S
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def device_evicting_server(redis_server, keys_dir):
    """The same, evicting the least recently started device at the limit."""
    process = ServerProcess(
        redis_server.url,
        keys_dir,
        device_limit=DEVICE_LIMIT,
        max_streams=10,
        at_limit="evict-oldest",
        session_ttl_s=TEST_TTL_S,
    )
    yield process
    process.stop()


class Answer:
    def __init__(self, status, body):
        self.status = status
        self.body = json.loads(body) if body else None


def send(connection, method, path, body=None, headers=None):
    payload = None if body is None else json.dumps(body).encode()
    connection.request(method, path, body=payload, headers={**JSON, **(headers or {})})
    answer = connection.getresponse()
    return Answer(answer.status, answer.read())


def all_at_once(port, calls):
    """Run each `call(connection)` on a thread and connection of its own, all released together."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)
    errors = []

    def run(index, call):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.connect()
            barrier.wait(timeout=30)
            results[index] = call(connection)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a request thread hung"
    if errors:
        raise errors[0]
    return results


def start_call(user, device, stream="stream", headers=None):
    body = {"userId": user, "deviceId": device, "streamId": stream}
    return lambda connection: send(connection, "POST", "/concurrency", body, headers)


def stop_session(port, sid, token):
    answer = request(port, "DELETE", "/concurrency", {"sessionKey": sid, "token": token})
    assert answer.status == 204, answer.body


@pytest.mark.backends
def test_concurrent_starts_for_one_user_admit_exactly_the_limit(server, real_redis):
    user = f"racer-{uuid.uuid4().hex[:8]}"
    threads = 60
    for round_number in range(5):
        devices = [f"r{round_number}-device-{i}" for i in range(threads)]
        answers = all_at_once(server.port, [start_call(user, device) for device in devices])

        statuses = collections.Counter(answer.status for answer in answers)
        assert statuses == {200: MAX_STREAMS, 403: threads - MAX_STREAMS}, (round_number, statuses)
        admitted = {
            answer.body["sessionKey"]: (answer.body["token"], device)
            for answer, device in zip(answers, devices, strict=True)
            if answer.status == 200
        }
        assert len(admitted) == MAX_STREAMS
        assert all(a.body["status"] == "initiated" for a in answers if a.status == 200)
        for answer in answers:
            if answer.status == 403:
                assert answer.body["error"] == "limit_reached"
                assert answer.body["active"] == MAX_STREAMS and "sessions" not in answer.body

        stored = live_sessions(real_redis, user)
        assert {sid: device for sid, (_u, device, _s) in stored.items()} == {
            sid: device for sid, (_token, device) in admitted.items()
        }

        for sid, (token, _device) in admitted.items():
            stop_session(server.port, sid, token)
        assert live_sessions(real_redis, user) == {}


def test_concurrent_starts_on_many_devices_admit_sessions_on_exactly_the_device_limit(
    device_server, real_redis
):
    user = f"devices-{uuid.uuid4().hex[:8]}"
    for round_number in range(3):
        calls = [(f"r{round_number}-device-{i % 20}", f"stream-{i // 20}") for i in range(40)]
        answers = all_at_once(device_server.port, [start_call(user, *call) for call in calls])

        assert {a.status for a in answers} <= {200, 403}, [a.body for a in answers]
        admitted = {
            a.body["sessionKey"]: (a.body["token"], device)
            for a, (device, _stream) in zip(answers, calls, strict=True)
            if a.status == 200
        }
        assert len({device for _token, device in admitted.values()}) == DEVICE_LIMIT, round_number
        for answer in answers:
            if answer.status == 403:
                body = answer.body
                assert (body["error"], body["scope"], body["limit"]) == (
                    "limit_reached",
                    "device",
                    DEVICE_LIMIT,
                )
                assert body["active"] == DEVICE_LIMIT and "sessions" not in body
        stored = live_sessions(real_redis, user)
        assert {sid: device for sid, (_u, device, _s) in stored.items()} == {
            sid: device for sid, (_token, device) in admitted.items()
        }

        for sid, (token, _device) in admitted.items():
            stop_session(device_server.port, sid, token)
        assert live_sessions(real_redis, user) == {}


def test_concurrent_starts_with_eviction_leave_sessions_on_at_most_the_device_limit(
    device_evicting_server, real_redis
):
    user = f"evicting-{uuid.uuid4().hex[:8]}"
    # At most MAX_TOMBSTONES evictions, so that every evicted session still has its tombstone to tell.
    calls = [(f"device-{i % 8}", f"stream-{i // 8}") for i in range(lua.MAX_TOMBSTONES)]
    answers = all_at_once(device_evicting_server.port, [start_call(user, *call) for call in calls])

    assert [a.status for a in answers] == [200] * len(calls), [a.body for a in answers if a.status != 200]
    stored = live_sessions(real_redis, user)
    assert 1 <= len({device for _u, device, _s in stored.values()}) <= DEVICE_LIMIT
    for answer in answers:
        sid, token = answer.body["sessionKey"], answer.body["token"]
        beat = request(
            device_evicting_server.port, "PUT", "/concurrency", {"sessionKey": sid, "token": token}
        )
        if sid in stored:
            assert beat.status == 200, beat.body
        else:
            assert (beat.status, beat.json()["reason"]) == (410, "evicted")


@pytest.mark.backends
def test_concurrent_starts_for_many_users_admit_the_limit_each(server, real_redis):
    users = [f"crowd-{i}-{uuid.uuid4().hex[:6]}" for i in range(8)]
    calls = [(user, f"device-{d}") for user in users for d in range(8)]
    answers = all_at_once(server.port, [start_call(user, device) for user, device in calls])

    admitted = collections.Counter(
        user for (user, _), a in zip(calls, answers, strict=True) if a.status == 200
    )
    refused = collections.Counter(
        user for (user, _), a in zip(calls, answers, strict=True) if a.status == 403
    )
    assert {a.status for a in answers} <= {200, 403}
    assert admitted == dict.fromkeys(users, MAX_STREAMS)
    assert refused == dict.fromkeys(users, 8 - MAX_STREAMS)
    per_user = collections.Counter(key for key, _d, _s in live_sessions(real_redis).values())
    assert per_user == dict.fromkeys(map(user_key, users), MAX_STREAMS)


@pytest.mark.backends
def test_concurrent_identical_starts_of_a_trusted_caller_make_one_session(trusted_server, real_redis):
    for _round in range(3):
        user = f"twin-{uuid.uuid4().hex[:8]}"
        answers = all_at_once(trusted_server.port, [start_call(user, "tv", "final", CALLER)] * 20)
        assert [a.status for a in answers] == [200] * 20
        assert len({a.body["sessionKey"] for a in answers}) == 1
        assert collections.Counter(a.body["status"] for a in answers) == {"initiated": 1, "updated": 19}
        sid = answers[0].body["sessionKey"]
        assert live_sessions(real_redis, user) == {sid: (user_key(user), "tv", "final")}


@pytest.mark.backends
def test_heartbeats_racing_a_stop_never_bring_the_session_back(server, real_redis):
    sessions = []
    for i in range(10):
        answer = request(
            server.port, "POST", "/concurrency", {"userId": f"hb-{i}", "deviceId": "d", "streamId": "s"}
        )
        assert answer.status == 200
        sessions.append((answer.json()["sessionKey"], answer.json()["token"]))

    def heartbeat_call(sid, token):
        return lambda c: send(c, "PUT", "/concurrency", {"sessionKey": sid, "token": token})

    def stop_call(sid, token):
        return lambda c: send(c, "DELETE", "/concurrency", {"sessionKey": sid, "token": token})

    calls, kinds = [], []
    for sid, token in sessions:
        for _ in range(4):
            calls.append(heartbeat_call(sid, token))
            kinds.append("heartbeat")
        calls.append(stop_call(sid, token))
        kinds.append("stop")
    answers = all_at_once(server.port, calls)

    for kind, answer in zip(kinds, answers, strict=True):
        assert answer.status in ({204} if kind == "stop" else {200, 410}), (kind, answer.status, answer.body)
    assert live_sessions(real_redis) == {}
    fresh_tokens = [(a.body["sessionKey"], a.body["token"]) for a in answers if a.status == 200]
    for sid, token in sessions + fresh_tokens:
        answer = request(server.port, "PUT", "/concurrency", {"sessionKey": sid, "token": token})
        assert answer.status == 410, answer.body
    assert live_sessions(real_redis) == {}


class Player:
    """One device of one user, driven by one thread; it knows whether its session is live."""

    def __init__(self, port, user, device, seed):
        self.port = port
        self.user = user
        self.device = device
        self.live = None  # (sid, token) while admitted
        self.ended = []  # (sid, token) of sessions this player stopped
        self.refused = 0
        self._random = random.Random(seed)

    def play(self, connection, steps):
        for _ in range(steps):
            action = self._random.choice(("start", "start", "heartbeat", "stop"))
            getattr(self, action)(connection)

    def start(self, connection):
        body = {"userId": self.user, "deviceId": self.device, "streamId": "stream"}
        if self.live is not None:  # an anonymous caller renews by showing the session's token
            body["token"] = self.live[1]
        answer = send(connection, "POST", "/concurrency", body)
        if self.live is None:
            assert answer.status in (200, 403), answer.body
            if answer.status == 403:
                self.refused += 1
                assert answer.body["error"] == "limit_reached"
                assert answer.body["active"] == MAX_STREAMS and "sessions" not in answer.body
            else:
                assert answer.body["status"] == "initiated"
                self.live = (answer.body["sessionKey"], answer.body["token"])
        else:
            assert answer.status == 200, answer.body  # renewing a live session never hits the limit
            assert answer.body["status"] == "updated"
            assert answer.body["sessionKey"] == self.live[0]
            self.live = (self.live[0], answer.body["token"])

    def heartbeat(self, connection):
        if self.live is not None:
            sid, token = self.live
            answer = send(connection, "PUT", "/concurrency", {"sessionKey": sid, "token": token})
            assert answer.status == 200, answer.body
            self.live = (sid, answer.body["token"])
        elif self.ended:
            sid, token = self.ended[-1]
            answer = send(connection, "PUT", "/concurrency", {"sessionKey": sid, "token": token})
            assert answer.status == 410, answer.body

    def stop(self, connection):
        if self.live is not None:
            sid, token = self.live
            answer = send(connection, "DELETE", "/concurrency", {"sessionKey": sid, "token": token})
            assert answer.status == 204, answer.body
            self.ended.append(self.live)
            self.live = None


@pytest.mark.backends
def test_mixed_start_heartbeat_stop_leave_exactly_the_live_sessions(server, real_redis):
    users = [f"mix-{u}-{uuid.uuid4().hex[:6]}" for u in range(6)]
    players = [
        Player(server.port, user, f"device-{d}", seed=u * 100 + d)
        for u, user in enumerate(users)
        for d in range(6)
    ]
    all_at_once(server.port, [lambda c, p=p: p.play(c, 15) for p in players])

    believed = {p.live[0]: (user_key(p.user), p.device, "stream") for p in players if p.live is not None}
    assert live_sessions(real_redis) == believed
    assert len(stored_sessions(real_redis)) == len(believed)  # expired or not
    per_user = collections.Counter(key for key, _d, _s in believed.values())
    assert max(per_user.values()) <= MAX_STREAMS
    assert any(p.ended for p in players), "the mix never stopped a session"
    assert sum(p.refused for p in players) > 0, "the mix never reached the limit"

    for player in players:
        for sid, token in player.ended:
            answer = request(server.port, "PUT", "/concurrency", {"sessionKey": sid, "token": token})
            assert answer.status == 410
    assert live_sessions(real_redis) == believed
