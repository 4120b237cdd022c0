"""What players and operators do over HTTP, and how tests read the answers: shared by every HTTP test."""

import base64
import collections
import json
import uuid

import jwt
from prometheus_client.parser import text_string_to_metric_families

from api.config import Config

DEFAULTS = Config()
JWKS_PATH = "/.well-known/jwks.json"


def new_user(prefix="user"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def basic(name, secret):
    """Return the Authorization header of a trusted caller's credential."""
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()}


CALLER_NAME, CALLER_SECRET = "playback-api", "playback-api-secret-" + "s" * 8
CALLER = basic(CALLER_NAME, CALLER_SECRET)  # the trusted caller of the `trusted_server` fixture


# --- the native API -------------------------------------------------------------------------------


def start(
    server, token=None, device="tv", stream="stream-1", user=None, path="/v1/sessions", headers=None, **extra
):
    """Start a session; `token` is the user access token (user-token mode), `user` the body's userId."""
    body = {"deviceId": device, "streamId": stream, **extra}
    if user is not None:
        body["userId"] = user
    return server.request("POST", path, body, {**(bearer(token) if token else {}), **(headers or {})})


def admitted(answer):
    """Return (sessionId, token) of a start that must have been admitted."""
    assert answer.status in (200, 201), answer.body
    body = answer.json()
    return body["sessionId"], body["token"]


def heartbeat(server, sid, token):
    return server.request("PUT", f"/v1/sessions/{sid}", headers=bearer(token))


def stop(server, sid, token):
    return server.request("DELETE", f"/v1/sessions/{sid}", headers=bearer(token))


# --- the seed's /concurrency ----------------------------------------------------------------------


def legacy_start(server, user, device, stream="stream-1", path="/concurrency", headers=None):
    return server.request("POST", path, {"userId": user, "deviceId": device, "streamId": stream}, headers)


def legacy_started(server, user, device, stream="stream-1"):
    """Start a session that must be admitted; return its (sessionKey, token)."""
    answer = legacy_start(server, user, device, stream)
    assert answer.status == 200, answer.body
    body = answer.json()
    return body["sessionKey"], body["token"]


def legacy_heartbeat(server, sid, token):
    return server.request("PUT", "/concurrency", {"sessionKey": sid, "token": token})


def legacy_stop(server, sid, token):
    return server.request("DELETE", "/concurrency", {"sessionKey": sid, "token": token})


# --- reading answers ------------------------------------------------------------------------------


def assert_error(answer, status, code=None):
    """Assert a JSON error answer with `status` (and `code`); return its body."""
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    if code is not None:
        assert body["error"] == code, body
    return body


def assert_gone(answer, reason):
    body = assert_error(answer, 410, "session_gone")
    assert body["reason"] == reason, body


def assert_unauthorized(answer):
    assert_error(answer, 401, "invalid_token")
    assert answer.headers["www-authenticate"].startswith("Bearer")


def jwks(server):
    answer = server.request("GET", JWKS_PATH)
    assert answer.status == 200, answer.body
    return answer.json()


def session_claims(server, token, leeway=0):
    """Verify a session token with the published JWKS alone, as a CDN would; return its claims."""
    key_set = jwt.PyJWKSet.from_dict(jwks(server))
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in key_set.keys if k.key_id == kid)
    return jwt.decode(
        token,
        key,
        algorithms=[key.algorithm_name],
        audience=DEFAULTS.audience,
        issuer=DEFAULTS.issuer,
        leeway=leeway,
        options={"require": ["iss", "aud", "sub", "sid", "iat", "exp", "jti"]},
    )


def unverified_claims(token):
    return jwt.decode(token, options={"verify_signature": False})


def metric_values(server):
    """Return {(sample name, labels): value} from the service's /metrics."""
    answer = server.request("GET", "/metrics")
    assert answer.status == 200, answer.body
    values = collections.Counter()
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] += sample.value
    return values


def counted(before, after, name, **labels):
    """Return how much the sample `name` with exactly `labels` grew between two metric_values."""
    key = (name, tuple(sorted(labels.items())))
    return after[key] - before[key]


def log_entries(server):
    """Return the JSON log lines the service has written so far."""
    entries = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries
