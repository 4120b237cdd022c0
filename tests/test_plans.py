"""Limits by plan from a verified user token, against the real server process and a real redis-server.

The identity provider is local: the test makes its key pairs and serves their JWKS on loopback, and the
service reads it either from that URL or from a file. The helpers here (identity provider, stored
sessions, metrics, JSON logs) are shared with test_management.py and test_faults.py."""

import hashlib
import hmac
import http.server
import json
import secrets
import socket
import threading
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from idp import b64url, unsigned_token
from layout import live_sessions, redis_state, user_key
from players import (
    admitted,
    assert_error,
    assert_gone,
    assert_unauthorized,
    counted,
    heartbeat,
    metric_values,
    new_user,
    session_claims,
    start,
)
from processes import ServerProcess, wait_until

from api.config import Config
from api.identity import MAX_LIMIT_CLAIM

pytestmark = [pytest.mark.http, pytest.mark.redis]

DEFAULTS = Config()
DEFAULT_LIMIT = 2  # the servers here run with CONCURRENCY_MAX_STREAMS=2, apart from every plan's limit
PLAN_LIMITS = "basic=1,premium=4,family=5"
PLAN_DEVICE_LIMITS = "family=2"
PLAN_AT_LIMIT = "premium=evict-oldest"
JWKS_PATH = "/.well-known/jwks.json"


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["jwks-url", "jwks-file"])
def user_server(request, redis_server, keys_dir, idp, tmp_path_factory):
    """The real service in user-token mode, reading the provider's JWKS from its URL or from a file."""
    if request.param == "jwks-url":
        source, workers = idp.url, 1  # one worker: the test counts the JWKS fetches of one cache
    else:
        source, workers = idp.write_jwks(tmp_path_factory.mktemp("idp") / "jwks.json"), 2
    process = ServerProcess(
        redis_server.url,
        keys_dir,
        workers=workers,
        threads=4,
        user_jwks=source,
        user_issuer=idp.issuer,
        user_audience=idp.audience,
        max_streams=DEFAULT_LIMIT,
        plan_limits=PLAN_LIMITS,
        plan_device_limits=PLAN_DEVICE_LIMITS,
        plan_at_limit=PLAN_AT_LIMIT,
    )
    process.mode = request.param
    yield process
    process.stop()


# --- who the user is ------------------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["idp-rsa", "idp-ec"])
def test_the_token_subject_is_the_user(user_server, idp, real_redis, kid):
    user = new_user("odd|user%")  # ids of any content survive the trip
    token = idp.token(user, kid=kid)

    sid, session_token = admitted(start(user_server, token, "tv", "film"))
    claims = session_claims(user_server, session_token)
    assert claims["sub"] == user
    assert claims["sid"] == sid
    assert live_sessions(real_redis) == {sid: (user_key(user), "tv", "film")}

    second = start(user_server, token, "phone", "film", user=user)  # a matching body userId is fine
    assert second.status == 201, second.body
    assert session_claims(user_server, second.json()["token"])["sub"] == user
    assert heartbeat(user_server, sid, session_token).status == 200


def test_a_body_user_id_that_differs_from_the_token_is_403(user_server, idp, real_redis):
    user = new_user()
    token = idp.token(user)
    before = redis_state(real_redis)
    for path in ("/v1/sessions", "/concurrency"):
        body = assert_error(start(user_server, token, user=new_user(), path=path), 403, "forbidden")
        assert body["field"] == "userId"
    assert redis_state(real_redis) == before


def test_the_seed_route_needs_the_user_token_too(user_server, idp, real_redis):
    user = new_user()
    before = redis_state(real_redis)
    assert_unauthorized(start(user_server, None, user=user, path="/concurrency"))
    assert redis_state(real_redis) == before

    answer = start(user_server, idp.token(user), user=user, path="/concurrency")
    assert answer.status == 200, answer.body
    sid = answer.json()["sessionKey"]
    assert live_sessions(real_redis) == {sid: (user_key(user), "tv", "stream-1")}


BAD_TOKENS = [
    "missing",
    "not a jwt",
    "expired",
    "not yet valid",
    "wrong issuer",
    "no issuer",
    "wrong audience",
    "no audience",
    "no subject",
    "empty subject",
    "numeric subject",
    "overlong subject",
    "no expiry",
    "signed by a stranger under our kid",
    "unknown kid",
    "alg none",
    "HS256 with the public key as secret",
    "tampered payload",
    "a name twice",
    "climit over the maximum",
    "dlimit over the maximum",
]


def bad_token(idp, user, case):
    """Return a user token that must be refused, of the kind `case` names."""
    now = int(time.time())
    claims = {"iss": idp.issuer, "aud": idp.audience, "sub": user, "iat": now, "exp": now + 300}
    if case == "missing":
        return None
    if case == "not a jwt":
        return "not-a-jwt"
    if case == "expired":
        return idp.token(user, iat=now - 600, exp=now - 120)
    if case == "not yet valid":
        return idp.token(user, nbf=now + 600)
    if case in ("wrong issuer", "no issuer"):
        return idp.token(user, iss="https://evil.example.test/" if case == "wrong issuer" else None)
    if case in ("wrong audience", "no audience"):
        return idp.token(user, aud="someone-else" if case == "wrong audience" else None)
    subjects = {"no subject": None, "empty subject": "", "numeric subject": 12345}
    subjects["overlong subject"] = "u" * (DEFAULTS.max_id_chars + 1)
    if case in subjects:
        return idp.token(user, sub=subjects[case])
    if case == "no expiry":
        return idp.token(user, exp=None)
    if case.endswith("over the maximum"):
        return idp.token(user, **{case.split()[0]: MAX_LIMIT_CLAIM + 1})
    if case == "a name twice":  # PyJWT reads the last: a verifier that reads the first sees another user
        return idp.signed(json.dumps(claims)[:-1] + f', "sub": "{new_user()}"}}')
    if case in ("signed by a stranger under our kid", "unknown kid"):
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = "idp-rsa" if case.endswith("our kid") else f"kid-{uuid.uuid4().hex}"
        return idp.token(user, kid=kid, signing_key=stranger)
    if case == "alg none":
        return unsigned_token({"alg": "none", "kid": "idp-rsa"}, claims)
    if case == "HS256 with the public key as secret":
        signing_input = unsigned_token({"alg": "HS256", "kid": "idp-rsa", "typ": "JWT"}, claims)[:-1]
        mac = hmac.new(idp.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        return signing_input + b64url(mac)
    assert case == "tampered payload"
    head, _, signature = idp.token(user).split(".")
    return f"{head}.{b64url(json.dumps({**claims, 'climit': 99}).encode())}.{signature}"


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_bad_user_tokens_are_401_and_write_nothing(user_server, idp, real_redis, case):
    user = new_user()
    before = redis_state(real_redis)
    answer = start(user_server, bad_token(idp, user, case))
    assert_unauthorized(answer)
    if case == "overlong subject":
        assert str(DEFAULTS.max_id_chars) in answer.json()["message"]  # the refusal names the limit
    if case.endswith("over the maximum"):
        assert case.split()[0] in answer.json()["message"]  # ... and the claim
    if case == "a name twice":
        assert "'sub' twice" in answer.json()["message"]
    assert redis_state(real_redis) == before
    assert "Traceback" not in user_server.output()


def test_a_session_token_of_this_service_is_not_a_user_token(user_server, idp, real_redis):
    sid, session_token = admitted(start(user_server, idp.token(new_user())))
    before = redis_state(real_redis)
    assert_unauthorized(start(user_server, session_token, device="phone"))
    assert redis_state(real_redis) == before
    assert sid in live_sessions(real_redis)


# --- what the user may play -----------------------------------------------------------------------

PLAN_CASES = [
    # claims, limit, whether the oldest is evicted at the limit
    ({}, DEFAULT_LIMIT, False),
    ({"plan": "basic"}, 1, False),
    ({"plan": "premium"}, 4, True),
    ({"plan": "no-such-plan"}, DEFAULT_LIMIT, False),
    ({"climit": 3}, 3, False),
    ({"climit": 3, "plan": "basic"}, 3, False),  # the limit claim wins over the plan's limit
    ({"climit": 1, "plan": "premium"}, 1, True),  # ... and the plan's behaviour still applies
    ({"cbeh": "evict-oldest"}, DEFAULT_LIMIT, True),
    ({"cbeh": "reject", "plan": "premium"}, 4, False),  # the behaviour claim wins over the plan's
]


@pytest.mark.parametrize(("claims", "limit", "evicts"), PLAN_CASES, ids=[str(c[0]) for c in PLAN_CASES])
def test_the_limit_and_behaviour_follow_the_verified_token(
    user_server, idp, real_redis, claims, limit, evicts
):
    user = new_user()
    token = idp.token(user, **claims)
    sessions = []
    for i in range(limit):
        sessions.append(admitted(start(user_server, token, f"device-{i}", f"stream-{i}")))
        time.sleep(0.003)  # distinct start times: the oldest is well defined
    assert set(live_sessions(real_redis, user)) == {sid for sid, _ in sessions}

    one_more = start(user_server, token, "one-more", "stream-x")
    if evicts:
        assert one_more.status == 201, one_more.body
        assert_gone(heartbeat(user_server, *sessions[0]), "evicted")
        for sid, session_token in sessions[1:]:
            assert heartbeat(user_server, sid, session_token).status == 200
        expected = {sid for sid, _ in sessions[1:]} | {one_more.json()["sessionId"]}
        assert set(live_sessions(real_redis, user)) == expected
    else:
        body = assert_error(one_more, 403, "limit_reached")
        assert body["limit"] == limit
        assert {s["sessionKey"] for s in body["sessions"]} == {sid for sid, _ in sessions}
        assert set(live_sessions(real_redis, user)) == {sid for sid, _ in sessions}
    assert session_claims(user_server, sessions[-1][1])["lim"] == limit


DEVICE_CASES = [
    # claims, device limit, whether the least recently started device is evicted at the limit
    ({"plan": "family"}, 2, False),
    ({"dlimit": 3, "climit": 6}, 3, False),
    ({"dlimit": 3, "plan": "family"}, 3, False),  # the device limit claim wins over the plan's
    ({"plan": "family", "cbeh": "evict-oldest"}, 2, True),
]


@pytest.mark.parametrize(
    ("claims", "device_limit", "evicts"), DEVICE_CASES, ids=[str(c[0]) for c in DEVICE_CASES]
)
def test_the_device_limit_follows_the_verified_token(
    user_server, idp, real_redis, claims, device_limit, evicts
):
    user = new_user()
    token = idp.token(user, **claims)
    plays = [("device-0", "stream-a"), ("device-0", "stream-b")]  # one device, two streams: counted once
    plays += [(f"device-{i}", "stream-a") for i in range(1, device_limit)]
    sessions = {}
    for device, stream in plays:
        sessions[device, stream] = admitted(start(user_server, token, device, stream))
        time.sleep(0.003)  # distinct start times: the least recently started device is well defined
    all_sids = {sid for sid, _ in sessions.values()}

    new_device = start(user_server, token, "new-device", "stream-a")
    if evicts:
        assert new_device.status == 201, new_device.body
        for (device, _stream), session in sessions.items():
            if device == "device-0":  # every session of the least recently started device
                assert_gone(heartbeat(user_server, *session), "evicted")
            else:
                assert heartbeat(user_server, *session).status == 200
        expected = {sid for (device, _), (sid, _) in sessions.items() if device != "device-0"}
        assert set(live_sessions(real_redis, user)) == expected | {new_device.json()["sessionId"]}
    else:
        body = assert_error(new_device, 403, "limit_reached")
        assert (body["scope"], body["limit"], body["active"]) == ("device", device_limit, device_limit)
        assert {s["sessionKey"] for s in body["sessions"]} == all_sids
        assert set(live_sessions(real_redis, user)) == all_sids
        admitted(start(user_server, token, "device-1", "stream-c"))  # a device that plays is no new device
    assert session_claims(user_server, sessions["device-0", "stream-b"][1])["dlim"] == device_limit


def test_resumption_keeps_the_device_limit(user_server, idp, real_redis):
    """A session lost from Redis does not come back on a device beyond the device limit of its token."""
    user = new_user()
    token = idp.token(user, plan="family")  # 5 sessions, on 2 devices
    lost = admitted(start(user_server, token, "tv"))
    real_redis.flushall()
    replacements = [admitted(start(user_server, token, device)) for device in ("phone", "laptop")]

    assert_gone(heartbeat(user_server, *lost), "limit")
    for replacement in replacements:
        assert heartbeat(user_server, *replacement).status == 200
    assert set(live_sessions(real_redis, user)) == {sid for sid, _ in replacements}


@pytest.mark.parametrize("field", ["climit", "limit", "plan", "maxStreams"])
def test_a_limit_is_never_read_from_the_body(user_server, idp, real_redis, field):
    user = new_user()
    token = idp.token(user, plan="basic")
    before = redis_state(real_redis)
    body = assert_error(start(user_server, token, **{field: 10}), 400, "bad_request")
    assert body["field"] == field
    assert redis_state(real_redis) == before

    admitted(start(user_server, token, "tv"))
    assert_error(start(user_server, token, "phone"), 403, "limit_reached")


@pytest.mark.parametrize("field", ["climit", "limit", "plan"])
def test_without_user_tokens_the_body_cannot_raise_the_limit_either(server, real_redis, field):
    user = new_user()
    for i in range(DEFAULTS.max_streams):
        assert start(server, user=user, device=f"device-{i}").status == 201
    for path in ("/v1/sessions", "/concurrency"):
        body = assert_error(start(server, user=user, device="extra", path=path, **{field: 99}), 400)
        assert body["field"] == field
    assert_error(start(server, user=user, device="extra"), 403, "limit_reached")
    assert len(live_sessions(real_redis, user)) == DEFAULTS.max_streams


def test_resumption_keeps_the_plan_limit(user_server, idp, real_redis):
    """A session lost from Redis comes back under the limit its token was given, not the default."""
    user = new_user()
    token = idp.token(user, plan="basic")
    lost = admitted(start(user_server, token, "tv"))
    real_redis.flushall()
    replacement = admitted(start(user_server, token, "phone"))

    assert_gone(heartbeat(user_server, *lost), "limit")
    assert heartbeat(user_server, *replacement).status == 200
    assert set(live_sessions(real_redis, user)) == {replacement[0]}


# --- the identity provider's JWKS -----------------------------------------------------------------


def test_the_jwks_url_is_cached_and_unknown_kids_do_not_hammer_the_provider(user_server, idp, real_redis):
    if user_server.mode != "jwks-url":
        # The file is read once at start: changing the provider's keys changes nothing.
        idp_fetches = idp.fetches
        admitted(start(user_server, idp.token(new_user())))
        assert idp.fetches == idp_fetches
        return
    admitted(start(user_server, idp.token(new_user())))
    fetches = idp.fetches
    assert fetches >= 1
    for kid in ("idp-rsa", "idp-ec") * 5:
        admitted(start(user_server, idp.token(new_user(), kid=kid)))
    assert idp.fetches == fetches, "the JWKS was fetched again although every kid was known"

    stranger = ec.generate_private_key(ec.SECP256R1())
    for _ in range(10):
        token = jwt.encode(
            {"iss": idp.issuer, "aud": idp.audience, "sub": new_user(), "exp": int(time.time()) + 60},
            stranger,
            algorithm="ES256",
            headers={"kid": secrets.token_hex(8)},
        )
        assert_unauthorized(start(user_server, token))
    assert idp.fetches - fetches <= 1, "every unknown kid made the service fetch the provider's JWKS"


class SilentProvider:
    """A JWKS URL whose server takes each connection and never answers; it counts them opened and closed."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/jwks.json"
        self.opened = self.closed = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.opened += 1
            threading.Thread(target=self._hold, args=(connection,), daemon=True).start()

    def _hold(self, connection):
        with connection:
            while connection.recv(4096):  # until the client gives up and closes
                pass
        self.closed += 1

    def close(self):
        self._listener.close()


def one_worker_reading(redis_server, keys_dir, idp, jwks_url):
    """The real service in user-token mode, one worker, reading the provider's keys from `jwks_url`."""
    return ServerProcess(
        redis_server.url,
        keys_dir,
        workers=1,
        user_jwks=jwks_url,
        user_issuer=idp.issuer,
        user_audience=idp.audience,
    )


def test_a_provider_that_never_answers_holds_no_request(redis_server, keys_dir, idp, real_redis):
    """The JWKS is fetched off the request path: while a fetch hangs, the one worker answers on, and
    tokens of unknown keys do not make it fetch again and again (PyJWKClient fetched on the request's own
    thread, the worker's event loop, every time while the provider failed)."""
    provider = SilentProvider()
    server = one_worker_reading(redis_server, keys_dir, idp, provider.url)
    try:
        wait_until(lambda: provider.closed == 1, what="the fetch at start to time out")
        answer = start(server, idp.token(new_user()))
        assert_unauthorized(answer)  # no key is known yet
        assert "fetch" not in answer.json()["message"]
        wait_until(lambda: provider.opened == 2, what="a fetch after the unknown kid")
        assert server.request("GET", "/healthz").status == 200
        assert provider.closed == 1, "the worker answered only once the fetch had given up"
        for _ in range(10):
            assert_unauthorized(start(server, idp.token(new_user())))
        assert provider.opened == 2, "every unknown kid made the service fetch the provider's JWKS"
        assert redis_state(real_redis) == {}
    finally:
        server.stop()
        provider.close()


def test_a_jwks_url_that_redirects_is_not_followed(redis_server, keys_dir, idp, real_redis):
    """The key set comes from the configured URL only: a redirect (to http://, to anyone's keys) is not."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", idp.url)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    redirecting = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirecting.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{redirecting.server_port}/jwks.json"
    fetches = idp.fetches
    server = one_worker_reading(redis_server, keys_dir, idp, url)
    try:
        assert_unauthorized(start(server, idp.token(new_user())))
        assert idp.fetches == fetches and redis_state(real_redis) == {}
    finally:
        server.stop()
        redirecting.shutdown()
        redirecting.server_close()


def test_a_loopback_jwks_url_is_fetched_directly_whatever_the_proxy(
    redis_server, keys_dir, idp, real_redis, monkeypatch
):
    """http_proxy would carry an http:// fetch (allowed on loopback only) off the machine in the clear."""
    with socket.create_server(("127.0.0.1", 0)) as proxy:  # listens, never answers: a fetch through it fails
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        server = one_worker_reading(redis_server, keys_dir, idp, idp.url)
        try:
            admitted(start(server, idp.token(new_user())))
        finally:
            server.stop()


# --- observability --------------------------------------------------------------------------------


def test_starts_are_counted_by_outcome(user_server, idp, real_redis):
    user = new_user()
    token = idp.token(user, plan="basic")
    before = metric_values(user_server)

    admitted(start(user_server, token, "tv"))
    admitted(start(user_server, token, "tv"))
    assert_error(start(user_server, token, "phone"), 403, "limit_reached")
    assert_unauthorized(start(user_server, "not-a-token", "phone"))
    assert_error(start(user_server, token, "phone", user=new_user()), 403, "forbidden")

    after = metric_values(user_server)
    outcomes = ("initiated", "updated", "limit_reached", "invalid_token", "forbidden")
    operations = "concurrency_operations_total"
    assert {
        outcome: counted(before, after, operations, operation="start", outcome=outcome)
        for outcome in outcomes
    } == dict.fromkeys(outcomes, 1)
    assert counted(before, after, "concurrency_events_total", event="limit_hit") == 1
    latency = "concurrency_request_seconds_count"
    assert counted(before, after, latency, route="/v1/sessions", method="POST") == 5
