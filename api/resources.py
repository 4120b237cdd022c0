"""HTTP resources: small nouns that parse input, call the domain and shape the answer."""

import falcon

from keys.keyring import Keyring

from .concurrency import Concurrency
from .config import MAX_TOKEN_CHARS, Config
from .errors import BadRequest, NotFound
from .identity import Identity
from .requests import bearer_token, read_json, require_strings
from .responses import legacy_body, listing_body, session_body
from .sessions import Grant
from .store import RedisStore

OPTIONAL_START_FIELDS = ("userId", "token")  # userId: required unless a user token names the user


class Starts:
    """Read a start request, decide who the user is and what they may play, and start the session."""

    def __init__(self, concurrency: Concurrency, identity: Identity, config: Config) -> None:
        self._concurrency = concurrency
        self._identity = identity
        self._max_body_bytes = config.max_body_bytes
        self._fields = dict.fromkeys(("userId", "deviceId", "streamId"), config.max_id_chars)
        self._fields["token"] = MAX_TOKEN_CHARS

    def __call__(self, req: falcon.Request) -> Grant:
        fields = require_strings(read_json(req, self._max_body_bytes), self._fields, OPTIONAL_START_FIELDS)
        user, limits, caller = self._identity.start_user(
            req.get_header("Authorization"), fields.get("userId")
        )
        req.context.caller = caller.name
        device, stream = fields["deviceId"], fields["streamId"]
        return self._concurrency.start(user, device, stream, limits, caller.vouched, fields.get("token"))


class LegacyConcurrency:
    """`/concurrency`: the seed's contract, kept field for field."""

    def __init__(self, concurrency: Concurrency, start: Starts, config: Config) -> None:
        self._concurrency = concurrency
        self._start = start
        self._max_body_bytes = config.max_body_bytes
        self._session_fields = {"sessionKey": config.max_id_chars, "token": MAX_TOKEN_CHARS}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = legacy_body(self._start(req))

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        sid, token = self._fields(req)
        resp.media = legacy_body(self._concurrency.heartbeat(token, sid))

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        sid, token = self._fields(req)
        self._concurrency.stop(token, sid)
        resp.status = falcon.HTTP_204

    def _fields(self, req: falcon.Request) -> tuple[str, str]:
        fields = require_strings(read_json(req, self._max_body_bytes), self._session_fields)
        return fields["sessionKey"], fields["token"]


class Sessions:
    """`/v1/sessions`: start a session."""

    def __init__(self, start: Starts) -> None:
        self._start = start

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        grant = self._start(req)
        if grant.status == "initiated":
            resp.status = falcon.HTTP_201
            resp.location = f"/v1/sessions/{grant.session.sid}"
        resp.media = session_body(grant)


class SessionItem:
    """`/v1/sessions/{sessionId}`: heartbeat and stop, with the session token as Bearer."""

    def __init__(self, concurrency: Concurrency, config: Config) -> None:
        self._concurrency = concurrency
        self._max_id_chars = config.max_id_chars

    def on_put(self, req: falcon.Request, resp: falcon.Response, session_id: str) -> None:
        _check_id("sessionId", session_id, self._max_id_chars)
        resp.media = session_body(self._concurrency.heartbeat(_session_token(req), session_id))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, session_id: str) -> None:
        _check_id("sessionId", session_id, self._max_id_chars)
        self._concurrency.stop(_session_token(req), session_id)
        resp.status = falcon.HTTP_204


class UserSessions:
    """`/v1/users/{userId}/sessions`: the account owner's view; list or stop all."""

    def __init__(self, concurrency: Concurrency, identity: Identity, config: Config) -> None:
        self._concurrency = concurrency
        self._identity = identity
        self._max_id_chars = config.max_id_chars

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        self._authorize(req, user_id)
        now_ms, sessions = self._concurrency.sessions(user_id)
        resp.media = listing_body(user_id, now_ms, sessions, self._concurrency.ttl_ms)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        self._authorize(req, user_id)
        self._concurrency.kick(user_id)
        resp.status = falcon.HTTP_204

    def on_delete_one(
        self, req: falcon.Request, resp: falcon.Response, user_id: str, session_id: str
    ) -> None:
        self._authorize(req, user_id)
        _check_id("sessionId", session_id, self._max_id_chars)
        if not self._concurrency.kick(user_id, session_id):
            raise NotFound(f"user {user_id!r} has no live session {session_id!r}")
        resp.status = falcon.HTTP_204

    def _authorize(self, req: falcon.Request, user_id: str) -> None:
        _check_id("userId", user_id, self._max_id_chars)
        req.context.caller = self._identity.authorize_owner(req.get_header("Authorization"), user_id).name


class Jwks:
    """`/.well-known/jwks.json`: the public keys that verify our tokens, cacheable."""

    def __init__(self, keyring: Keyring, max_age_s: int) -> None:
        self._keyring = keyring
        self._cache_control = f"public, max-age={max_age_s}"

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
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

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Ready:
    """`/readyz`: Redis answers and a signing key is loaded; and who may act for a user here."""

    def __init__(self, store: RedisStore, keyring: Keyring, caller_modes: tuple[str, ...]) -> None:
        self._store = store
        self._keyring = keyring
        self._caller_modes = caller_modes

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks = {
            "redis": self._store.ping(),
            "keys": self._keyring.current.signing is not None,
        }
        ready = all(checks.values())
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        resp.media = {
            "status": "ready" if ready else "not ready",
            "checks": checks,
            "callers": list(self._caller_modes),
        }


class OpenApi:
    """`/openapi.yaml`: the contract this service follows."""

    def __init__(self, document: bytes) -> None:
        self._document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "application/yaml"
        resp.data = self._document


def _session_token(req: falcon.Request) -> str:
    return bearer_token(req.get_header("Authorization"))


def _check_id(name: str, value: str, max_chars: int) -> None:
    if len(value) > max_chars:
        raise BadRequest(f"{name} is longer than {max_chars} characters", field=name)
