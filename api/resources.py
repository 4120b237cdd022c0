"""HTTP resources: small nouns that parse input, call the domain and shape the answer."""

import falcon

from keys.tokens import MAX_TOKEN_CHARS

from .errors import BadRequest, NotFound
from .requests import bearer_token, read_json, require_strings


class LegacyConcurrency:
    """`/concurrency`: the seed's contract, kept field for field."""

    def __init__(self, concurrency, identity, config):
        self._concurrency = concurrency
        self._identity = identity
        self._config = config
        self._session_fields = {"sessionKey": config.max_id_chars, "token": MAX_TOKEN_CHARS}

    def on_post(self, req, resp):
        resp.media = _legacy_body(_start(req, self._concurrency, self._identity, self._config))

    def on_put(self, req, resp):
        sid, token = self._fields(req)
        resp.media = _legacy_body(self._concurrency.heartbeat(token, sid))

    def on_delete(self, req, resp):
        sid, token = self._fields(req)
        self._concurrency.stop(token, sid)
        resp.status = falcon.HTTP_204

    def _fields(self, req):
        return require_strings(read_json(req, self._config.max_body_bytes), self._session_fields)


class Sessions:
    """`/v1/sessions`: start a session."""

    def __init__(self, concurrency, identity, config):
        self._concurrency = concurrency
        self._identity = identity
        self._config = config

    def on_post(self, req, resp):
        grant = _start(req, self._concurrency, self._identity, self._config)
        if grant.status == "initiated":
            resp.status = falcon.HTTP_201
            resp.location = f"/v1/sessions/{grant.session.sid}"
        resp.media = _session_body(grant)


class Session:
    """`/v1/sessions/{sessionId}`: heartbeat and stop, with the session token as Bearer."""

    def __init__(self, concurrency, config):
        self._concurrency = concurrency
        self._config = config

    def on_put(self, req, resp, session_id):
        _check_id("sessionId", session_id, self._config)
        resp.media = _session_body(self._concurrency.heartbeat(bearer_token(req), session_id))

    def on_delete(self, req, resp, session_id):
        _check_id("sessionId", session_id, self._config)
        self._concurrency.stop(bearer_token(req), session_id)
        resp.status = falcon.HTTP_204


class UserSessions:
    """`/v1/users/{userId}/sessions`: the account owner's view; list or stop all."""

    def __init__(self, concurrency, identity, config):
        self._concurrency = concurrency
        self._identity = identity
        self._config = config

    def on_get(self, req, resp, user_id):
        self._authorize(req, user_id)
        now_ms, sessions = self._concurrency.sessions(user_id)
        ttl_ms = self._concurrency.ttl_ms
        resp.media = {
            "userId": user_id,
            "now": now_ms // 1000,
            "sessions": [
                {
                    "sessionId": s.sid,
                    "deviceId": s.device,
                    "streamId": s.stream,
                    "started": s.started_ms // 1000,
                    "lastHeartbeat": (s.expires_ms - ttl_ms) // 1000,
                    "expires": s.expires_ms // 1000,
                }
                for s in sessions
            ],
        }

    def on_delete(self, req, resp, user_id):
        self._authorize(req, user_id)
        self._concurrency.kick(user_id)
        resp.status = falcon.HTTP_204

    def on_delete_one(self, req, resp, user_id, session_id):
        self._authorize(req, user_id)
        _check_id("sessionId", session_id, self._config)
        if not self._concurrency.kick(user_id, session_id):
            raise NotFound(f"user {user_id!r} has no live session {session_id!r}")
        resp.status = falcon.HTTP_204

    def _authorize(self, req, user_id):
        _check_id("userId", user_id, self._config)
        self._identity.authorize_owner(req, user_id)


class Jwks:
    """`/.well-known/jwks.json`: the public keys that verify our tokens, cacheable."""

    def __init__(self, keyring, max_age_s):
        self._keyring = keyring
        self._cache_control = f"public, max-age={max_age_s}"

    def on_get(self, req, resp):
        keys = self._keyring.current
        resp.cache_control = [self._cache_control]
        resp.etag = f'"{keys.etag}"'
        if req.if_none_match and any(tag in ("*", keys.etag) for tag in req.if_none_match):
            resp.status = falcon.HTTP_304
            return
        resp.content_type = "application/jwk-set+json"
        resp.data = keys.jwks_body


class Health:
    """`/health` and `/healthz`: the process answers."""

    def on_get(self, req, resp):
        resp.media = {"status": "ok"}


class Ready:
    """`/readyz`: Redis answers and a signing key is loaded."""

    def __init__(self, store, keyring):
        self._store = store
        self._keyring = keyring

    def on_get(self, req, resp):
        checks = {
            "redis": self._store.ping(),
            "keys": self._keyring.current.signing is not None,
        }
        ready = all(checks.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {"status": "ready" if ready else "not ready", "checks": checks}


class OpenApi:
    """`/openapi.yaml`: the contract this service follows."""

    def __init__(self, document):
        self._document = document

    def on_get(self, req, resp):
        resp.content_type = "application/yaml"
        resp.data = self._document


def _start(req, concurrency, identity, config):
    """Read a start request, decide who the user is and what they may play, and start the session."""
    body = read_json(req, config.max_body_bytes)
    fields = dict.fromkeys(("userId", "deviceId", "streamId"), config.max_id_chars)
    body_user, device, stream = require_strings(body, fields, optional=("userId",) * identity.required)
    user, policy = identity.start_user(req, body_user)
    return concurrency.start(user, device, stream, policy)


def _legacy_body(grant):
    return {"sessionKey": grant.session.sid, "token": grant.token, "status": grant.status}


def _session_body(grant):
    return {
        "sessionId": grant.session.sid,
        "token": grant.token,
        "status": grant.status,
        "expiresIn": grant.ttl_s,
    }


def _check_id(name, value, config):
    if len(value) > config.max_id_chars:
        raise BadRequest(f"{name} is longer than {config.max_id_chars} characters", field=name)
