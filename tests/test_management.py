"""Session management, evict-oldest and per-stream limits, against the real server process and redis-server.

The account owner (their verified user token) or an operator (the admin secret) lists and kicks sessions;
a kicked or evicted session's next heartbeat is told why it ended."""

import re
import secrets
import time

import pytest
from layout import live_sessions, redis_state, stored
from players import (
    DEFAULTS,
    admitted,
    assert_error,
    assert_gone,
    assert_unauthorized,
    bearer,
    counted,
    heartbeat,
    log_entries,
    metric_values,
    new_user,
    start,
    stop,
)
from processes import ServerProcess, wait_until

pytestmark = [pytest.mark.http, pytest.mark.redis]

ADMIN = "admin-" + secrets.token_urlsafe(24)
LIMIT = 2
TTL_S = 60
GENERATED_REQUEST_ID = re.compile(r"^[0-9a-f]{16}$")
SESSION_FIELDS = {"sessionId", "deviceId", "streamId", "started", "lastHeartbeat", "expires"}


@pytest.fixture(scope="module")
def managed(redis_server, keys_dir, idp):
    """User-token mode and an admin secret; two sessions per user, one per stream."""
    process = ServerProcess(
        redis_server.url,
        keys_dir,
        workers=2,
        threads=4,
        admin_token=ADMIN,
        user_jwks=idp.url,
        user_issuer=idp.issuer,
        user_audience=idp.audience,
        max_streams=LIMIT,
        stream_limit=1,
        session_ttl_s=TTL_S,
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def admin_only(redis_server, keys_dir):
    """No user tokens; an admin secret; evict-oldest at the limit for everyone; an access log."""
    process = ServerProcess(
        redis_server.url,
        keys_dir,
        workers=2,
        threads=4,
        admin_token=ADMIN,
        at_limit="evict-oldest",
        max_streams=LIMIT,
        session_ttl_s=TTL_S,
        access_log="true",
    )
    yield process
    process.stop()


class Player:
    """One user of the managed server with a verified access token."""

    def __init__(self, server, idp, **claims):
        self.server = server
        self.user = new_user()
        self.token = idp.token(self.user, **claims)

    def start(self, device, stream, headers=None):
        return start(self.server, self.token, device, stream, headers=headers)

    def play(self, device, stream):
        """Start a session that must be admitted; return (sessionId, token)."""
        session = admitted(self.start(device, stream))
        time.sleep(0.003)  # distinct start times: the oldest is well defined
        return session

    def path(self, sid=None):
        return f"/v1/users/{self.user}/sessions" + (f"/{sid}" if sid else "")


def listing(server, user, credential=ADMIN):
    answer = server.request("GET", f"/v1/users/{user}/sessions", headers=bearer(credential))
    assert answer.status == 200, answer.body
    return answer.json()


def kick(server, path, credential=ADMIN, headers=None):
    return server.request("DELETE", path, headers={**bearer(credential), **(headers or {})})


def redis_now_s(client):
    return client.time()[0]


# --- list -----------------------------------------------------------------------------------------


def test_list_shows_each_live_session_with_its_times(managed, idp, real_redis):
    alice, bob = Player(managed, idp), Player(managed, idp)
    tv = alice.play("tv", "film")
    phone = alice.play("phone", "series")
    bob.play("tv", "film")

    body = listing(managed, alice.user)
    now_s = redis_now_s(real_redis)
    assert body["userId"] == alice.user
    assert abs(body["now"] - now_s) <= 1
    sessions = body["sessions"]
    assert [s["sessionId"] for s in sessions] == [tv[0], phone[0]]  # oldest first
    for session, (device, stream) in zip(sessions, [("tv", "film"), ("phone", "series")], strict=True):
        assert set(session) == SESSION_FIELDS
        assert (session["deviceId"], session["streamId"]) == (device, stream)
        assert now_s - 2 <= session["started"] <= now_s
        assert session["started"] <= session["lastHeartbeat"] <= session["started"] + 1
        assert session["expires"] == session["lastHeartbeat"] + TTL_S
    assert listing(managed, alice.user, credential=alice.token)["sessions"] == sessions

    time.sleep(1.1)  # the listing counts in whole seconds
    assert heartbeat(managed, *tv).status == 200
    after = {s["sessionId"]: s for s in listing(managed, alice.user, credential=alice.token)["sessions"]}
    first = {s["sessionId"]: s for s in sessions}
    assert after[tv[0]]["started"] == first[tv[0]]["started"]
    assert after[tv[0]]["lastHeartbeat"] >= first[tv[0]]["lastHeartbeat"] + 1
    assert after[tv[0]]["expires"] == after[tv[0]]["lastHeartbeat"] + TTL_S
    assert after[phone[0]] == first[phone[0]]

    assert stop(managed, *phone).status == 204
    assert [s["sessionId"] for s in listing(managed, alice.user)["sessions"]] == [tv[0]]
    assert listing(managed, new_user())["sessions"] == []


# --- kick -----------------------------------------------------------------------------------------


def test_kicking_one_session_ends_it_and_frees_its_slot_at_once(managed, idp, real_redis):
    alice, bob = Player(managed, idp), Player(managed, idp)
    tv, phone = alice.play("tv", "film"), alice.play("phone", "series")
    bobs = bob.play("tv", "film")
    assert_error(alice.start("laptop", "news"), 403, "limit_reached")

    assert kick(managed, alice.path(tv[0])).status == 204
    assert_gone(heartbeat(managed, *tv), "kicked")
    assert_gone(heartbeat(managed, *tv), "kicked")  # and it stays kicked
    assert heartbeat(managed, *phone).status == 200
    laptop = admitted(alice.start("laptop", "news"))
    assert set(live_sessions(real_redis, alice.user)) == {phone[0], laptop[0]}
    assert stored(real_redis)[1][tv[0]] == "kicked"

    assert_error(kick(managed, alice.path(tv[0])), 404, "not_found")
    assert_error(kick(managed, alice.path(bobs[0])), 404, "not_found")  # not alice's session
    assert heartbeat(managed, *bobs).status == 200


def test_a_kick_whose_session_id_was_left_out_kicks_nothing(admin_only, real_redis):
    """`DELETE /v1/users/{u}/sessions/` (an id that came out empty) was the kick of every session."""
    user = new_user()
    sids = {admitted(start(admin_only, user=user, device=device))[0] for device in ("tv", "phone")}
    body = assert_error(kick(admin_only, f"/v1/users/{user}/sessions/"), 400, "bad_request")
    assert body["field"] == "sessionId"
    assert set(live_sessions(real_redis, user)) == sids
    assert assert_error(kick(admin_only, "/v1/users//sessions"), 400, "bad_request")["field"] == "userId"


def test_closed_management_refuses_before_it_reads_the_path(server, real_redis):
    """403 to every request when no one may manage, a malformed path included."""
    for user in ("u" * (DEFAULTS.max_id_chars + 1), ""):
        assert_error(server.request("GET", f"/v1/users/{user}/sessions"), 403, "forbidden")


def test_kicking_all_sessions_ends_them_and_frees_every_slot(managed, idp, real_redis):
    alice, bob = Player(managed, idp), Player(managed, idp)
    sessions = [alice.play("tv", "film"), alice.play("phone", "series")]
    bobs = bob.play("tv", "film")

    assert kick(managed, alice.path(), credential=alice.token).status == 204
    for session in sessions:
        assert_gone(heartbeat(managed, *session), "kicked")
    assert heartbeat(managed, *bobs).status == 200
    assert listing(managed, alice.user)["sessions"] == []
    assert set(live_sessions(real_redis)) == {bobs[0]}

    again = [alice.play("tv", "film"), alice.play("phone", "series")]
    assert {sid for sid, _ in again}.isdisjoint(sid for sid, _ in sessions)  # kicked ones never return
    assert kick(managed, alice.path()).status == 204
    assert kick(managed, alice.path()).status == 204  # nothing left: still fine


# --- who may manage -------------------------------------------------------------------------------

CREDENTIALS = ["admin secret", "own user token", "wrong admin secret", "admin secret prefix", "none"]
CREDENTIALS += ["another user's token", "own expired user token", "own session token"]
ALLOWED = {"admin secret", "own user token"}
FORBIDDEN = {"another user's token"}


def credential(kind, alice, idp, session_token):
    now = int(time.time())
    return {
        "admin secret": ADMIN,
        "own user token": alice.token,
        "wrong admin secret": "admin-" + secrets.token_urlsafe(24),
        "admin secret prefix": ADMIN[:-1],
        "none": None,
        "another user's token": idp.token(new_user()),
        "own expired user token": idp.token(alice.user, iat=now - 600, exp=now - 120),
        "own session token": session_token,
    }[kind]


@pytest.mark.parametrize("route", ["list", "kick one", "kick all"])
@pytest.mark.parametrize("kind", CREDENTIALS)
def test_only_the_user_or_an_operator_may_manage_sessions(managed, idp, real_redis, route, kind):
    alice = Player(managed, idp)
    sid, session_token = alice.play("tv", "film")
    secret = credential(kind, alice, idp, session_token)
    headers = bearer(secret) if secret else {}
    method, path = {"list": ("GET", alice.path()), "kick one": ("DELETE", alice.path(sid))}.get(
        route, ("DELETE", alice.path())
    )
    before = redis_state(real_redis)

    answer = managed.request(method, path, headers=headers)
    if kind in ALLOWED:
        assert answer.status == (200 if method == "GET" else 204), answer.body
        assert (sid in live_sessions(real_redis)) == (method == "GET")
        return
    if kind in FORBIDDEN:
        assert_error(answer, 403, "forbidden")
    else:
        assert_unauthorized(answer)
    assert redis_state(real_redis) == before
    assert heartbeat(managed, sid, session_token).status == 200


@pytest.mark.parametrize("kind", ["admin secret", "wrong admin secret", "none", "session token"])
def test_without_user_tokens_only_the_admin_secret_may_manage(admin_only, real_redis, kind):
    user = new_user()
    sid, session_token = admitted(start(admin_only, user=user))
    secret = {"admin secret": ADMIN, "wrong admin secret": ADMIN + "x", "none": None}.get(kind, session_token)
    headers = bearer(secret) if secret else {}
    answer = admin_only.request("GET", f"/v1/users/{user}/sessions", headers=headers)
    if kind == "admin secret":
        assert answer.status == 200, answer.body
        assert [s["sessionId"] for s in answer.json()["sessions"]] == [sid]
    else:
        assert_unauthorized(answer)
        assert_unauthorized(admin_only.request("DELETE", f"/v1/users/{user}/sessions", headers=headers))
        assert heartbeat(admin_only, sid, session_token).status == 200


@pytest.mark.parametrize("method", ["GET", "DELETE", "DELETE one"])
@pytest.mark.parametrize("authorization", [None, "Bearer anything", f"Bearer {ADMIN}"])
def test_management_is_closed_when_neither_admin_secret_nor_user_tokens_are_configured(
    server, real_redis, method, authorization
):
    user = new_user()
    sid, session_token = admitted(start(server, user=user))
    path = f"/v1/users/{user}/sessions" + (f"/{sid}" if method == "DELETE one" else "")
    headers = {"Authorization": authorization} if authorization else {}
    assert_error(server.request(method.split()[0], path, headers=headers), 403, "forbidden")
    assert heartbeat(server, sid, session_token).status == 200


# --- at the limit ---------------------------------------------------------------------------------


def test_evict_oldest_ends_the_least_recently_started_session(admin_only, real_redis):
    user = new_user()
    oldest = admitted(start(admin_only, user=user, device="tv"))
    time.sleep(0.003)
    younger = admitted(start(admin_only, user=user, device="phone"))
    assert heartbeat(admin_only, *oldest).status == 200  # a heartbeat does not make it younger

    request_id = "evict-" + secrets.token_hex(6)
    newest = start(admin_only, user=user, device="laptop", headers={"X-Request-Id": request_id})
    assert newest.status == 201, newest.body
    assert newest.headers["x-request-id"] == request_id
    newest = admitted(newest)

    assert_gone(heartbeat(admin_only, *oldest), "evicted")
    assert heartbeat(admin_only, *younger).status == 200
    assert heartbeat(admin_only, *newest).status == 200
    live, ended = stored(real_redis)
    assert set(live) == {younger[0], newest[0]}
    assert ended == {oldest[0]: "evicted"}
    assert [s["sessionId"] for s in listing(admin_only, user)["sessions"]] == [younger[0], newest[0]]

    def logged():
        mine = [e for e in log_entries(admin_only) if e.get("request_id") == request_id]
        return any(oldest[0] in e["message"] and "evict" in e["message"] for e in mine) and any(
            e.get("route") == "/v1/sessions" and e.get("status") == 201 for e in mine
        )

    wait_until(logged, timeout_s=5, what="JSON log lines of the eviction with its request id")


def test_per_stream_limit_refuses_a_second_device_on_the_same_stream(managed, idp, real_redis):
    alice, bob = Player(managed, idp), Player(managed, idp)
    film = alice.play("tv", "film")
    before = redis_state(real_redis)

    body = assert_error(alice.start("phone", "film"), 403, "limit_reached")
    assert body["limit"] == 1
    assert body["scope"] == "stream"
    assert [s["sessionKey"] for s in body["sessions"]] == [film[0]]
    assert redis_state(real_redis) == before

    again = alice.start("tv", "film")  # the same device and stream is the same session
    assert again.status == 200 and again.json()["sessionId"] == film[0]
    series = alice.play("phone", "series")
    bob.play("phone", "film")  # the limit is per user
    assert set(live_sessions(real_redis, alice.user)) == {film[0], series[0]}


def test_per_stream_limit_with_evict_oldest_evicts_within_the_stream(managed, idp, real_redis):
    alice = Player(managed, idp, cbeh="evict-oldest")
    series = alice.play("tv", "series")  # the oldest of all, but on another stream
    film = alice.play("phone", "film")
    laptop = alice.play("laptop", "film")

    assert_gone(heartbeat(managed, *film), "evicted")
    assert heartbeat(managed, *series).status == 200
    assert heartbeat(managed, *laptop).status == 200
    assert set(live_sessions(real_redis, alice.user)) == {series[0], laptop[0]}


# --- observability --------------------------------------------------------------------------------


def test_operations_kicks_and_evictions_are_counted(managed, idp, real_redis):
    alice, eve = Player(managed, idp), Player(managed, idp, cbeh="evict-oldest")
    before = metric_values(managed)

    tv = alice.play("tv", "film")  # start initiated
    assert alice.start("tv", "film").status == 200  # start updated
    phone = alice.play("phone", "series")  # start initiated
    assert heartbeat(managed, *tv).status == 200  # heartbeat updated
    assert kick(managed, alice.path(phone[0])).status == 204  # kicked
    assert_gone(heartbeat(managed, *phone), "kicked")  # heartbeat session_gone
    assert stop(managed, *tv).status == 204  # stop stopped
    for stream in ("a", "b", "c"):  # 3 starts initiated, the third evicts the first
        eve.play("tv", stream)

    after = metric_values(managed)
    operations = "concurrency_operations_total"
    assert {
        (operation, outcome): counted(before, after, operations, operation=operation, outcome=outcome)
        for operation, outcome in [
            ("start", "initiated"),
            ("start", "updated"),
            ("heartbeat", "updated"),
            ("heartbeat", "session_gone"),
            ("stop", "stopped"),
        ]
    } == {
        ("start", "initiated"): 5,
        ("start", "updated"): 1,
        ("heartbeat", "updated"): 1,
        ("heartbeat", "session_gone"): 1,
        ("stop", "stopped"): 1,
    }
    events = "concurrency_events_total"
    assert counted(before, after, events, event="kicked") == 1
    assert counted(before, after, events, event="evicted") == 1


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("abc-123", True),
        ("trace:01HX/Z+9=", True),
        (None, False),
        ("has spaces", False),
        ("x" * 129, False),
        ('quote"', False),
    ],
    ids=["plain", "punctuation", "absent", "spaces", "too long", "quote"],
)
def test_request_ids_are_echoed_or_generated_and_logged(admin_only, real_redis, sent, echoed):
    headers = {"X-Request-Id": sent} if sent is not None else {}
    answer = admin_only.request("GET", "/healthz", headers=headers)
    assert answer.status == 200
    request_id = answer.headers["x-request-id"]
    if echoed:
        assert request_id == sent
    else:
        assert GENERATED_REQUEST_ID.match(request_id), request_id

    def logged():
        return any(
            e.get("request_id") == request_id and e.get("route") == "/healthz" and e.get("status") == 200
            for e in log_entries(admin_only)
        )

    wait_until(logged, timeout_s=5, what=f"an access log line with request id {request_id}")
