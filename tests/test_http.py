"""The whole HTTP contract against the real `concurrency-service serve` process and a real redis-server."""

import http.client
import json
import re
import socket
import time

import jwt
import pytest
from layout import redis_state, stored_sessions, user_key
from players import (
    CALLER,
    admitted,
    assert_error,
    bearer,
    jwks,
    legacy_heartbeat,
    legacy_start,
    legacy_started,
    legacy_stop,
    new_user,
    session_claims,
    start,
)
from processes import TEST_TTL_S, RedisServer, ServerProcess, free_port, wait_until

from api.config import Config

pytestmark = [pytest.mark.http, pytest.mark.redis]

DEFAULTS = Config()
MAX_STREAMS = DEFAULTS.max_streams
USER_KEY = re.compile(r"^c:[A-Za-z0-9_-]{12}$")  # a user's key: their id never shows in it
JSON = {"Content-Type": "application/json"}


def decode(server, token):
    """Verify a token with the published JWKS alone, as a CDN would; return (header, claims)."""
    return jwt.get_unverified_header(token), session_claims(server, token)


# --- seed-compatible /concurrency -----------------------------------------------------------------


@pytest.mark.backends
def test_start_admits_and_returns_a_verifiable_token(server, real_redis):
    user = new_user()
    answer = legacy_start(server, user, "laptop", "seahawks")
    assert answer.status == 200
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert body["status"] == "initiated"
    assert set(body) >= {"sessionKey", "token", "status"}
    assert len(body["sessionKey"]) >= 12  # 72 random bits

    header, claims = decode(server, body["token"])
    assert header["alg"] == "ES256"
    assert header["typ"]
    assert header["kid"] in {k["kid"] for k in jwks(server)["keys"]}
    assert claims["iss"] == DEFAULTS.issuer
    assert claims["aud"] == DEFAULTS.audience
    assert claims["sub"] == user
    assert claims["sid"] == body["sessionKey"]
    assert claims["device"] == "laptop"
    assert claims["stream"] == "seahawks"
    assert claims["exp"] - claims["iat"] == TEST_TTL_S
    assert abs(claims["iat"] - real_redis.time()[0]) <= 2
    assert isinstance(claims["jti"], str) and claims["jti"]

    stored = stored_sessions(real_redis, live_only=True)
    assert list(stored) == [body["sessionKey"]]
    assert stored[body["sessionKey"]][:3] == (user_key(user), "laptop", "seahawks")


@pytest.mark.backends
def test_same_user_device_stream_again_with_its_token_is_idempotent(server, real_redis):
    user = new_user()
    first = legacy_start(server, user, "tv", "match").json()
    again = server.request(
        "POST",
        "/concurrency",
        {"userId": user, "deviceId": "tv", "streamId": "match", "token": first["token"]},
    )
    assert again.status == 200
    body = again.json()
    assert body["status"] == "updated"
    assert body["sessionKey"] == first["sessionKey"]
    assert body["token"] != first["token"]
    assert decode(server, body["token"])[1]["jti"] != decode(server, first["token"])[1]["jti"]
    assert list(stored_sessions(real_redis, live_only=True)) == [first["sessionKey"]]

    other_stream = legacy_start(server, user, "tv", "other-match").json()
    assert other_stream["status"] == "initiated"
    assert other_stream["sessionKey"] != first["sessionKey"]


@pytest.mark.backends
def test_an_anonymous_start_without_the_token_is_a_new_session(server, real_redis):
    """Whoever knows a userId must not get the token of that user's session by starting it again."""
    user = new_user()
    first = legacy_start(server, user, "tv", "match").json()
    again = legacy_start(server, user, "tv", "match").json()
    assert again["status"] == "initiated" and again["sessionKey"] != first["sessionKey"]
    assert set(stored_sessions(real_redis, live_only=True)) == {first["sessionKey"], again["sessionKey"]}
    other = legacy_start(server, new_user(), "tv", "match").json()  # a token of another user renews nothing
    stolen = {"userId": user, "deviceId": "tv", "streamId": "match", "token": other["token"]}
    assert_error(server.request("POST", "/concurrency", stolen), 401, "invalid_token")


