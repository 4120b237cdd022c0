"""docs/openapi.yaml against the app: the same routes, and every answer documented and valid."""

import base64
import dataclasses
import json
import pathlib
import re
import socket
import time
import urllib.parse

import falcon.inspect
import falcon.testing
import jsonschema
import jwt
import pytest
import referencing
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from referencing.jsonschema import DRAFT202012

from api import lua
from api.app import OPENAPI_PATH, create_app
from api.connection import connect
from api.sessions import Session
from api.store import RedisStore
from api.tokens import SessionTokens
from keys.keyring import Keyring
from keys.store import KeyStore

DOC_PATH = pathlib.Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
DOC = yaml.safe_load(DOC_PATH.read_text())
DOC_URI = "urn:concurrency-service:openapi"
REGISTRY = referencing.Registry().with_resource(DOC_URI, DRAFT202012.create_resource(DOC))
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
START = {"userId": "ann", "deviceId": "tv", "streamId": "film"}
# The statuses of /concurrency in the seed's Swagger (seed/service.yml), less its 500.
SEED_STATUSES = {"post": {200, 400, 403}, "put": {200, 400}, "delete": {204, 400}}
ADMIN_SECRET = "s3cret"
IDP_ISSUER = "https://idp.example"
IDP_AUDIENCE = "concurrency"
IDP_KID = "idp-key-1"


# -- reading the document ---------------------------------------------------------------------------


def escape(part):
    """Escape one JSON pointer segment."""
    return str(part).replace("~", "~0").replace("/", "~1")


def pointer(*parts):
    """Return the JSON pointer fragment `#/a/b` of `parts`."""
    return "#/" + "/".join(map(escape, parts))


def at(fragment):
    """Return the node of the document at a `#/...` pointer."""
    node = DOC
    for part in fragment.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(node, fragment):
    """Follow `$ref`s of a response, header, parameter or request body; return it and where it lives."""
    while "$ref" in node:
        fragment = node["$ref"]
        node = at(fragment)
    return node, fragment


def schema_uri(fragment):
    return DOC_URI + urllib.parse.quote(fragment, safe="#/~")


def validate(instance, schema_fragment):
    """Check `instance` against the schema at `schema_fragment`, refs resolved in the document."""
    validator = jsonschema.Draft202012Validator({"$ref": schema_uri(schema_fragment)}, registry=REGISTRY)
    errors = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]
    assert not errors, f"{instance!r} does not match {schema_fragment}: {errors}"


def template_shape(path):
    """Return a path template with its parameter names dropped: `/a/{id}` -> `/a/{}`."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def operations():
    """Yield (path, method, operation) of every documented operation."""
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def documented_operations():
    return {(template_shape(path), method) for path, method, _ in operations()}


def documented_statuses():
    return {
        (method, path, int(status))
        for path, method, operation in operations()
        for status in operation["responses"]
    }


def app_operations(app):
    """Return (path shape, method) of every responder the app's own resources define."""
    return {
        (template_shape(route.path), info.method.lower())
        for route in falcon.inspect.inspect_routes(app)
        for info in route.methods
        if not info.internal
    }


def check_response(method, path, answer):
    """Assert the answer's status is documented for the operation and the answer matches it."""
    responses = DOC["paths"][path][method]["responses"]
    status = str(answer.status_code)
    assert status in responses, f"{method.upper()} {path}: undocumented {answer.status}: {answer.text}"
    check_against(*deref(responses[status], pointer("paths", path, method, "responses", status)), answer)


def check_against(response, fragment, answer):
    """Assert the answer has the response object's required headers and documented body."""
    for name, header in response.get("headers", {}).items():
        header, header_at = deref(header, f"{fragment}/headers/{escape(name)}")
        if not header.get("required"):
            continue
        assert name.lower() in answer.headers, f"{answer.status} lacks the documented {name} header"
        value = answer.headers[name]
        if header["schema"].get("type") == "integer":
            assert re.fullmatch(r"[0-9]+", value), f"{name}: {value!r} is not an integer"
            value = int(value)
        validate(value, f"{header_at}/schema")
    content = response.get("content")
    if content is None:
        assert answer.content == b"", f"{answer.status} has a body its document does not describe"
        return
    media = answer.headers.get("content-type", "").split(";")[0].strip()
    assert media in content, f"{answer.status} is {media!r}, documented as {sorted(content)}"
    schema_at = f"{fragment}/content/{escape(media)}/schema"
    body = answer.text
    if media.endswith("json"):
        body = json.loads(answer.content)
    elif media.endswith("yaml"):
        body = yaml.safe_load(answer.content)
    validate(body, schema_at)


def check_component(name, answer):
    """Assert the answer matches the response `#/components/responses/<name>`."""
    fragment = pointer("components", "responses", name)
    check_against(at(fragment), fragment, answer)


def token_parts(token):
    """Return the (header, claims) of a compact JWS, unverified."""
    header, claims, _ = (base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in token.split("."))
    return json.loads(header), json.loads(claims)


def check_session_token(body):
    """Assert the session token of an answer has the documented header and claims, for this session."""
    header, claims = token_parts(body["token"])
    validate(header, pointer("components", "schemas", "SessionTokenHeader"))
    validate(claims, pointer("components", "schemas", "SessionTokenClaims"))
    assert claims["sid"] == body.get("sessionId", body.get("sessionKey"))
    if "expiresIn" in body:
        assert claims["exp"] - claims["iat"] == body["expiresIn"], "expiresIn is not the token's lifetime"
    return claims


# -- the app, working and broken --------------------------------------------------------------------


