"""docs/openapi.yaml against the app: the same routes, and every answer documented and valid."""

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
import pytest
import referencing
import yaml
from referencing.jsonschema import DRAFT202012

from api.app import OPENAPI_PATH, create_app
from api.store import RedisStore, Session, connect
from keys.keyring import Keyring
from keys.store import KeyStore
from keys.tokens import Tokens

DOC_PATH = pathlib.Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
DOC = yaml.safe_load(DOC_PATH.read_text())
DOC_URI = "urn:concurrency-service:openapi"
REGISTRY = referencing.Registry().with_resource(DOC_URI, DRAFT202012.create_resource(DOC))
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
START = {"userId": "ann", "deviceId": "tv", "streamId": "film"}
# The statuses of /concurrency in the seed's Swagger (seed/service.yml), less its 500.
SEED_STATUSES = {"post": {200, 400, 403}, "put": {200, 400}, "delete": {204, 400}}


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
    """Follow `$ref`s of a response or header object; return the object and where it lives."""
    while "$ref" in node:
        fragment = node["$ref"]
        node = at(fragment)
    return node, fragment


def validate(instance, schema_fragment):
    """Check `instance` against the schema at `schema_fragment`, refs resolved in the document."""
    ref = DOC_URI + urllib.parse.quote(schema_fragment, safe="#/~")
    validator = jsonschema.Draft202012Validator({"$ref": ref}, registry=REGISTRY)
    errors = [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]
    assert not errors, f"{instance!r} does not match {schema_fragment}: {errors}"


def template_shape(path):
    """Return a path template with its parameter names dropped: `/a/{id}` -> `/a/{}`."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def documented_operations():
    return {
        (template_shape(path), method)
        for path, item in DOC["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def documented_statuses():
    return {
        (method, path, int(status))
        for path, item in DOC["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
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
        header, header_at = deref(header, f"{fragment}/headers/{name}")
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
    body = json.loads(answer.content) if media.endswith("json") else answer.text
    validate(body, schema_at)


def check_component(name, answer):
    """Assert the answer matches the response `#/components/responses/<name>`."""
    fragment = pointer("components", "responses", name)
    check_against(at(fragment), fragment, answer)


# -- the app, working and broken --------------------------------------------------------------------


class Api:
    """The app over fakeredis, and variants of it sharing the same keys."""

    def __init__(self, client, config, keyring, redis_client, tmp_path):
        self.client = client
        self.tmp_path = tmp_path
        self.config = config
        self.keyring = keyring
        self.redis = redis_client

    def start(self, **fields):
        """Start a session through /v1/sessions; return (sessionId, token)."""
        answer = self.client.simulate_post("/v1/sessions", json={**START, **fields})
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

    def store_down(self):
        """Return a client whose Redis refuses connections, built as production builds its client."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = dataclasses.replace(
            self.config, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.1
        )
        store = RedisStore(connect(config), config.buckets)
        return falcon.testing.TestClient(create_app(config, store, self.keyring))

    def token(self, sid, now_s, keyring=None, user="ann"):
        """Sign a token for session `sid` as of `now_s`, with this app's or another keyring."""
        tokens = Tokens(keyring or self.keyring, self.config.issuer, self.config.audience)
        return tokens.sign(Session(user, sid, "tv", "film"), now_s, self.config.session_ttl_s)


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


def legacy_start(api, **fields):
    return api.client.simulate_post("/concurrency", json={**START, **fields})


def fill_to_limit(api, start):
    """Start as many sessions as allowed on distinct devices; return their ids."""
    sids = set()
    for i in range(api.config.max_streams):
        answer = start(api, deviceId=f"device-{i}")
        assert answer.status_code in (200, 201), answer.text
        sids.add(answer.json.get("sessionKey") or answer.json.get("sessionId"))
    return sids


def v1_start(api, **fields):
    return api.client.simulate_post("/v1/sessions", json={**START, **fields})


@provokes("post", "/concurrency", 200)
def legacy_start_initiates(api):
    answer = legacy_start(api)
    assert answer.json["status"] == "initiated"
    return answer


@provokes("post", "/concurrency", 200)
def legacy_start_again_updates_the_same_session(api):
    first = legacy_start(api).json
    answer = legacy_start(api)
    assert (answer.json["status"], answer.json["sessionKey"]) == ("updated", first["sessionKey"])
    return answer


@provokes("post", "/concurrency", 400)
def legacy_start_with_a_number_for_an_id(api):
    answer = legacy_start(api, userId=7)
    assert answer.json.get("field") == "userId"
    return answer


