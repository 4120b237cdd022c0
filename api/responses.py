"""What answers look like: error bodies and headers for every error, success bodies for both APIs.

The one place where errors become HTTP: the service's own tree (api/errors.py) and the `keys` package's.
"""

import http
import logging
import re
from typing import Any

import falcon

from keys.errors import InvalidJws, NoSigningKey

from .errors import InvalidCredentials, InvalidToken, LimitReached, ServiceError, StoreUnavailable
from .sessions import Grant, Session

log = logging.getLogger(__name__)

_UNSAFE_IN_HEADER = re.compile(r'[^\x20-\x7e]|["\\]')
_LIMIT_MESSAGES = {
    "account": "user already plays {limit} of {limit} allowed streams",
    "stream": "this stream already plays on {limit} devices",
    "device": "user already plays on {limit} of {limit} allowed devices",
}


def add_error_handlers(app: falcon.App, retry_after_s: int) -> None:
    """Map every error a request can meet to its status, JSON body and headers."""

    def service_error(req: falcon.Request, resp: falcon.Response, exc: ServiceError, params: Any) -> None:
        resp.status = exc.status
        resp.media = error_body(exc)
        if isinstance(exc, InvalidToken):
            _challenge(resp, exc.message)
        elif isinstance(exc, InvalidCredentials):
            resp.set_header("WWW-Authenticate", 'Basic realm="trusted callers", charset="UTF-8"')
        elif isinstance(exc, StoreUnavailable):
            resp.set_header("Retry-After", str(retry_after_s))

    def invalid_jws(req: falcon.Request, resp: falcon.Response, exc: InvalidJws, params: Any) -> None:
        resp.status = falcon.HTTP_401
        resp.media = {"error": InvalidToken.code, "message": str(exc)}
        _challenge(resp, str(exc))

    def no_signing_key(req: falcon.Request, resp: falcon.Response, exc: NoSigningKey, params: Any) -> None:
        log.error("cannot sign: %s", exc)
        resp.status = falcon.HTTP_503
        resp.media = {"error": "no_signing_key", "message": "no signing key is active; retry shortly"}
        resp.set_header("Retry-After", str(retry_after_s))

    app.set_error_serializer(_serialize_http_error)
    app.add_error_handler(Exception, _unexpected)  # Falcon picks the most specific handler of an error
    app.add_error_handler(ServiceError, service_error)
    app.add_error_handler(InvalidJws, invalid_jws)
    app.add_error_handler(NoSigningKey, no_signing_key)


def error_body(exc: ServiceError) -> dict[str, Any]:
    """Return `{"error", "message", ...details}`; a limit refusal names the limit and lists its holders."""
    if isinstance(exc, LimitReached):
        body = {
            "error": exc.code,
            "message": _LIMIT_MESSAGES[exc.scope].format(limit=exc.limit),
            "limit": exc.limit,
            "scope": exc.scope,
            "active": exc.active,
        }
        if exc.visible:
            body["sessions"] = [_holder(s) for s in exc.holders]
        return body
    return {"error": exc.code, "message": exc.message, **exc.details}


def legacy_body(grant: Grant) -> dict[str, Any]:
    """The seed's answer to a start or heartbeat."""
    return {"sessionKey": grant.session.sid, "token": grant.token, "status": grant.status}


def session_body(grant: Grant) -> dict[str, Any]:
    """The native API's answer to a start or heartbeat."""
    return {
        "sessionId": grant.session.sid,
        "token": grant.token,
        "status": grant.status,
        "expiresIn": grant.ttl_s,
    }


def listing_body(user: str, now_ms: int, sessions: list[Session], ttl_ms: int) -> dict[str, Any]:
    """The account owner's view of a user's live sessions."""
    return {
        "userId": user,
        "now": now_ms // 1000,
        "sessions": [
            {
                "sessionId": s.sid,
                "deviceId": s.device,
                "streamId": s.stream,
                "started": (s.started_ms or 0) // 1000,
                "lastHeartbeat": ((s.expires_ms or 0) - ttl_ms) // 1000,
                "expires": (s.expires_ms or 0) // 1000,
            }
            for s in sessions
        ],
    }


def _holder(session: Session) -> dict[str, Any]:
    """Return a session as the 403 listing shows it."""
    return {
        "sessionKey": session.sid,
        "deviceId": session.device,
        "streamId": session.stream,
        "started": (session.started_ms or 0) // 1000,
    }


def _challenge(resp: falcon.Response, message: str) -> None:
    text = _UNSAFE_IN_HEADER.sub("?", message)[:200]  # messages may quote token contents
    resp.set_header("WWW-Authenticate", f'Bearer error="invalid_token", error_description="{text}"')


def _unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any) -> None:
    log.exception("unexpected error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = {"error": "internal_error", "message": "internal error; it has been logged"}


def _serialize_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    phrase = http.HTTPStatus(exc.status_code).phrase
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {
        "error": phrase.lower().replace(" ", "_"),
        "message": exc.description or phrase,
    }