class Api:
    """The app over fakeredis, and variants of it sharing the same keys and Redis."""

    def __init__(self, client, config, keyring, redis_client, tmp_path):
        self.client = client
        self.tmp_path = tmp_path
        self.config = config
        self.keyring = keyring
        self.redis = redis_client
        self._idp_key = None

    def start(self, client=None, **fields):
        """Start a session through /v1/sessions; return (sessionId, token)."""
        answer = (client or self.client).simulate_post("/v1/sessions", json={**START, **fields})
        assert answer.status_code in (200, 201), answer.text
        return answer.json["sessionId"], answer.json["token"]

    def bearer(self, token):
        return {"Authorization": f"Bearer {token}"}

    def with_config(self, **changes):
        """Return a client over the same Redis with some settings changed."""
        config = dataclasses.replace(self.config, **changes)
        return falcon.testing.TestClient(
            create_app(config, RedisStore(self.redis, config.buckets), self.keyring)
        )

    def admin(self, **changes):
        """Return a client whose session-management routes take the admin secret."""
        return self.with_config(admin_token=ADMIN_SECRET, **changes)

    def with_user_tokens(self, **changes):
        """Return a client that verifies user access tokens against a test identity provider's JWKS file."""
        if self._idp_key is None:
            self._idp_key = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self._idp_key.public_key()))
            (self.tmp_path / "idp").mkdir()
            (self.tmp_path / "idp" / "jwks.json").write_text(
                json.dumps({"keys": [{**jwk, "kid": IDP_KID, "alg": "ES256", "use": "sig"}]})
            )
        jwks = str(self.tmp_path / "idp" / "jwks.json")
        return self.with_config(user_jwks=jwks, user_issuer=IDP_ISSUER, user_audience=IDP_AUDIENCE, **changes)

    def user_token(self, sub="ann", key=None, **claims):
        """Return a user access token of the test identity provider (call `with_user_tokens` first)."""
        now = int(time.time())
        claims = {"iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": sub, "iat": now, "exp": now + 300, **claims}
        return jwt.encode(claims, key or self._idp_key, algorithm="ES256", headers={"kid": IDP_KID})

    def store_down(self, **changes):
        """Return a client whose Redis refuses connections, built as production builds its client."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = dataclasses.replace(
            self.config, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.1, **changes
        )
        store = RedisStore(connect(config), config.buckets)
        return falcon.testing.TestClient(create_app(config, store, self.keyring))

    def lose(self, sid, user="ann"):
        """Drop a session's Redis entry, as a failover or flush would."""
        assert self.redis.hdel(RedisStore(self.redis, self.config.buckets).bucket_key(user), sid) == 1

    def token(self, sid, now_s, keyring=None, user="ann"):
        """Sign a token for session `sid` as of `now_s`, with this app's or another keyring."""
        tokens = SessionTokens(keyring or self.keyring, self.config.issuer, self.config.audience)
        session = Session(user, sid, "tv", "film")
        return tokens.sign(session, now_s, self.config.session_ttl_s, {"lim": self.config.max_streams})


@pytest.fixture
def api(client, config, keyring, fake_redis, tmp_path):
    return Api(client, config, keyring, fake_redis, tmp_path)


# -- scenarios: each provokes one documented status of one operation --------------------------------

CASES = []


def provokes(method, path, status):
    """Register a scenario that must answer `status` to `method path`."""

    def register(scenario):
        name = f"{method} {path} {status} {scenario.__name__}"
        CASES.append(pytest.param(method, path, status, scenario, id=name))
        return scenario

    return register


def legacy_start(api, client=None, headers=None, **fields):
    return (client or api.client).simulate_post("/concurrency", json={**START, **fields}, headers=headers)


def v1_start(api, client=None, headers=None, **fields):
    return (client or api.client).simulate_post("/v1/sessions", json={**START, **fields}, headers=headers)


def fill_to_limit(api, start, client=None):
    """Start as many sessions as allowed on distinct devices; return their ids, in start order."""
    sids = []
    for i in range(api.config.max_streams):
        answer = start(api, client, deviceId=f"device-{i}")
        assert answer.status_code in (200, 201), answer.text
        sids.append(answer.json.get("sessionKey") or answer.json.get("sessionId"))
    return sids


def heartbeat_gone(api, sid, token, reason):
    """Heartbeat an ended session through /v1; assert it is gone for `reason`."""
    answer = api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))
    assert (answer.status_code, answer.json.get("reason")) == (410, reason), answer.text
    return answer


# /concurrency: start


@provokes("post", "/concurrency", 200)
def legacy_start_initiates(api):
    answer = legacy_start(api)
    assert answer.json["status"] == "initiated"
    assert "degraded" not in check_session_token(answer.json)
    return answer


@provokes("post", "/concurrency", 200)
def legacy_start_again_updates_the_same_session(api):
    first = legacy_start(api).json
    answer = legacy_start(api)
    assert (answer.json["status"], answer.json["sessionKey"]) == ("updated", first["sessionKey"])
    return answer


@provokes("post", "/concurrency", 200)
def legacy_start_with_a_user_token_and_no_user_id(api):
    client = api.with_user_tokens()
    body = {"deviceId": "tv", "streamId": "film"}
    answer = client.simulate_post("/concurrency", json=body, headers=api.bearer(api.user_token("zoe")))
    assert token_parts(answer.json["token"])[1]["sub"] == "zoe"
    return answer


@provokes("post", "/concurrency", 200)
def legacy_start_degraded_with_redis_down_in_open_mode(api):
    answer = api.store_down(on_store_error="open").simulate_post("/concurrency", json=START)
    assert answer.json["status"] == "initiated"
    assert check_session_token(answer.json)["degraded"] is True
    return answer


@provokes("post", "/concurrency", 400)
def legacy_start_with_a_number_for_an_id(api):
    answer = legacy_start(api, userId=7)
    assert answer.json.get("field") == "userId"
    return answer


@provokes("post", "/concurrency", 400)
def legacy_start_with_no_body(api):
    return api.client.simulate_post("/concurrency")


@provokes("post", "/concurrency", 400)
def legacy_start_without_user_id_or_user_tokens(api):
    answer = api.client.simulate_post("/concurrency", json={"deviceId": "tv", "streamId": "film"})
    assert answer.json.get("field") == "userId"
    return answer


@provokes("post", "/concurrency", 401)
def legacy_start_without_the_required_user_token(api):
    answer = legacy_start(api, api.with_user_tokens())
    assert "user access token" in answer.json["message"]
    return answer


@provokes("post", "/concurrency", 403)
def legacy_start_beyond_the_limit(api):
    holders = fill_to_limit(api, legacy_start)
    answer = legacy_start(api, deviceId="one-too-many")
    assert answer.json["error"] == "limit_reached"
    assert (answer.json["limit"], answer.json["scope"]) == (api.config.max_streams, "account")
    assert {s["sessionKey"] for s in answer.json["sessions"]} == set(holders)
    assert all(abs(s["started"] - time.time()) < 60 for s in answer.json["sessions"])
    return answer