def test_a_trusted_caller_renews_the_same_device_and_stream(trusted_server, real_redis):
    user = new_user()
    first = legacy_start(trusted_server, user, "tv", "match", headers=CALLER).json()
    again = legacy_start(trusted_server, user, "tv", "match", headers=CALLER).json()
    assert (again["status"], again["sessionKey"]) == ("updated", first["sessionKey"])
    assert_error(legacy_start(trusted_server, user, "tv", "match"), 401, "invalid_credentials")


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/sessions"), ("POST", "/concurrency"), ("GET", "/v1/users/ann/sessions")],
)
def test_a_basic_credential_that_is_not_ascii_is_refused(trusted_server, real_redis, method, path):
    """Header bytes past ASCII reach the app as latin-1 text; base64 refuses them: a 401, once a 500."""
    body = {"userId": "ann", "deviceId": "tv", "streamId": "film"} if method == "POST" else None
    headers = {"Authorization": "Basic \xe9\xe9\xe9\xe9", "X-Request-Id": "not-ascii"}
    answer = trusted_server.request(method, path, body, headers)
    assert_error(answer, 401, "invalid_credentials")
    assert answer.headers["x-request-id"] == "not-ascii"
    assert redis_state(real_redis) == {}


@pytest.mark.backends
def test_limit_answers_403_with_the_count_to_anyone(server, real_redis):
    user = new_user()
    for i in range(MAX_STREAMS):
        legacy_started(server, user, f"device-{i}", f"stream-{i}")
    before = redis_state(real_redis)
    body = assert_error(legacy_start(server, user, "one-too-many", "stream-x"), 403, "limit_reached")
    assert (body["limit"], body["scope"], body["active"]) == (MAX_STREAMS, "account", MAX_STREAMS)
    assert "sessions" not in body  # an anonymous caller learns no session's key
    assert redis_state(real_redis) == before


def test_limit_answers_403_listing_the_holders_to_a_trusted_caller(trusted_server, real_redis):
    server, user = trusted_server, new_user()
    holders = {
        legacy_start(server, user, f"device-{i}", f"stream-{i}", headers=CALLER).json()["sessionKey"]: i
        for i in range(MAX_STREAMS)
    }
    before = redis_state(real_redis)

    answer = legacy_start(server, user, "one-too-many", "stream-x", headers=CALLER)
    body = assert_error(answer, 403, "limit_reached")
    now_s = real_redis.time()[0]
    assert len(body["sessions"]) == MAX_STREAMS
    listed = {}
    for session in body["sessions"]:
        assert abs(session["started"] - now_s) <= 5
        listed[session["sessionKey"]] = (session["deviceId"], session["streamId"])
    assert listed == {sid: (f"device-{i}", f"stream-{i}") for sid, i in holders.items()}
    assert redis_state(real_redis) == before

    other_user = legacy_start(server, new_user(), "one-too-many", "stream-x", headers=CALLER)
    assert other_user.status == 200


@pytest.mark.backends
def test_heartbeat_returns_a_fresh_token_and_extends_the_session(server, real_redis):
    user = new_user()
    sid, token = legacy_started(server, user, "phone")
    expires_before = stored_sessions(real_redis, live_only=True)[sid][3]
    time.sleep(0.05)

    answer = legacy_heartbeat(server, sid, token)
    assert answer.status == 200
    body = answer.json()
    assert body == {"sessionKey": sid, "token": body["token"], "status": "updated"}
    assert body["token"] != token
    header, claims = decode(server, body["token"])
    old_claims = decode(server, token)[1]
    assert header["kid"] and header["typ"]
    assert claims["sid"] == sid and claims["sub"] == user and claims["device"] == "phone"
    assert claims["jti"] != old_claims["jti"]
    assert claims["iat"] >= old_claims["iat"]
    assert claims["exp"] - claims["iat"] == TEST_TTL_S
    assert stored_sessions(real_redis, live_only=True)[sid][3] > expires_before

    assert legacy_heartbeat(server, sid, body["token"]).status == 200
    assert legacy_heartbeat(server, sid, token).status == 200  # the first token is valid until it expires


