"""The one error tree of the service; `app.py` maps it to HTTP."""


class ServiceError(Exception):
    """Base of every error a client can cause or must be told about."""

    status = "500 Internal Server Error"
    code = "internal_error"

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(ServiceError):
    status = "400 Bad Request"
    code = "bad_request"


class InvalidToken(ServiceError):
    status = "401 Unauthorized"
    code = "invalid_token"


class Forbidden(ServiceError):
    status = "403 Forbidden"
    code = "forbidden"


class TokenExpired(InvalidToken):
    """A genuine token past its `exp`: on a heartbeat, the session has expired."""


class LimitReached(ServiceError):
    status = "403 Forbidden"
    code = "limit_reached"


class NotFound(ServiceError):
    status = "404 Not Found"
    code = "not_found"


class SessionGone(ServiceError):
    """The session ended (stopped, kicked, evicted or expired): the player must stop."""

    status = "410 Gone"
    code = "session_gone"


class PayloadTooLarge(ServiceError):
    status = "413 Payload Too Large"
    code = "payload_too_large"


class StoreUnavailable(ServiceError):
    status = "503 Service Unavailable"
    code = "store_unavailable"