@provokes("post", "/concurrency", 403)
def legacy_start_beyond_the_limit_of_the_user_tokens_plan(api):
    client = api.with_user_tokens(plan_limits={"basic": 1, "premium": 4})
    headers = api.bearer(api.user_token(plan="basic"))
    legacy_start(api, client, headers, deviceId="a")
    answer = legacy_start(api, client, headers, deviceId="b")
    assert (answer.json["limit"], answer.json["scope"]) == (1, "account")
    return answer


@provokes("post", "/concurrency", 403)
def legacy_start_for_another_user_than_the_token(api):
    answer = legacy_start(api, api.with_user_tokens(), api.bearer(api.user_token("zoe")))
    assert (answer.json["error"], answer.json.get("field")) == ("forbidden", "userId")
    return answer


@provokes("post", "/concurrency", 413)
def legacy_start_with_a_huge_body(api):
    return legacy_start(api, userId="u" * (api.config.max_body_bytes + 1))


@provokes("post", "/concurrency", 503)
def legacy_start_with_redis_down(api):
    return api.store_down().simulate_post("/concurrency", json=START)


# /concurrency: heartbeat


@provokes("put", "/concurrency", 200)
def legacy_heartbeat(api):
    started = legacy_start(api).json
    answer = api.client.simulate_put(
        "/concurrency", json={"sessionKey": started["sessionKey"], "token": started["token"]}
    )
    assert answer.json["token"] != started["token"]
    return answer


@provokes("put", "/concurrency", 200)
def legacy_heartbeat_of_a_degraded_session_with_redis_down(api):
    down = api.store_down(on_store_error="open")
    started = down.simulate_post("/concurrency", json=START).json
    answer = down.simulate_put(
        "/concurrency", json={"sessionKey": started["sessionKey"], "token": started["token"]}
    )
    assert check_session_token(answer.json)["degraded"] is True
    return answer


@provokes("put", "/concurrency", 400)
def legacy_heartbeat_without_token(api):
    answer = api.client.simulate_put("/concurrency", json={"sessionKey": "abc"})
    assert answer.json.get("field") == "token"
    return answer


@provokes("put", "/concurrency", 401)
def legacy_heartbeat_with_a_bad_token(api):
    sid, _ = api.start()
    return api.client.simulate_put("/concurrency", json={"sessionKey": sid, "token": "not-a-jwt"})


@provokes("put", "/concurrency", 410)
def legacy_heartbeat_after_stop(api):
    sid, token = api.start()
    body = {"sessionKey": sid, "token": token}
    assert api.client.simulate_delete("/concurrency", json=body).status_code == 204
    answer = api.client.simulate_put("/concurrency", json=body)
    assert answer.json["reason"] == "stopped"
    return answer


@provokes("put", "/concurrency", 410)
def legacy_heartbeat_after_expiry(api):
    short = api.with_config(session_ttl_s=1, token_leeway_s=5)
    started = short.simulate_post("/concurrency", json=START).json
    time.sleep(1.1)  # past the session's expiry, within the token's leeway
    body = {"sessionKey": started["sessionKey"], "token": started["token"]}
    answer = short.simulate_put("/concurrency", json=body)
    assert answer.json["reason"] == "expired"
    assert short.simulate_put("/concurrency", json=body).status_code == 410, "a gone session came back"
    return answer


@provokes("put", "/concurrency", 410)
def legacy_heartbeat_after_a_kick(api):
    sid, token = api.start()
    admin = api.admin()
    assert (
        admin.simulate_delete("/v1/users/ann/sessions", headers=api.bearer(ADMIN_SECRET)).status_code == 204
    )
    answer = api.client.simulate_put("/concurrency", json={"sessionKey": sid, "token": token})
    assert answer.json["reason"] == "kicked"
    return answer


@provokes("put", "/concurrency", 413)
def legacy_heartbeat_with_a_huge_body(api):
    return api.client.simulate_put("/concurrency", json={"sessionKey": "abc", "token": "t" * 5000})


@provokes("put", "/concurrency", 503)
def legacy_heartbeat_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_put("/concurrency", json={"sessionKey": sid, "token": token})


# /concurrency: stop


@provokes("delete", "/concurrency", 204)
def legacy_stop(api):
    sid, token = api.start()
    return api.client.simulate_delete("/concurrency", json={"sessionKey": sid, "token": token})


@provokes("delete", "/concurrency", 204)
def legacy_stop_twice(api):
    sid, token = api.start()
    api.client.simulate_delete("/concurrency", json={"sessionKey": sid, "token": token})
    return api.client.simulate_delete("/concurrency", json={"sessionKey": sid, "token": token})


@provokes("delete", "/concurrency", 400)
def legacy_stop_with_an_unknown_field(api):
    answer = api.client.simulate_delete(
        "/concurrency", json={"sessionKey": "a", "token": "b", "userId": "ann"}
    )
    assert answer.json.get("field") == "userId"
    return answer


@provokes("delete", "/concurrency", 401)
def legacy_stop_with_the_token_of_another_session(api):
    _, token = api.start(deviceId="a")
    sid, _ = api.start(deviceId="b")
    return api.client.simulate_delete("/concurrency", json={"sessionKey": sid, "token": token})


@provokes("delete", "/concurrency", 413)
def legacy_stop_with_a_huge_body(api):
    return api.client.simulate_delete(
        "/concurrency", body=b" " * 5000, headers={"Content-Type": "application/json"}
    )


@provokes("delete", "/concurrency", 503)
def legacy_stop_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_delete("/concurrency", json={"sessionKey": sid, "token": token})


# /v1/sessions: start


@provokes("post", "/v1/sessions", 201)
def start_creates(api):
    answer = v1_start(api)
    assert answer.headers["location"] == f"/v1/sessions/{answer.json['sessionId']}"
    assert answer.json["expiresIn"] == api.config.session_ttl_s
    assert check_session_token(answer.json)["lim"] == api.config.max_streams
    return answer


@provokes("post", "/v1/sessions", 201)
def start_with_a_user_token_takes_its_limit(api):
    client = api.with_user_tokens()
    answer = v1_start(api, client, api.bearer(api.user_token(climit=5)))
    assert check_session_token(answer.json)["lim"] == 5
    return answer