@pytest.mark.backends
def test_stop_frees_the_slot_at_once_and_the_session_never_comes_back(server, real_redis):
    user = new_user()
    sessions = [legacy_started(server, user, f"device-{i}") for i in range(MAX_STREAMS)]
    assert legacy_start(server, user, "waiting").status == 403
    sid, token = sessions[0]

    answer = legacy_stop(server, sid, token)
    assert answer.status == 204
    assert answer.body == b""
    assert sid not in stored_sessions(real_redis)

    admitted = legacy_start(server, user, "waiting")
    assert admitted.status == 200
    assert admitted.json()["status"] == "initiated"

    assert_error(legacy_heartbeat(server, sid, token), 410, "session_gone")
    assert_error(legacy_heartbeat(server, sid, token), 410, "session_gone")
    assert sid not in stored_sessions(real_redis)
    assert legacy_stop(server, sid, token).status in (204, 410)
    assert sid not in stored_sessions(real_redis)


@pytest.mark.backends
def test_stop_requires_the_token(server, real_redis):
    sid, _token = legacy_started(server, new_user(), "tv")
    before = redis_state(real_redis)
    body = assert_error(server.request("DELETE", "/concurrency", {"sessionKey": sid}), 400)
    assert body.get("field") == "token"
    assert_error(legacy_stop(server, sid, "not-a-token"), 401, "invalid_token")
    assert redis_state(real_redis) == before


# --- native /v1/sessions --------------------------------------------------------------------------


@pytest.mark.backends
def test_native_start_heartbeat_stop(server, real_redis):
    user = new_user()
    created = legacy_start(server, user, "console", "film", path="/v1/sessions")
    assert created.status == 201
    body = created.json()
    sid = body["sessionId"]
    assert body["status"] == "initiated"
    assert created.headers["location"].endswith(f"/v1/sessions/{sid}")
    assert decode(server, body["token"])[1]["sid"] == sid

    renewed = server.request(
        "POST",
        "/v1/sessions",
        {"userId": user, "deviceId": "console", "streamId": "film", "token": body["token"]},
    )
    assert renewed.status == 200
    assert renewed.json()["status"] == "updated"
    assert renewed.json()["sessionId"] == sid

    beat = server.request("PUT", f"/v1/sessions/{sid}", headers=bearer(body["token"]))
    assert beat.status == 200
    fresh = beat.json()["token"]
    assert beat.json()["sessionId"] == sid and beat.json()["status"] == "updated"
    assert decode(server, fresh)[1]["sid"] == sid

    gone = server.request("DELETE", f"/v1/sessions/{sid}", headers=bearer(fresh))
    assert gone.status == 204
    assert sid not in stored_sessions(real_redis)
    assert_error(server.request("PUT", f"/v1/sessions/{sid}", headers=bearer(fresh)), 410, "session_gone")


@pytest.mark.backends
def test_legacy_and_native_routes_share_sessions(server, real_redis):
    sid, token = legacy_started(server, new_user(), "tablet")
    beat = server.request("PUT", f"/v1/sessions/{sid}", headers=bearer(token))
    assert beat.status == 200
    assert legacy_stop(server, sid, beat.json()["token"]).status == 204
    assert sid not in stored_sessions(real_redis, live_only=True)


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer    ",
        "Token abc",
        "Bearer a.b.c",
        "Bearer not a token",
    ],
)
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_native_routes_reject_missing_or_odd_authorization(server, real_redis, method, authorization):
    sid, _token = legacy_started(server, new_user(), "tv")
    before = redis_state(real_redis)
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = server.request(method, f"/v1/sessions/{sid}", headers=headers)
    assert_error(answer, 401, "invalid_token")
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert redis_state(real_redis) == before


