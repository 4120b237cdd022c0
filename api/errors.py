"""The one error tree of the service; api/responses.py maps it (and the `keys` errors) to HTTP."""

from typing import Any

from .sessions import Session


class ServiceError(Exception):
    """Base of every error a client can cause or must be told about."""

    status = "500 Internal Server Error"
    code = "internal_error"
    message = "internal error"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details


class BadRequest(ServiceError):
    status = "400 Bad Request"
    code = "bad_request"


class InvalidToken(ServiceError):
    status = "401 Unauthorized"
    code = "invalid_token"


class InvalidCredentials(ServiceError):
    """A trusted caller's credential is missing or wrong."""

    status = "401 Unauthorized"
    code = "invalid_credentials"


class Forbidden(ServiceError):
    status = "403 Forbidden"
    code = "forbidden"


class TokenExpired(InvalidToken):
    """A genuine token past its `exp`: on a heartbeat, the session has expired."""


class LimitReached(ServiceError):
    """A start would exceed the `scope` limit (account, stream or device) held by the sessions `holders`."""

    status = "403 Forbidden"
    code = "limit_reached"

    def __init__(self, scope: str, limit: int, holders: list[Session], visible: bool = True) -> None:
        super().__init__(f"{scope} limit of {limit} reached")
        self.scope = scope
        self.limit = limit
        self.holders = holders
        self.visible = visible  # whether the caller may see the holders' keys, or only how many there are

    @property
    def active(self) -> int:
        """How many hold the limit: distinct devices for the device limit, else sessions."""
        if self.scope == "device":
            return len({holder.device for holder in self.holders})
        return len(self.holders)


class NotFound(ServiceError):
    status = "404 Not Found"
    code = "not_found"


class SessionGone(ServiceError):
    """The session ended (stopped, kicked, evicted or expired): the player must stop."""

    status = "410 Gone"
    code = "session_gone"

    def __init__(self, reason: str) -> None:
        super().__init__(f"session has ended ({reason}); stop playback", reason=reason)
        self.reason = reason


class PayloadTooLarge(ServiceError):
    status = "413 Payload Too Large"
    code = "payload_too_large"

    @classmethod
    def over(cls, limit: int) -> "PayloadTooLarge":
        return cls(f"request body is larger than {limit} bytes")


class UnsupportedMediaType(ServiceError):
    status = "415 Unsupported Media Type"
    code = "unsupported_media_type"


class StoreUnavailable(ServiceError):
    status = "503 Service Unavailable"
    code = "store_unavailable"
    message = "session store is unavailable; retry shortly"


class StoreFailed(ServiceError):
    """Redis ran one of our scripts and the script failed: a bug, never taken for Redis being down (so
    never admitted fail-open)."""

    message = "the session store could not run the operation; it has been logged"