@provokes("post", "/v1/sessions", 201)
def start_at_the_limit_evicts_the_oldest(api):
    client = api.with_config(at_limit="evict-oldest")
    tokens = {}
    for i in range(api.config.max_streams):
        sid, token = api.start(client, deviceId=f"device-{i}")
        tokens[sid] = token
    answer = v1_start(api, client, deviceId="newest")
    beats = {
        sid: client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(t)) for sid, t in tokens.items()
    }
    gone = [b.json["reason"] for b in beats.values() if b.status_code == 410]
    assert gone == ["evicted"], [b.text for b in beats.values()]
    return answer


@provokes("post", "/v1/sessions", 201)
def start_degraded_with_redis_down_in_open_mode(api):
    answer = api.store_down(on_store_error="open").simulate_post("/v1/sessions", json=START)
    assert check_session_token(answer.json)["degraded"] is True
    return answer


@provokes("post", "/v1/sessions", 200)
def start_again_renews(api):
    sid, _ = api.start()
    answer = v1_start(api)
    assert answer.json["sessionId"] == sid
    return answer


@provokes("post", "/v1/sessions", 400)
def start_with_an_empty_id(api):
    answer = v1_start(api, deviceId="")
    assert answer.json.get("field") == "deviceId"
    return answer


@provokes("post", "/v1/sessions", 400)
def start_with_a_json_array(api):
    return api.client.simulate_post("/v1/sessions", body=b"[]", headers={"Content-Type": "application/json"})


@provokes("post", "/v1/sessions", 401)
def start_with_a_user_token_of_another_issuer(api):
    client = api.with_user_tokens()
    answer = v1_start(api, client, api.bearer(api.user_token(iss="https://elsewhere.example")))
    assert "issuer" in answer.json["message"].lower()
    return answer


@provokes("post", "/v1/sessions", 401)
def start_with_a_user_token_signed_by_a_stranger(api):
    client = api.with_user_tokens()
    stranger = ec.generate_private_key(ec.SECP256R1())
    return v1_start(api, client, api.bearer(api.user_token(key=stranger)))


@provokes("post", "/v1/sessions", 403)
def start_beyond_the_limit(api):
    holders = fill_to_limit(api, v1_start)
    answer = v1_start(api, deviceId="one-too-many")
    assert (answer.json["limit"], answer.json["scope"]) == (api.config.max_streams, "account")
    assert {s["sessionKey"] for s in answer.json["sessions"]} == set(holders)
    return answer


@provokes("post", "/v1/sessions", 403)
def start_beyond_the_per_stream_limit(api):
    client = api.with_config(stream_limit=1)
    sid, _ = api.start(client, deviceId="a")
    api.start(client, deviceId="b", streamId="other film")
    answer = v1_start(api, client, deviceId="c")
    assert (answer.json["limit"], answer.json["scope"]) == (1, "stream")
    assert [s["sessionKey"] for s in answer.json["sessions"]] == [sid]
    return answer


@provokes("post", "/v1/sessions", 403)
def start_beyond_the_limit_of_the_user_token(api):
    client = api.with_user_tokens()
    headers = api.bearer(api.user_token(climit=1))
    v1_start(api, client, headers, deviceId="a")
    answer = v1_start(api, client, headers, deviceId="b")
    assert (answer.json["limit"], answer.json["scope"]) == (1, "account")
    return answer


@provokes("post", "/v1/sessions", 403)
def start_for_another_user_than_the_token(api):
    answer = v1_start(api, api.with_user_tokens(), api.bearer(api.user_token("zoe")))
    assert (answer.json["error"], answer.json.get("field")) == ("forbidden", "userId")
    return answer


@provokes("post", "/v1/sessions", 413)
def start_with_a_huge_body(api):
    return v1_start(api, streamId="s" * 5000)


@provokes("post", "/v1/sessions", 503)
def start_with_redis_down(api):
    return api.store_down().simulate_post("/v1/sessions", json=START)


# /v1/sessions/{sessionId}: heartbeat


@provokes("put", "/v1/sessions/{sessionId}", 200)
def heartbeat(api):
    sid, token = api.start()
    answer = api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))
    assert answer.json["sessionId"] == sid
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 200)
def heartbeat_resumes_a_lost_session(api):
    sid, token = api.start()
    api.lose(sid)
    answer = api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))
    listed = api.admin().simulate_get("/v1/users/ann/sessions", headers=api.bearer(ADMIN_SECRET)).json
    assert [s["sessionId"] for s in listed["sessions"]] == [sid]
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 200)
def heartbeat_of_a_degraded_session_with_redis_down(api):
    down = api.store_down(on_store_error="open")
    sid, token = api.start(down)
    answer = down.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))
    assert check_session_token(answer.json)["degraded"] is True
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 400)
def heartbeat_of_an_overlong_id(api):
    _, token = api.start()
    answer = api.client.simulate_put(f"/v1/sessions/{'s' * 257}", headers=api.bearer(token))
    assert answer.json.get("field") == "sessionId"
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 401)
def heartbeat_without_authorization(api):
    sid, _ = api.start()
    return api.client.simulate_put(f"/v1/sessions/{sid}")


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_with_an_expired_token(api):
    sid, _ = api.start()
    stale = api.token(sid, int(time.time()) - 3600)
    answer = api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(stale))
    assert answer.json["reason"] == "expired"
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 401)
def heartbeat_with_a_token_from_a_foreign_key(api):
    KeyStore(str(api.tmp_path)).generate("ES256")
    sid, _ = api.start()
    forged = api.token(sid, int(time.time()), keyring=Keyring.open(str(api.tmp_path)))
    return api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(forged))


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_after_stop(api):
    sid, token = api.start()
    assert api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token)).status_code == 204
    return heartbeat_gone(api, sid, token, "stopped")


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_after_a_kick(api):
    sid, token = api.start()
    admin = api.admin()
    assert (
        admin.simulate_delete(f"/v1/users/ann/sessions/{sid}", headers=api.bearer(ADMIN_SECRET)).status_code
        == 204
    )
    return heartbeat_gone(api, sid, token, "kicked")


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_after_eviction(api):
    client = api.with_config(at_limit="evict-oldest", max_streams=1)
    sid, token = api.start(client, deviceId="first")
    api.start(client, deviceId="second")
    return heartbeat_gone(api, sid, token, "evicted")


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_of_a_lost_session_whose_token_ran_out(api):
    sid, _ = api.start()
    api.lose(sid)
    ttl_s = api.config.session_ttl_s
    stale = api.token(sid, int(time.time()) - ttl_s - 2)  # past exp, within the verifier's leeway
    return heartbeat_gone(api, sid, stale, "expired")


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_of_a_lost_session_at_the_limit(api):
    sid, token = api.start()
    api.lose(sid)
    fill_to_limit(api, v1_start)
    return heartbeat_gone(api, sid, token, "limit")