@pytest.mark.backends
def test_token_of_one_session_cannot_touch_another(server, real_redis):
    user = new_user()
    sid_a, token_a = legacy_started(server, user, "device-a")
    sid_b, _token_b = legacy_started(server, user, "device-b")
    sid_c, _token_c = legacy_started(server, new_user(), "device-c")
    before = redis_state(real_redis)

    for victim in (sid_b, sid_c):
        for method in ("PUT", "DELETE"):
            answer = server.request(method, f"/v1/sessions/{victim}", headers=bearer(token_a))
            assert_error(answer, 401, "invalid_token")
            assert "www-authenticate" in answer.headers
        assert_error(legacy_heartbeat(server, victim, token_a), 401, "invalid_token")
        assert_error(legacy_stop(server, victim, token_a), 401, "invalid_token")

    assert redis_state(real_redis) == before
    assert {sid_a, sid_b, sid_c} <= set(stored_sessions(real_redis, live_only=True))


def test_tampered_tokens_are_401_and_the_session_untouched(server, real_redis):
    sid, token = legacy_started(server, new_user(), "tv")
    header, payload, signature = token.split(".")
    claims = decode(server, token)[1]
    forged_claims = {**claims, "sub": "someone-else"}
    forged_payload = jwt.utils.base64url_encode(json.dumps(forged_claims).encode()).decode()
    none_header = jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode()
    before = redis_state(real_redis)
    for bad in (
        f"{header}.{forged_payload}.{signature}",
        f"{none_header}.{payload}.",
        token[:-10],
        f"{header}.{payload}",
    ):
        assert_error(legacy_heartbeat(server, sid, bad), 401, "invalid_token")
        assert_error(server.request("DELETE", f"/v1/sessions/{sid}", headers=bearer(bad)), 401)
    assert redis_state(real_redis) == before


# --- bad input ------------------------------------------------------------------------------------

VALID_START = {"userId": "bad-input-user", "deviceId": "d", "streamId": "s"}


def _start_with(**changes):
    body = {**VALID_START, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not _MISSING}).encode()


_MISSING = object()

BAD_STARTS = [
    # (id, raw body, status, field named or None)
    ("malformed-json", b'{"userId": "u", ', 400, None),
    ("not-json", b"userId=u&deviceId=d", 400, None),
    ("empty-body", b"", 400, None),
    ("json-array", json.dumps([VALID_START]).encode(), 400, None),
    ("json-string", b'"userId"', 400, None),
    ("json-null", b"null", 400, None),
    ("invalid-utf8", b'{"userId": "\xff\xfe", "deviceId": "d", "streamId": "s"}', 400, None),
    ("user-number", _start_with(userId=42), 400, "userId"),
    ("device-list", _start_with(deviceId=["d"]), 400, "deviceId"),
    ("stream-object", _start_with(streamId={"id": "s"}), 400, "streamId"),
    ("user-null", _start_with(userId=None), 400, "userId"),
    ("user-bool", _start_with(userId=True), 400, "userId"),
    ("missing-device", _start_with(deviceId=_MISSING), 400, "deviceId"),
    ("missing-stream", _start_with(streamId=_MISSING), 400, "streamId"),
    ("empty-user", _start_with(userId=""), 400, "userId"),
    ("empty-stream", _start_with(streamId=""), 400, "streamId"),
    ("unknown-field", _start_with(extra="x"), 400, "extra"),
    ("user-too-long", _start_with(userId="u" * 257), 400, "userId"),
    ("device-too-long-unicode", _start_with(deviceId="é" * 257), 400, "deviceId"),
    ("body-too-large", _start_with(streamId="s" * (DEFAULTS.max_body_bytes + 1)), 413, None),
    ("deeply-nested-json", b"[" * 1500 + b"]" * 1500, 400, None),
    ("lone-surrogate", b'{"userId": "\\ud800", "deviceId": "d", "streamId": "s"}', 400, "userId"),
    # Six bytes each in a token: ids of them made a token the service itself refused as too long.
    ("control-characters", _start_with(userId="\x01" * 256, deviceId="\x01" * 256), 400, "userId"),
    ("newline-in-device", _start_with(deviceId="tv\n"), 400, "deviceId"),
    ("delete-in-stream", _start_with(streamId="film\x7f"), 400, "streamId"),
]


