"""What answers look like: error bodies and headers for every error, success bodies for both APIs.

The one place where errors become HTTP: the service's own tree (api/errors.py) and the `keys` package's.
"""

import http
import logging
import re
from typing import Any

import falcon

from keys.errors import InvalidJws, KeysError, NoSigningKey

from .errors import InvalidCredentials, InvalidToken, LimitReached, ServiceError, StoreUnavailable
from .sessions import Grant, Session

log = logging.getLogger(__name__)

_UNSAFE_IN_HEADER = re.compile(r'[^\x20-\x7e]|["\\]')
_LIMIT_MESSAGES = {
    "account": "user already plays {limit} of {limit} allowed streams",
    "stream": "this stream already plays on {limit} devices",
    "device": "user already plays on {limit} of {limit} allowed devices",
}


Headers = tuple[tuple[str, str], ...]


def error_answer(exc: ServiceError | KeysError, retry_after_s: int) -> tuple[int, dict[str, Any], Headers]:
    """Return the status, JSON body and headers that answer `exc` (a 503 says when to retry)."""
    if isinstance(exc, InvalidJws):
        return 401, {"error": InvalidToken.code, "message": str(exc)}, (_challenge(str(exc)),)
    if isinstance(exc, NoSigningKey):
        log.error("cannot sign: %s", exc)
        body = {"error": "no_signing_key", "message": "no signing key is active; retry shortly"}
        return 503, body, (("Retry-After", str(retry_after_s)),)
    if not isinstance(exc, ServiceError):
        raise exc  # a broken key directory is the operator's to fix: logged as a 500
    headers: Headers = ()
    if isinstance(exc, InvalidToken):
        headers = (_challenge(exc.message),)
    elif isinstance(exc, InvalidCredentials):
        headers = (("WWW-Authenticate", 'Basic realm="trusted callers", charset="UTF-8"'),)
    elif isinstance(exc, StoreUnavailable):
        headers = (("Retry-After", str(retry_after_s)),)
    return int(exc.status[:3]), error_body(exc), headers


def add_error_handlers(app: falcon.App, retry_after_s: int) -> None:
    """Map every error a request can meet to its status, JSON body and headers."""

    def handle(
        req: falcon.Request, resp: falcon.Response, exc: ServiceError | KeysError, params: Any
    ) -> None:
        status, resp.media, headers = error_answer(exc, retry_after_s)
        resp.status = status
        for name, value in headers:
            resp.set_header(name, value)

    app.set_error_serializer(_serialize_http_error)
    app.add_error_handler(Exception, _unexpected)  # Falcon picks the most specific handler of an error
    app.add_error_handler(ServiceError, handle)
    app.add_error_handler(InvalidJws, handle)
    app.add_error_handler(NoSigningKey, handle)


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


INTERNAL_ERROR = {"error": "internal_error", "message": "internal error; it has been logged"}


def _challenge(message: str) -> tuple[str, str]:
    text = _UNSAFE_IN_HEADER.sub("?", message)[:200]  # messages may quote token contents
    return "WWW-Authenticate", f'Bearer error="invalid_token", error_description="{text}"'


def _unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any) -> None:
    log.exception("unexpected error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = dict(INTERNAL_ERROR)


def _serialize_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    phrase = http.HTTPStatus(exc.status_code).phrase
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {
        "error": phrase.lower().replace(" ", "_"),
        "message": exc.description or phrase,
    }
