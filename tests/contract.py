"""docs/openapi.yaml for the contract tests: reading it, validating answers, and the app under test."""

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
import referencing
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from layout import user_key
from referencing.jsonschema import DRAFT202012

from api.app import create_app
from api.connection import connect
from api.sessions import Session
from api.store import RedisStore
from api.tokens import SessionTokens

DOC_PATH = pathlib.Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
DOC = yaml.safe_load(DOC_PATH.read_text())
DOC_URI = "urn:concurrency-service:openapi"
REGISTRY = referencing.Registry().with_resource(DOC_URI, DRAFT202012.create_resource(DOC))
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
START = {"userId": "ann", "deviceId": "tv", "streamId": "film"}
# The statuses of /concurrency in the seed's Swagger (seed/service.yml), less its 500.
SEED_STATUSES = {"post": {200, 400, 403}, "put": {200, 400}, "delete": {204, 400}}
ADMIN_SECRET = "s3cret"
CALLER_SECRET = "playback-api-" + "s" * 12
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
        return falcon.testing.TestClient(create_app(config, RedisStore(self.redis), self.keyring))

    def with_callers(self, **changes):
        """Return a client that takes the trusted caller `playback-api`."""
        return self.with_config(callers=(("playback-api", CALLER_SECRET),), **changes)

    def caller(self, secret=None):
        """Return the Authorization header of the trusted caller."""
        credential = base64.b64encode(f"playback-api:{secret or CALLER_SECRET}".encode()).decode()
        return {"Authorization": f"Basic {credential}"}

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
        store = RedisStore(connect(config))
        return falcon.testing.TestClient(create_app(config, store, self.keyring))

    def lose(self, sid, user="ann"):
        """Drop a session's Redis entry, as a failover or flush would."""
        assert self.redis.hdel(user_key(user), sid) == 1

    def token(self, sid, now_s, keyring=None, user="ann"):
        """Sign a token for session `sid` as of `now_s`, with this app's or another keyring."""
        tokens = SessionTokens(keyring or self.keyring, self.config.issuer, self.config.audience)
        session = Session(user, sid, "tv", "film")
        return tokens.sign(session, now_s, self.config.session_ttl_s, {"lim": self.config.max_streams})