# Each reason of a 410, with a registered scenario that asserts it.
GONE_SCENARIOS = {
    "stopped": heartbeat_after_stop,
    "kicked": heartbeat_after_a_kick,
    "evicted": heartbeat_after_eviction,
    "expired": heartbeat_of_a_lost_session_whose_token_ran_out,
    "limit": heartbeat_of_a_lost_session_at_the_limit,
}


@provokes("put", "/v1/sessions/{sessionId}", 503)
def heartbeat_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))


@provokes("put", "/v1/sessions/{sessionId}", 200)
def heartbeat_of_a_normal_session_goes_on_degraded_in_open_mode(api):
    sid, token = api.start()
    return api.store_down(on_store_error="open").simulate_put(
        f"/v1/sessions/{sid}", headers=api.bearer(token)
    )


# /v1/sessions/{sessionId}: stop


@provokes("delete", "/v1/sessions/{sessionId}", 204)
def stop(api):
    sid, token = api.start()
    return api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))


@provokes("delete", "/v1/sessions/{sessionId}", 400)
def stop_of_an_overlong_id(api):
    _, token = api.start()
    answer = api.client.simulate_delete(f"/v1/sessions/{'s' * 257}", headers=api.bearer(token))
    assert answer.json.get("field") == "sessionId"
    return answer


@provokes("delete", "/v1/sessions/{sessionId}", 401)
def stop_with_the_token_of_another_session(api):
    _, token = api.start(deviceId="a")
    sid, _ = api.start(deviceId="b")
    return api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))


@provokes("delete", "/v1/sessions/{sessionId}", 503)
def stop_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))


# /v1/users/{userId}/sessions: list

USER_SESSIONS = "/v1/users/ann/sessions"


@provokes("get", "/v1/users/{userId}/sessions", 200)
def list_as_the_operator(api):
    first, _ = api.start(deviceId="a")
    second, _ = api.start(deviceId="b", streamId="other film")
    api.start(userId="bob")
    answer = api.admin().simulate_get(USER_SESSIONS, headers=api.bearer(ADMIN_SECRET))
    sessions = answer.json["sessions"]
    assert answer.json["userId"] == "ann"
    assert sorted((s["sessionId"], s["deviceId"], s["streamId"]) for s in sessions) == sorted(
        [(first, "a", "film"), (second, "b", "other film")]
    )
    assert [s["started"] for s in sessions] == sorted(s["started"] for s in sessions), "oldest first"
    for s in sessions:
        assert s["started"] <= s["lastHeartbeat"] <= answer.json["now"] < s["expires"]
        assert s["expires"] - s["lastHeartbeat"] == api.config.session_ttl_s
    return answer


@provokes("get", "/v1/users/{userId}/sessions", 200)
def list_as_the_user_themself(api):
    client = api.with_user_tokens()
    v1_start(api, client, api.bearer(api.user_token("zoe")), userId="zoe")
    answer = client.simulate_get("/v1/users/zoe/sessions", headers=api.bearer(api.user_token("zoe")))
    assert len(answer.json["sessions"]) == 1
    return answer


@provokes("get", "/v1/users/{userId}/sessions", 200)
def list_of_a_user_with_no_sessions(api):
    answer = api.admin().simulate_get("/v1/users/nobody/sessions", headers=api.bearer(ADMIN_SECRET))
    assert answer.json["sessions"] == []
    return answer


@provokes("get", "/v1/users/{userId}/sessions", 400)
def list_of_an_overlong_user_id(api):
    answer = api.admin().simulate_get(f"/v1/users/{'u' * 257}/sessions", headers=api.bearer(ADMIN_SECRET))
    assert answer.json.get("field") == "userId"
    return answer


@provokes("get", "/v1/users/{userId}/sessions", 401)
def list_without_authorization(api):
    return api.admin().simulate_get(USER_SESSIONS)


@provokes("get", "/v1/users/{userId}/sessions", 401)
def list_with_a_wrong_admin_secret(api):
    return api.admin().simulate_get(USER_SESSIONS, headers=api.bearer("guess"))


@provokes("get", "/v1/users/{userId}/sessions", 401)
def list_with_an_expired_user_token(api):
    client = api.with_user_tokens(admin_token=ADMIN_SECRET)
    expired = api.user_token(exp=int(time.time()) - 3600)
    return client.simulate_get(USER_SESSIONS, headers=api.bearer(expired))


@provokes("get", "/v1/users/{userId}/sessions", 403)
def list_when_management_is_not_configured(api):
    answer = api.client.simulate_get(USER_SESSIONS, headers=api.bearer(ADMIN_SECRET))
    assert "not enabled" in answer.json["message"]
    return answer


@provokes("get", "/v1/users/{userId}/sessions", 403)
def list_of_another_user_with_a_user_token(api):
    client = api.with_user_tokens()
    return client.simulate_get(USER_SESSIONS, headers=api.bearer(api.user_token("zoe")))


@provokes("get", "/v1/users/{userId}/sessions", 503)
def list_with_redis_down(api):
    return api.store_down(admin_token=ADMIN_SECRET).simulate_get(
        USER_SESSIONS, headers=api.bearer(ADMIN_SECRET)
    )


# /v1/users/{userId}/sessions: kick all


@provokes("delete", "/v1/users/{userId}/sessions", 204)
def kick_all_as_the_operator(api):
    started = [api.start(deviceId=f"device-{i}") for i in range(2)]
    answer = api.admin().simulate_delete(USER_SESSIONS, headers=api.bearer(ADMIN_SECRET))
    for sid, token in started:
        heartbeat_gone(api, sid, token, "kicked")
    return answer