@provokes("post", "/concurrency", 400)
def legacy_start_with_no_body(api):
    return api.client.simulate_post("/concurrency")


@provokes("post", "/concurrency", 403)
def legacy_start_beyond_the_limit(api):
    holders = fill_to_limit(api, legacy_start)
    answer = legacy_start(api, deviceId="one-too-many")
    assert {s["sessionKey"] for s in answer.json["sessions"]} == holders
    assert all(abs(s["started"] - time.time()) < 60 for s in answer.json["sessions"])
    return answer


@provokes("post", "/concurrency", 413)
def legacy_start_with_a_huge_body(api):
    return legacy_start(api, userId="u" * (api.config.max_body_bytes + 1))


@provokes("post", "/concurrency", 503)
def legacy_start_with_redis_down(api):
    return api.store_down().simulate_post("/concurrency", json=START)


@provokes("put", "/concurrency", 200)
def legacy_heartbeat(api):
    started = legacy_start(api).json
    answer = api.client.simulate_put(
        "/concurrency", json={"sessionKey": started["sessionKey"], "token": started["token"]}
    )
    assert answer.json["token"] != started["token"]
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
    return api.client.simulate_put("/concurrency", json=body)


@provokes("put", "/concurrency", 410)
def legacy_heartbeat_after_expiry(api):
    short = api.with_config(session_ttl_s=1, token_leeway_s=5)
    started = short.simulate_post("/concurrency", json=START).json
    time.sleep(1.1)  # past the session's expiry, within the token's leeway
    body = {"sessionKey": started["sessionKey"], "token": started["token"]}
    answer = short.simulate_put("/concurrency", json=body)
    assert short.simulate_put("/concurrency", json=body).status_code == 410, "a gone session came back"
    return answer


@provokes("put", "/concurrency", 413)
def legacy_heartbeat_with_a_huge_body(api):
    return api.client.simulate_put("/concurrency", json={"sessionKey": "abc", "token": "t" * 5000})


@provokes("put", "/concurrency", 503)
def legacy_heartbeat_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_put("/concurrency", json={"sessionKey": sid, "token": token})


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


@provokes("post", "/v1/sessions", 201)
def start_creates(api):
    answer = v1_start(api)
    assert answer.headers["location"] == f"/v1/sessions/{answer.json['sessionId']}"
    assert answer.json["expiresIn"] == api.config.session_ttl_s
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


@provokes("post", "/v1/sessions", 403)
def start_beyond_the_limit(api):
    holders = fill_to_limit(api, v1_start)
    answer = v1_start(api, deviceId="one-too-many")
    assert {s["sessionKey"] for s in answer.json["sessions"]} == holders
    return answer


@provokes("post", "/v1/sessions", 413)
def start_with_a_huge_body(api):
    return v1_start(api, streamId="s" * 5000)


@provokes("post", "/v1/sessions", 503)
def start_with_redis_down(api):
    return api.store_down().simulate_post("/v1/sessions", json=START)


@provokes("put", "/v1/sessions/{sessionId}", 200)
def heartbeat(api):
    sid, token = api.start()
    answer = api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))
    assert answer.json["sessionId"] == sid
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 400)
def heartbeat_of_an_overlong_id(api):
    _, token = api.start()
    return api.client.simulate_put(f"/v1/sessions/{'s' * 257}", headers=api.bearer(token))


@provokes("put", "/v1/sessions/{sessionId}", 401)
def heartbeat_without_authorization(api):
    sid, _ = api.start()
    return api.client.simulate_put(f"/v1/sessions/{sid}")


@provokes("put", "/v1/sessions/{sessionId}", 401)
def heartbeat_with_an_expired_token(api):
    sid, _ = api.start()
    stale = api.token(sid, int(time.time()) - 3600)
    answer = api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(stale))
    assert "expired" in answer.json["message"]
    return answer


@provokes("put", "/v1/sessions/{sessionId}", 401)
def heartbeat_with_a_token_from_a_foreign_key(api):
    KeyStore(str(api.tmp_path)).generate("ES256")
    sid, _ = api.start()
    forged = api.token(sid, int(time.time()), keyring=Keyring.from_dir(str(api.tmp_path)))
    return api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(forged))


@provokes("put", "/v1/sessions/{sessionId}", 410)
def heartbeat_after_stop(api):
    sid, token = api.start()
    assert api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token)).status_code == 204
    return api.client.simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))


@provokes("put", "/v1/sessions/{sessionId}", 503)
def heartbeat_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_put(f"/v1/sessions/{sid}", headers=api.bearer(token))


@provokes("delete", "/v1/sessions/{sessionId}", 204)
def stop(api):
    sid, token = api.start()
    return api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))


@provokes("delete", "/v1/sessions/{sessionId}", 400)
def stop_of_an_overlong_id(api):
    _, token = api.start()
    return api.client.simulate_delete(f"/v1/sessions/{'s' * 257}", headers=api.bearer(token))


@provokes("delete", "/v1/sessions/{sessionId}", 401)
def stop_with_the_token_of_another_session(api):
    _, token = api.start(deviceId="a")
    sid, _ = api.start(deviceId="b")
    return api.client.simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))


@provokes("delete", "/v1/sessions/{sessionId}", 503)
def stop_with_redis_down(api):
    sid, token = api.start()
    return api.store_down().simulate_delete(f"/v1/sessions/{sid}", headers=api.bearer(token))


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


@provokes("get", "/openapi.yaml", 200)
def openapi(api):
    return api.client.simulate_get("/openapi.yaml")


@pytest.mark.parametrize(("method", "path", "status", "scenario"), CASES)
def test_answer_matches_the_document(api, method, path, status, scenario):
    answer = scenario(api)
    assert answer.status_code == status, answer.text
    check_response(method, path, answer)


def test_every_documented_status_has_a_scenario():
    provoked = {(p.values[0], p.values[1], p.values[2]) for p in CASES}
    assert provoked == documented_statuses()


def request_schema(method, path):
    fragment = pointer("paths", path, method, "requestBody", "content", "application/json", "schema")
    return DOC_URI + urllib.parse.quote(fragment, safe="#/~")


@pytest.mark.parametrize("path", ["/concurrency", "/v1/sessions"])
@pytest.mark.parametrize(
    "body",
    [
        START,
        {**START, "userId": "u" * 256, "streamId": "ünï|%{x}"},
        {**START, "userId": 7},
        {**START, "deviceId": ""},
        {**START, "streamId": "s" * 257},
        {**START, "admin": True},
        {"userId": "ann", "deviceId": "tv"},
    ],
)
def test_start_request_schema_agrees_with_the_app(client, path, body):
    documented = jsonschema.Draft202012Validator({"$ref": request_schema("post", path)}, registry=REGISTRY)
    answer = client.simulate_post(path, json=body)
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
        {"$ref": request_schema(method, "/concurrency")}, registry=REGISTRY
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
    return path.replace("{sessionId}", "AAAAAAAAAAAAAAAA")


@pytest.mark.parametrize("path", sorted(DOC["paths"]))
def test_undocumented_method_is_a_documented_405(client, path, fake_redis):
    answer = client.simulate_request("PATCH", sample_path(path), json={})
    assert answer.status_code == 405
    check_component("MethodNotAllowed", answer)
    allowed = set(answer.headers["allow"].split(", "))
    assert allowed == {m.upper() for m in DOC["paths"][path] if m in HTTP_METHODS} | {"OPTIONS"}
    assert fake_redis.dbsize() == 0


@pytest.mark.parametrize("path", ["/nope", "/v1", "/v1/sessions/a/b", "/concurrency/x", "/.well-known/x"])
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
    keyring = Keyring.from_dir(str(tmp_path))
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
        params = [p["name"] for p in item.get("parameters", []) if p["in"] == "path"]
        assert params == re.findall(r"\{([^}]*)\}", path), path
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            ids.append(operation["operationId"])
            assert operation["summary"] and operation["responses"], (method, path)
            for requirement in operation.get("security", []):
                assert set(requirement) <= schemes, (method, path)
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_bearer_operations_are_exactly_the_session_token_ones():
    secured = {
        (method, path)
        for path, item in DOC["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS and operation.get("security")
    }
    assert secured == {("put", "/v1/sessions/{sessionId}"), ("delete", "/v1/sessions/{sessionId}")}
    assert DOC["components"]["securitySchemes"]["sessionToken"]["scheme"] == "bearer"


def test_seed_fields_and_statuses_are_kept():
    schemas = DOC["components"]["schemas"]
    assert set(schemas["StartRequest"]["required"]) == {"userId", "deviceId", "streamId"}
    assert set(schemas["ConcurrencySessionRequest"]["required"]) == {"sessionKey", "token"}
    assert set(schemas["ConcurrencyResponse"]["properties"]) == {"sessionKey", "token", "status"}
    assert schemas["ConcurrencyResponse"]["properties"]["status"]["enum"] == ["initiated", "updated"]
    for method, statuses in SEED_STATUSES.items():
        documented = {int(s) for s in DOC["paths"]["/concurrency"][method]["responses"]}
        assert statuses <= documented, method
