"""The app factory and the contract through falcon's TestClient over fakeredis."""

import base64
import dataclasses
import json
import re

import falcon.inspect
import falcon.testing
import jwt
import pytest
import redis
import yaml
from layout import redis_state

from api.app import OPENAPI_PATH, create_app, get_app
from api.config import Config, ConfigError
from api.store import RedisStore
from keys.errors import NoSigningKey
from keys.keyring import Keyring
from keys.store import KeyStore

START = {"userId": "ann", "deviceId": "tv", "streamId": "film"}
HTTP = ("get", "put", "post", "delete", "patch")


def start(client, **fields):
    return client.simulate_post("/concurrency", json={**START, **fields})


class Untouchable:
    """A collaborator that fails the test on any use."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        raise AssertionError(f"the {self._name} was used ({attr})")


def documented_operations():
    """Return {(path template, METHOD)} of the OpenAPI document the app serves; parameters as {}."""
    paths = yaml.safe_load(OPENAPI_PATH.read_text())["paths"]
    return {
        (template(path), method.upper()) for path, item in paths.items() for method in item if method in HTTP
    }


def template(path):
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_create_app_has_no_side_effects(config):
    app = create_app(config, store=Untouchable("store"), keyring=Untouchable("keyring"))
    routed = {
        (template(route.path), info.method)
        for route in falcon.inspect.inspect_routes(app)
        for info in route.methods
        if not info.internal
    }
    assert routed == documented_operations()

    client = falcon.testing.TestClient(app)
    for path in ("/healthz", "/health"):
        answer = client.simulate_get(path)
        assert (answer.status_code, answer.json) == (200, {"status": "ok"})
    assert client.simulate_get("/openapi.yaml").content == OPENAPI_PATH.read_bytes()
    for path, method in documented_operations():  # each route answers OPTIONS with its own methods
        allow = client.simulate_options(path.replace("{}", "x")).headers["allow"]
        allowed = {m.strip() for m in allow.split(",")}
        assert {method, "OPTIONS"} <= allowed  # as its 405 says, and the openapi document


@pytest.mark.redis
def test_get_app_builds_from_the_environment(keys_dir, real_redis, redis_server, tmp_path, monkeypatch):
    KeyStore(str(tmp_path)).generate("ES256")  # another key, in the directory os.environ names
    monkeypatch.setenv("CONCURRENCY_KEYS_DIR", str(tmp_path))
    monkeypatch.setenv("CONCURRENCY_ISSUER", "from-os-environ")
    monkeypatch.setenv("CONCURRENCY_JWKS_MAX_AGE", "999")
    monkeypatch.setenv("CONCURRENCY_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CONCURRENCY_AUDIENCE", "from-os-environ")  # the mapping leaves these to defaults
    monkeypatch.setenv("CONCURRENCY_SESSION_TTL", "7")
    environ = {
        "CONCURRENCY_KEYS_DIR": keys_dir,
        "CONCURRENCY_ISSUER": "from-the-mapping",
        "CONCURRENCY_JWKS_MAX_AGE": "17",
        "CONCURRENCY_REDIS_URL": redis_server.url,
    }
    client = falcon.testing.TestClient(get_app(environ))

    jwks = client.simulate_get("/.well-known/jwks.json")
    assert jwks.headers["cache-control"] == "public, max-age=17"
    (jwk,) = jwks.json["keys"]
    assert jwk["kid"] == Keyring.open(keys_dir).current.signing.kid

    started = start(client)
    assert started.status_code == 200  # the mapping's Redis; os.environ's refuses connections
    token = started.json["token"]
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    claims = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience=Config().audience)
    assert claims["iss"] == "from-the-mapping"
    assert claims["exp"] - claims["iat"] == Config().session_ttl_s


def test_get_app_reads_os_environ_by_default(keys_dir, monkeypatch):
    for name in (field.metadata["env"] for field in dataclasses.fields(Config)):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONCURRENCY_KEYS_DIR", keys_dir)
    monkeypatch.setenv("CONCURRENCY_JWKS_MAX_AGE", "999")
    client = falcon.testing.TestClient(get_app())
    assert client.simulate_get("/.well-known/jwks.json").headers["cache-control"] == "public, max-age=999"


def test_get_app_refuses_without_a_signing_key(tmp_path):
    with pytest.raises(NoSigningKey, match="no active signing key"):
        get_app({"CONCURRENCY_KEYS_DIR": str(tmp_path)})


def test_start_heartbeat_stop(client, keyring):
    started = start(client)
    assert started.status_code == 200
    body = started.json
    assert body["status"] == "initiated"
    key = keyring.current.signing
    claims = jwt.decode(body["token"], key.public_key, algorithms=["ES256"], audience="playback")
    assert claims["sid"] == body["sessionKey"]
    assert (claims["sub"], claims["device"], claims["stream"]) == ("ann", "tv", "film")

    beat = client.simulate_put(
        "/concurrency", json={"sessionKey": body["sessionKey"], "token": body["token"]}
    )
    assert beat.status_code == 200
    assert beat.json["status"] == "updated"
    assert beat.json["token"] != body["token"]

    stop = client.simulate_delete(
        "/concurrency", json={"sessionKey": body["sessionKey"], "token": beat.json["token"]}
    )
    assert stop.status_code == 204
    gone = client.simulate_put(
        "/concurrency", json={"sessionKey": body["sessionKey"], "token": beat.json["token"]}
    )
    assert gone.status_code == 410
    assert gone.json["error"] == "session_gone"


def test_limit_tells_an_anonymous_caller_how_many_play_not_which(client, config):
    for i in range(config.max_streams):
        assert start(client, deviceId=f"d{i}").status_code == 200
    refused = start(client, deviceId="one-too-many")
    assert refused.status_code == 403
    assert refused.json["error"] == "limit_reached"
    assert refused.json["active"] == config.max_streams == refused.json["limit"]
    assert "sessions" not in refused.json


def test_limit_lists_the_holders_to_a_trusted_caller(config, fake_redis, keyring, make_client):
    secret = "trusted-" + "s" * 16
    client = make_client(
        dataclasses.replace(config, callers=(("playback-api", secret),)), fake_redis, keyring
    )
    auth = {"Authorization": "Basic " + base64.b64encode(f"playback-api:{secret}".encode()).decode()}
    for i in range(config.max_streams):
        assert (
            client.simulate_post(
                "/concurrency", json={**START, "deviceId": f"d{i}"}, headers=auth
            ).status_code
            == 200
        )
    refused = client.simulate_post("/concurrency", json={**START, "deviceId": "one-too-many"}, headers=auth)
    assert refused.status_code == 403
    assert sorted(s["deviceId"] for s in refused.json["sessions"]) == ["d0", "d1", "d2"]
    assert client.simulate_post("/concurrency", json=START).status_code == 401  # no credential


def test_native_routes(client):
    created = client.simulate_post("/v1/sessions", json=START)
    assert created.status_code == 201
    sid, token = created.json["sessionId"], created.json["token"]
    assert created.headers["location"] == f"/v1/sessions/{sid}"
    renewed = client.simulate_post("/v1/sessions", json={**START, "token": token})  # shows the token: renews
    assert (renewed.status_code, renewed.json["sessionId"]) == (200, sid)
    token = renewed.json["token"]

    auth = {"Authorization": f"Bearer {token}"}
    beat = client.simulate_put(f"/v1/sessions/{sid}", headers=auth)
    assert beat.status_code == 200 and beat.json["sessionId"] == sid
    assert client.simulate_delete(f"/v1/sessions/{sid}", headers=auth).status_code == 204
    assert client.simulate_put(f"/v1/sessions/{sid}", headers=auth).status_code == 410


@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer", "Bearer not-a-jwt"])
def test_native_heartbeat_needs_a_bearer_token(client, header):
    sid = client.simulate_post("/v1/sessions", json=START).json["sessionId"]
    headers = {"Authorization": header} if header else {}
    answer = client.simulate_put(f"/v1/sessions/{sid}", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_token_of_another_session_is_refused(client, fake_redis):
    first = start(client, deviceId="a").json
    second = start(client, deviceId="b").json
    before = redis_state(fake_redis)
    answer = client.simulate_delete(
        "/concurrency", json={"sessionKey": second["sessionKey"], "token": first["token"]}
    )
    assert answer.status_code == 401
    assert redis_state(fake_redis) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"deviceId": "tv", "streamId": "film"}, "userId"),
        ({**START, "userId": 7}, "userId"),
        ({**START, "deviceId": ""}, "deviceId"),
        ({**START, "streamId": "s" * 257}, "streamId"),
        ({**START, "admin": True}, "admin"),
    ],
)
def test_bad_fields_are_named_and_change_nothing(client, fake_redis, body, field):
    answer = client.simulate_post("/concurrency", json=body)
    assert answer.status_code == 400
    assert answer.json["field"] == field
    assert field in answer.json["message"]
    assert fake_redis.dbsize() == 0


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b"\xff\xfe", b"null"])
def test_malformed_bodies(client, fake_redis, raw):
    answer = client.simulate_post("/concurrency", body=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.json["error"] == "bad_request"
    assert fake_redis.dbsize() == 0


def test_large_body_is_413(client, fake_redis):
    answer = client.simulate_post("/concurrency", json={**START, "userId": "u" * 20_000})
    assert answer.status_code == 413
    assert fake_redis.dbsize() == 0


def test_unknown_route_and_method(client):
    missing = client.simulate_get("/nope")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    wrong = client.simulate_patch("/concurrency")
    assert wrong.status_code == 405 and wrong.json["error"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


def test_store_down_is_503_with_retry_after(config, keyring):
    dead = RedisStore(redis.Redis(port=1, socket_connect_timeout=0.1))
    client = falcon.testing.TestClient(create_app(config, dead, keyring))
    answer = start(client)
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == str(config.retry_after_s)
    assert client.simulate_get("/readyz").status_code == 503
    assert client.simulate_get("/healthz").status_code == 200


def test_unexpected_errors_are_500_without_a_trace(config, keyring):
    class Broken:
        async def run(self, script, key, args):
            raise RuntimeError("secret internals")

    client = falcon.testing.TestClient(create_app(config, RedisStore(Broken()), keyring))
    answer = start(client)
    assert answer.status_code == 500
    assert answer.json["error"] == "internal_error"
    assert "secret" not in answer.text and "Traceback" not in answer.text


def test_jwks_is_cacheable(client, keyring):
    answer = client.simulate_get("/.well-known/jwks.json")
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "public, max-age=300"
    (key,) = answer.json["keys"]
    assert key["kid"] == keyring.current.signing.kid
    assert {"d", "p", "q"}.isdisjoint(key)
    again = client.simulate_get("/.well-known/jwks.json", headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="CONCURRENCY_MAX_STREAMS='many'"):
        Config.from_env({"CONCURRENCY_MAX_STREAMS": "many"})
    with pytest.raises(ConfigError, match="CONCURRENCY_SESSION_TTL must be at least 1"):
        Config.from_env({"CONCURRENCY_SESSION_TTL": "0"})


def test_config_from_env_reads_prefixed_variables():
    config = Config.from_env({"CONCURRENCY_MAX_STREAMS": "5", "CONCURRENCY_SESSION_TTL": "30"})
    assert (config.max_streams, config.session_ttl_s) == (5, 30)


def test_www_authenticate_never_carries_raw_token_text(client):
    from api.errors import InvalidToken

    class Boom:
        def on_get(self, req, resp):
            raise InvalidToken('no key "k\r\nX-Injected: 1\\" ü')

    client.app.add_route("/boom", Boom())
    answer = client.simulate_get("/boom")
    assert answer.status_code == 401
    header = answer.headers["www-authenticate"]
    assert header.isascii() and "\r" not in header and "\n" not in header
    assert header.count('"') == 4  # only the quotes around the two parameter values


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"CONCURRENCY_USER_JWKS": "/tmp/jwks.json"},
            "CONCURRENCY_USER_ISSUER and CONCURRENCY_USER_AUDIENCE",
        ),
        ({"CONCURRENCY_TOKEN_LEEWAY": "-1"}, "CONCURRENCY_TOKEN_LEEWAY must not be negative"),
        ({"CONCURRENCY_REDIS_TIMEOUT": "0"}, "CONCURRENCY_REDIS_TIMEOUT must be a positive"),
        ({"CONCURRENCY_LOG_LEVEL": "chatty"}, "CONCURRENCY_LOG_LEVEL must be one of"),
        ({"CONCURRENCY_AT_LIMIT": "shrug"}, "CONCURRENCY_AT_LIMIT must be one of"),
        ({"CONCURRENCY_PLAN_LIMITS": "basic=one"}, "'basic' needs a positive integer"),
    ],
)
def test_config_refuses_unsafe_or_broken_settings(environ, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_env(environ)


def test_unknown_methods_do_not_multiply_metric_series(client):
    client.simulate_request("TRACE", "/concurrency")  # any method outside the API's own
    text = client.simulate_get("/metrics").text
    assert "TRACE" not in text
    assert 'method="OTHER"' in text


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
@pytest.mark.parametrize("path", ["/concurrency", "/v1/sessions"])
def test_a_body_that_is_not_json_by_its_content_type_is_415(client, fake_redis, content_type, path):
    headers = {"Content-Type": content_type} if content_type else {}
    answer = client.simulate_post(path, body=json.dumps(START).encode(), headers=headers)
    assert answer.status_code == 415
    assert answer.json["error"] == "unsupported_media_type" and "application/json" in answer.json["message"]
    assert fake_redis.dbsize() == 0
    charset = client.simulate_post(
        path, body=json.dumps(START), headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert charset.status_code in (200, 201)


def test_a_field_named_twice_is_refused(client, fake_redis):
    raw = b'{"userId": "ann", "deviceId": "tv", "streamId": "film", "userId": "bob"}'
    answer = client.simulate_post("/concurrency", body=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert answer.json["field"] == "userId" and "twice" in answer.json["message"]
    assert fake_redis.dbsize() == 0