@provokes("delete", "/v1/users/{userId}/sessions", 204)
def kick_all_as_the_user_themself(api):
    client = api.with_user_tokens()
    headers = api.bearer(api.user_token())
    started = v1_start(api, client, headers).json
    answer = client.simulate_delete(USER_SESSIONS, headers=headers)
    heartbeat_gone(api, started["sessionId"], started["token"], "kicked")
    return answer


@provokes("delete", "/v1/users/{userId}/sessions", 204)
def kick_all_of_a_user_with_no_sessions(api):
    return api.admin().simulate_delete("/v1/users/nobody/sessions", headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions", 400)
def kick_all_of_an_overlong_user_id(api):
    answer = api.admin().simulate_delete(f"/v1/users/{'u' * 257}/sessions", headers=api.bearer(ADMIN_SECRET))
    assert answer.json.get("field") == "userId"
    return answer


@provokes("delete", "/v1/users/{userId}/sessions", 401)
def kick_all_with_a_wrong_admin_secret(api):
    sid, token = api.start()
    answer = api.admin().simulate_delete(USER_SESSIONS, headers=api.bearer("guess"))
    assert api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token)).status_code == 200
    return answer


@provokes("delete", "/v1/users/{userId}/sessions", 403)
def kick_all_when_management_is_not_configured(api):
    return api.client.simulate_delete(USER_SESSIONS, headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions", 403)
def kick_all_of_another_user_with_a_user_token(api):
    client = api.with_user_tokens(admin_token=ADMIN_SECRET)
    return client.simulate_delete(USER_SESSIONS, headers=api.bearer(api.user_token("zoe")))


@provokes("delete", "/v1/users/{userId}/sessions", 503)
def kick_all_with_redis_down(api):
    down = api.store_down(admin_token=ADMIN_SECRET)
    return down.simulate_delete(USER_SESSIONS, headers=api.bearer(ADMIN_SECRET))


# /v1/users/{userId}/sessions/{sessionId}: kick one


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 204)
def kick_one_frees_its_slot_at_once(api):
    holders = fill_to_limit(api, v1_start)
    answer = api.admin().simulate_delete(f"{USER_SESSIONS}/{holders[0]}", headers=api.bearer(ADMIN_SECRET))
    assert v1_start(api, deviceId="next").status_code == 201
    return answer


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 204)
def kick_one_as_the_user_themself(api):
    client = api.with_user_tokens()
    headers = api.bearer(api.user_token())
    sid = v1_start(api, client, headers).json["sessionId"]
    return client.simulate_delete(f"{USER_SESSIONS}/{sid}", headers=headers)


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 400)
def kick_one_of_an_overlong_session_id(api):
    answer = api.admin().simulate_delete(f"{USER_SESSIONS}/{'s' * 257}", headers=api.bearer(ADMIN_SECRET))
    assert answer.json.get("field") == "sessionId"
    return answer


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 401)
def kick_one_without_authorization(api):
    sid, _ = api.start()
    return api.admin().simulate_delete(f"{USER_SESSIONS}/{sid}")


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 403)
def kick_one_when_management_is_not_configured(api):
    sid, _ = api.start()
    return api.client.simulate_delete(f"{USER_SESSIONS}/{sid}", headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 403)
def kick_one_of_another_user_with_a_user_token(api):
    sid, _ = api.start()
    client = api.with_user_tokens()
    return client.simulate_delete(f"{USER_SESSIONS}/{sid}", headers=api.bearer(api.user_token("zoe")))


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 404)
def kick_one_that_does_not_exist(api):
    return api.admin().simulate_delete(f"{USER_SESSIONS}/AAAAAAAAAAAAAAAA", headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 404)
def kick_one_that_was_stopped(api):
    sid, token = api.start()
    api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))
    return api.admin().simulate_delete(f"{USER_SESSIONS}/{sid}", headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 404)
def kick_one_of_another_user(api):
    sid, _ = api.start(userId="bob")
    return api.admin().simulate_delete(f"{USER_SESSIONS}/{sid}", headers=api.bearer(ADMIN_SECRET))


@provokes("delete", "/v1/users/{userId}/sessions/{sessionId}", 503)
def kick_one_with_redis_down(api):
    down = api.store_down(admin_token=ADMIN_SECRET)
    return down.simulate_delete(f"{USER_SESSIONS}/AAAAAAAAAAAAAAAA", headers=api.bearer(ADMIN_SECRET))


# keys and operations


@provokes("get", "/.well-known/jwks.json", 200)
def jwks(api):
    answer = api.client.simulate_get("/.well-known/jwks.json")
    assert [k["kid"] for k in answer.json["keys"]] == [api.keyring.current.signing.kid]
    return answer


@provokes("get", "/.well-known/jwks.json", 200)
def jwks_with_a_stale_etag(api):
    return api.client.simulate_get("/.well-known/jwks.json", headers={"If-None-Match": '"0123456789abcdef"'})