@pytest.mark.parametrize("path", ["/concurrency", "/v1/sessions"])
@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [case[1:] for case in BAD_STARTS],
    ids=[case[0] for case in BAD_STARTS],
)
def test_bad_start_is_4xx_json_and_writes_nothing(server, real_redis, path, raw, status, field):
    legacy_started(server, new_user(), "existing")
    before = redis_state(real_redis)
    answer = server.request("POST", path, raw, JSON)
    body = assert_error(answer, status)
    if field is not None:
        assert body.get("field") == field
        assert field in body["message"]
    assert redis_state(real_redis) == before
    assert not any(
        key == user_key(VALID_START["userId"])
        for key, *_ in stored_sessions(real_redis, live_only=True).values()
    )


def post_chunked(server, path, chunks):
    """POST a body with `Transfer-Encoding: chunked` (no Content-Length); return (status, JSON body)."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    # One write: a server may answer 413 and close before reading all of a body sent piece by piece.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, json.loads(answer.read())


def test_chunked_start_is_read(server, real_redis):
    user = new_user()
    chunks = [b'{"userId": "', user.encode(), b'", "deviceId": "d", ', b'"streamId": "s"}']
    status, body = post_chunked(server, "/concurrency", chunks)
    assert status == 200, body
    assert body["status"] == "initiated"
    assert body["sessionKey"] in stored_sessions(real_redis, live_only=True)


def test_chunked_body_over_the_limit_is_413(server, real_redis):
    before = redis_state(real_redis)
    half = b"u" * (DEFAULTS.max_body_bytes // 2 + 1)
    chunks = [b'{"userId": "', half, half, b'", "deviceId": "d", "streamId": "s"}']
    status, body = post_chunked(server, "/concurrency", chunks)
    assert status == 413, body
    assert body["error"] and body["message"]
    assert redis_state(real_redis) == before


def test_a_body_over_the_limit_is_counted_and_carries_its_request_id(server):
    """The front answers 413 before any route runs; the answer is still traced and counted."""

    def refused():
        text = server.request("GET", "/metrics").body.decode()
        line = 'concurrency_operations_total{operation="start",outcome="payload_too_large"}'
        found = re.search("^" + re.escape(line) + r" (\S+)$", text, re.MULTILINE)
        return float(found[1]) if found else 0.0

    before = refused()
    headers = {"Content-Type": "application/json", "X-Request-Id": "trace-413"}
    answer = server.request("POST", "/concurrency", b"x" * (DEFAULTS.max_body_bytes + 1), headers)
    assert answer.status == 413 and answer.headers["x-request-id"] == "trace-413"
    assert json.loads(answer.body)["error"] == "payload_too_large"
    assert refused() == before + 1


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_body_over_the_limit_on_a_session_route_is_413_and_changes_nothing(server, real_redis, method):
    """These routes use no body, but one sent is still read within the limit (docs/openapi.yaml)."""
    sid, token = admitted(start(server, user=new_user()))
    before = redis_state(real_redis)
    headers = {**bearer(token), "Content-Type": "application/json"}
    huge = b" " * (DEFAULTS.max_body_bytes + 1)
    assert_error(server.request(method, f"/v1/sessions/{sid}", huge, headers), 413, "payload_too_large")
    assert redis_state(real_redis) == before


def test_ids_at_the_length_limit_are_accepted(server, real_redis):
    limit = DEFAULTS.max_id_chars
    answer = legacy_start(server, "u" * limit, "é" * limit, "s" * limit)
    assert answer.status == 200, answer.body
    assert decode(server, answer.json()["token"])[1]["device"] == "é" * limit


def test_ids_holding_what_looks_like_the_macs_place_keep_their_session(server, real_redis):
    """A MAC once went into the first run of 22 `~` in the payload: an id holding one was replaced, and the
    session's first heartbeat resumed it under a made-up user, past the real user's limit."""
    user, device, stream = (f"{new_user()}{'~' * 22}", "~" * 30, "film~" + "~" * 22)
    sid, token = legacy_started(server, user, device, stream)
    for _ in range(2):
        answer = legacy_heartbeat(server, sid, token)
        assert answer.status == 200 and answer.json()["status"] == "updated", answer.body
        token = answer.json()["token"]
        claims = decode(server, token)[1]
        assert (claims["sub"], claims["device"], claims["stream"]) == (user, device, stream)
    stored = stored_sessions(real_redis)
    assert list(stored) == [sid] and len({entry.key for entry in stored.values()}) == 1, stored


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"token": "t"}, "sessionKey"),
        ({"sessionKey": "k"}, "token"),
        ({"sessionKey": 1, "token": "t"}, "sessionKey"),
        ({"sessionKey": "k", "token": ["t"]}, "token"),
        ({"sessionKey": "", "token": "t"}, "sessionKey"),
        ({"sessionKey": "k", "token": ""}, "token"),
        ({"sessionKey": "k" * 257, "token": "t"}, "sessionKey"),
        ({"sessionKey": "k", "token": "t", "userId": "u"}, "userId"),
    ],
)
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_bad_heartbeat_or_stop_body_is_400_naming_the_field(server, real_redis, method, body, field):
    legacy_started(server, new_user(), "existing")
    before = redis_state(real_redis)
    answer = server.request(method, "/concurrency", body)
    error = assert_error(answer, 400)
    assert error.get("field") == field
    assert field in error["message"]
    assert redis_state(real_redis) == before


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_overlong_session_id_in_the_path_is_400(server, real_redis, method):
    _sid, token = legacy_started(server, new_user(), "tv")
    before = redis_state(real_redis)
    assert_error(server.request(method, "/v1/sessions/" + "x" * 257, headers=bearer(token)), 400)
    assert redis_state(real_redis) == before


# --- routing, health, JWKS ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/v1/sessions/abc/extra", "/v1", "/concurrency/abc"])
def test_unknown_path_is_404_json(server, path):
    assert_error(server.request("GET", path), 404)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/concurrency", {"POST", "PUT", "DELETE"}),
        ("PATCH", "/concurrency", {"POST", "PUT", "DELETE"}),
        ("GET", "/v1/sessions", {"POST"}),
        ("POST", "/v1/sessions/abc", {"PUT", "DELETE"}),
        ("DELETE", "/health", {"GET"}),
        ("POST", "/.well-known/jwks.json", {"GET"}),
    ],
)
def test_wrong_method_is_405_with_allow(server, method, path, allowed):
    answer = server.request(method, path)
    assert_error(answer, 405)
    allow = {m.strip() for m in answer.headers["allow"].split(",")}
    assert allowed <= allow
    assert method not in allow


@pytest.mark.backends
@pytest.mark.parametrize("path", ["/health", "/healthz", "/readyz"])
def test_health_and_readiness(server, path):
    answer = server.request("GET", path)
    assert answer.status == 200
    assert answer.json()["status"] in ("ok", "ready")


def test_jwks_publishes_public_keys_only_and_is_cacheable(server):
    answer = server.request("GET", "/.well-known/jwks.json")
    assert answer.status == 200
    cache_control = answer.headers["cache-control"]
    assert "public" in cache_control and re.search(r"max-age=\d+", cache_control)
    keys = answer.json()["keys"]
    assert keys
    for key in keys:
        assert {"kid", "kty", "crv", "x", "y", "alg", "use"} <= set(key)
        assert key["kty"] == "EC" and key["crv"] == "P-256" and key["alg"] == "ES256" and key["use"] == "sig"
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
    etag = answer.headers["etag"]
    again = server.request("GET", "/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.body == b""
    # A name with '_' is not the header with '-': a cache in front saw no condition, and must get the body
    underscored = server.request("GET", "/.well-known/jwks.json", headers={"If_None_Match": etag})
    assert underscored.status == 200 and underscored.json()["keys"] == keys


def test_openapi_is_served(server):
    answer = server.request("GET", "/openapi.yaml")
    assert answer.status == 200
    assert answer.body.startswith(b"openapi: 3.1")


# --- ids of any content ---------------------------------------------------------------------------

ODD_USER = "{acme}:user|42 %7C%25 naïve 名前 🎬"
ODD_IDS = [
    ("{slot}:dev|1", "stream:{x}|%"),
    ("dev 2 ü 日本", "100%|%25|%7C"),
    ("dev:3%7C", "{}|{}"),
]


@pytest.mark.backends
def test_ids_of_any_content_work_and_come_back_intact(server, real_redis):
    tokens = {}
    for device, stream in ODD_IDS:
        answer = legacy_start(server, ODD_USER, device, stream)
        assert answer.status == 200, answer.body
        body = answer.json()
        claims = decode(server, body["token"])[1]
        assert (claims["sub"], claims["device"], claims["stream"]) == (ODD_USER, device, stream)
        tokens[body["sessionKey"]] = body["token"]

    refused = assert_error(legacy_start(server, ODD_USER, "dev|4", "stream|4"), 403, "limit_reached")
    assert refused["active"] == len(ODD_IDS)

    for sid, token in tokens.items():
        assert legacy_heartbeat(server, sid, token).status == 200
    stored = stored_sessions(real_redis, live_only=True)
    assert {(k, d, s) for k, d, s, _ in stored.values()} == {(user_key(ODD_USER), d, s) for d, s in ODD_IDS}
    assert all(USER_KEY.match(key.decode()) for key in real_redis.scan_iter())


@pytest.mark.backends
def test_escaped_ids_do_not_collide(server, real_redis):
    """`a|b` and `a%7Cb` are different users; device `x|y` + stream `z` differs from `x` + `y|z`."""
    for user in ("a|b", "a%7Cb", "a%257Cb"):
        for i in range(MAX_STREAMS):
            assert legacy_start(server, user, f"d{i}").status == 200, user
    user = new_user()
    first = legacy_start(server, user, "x|y", "z").json()
    second = legacy_start(server, user, "x", "y|z").json()
    assert first["status"] == second["status"] == "initiated"
    assert first["sessionKey"] != second["sessionKey"]


@pytest.mark.backends
def test_every_key_has_a_ttl(server, real_redis):
    user = new_user()
    sessions = [legacy_started(server, user, f"device-{i}") for i in range(MAX_STREAMS)]
    legacy_start(server, user, "refused")
    legacy_heartbeat(server, *sessions[0])
    legacy_stop(server, *sessions[1])
    legacy_started(server, user, "device-1")
    for n in range(20):
        legacy_started(server, new_user(), f"d{n}", "{s}|%")
    legacy_started(server, ODD_USER, "odd")

    keys = real_redis.keys()
    assert keys
    for key in keys:
        assert USER_KEY.match(key.decode()), key
        pttl = real_redis.pttl(key)
        assert pttl > 0, (key, pttl)


# --- expiry ---------------------------------------------------------------------------------------


SHORT_TTL_S = 3


@pytest.fixture(scope="module")
def short_ttl_server(redis_server, keys_dir):
    """The real service with a three-second session TTL."""
    # ServerProcess maps `session_ttl_s` to CONCURRENCY_SESSION_TTL, the variable the service reads.
    process = ServerProcess(redis_server.url, keys_dir, session_ttl_s=SHORT_TTL_S)
    yield process
    process.stop()


def test_expired_session_is_410_and_frees_its_slot(short_ttl_server, real_redis):
    """Sessions not renewed within the TTL are gone; a renewed one lives on.

    The keeper starts last, so every other session was created before `keeper_asked`
    and is surely gone one TTL later, however slow the machine is. The keeper is renewed
    every half second meanwhile, so only a stall of most of a TTL could end it.
    """
    server = short_ttl_server
    user = new_user()
    others = [legacy_started(server, user, f"device-{i}") for i in range(1, MAX_STREAMS)]
    # The token's own expiry is what the test waits on below; here only its claims are read.
    claims = session_claims(server, others[0][1], leeway=60)
    assert claims["exp"] - claims["iat"] == SHORT_TTL_S, "the server did not take the short TTL"
    for key in real_redis.scan_iter():
        assert real_redis.pttl(key) in (-2, *range(1, SHORT_TTL_S * 1000 + 1)), key  # -2: expired since
    keeper_asked = time.monotonic()
    keeper_sid, keeper_token = legacy_started(server, user, "device-0")
    while time.monotonic() < keeper_asked + SHORT_TTL_S + 0.1:
        time.sleep(0.5)
        beat = legacy_heartbeat(server, keeper_sid, keeper_token)
        assert beat.status == 200, beat.body
        keeper_token = beat.json()["token"]
    for sid, token in others:
        assert_error(legacy_heartbeat(server, sid, token), 410, "session_gone")
        assert_error(legacy_heartbeat(server, sid, token), 410, "session_gone")
        assert sid not in stored_sessions(real_redis)

    assert legacy_start(server, user, "new-device").status == 200
    again = legacy_start(server, user, "device-1").json()
    assert again["status"] == "initiated"
    assert again["sessionKey"] != others[0][0]

    time.sleep(SHORT_TTL_S + 0.4)
    assert_error(legacy_heartbeat(server, keeper_sid, keeper_token), 410, "session_gone")
    assert stored_sessions(real_redis) == {}


# --- Redis unavailable ----------------------------------------------------------------------------


def assert_store_unavailable(answer):
    assert_error(answer, 503, "store_unavailable")
    assert int(answer.headers["retry-after"]) >= 1


def test_service_without_redis_starts_answers_503_and_recovers(keys_dir, tmp_path):
    port = free_port()
    server = ServerProcess(f"redis://127.0.0.1:{port}/0", keys_dir, redis_timeout_s=0.25)
    own = None
    try:
        assert server.request("GET", "/healthz").status == 200
        not_ready = server.request("GET", "/readyz")
        assert not_ready.status == 503
        assert not_ready.json()["checks"]["redis"] is False
        assert_store_unavailable(legacy_start(server, new_user(), "tv"))

        own = RedisServer(tmp_path, port=port)
        wait_until(lambda: server.request("GET", "/readyz").status == 200, what="ready once redis is up")
        user = new_user()
        sid, token = legacy_started(server, user, "tv")
        assert legacy_heartbeat(server, sid, token).status == 200

        own.stop()
        assert server.request("GET", "/readyz").status == 503
        assert_store_unavailable(legacy_start(server, user, "phone"))
        assert_store_unavailable(legacy_heartbeat(server, sid, token))
        assert_store_unavailable(legacy_stop(server, sid, token))
        assert_store_unavailable(server.request("PUT", f"/v1/sessions/{sid}", headers=bearer(token)))
        assert server.request("GET", "/healthz").status == 200

        own = RedisServer(tmp_path, port=port)
        wait_until(lambda: server.request("GET", "/readyz").status == 200, what="ready again")
        assert legacy_stop(server, sid, token).status in (204, 410)  # the new redis never held it
        again = legacy_started(server, user, "tv")
        assert legacy_heartbeat(server, *again).status == 200
        assert "Traceback" not in server.output()
    finally:
        server.stop()
        if own is not None:
            own.stop()
