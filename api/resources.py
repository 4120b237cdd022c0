"""HTTP resources: small nouns that parse input, call the domain and shape the answer."""

from collections.abc import Coroutine
from typing import Any

import falcon

from keys.keyring import Keyring

from . import shutdown, sync
from .concurrency import Concurrency
from .config import Config
from .errors import BadRequest, NotFound
from .identity import Identity
from .playback import LEGACY, NATIVE, Answer, Playback, Request
from .requests import read_body
from .responses import listing_body
from .store import RedisStore


class LegacyConcurrency:
    """`/concurrency`: the seed's contract, kept field for field."""

    def __init__(self, playback: Playback, config: Config) -> None:
        self._playback = playback
        self._max_body_bytes = config.max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        answer(req, resp, self._playback.start(LEGACY, _with_body(req, self._max_body_bytes)))

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        answer(req, resp, self._playback.heartbeat(None, _with_body(req, self._max_body_bytes)))

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        answer(req, resp, self._playback.stop(None, _with_body(req, self._max_body_bytes)))


class Sessions:
    """`/v1/sessions`: start a session."""

    def __init__(self, playback: Playback, config: Config) -> None:
        self._playback = playback
        self._max_body_bytes = config.max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        answer(req, resp, self._playback.start(NATIVE, _with_body(req, self._max_body_bytes)))


class SessionItem:
    """`/v1/sessions/{sessionId}`: heartbeat and stop, with the session token as Bearer.

    A body is not used, but it is read within the limit, as the HTTP server's front reads it (else 413)."""

    def __init__(self, playback: Playback, config: Config) -> None:
        self._playback = playback
        self._max_body_bytes = config.max_body_bytes

    def on_put(self, req: falcon.Request, resp: falcon.Response, session_id: str) -> None:
        answer(req, resp, self._playback.heartbeat(session_id, _with_body(req, self._max_body_bytes)))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, session_id: str) -> None:
        answer(req, resp, self._playback.stop(session_id, _with_body(req, self._max_body_bytes)))


def _with_body(req: falcon.Request, max_bytes: int) -> Request:
    return Request(req.get_header("Authorization"), req.content_type, read_body(req, max_bytes))


def answer(req: falcon.Request, resp: falcon.Response, call: Coroutine[Any, Any, Answer]) -> None:
    """Run a player call on this thread and put its Answer into the response."""
    result = sync.run(call)
    resp.status = result.status
    if result.media is not None:
        resp.media = result.media
    for name, value in result.headers:
        resp.set_header(name, value)
    if result.caller:
        req.context.caller = result.caller


class UserSessions:
    """`/v1/users/{userId}/sessions`: the account owner's view; list or stop all."""

    def __init__(self, concurrency: Concurrency, identity: Identity, config: Config) -> None:
        self._concurrency = concurrency
        self._identity = identity
        self._max_id_chars = config.max_id_chars

    def on_get(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        self._authorize(req, user_id)
        now_ms, sessions = sync.run(self._concurrency.sessions(user_id))
        resp.media = listing_body(user_id, now_ms, sessions, self._concurrency.ttl_ms)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, user_id: str) -> None:
        self._authorize(req, user_id)
        sync.run(self._concurrency.kick(user_id))
        resp.status = falcon.HTTP_204

    def on_delete_one(
        self, req: falcon.Request, resp: falcon.Response, user_id: str, session_id: str
    ) -> None:
        self._authorize(req, user_id)
        _check_id("sessionId", session_id, self._max_id_chars)
        if not sync.run(self._concurrency.kick(user_id, session_id)):
            raise NotFound(f"user {user_id!r} has no live session {session_id!r}")
        resp.status = falcon.HTTP_204

    def _authorize(self, req: falcon.Request, user_id: str) -> None:
        req.context.caller = self._identity.authorize_owner(req.get_header("Authorization"), user_id).name
        _check_id("userId", user_id, self._max_id_chars)  # after: closed management is 403 to everything


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
    """`/readyz`: Redis answers, a signing key is loaded, no shutdown is under way; who may act here."""

    def __init__(self, store: RedisStore, keyring: Keyring, caller_modes: tuple[str, ...]) -> None:
        self._store = store
        self._keyring = keyring
        self._caller_modes = caller_modes

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        checks = {
            "redis": sync.run(self._store.ping()),
            "keys": self._keyring.current.signing is not None,
            "serving": not shutdown.draining(),
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


def _check_id(name: str, value: str, max_chars: int) -> None:
    if not value:
        raise BadRequest(f"{name} is empty", field=name)
    if len(value) > max_chars:
        raise BadRequest(f"{name} is longer than {max_chars} characters", field=name)