@provokes("get", "/.well-known/jwks.json", 304)
def jwks_with_its_etag(api):
    etag = api.client.simulate_get("/.well-known/jwks.json").headers["etag"]
    answer = api.client.simulate_get("/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert answer.headers["etag"] == etag
    return answer


@provokes("get", "/.well-known/jwks.json", 304)
def jwks_with_any_etag(api):
    return api.client.simulate_get("/.well-known/jwks.json", headers={"If-None-Match": "*"})


@provokes("get", "/health", 200)
def health(api):
    return api.client.simulate_get("/health")


@provokes("get", "/healthz", 200)
def healthz(api):
    return api.store_down().simulate_get("/healthz")


@provokes("get", "/readyz", 200)
def ready(api):
    return api.client.simulate_get("/readyz")


@provokes("get", "/readyz", 503)
def not_ready_with_redis_down(api):
    answer = api.store_down().simulate_get("/readyz")
    assert answer.json["checks"] == {"redis": False, "keys": True}
    return answer


@provokes("get", "/metrics", 200)
def metrics(api):
    fill_to_limit(api, v1_start)
    v1_start(api, deviceId="one-too-many")
    answer = api.client.simulate_get("/metrics")
    samples = dict(line.rsplit(" ", 1) for line in answer.text.splitlines() if not line.startswith("#"))
    assert samples['concurrency_operations_total{operation="start",outcome="initiated"}'] == "3.0"
    assert samples['concurrency_operations_total{operation="start",outcome="limit_reached"}'] == "1.0"
    assert samples['concurrency_events_total{event="limit_hit"}'] == "1.0"
    assert 'concurrency_request_seconds_count{method="POST",route="/v1/sessions"}' in samples
    return answer


@provokes("get", "/metrics", 200)
def metrics_with_redis_down(api):
    down = api.store_down()
    down.simulate_post("/v1/sessions", json=START)
    answer = down.simulate_get("/metrics")
    assert 'concurrency_events_total{event="store_error"} 1.0' in answer.text
    return answer


@provokes("get", "/openapi.yaml", 200)
def openapi(api):
    return api.client.simulate_get("/openapi.yaml")


@pytest.mark.parametrize(("method", "path", "status", "scenario"), CASES)
def test_answer_matches_the_document(api, method, path, status, scenario):
    answer = scenario(api)
    assert answer.status_code == status, answer.text
    check_response(method, path, answer)
    if answer.headers.get("content-type", "").startswith("application/json") and "token" in answer.json:
        check_session_token(answer.json)


def test_every_documented_status_has_a_scenario():
    provoked = {(p.values[0], p.values[1], p.values[2]) for p in CASES}
    assert provoked == documented_statuses()


def test_every_gone_reason_is_documented_and_provoked():
    """The reasons the Lua scripts can answer are the documented ones, and a scenario shows each."""
    given = set(re.findall(r"'gone', now, '(\w+)'", lua.REFRESH))
    given |= set(re.findall(r"bury\([^,]+, '(\w+)'", lua.ADMIT + lua.RELEASE + lua.KICK))
    documented = DOC["components"]["schemas"]["SessionGoneError"]["properties"]["reason"]["enum"]
    assert given == set(documented)
    assert set(GONE_SCENARIOS) == set(documented)
    registered = {p.values[3] for p in CASES if p.values[2] == 410}
    assert set(GONE_SCENARIOS.values()) <= registered


def test_degraded_expires_in_is_the_lifetime_of_its_token(api):
    down = api.store_down(on_store_error="open", degraded_ttl_s=20)
    answer = down.simulate_post("/v1/sessions", json=START)
    assert answer.status_code == 201, answer.text
    check_session_token(answer.json)


def test_every_response_carries_the_request_id_header():
    """Every documented response, shared ones included, names the X-Request-Id header."""
    responses = {
        pointer("paths", path, method, "responses", status): response
        for path, method, operation in operations()
        for status, response in operation["responses"].items()
    }
    responses.update(
        (pointer("components", "responses", name), response)
        for name, response in DOC["components"]["responses"].items()
    )
    for fragment, response in responses.items():
        response, _ = deref(response, fragment)
        header, _ = deref(response.get("headers", {}).get("X-Request-Id", {}), fragment)
        assert header == at(pointer("components", "headers", "X-Request-Id")), fragment


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("req-42", True), ("a.b_c:d/e+f=g-1", True), ("x" * 128, True), ("x" * 129, False), ("bad id", False)],
)
def test_request_id_is_echoed_when_acceptable(client, sent, echoed):
    answer = client.simulate_get("/nope", headers={"X-Request-Id": sent})
    check_component("NotFound", answer)
    if echoed:
        assert answer.headers["x-request-id"] == sent
    else:
        assert re.fullmatch(r"[0-9a-f]{16}", answer.headers["x-request-id"])


def request_schema(method, path):
    body, fragment = deref(
        DOC["paths"][path][method]["requestBody"], pointer("paths", path, method, "requestBody")
    )
    assert body["required"]
    return f"{fragment}/content/application~1json/schema"


def test_start_request_body_is_one_of_the_two_modes():
    for path in ("/concurrency", "/v1/sessions"):
        assert at(request_schema("post", path))["anyOf"] == [
            {"$ref": pointer("components", "schemas", "StartRequest")},
            {"$ref": pointer("components", "schemas", "UserTokenStartRequest")},
        ]


START_BODIES = [
    START,
    {**START, "userId": "u" * 256, "streamId": "ünï|%{x}"},
    {**START, "userId": 7},
    {**START, "deviceId": ""},
    {**START, "streamId": "s" * 257},
    {**START, "admin": True},
    {"userId": "ann", "deviceId": "tv"},
    {"deviceId": "tv", "streamId": "film"},
]


@pytest.mark.parametrize("path", ["/concurrency", "/v1/sessions"])
@pytest.mark.parametrize("body", START_BODIES)
def test_start_request_schema_agrees_with_the_app(client, path, body):
    documented = jsonschema.Draft202012Validator(
        {"$ref": schema_uri(pointer("components", "schemas", "StartRequest"))}, registry=REGISTRY
    )
    answer = client.simulate_post(path, json=body)
    assert documented.is_valid(body) == (answer.status_code in (200, 201)), answer.text


@pytest.mark.parametrize("path", ["/concurrency", "/v1/sessions"])
@pytest.mark.parametrize("body", [*START_BODIES, {"userId": "zoe", "deviceId": "tv", "streamId": "film"}])
def test_user_token_start_request_schema_agrees_with_the_app(api, path, body):
    documented = jsonschema.Draft202012Validator(
        {"$ref": schema_uri(pointer("components", "schemas", "UserTokenStartRequest"))}, registry=REGISTRY
    )
    client = api.with_user_tokens()
    answer = client.simulate_post(path, json=body, headers=api.bearer(api.user_token("u" * 256)))
    if body.get("userId") in ("ann", "zoe"):  # a valid body of another user than the token's
        assert answer.status_code == (403 if documented.is_valid(body) else 400), answer.text
    else:
        assert documented.is_valid(body) == (answer.status_code in (200, 201)), answer.text


@pytest.mark.parametrize("method", ["put", "delete"])
@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"sessionKey": "k", "token": "t"}, True),
        ({"sessionKey": "k"}, False),
        ({"sessionKey": "k", "token": ""}, False),
        ({"sessionKey": "k" * 257, "token": "t"}, False),
        ({"sessionKey": "k", "token": "t", "userId": "ann"}, False),
    ],
)
def test_session_request_schema_agrees_with_the_app(client, method, body, valid):
    documented = jsonschema.Draft202012Validator(
        {"$ref": schema_uri(request_schema(method, "/concurrency"))}, registry=REGISTRY
    )
    assert documented.is_valid(body) == valid
    answer = client.simulate_request(method.upper(), "/concurrency", json=body)
    assert answer.status_code == (401 if valid else 400), answer.text  # a valid shape reaches the token check


# -- routes -----------------------------------------------------------------------------------------


def test_document_and_app_have_the_same_operations(client):
    assert app_operations(client.app) == documented_operations()


def test_route_comparison_sees_an_undocumented_route(config, keyring, fake_redis):
    app = create_app(config, RedisStore(fake_redis, config.buckets), keyring)
    app.add_route("/v1/secret", _Resource())
    assert app_operations(app) - documented_operations() == {("/v1/secret", "get")}


class _Resource:
    def on_get(self, req, resp):
        resp.media = {}


def sample_path(path):
    return path.replace("{sessionId}", "AAAAAAAAAAAAAAAA").replace("{userId}", "ann")


@pytest.mark.parametrize("path", sorted(DOC["paths"]))
def test_undocumented_method_is_a_documented_405(client, path, fake_redis):
    answer = client.simulate_request("PATCH", sample_path(path), json={})
    assert answer.status_code == 405
    check_component("MethodNotAllowed", answer)
    allowed = set(answer.headers["allow"].split(", "))
    assert allowed == {m.upper() for m in DOC["paths"][path] if m in HTTP_METHODS} | {"OPTIONS"}
    assert fake_redis.dbsize() == 0


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/v1",
        "/v1/sessions/a/b",
        "/concurrency/x",
        "/.well-known/x",
        "/v1/users/ann",
        "/v1/users/ann/sessions/a/b",
        "/v1/users/a%2Fb/sessions",  # the router decodes %2F before matching: such a user has no route
    ],
)
def test_unknown_path_is_a_documented_404(client, path):
    answer = client.simulate_get(path)
    assert answer.status_code == 404
    check_component("NotFound", answer)


def test_internal_fault_is_the_documented_500(config, keyring):
    class Broken:
        def register_script(self, script):
            def fail(**kwargs):
                raise RuntimeError("internals")

            return fail

    client = falcon.testing.TestClient(create_app(config, RedisStore(Broken(), config.buckets), keyring))
    answer = client.simulate_post("/v1/sessions", json=START)
    assert answer.status_code == 500
    check_component("InternalError", answer)


def test_jwks_of_every_algorithm_matches_the_document(config, fake_redis, tmp_path):
    store = KeyStore(str(tmp_path))
    for alg in ("ES256", "EdDSA", "RS256"):
        store.generate(alg)
    keyring = Keyring.open(str(tmp_path))
    client = falcon.testing.TestClient(create_app(config, RedisStore(fake_redis, config.buckets), keyring))
    answer = client.simulate_get("/.well-known/jwks.json")
    assert sorted(k["alg"] for k in answer.json["keys"]) == ["ES256", "EdDSA", "RS256"]
    check_response("get", "/.well-known/jwks.json", answer)


# -- the document itself ----------------------------------------------------------------------------


def test_served_document_is_the_file(client):
    answer = client.simulate_get("/openapi.yaml")
    assert answer.status_code == 200
    assert answer.content == DOC_PATH.read_bytes()
    assert OPENAPI_PATH.resolve() == DOC_PATH


def test_document_is_openapi_3_1_with_valid_schemas():
    assert DOC["openapi"] == "3.1.0"
    assert DOC["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
    for name, schema in DOC["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            pytest.fail(f"components/schemas/{name}: {exc.message}")


def _refs(node, where="#"):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield where, node["$ref"]
        for key, value in node.items():
            yield from _refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{where}/{i}")


def test_every_ref_resolves():
    refs = list(_refs(DOC))
    assert refs
    for where, ref in refs:
        assert ref.startswith("#/"), f"{where}: external $ref {ref}"
        try:
            at(ref)
        except (KeyError, IndexError, TypeError):
            pytest.fail(f"{where}: $ref {ref} points nowhere")


def test_operations_are_named_described_and_secured_by_known_schemes():
    schemes = set(DOC["components"]["securitySchemes"])
    ids = []
    for path, item in DOC["paths"].items():
        params = [deref(p, path)[0] for p in item.get("parameters", [])]
        assert [p["name"] for p in params if p["in"] == "path"] == re.findall(r"\{([^}]*)\}", path), path
        assert "X-Request-Id" in [p["name"] for p in params if p["in"] == "header"], path
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            ids.append(operation["operationId"])
            assert operation["summary"] and operation["responses"], (method, path)
            for requirement in operation.get("security", []):
                assert set(requirement) <= schemes, (method, path)
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_each_operation_names_the_credentials_it_takes():
    secured = {
        (method, path): [sorted(requirement) for requirement in operation["security"]]
        for path, method, operation in operations()
        if "security" in operation
    }
    start = [[], ["userToken"]]  # none by default; the user's access token when user tokens are configured
    session = [["sessionToken"]]
    owner = [["adminSecret"], ["userToken"]]
    assert secured == {
        ("post", "/concurrency"): start,
        ("post", "/v1/sessions"): start,
        ("put", "/v1/sessions/{sessionId}"): session,
        ("delete", "/v1/sessions/{sessionId}"): session,
        ("get", "/v1/users/{userId}/sessions"): owner,
        ("delete", "/v1/users/{userId}/sessions"): owner,
        ("delete", "/v1/users/{userId}/sessions/{sessionId}"): owner,
    }
    assert all(s["scheme"] == "bearer" for s in DOC["components"]["securitySchemes"].values())


def test_seed_fields_and_statuses_are_kept():
    schemas = DOC["components"]["schemas"]
    assert set(schemas["StartRequest"]["required"]) == {"userId", "deviceId", "streamId"}
    assert set(schemas["ConcurrencySessionRequest"]["required"]) == {"sessionKey", "token"}
    assert set(schemas["ConcurrencyResponse"]["properties"]) == {"sessionKey", "token", "status"}
    assert schemas["ConcurrencyResponse"]["properties"]["status"]["enum"] == ["initiated", "updated"]
    for method, statuses in SEED_STATUSES.items():
        documented = {int(s) for s in DOC["paths"]["/concurrency"][method]["responses"]}
        assert statuses <= documented, method
