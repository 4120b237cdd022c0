"""The three player calls over HTTP (start, heartbeat, stop; both APIs), apart from any web framework.

Written once and used twice: by the Falcon resources (api/resources.py, through api/sync.py) and by
the event loop's fast path (api/front.py). Each call takes what the request carried and returns an
Answer, errors included, so both paths answer alike.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

from keys.errors import KeysError

from .concurrency import Concurrency
from .config import MAX_TOKEN_CHARS, Config
from .errors import BadRequest, ServiceError
from .identity import Identity
from .requests import bearer_token, json_object, require_strings
from .responses import Headers, error_answer, legacy_body, session_body
from .sessions import Grant

OPTIONAL_START_FIELDS = ("userId", "token")  # userId: required unless a user token names the user
LEGACY, NATIVE = "/concurrency", "/v1/sessions"


@dataclasses.dataclass(frozen=True)
class Request:
    """What a player call carries: its Authorization and Content-Type headers and its body."""

    authorization: str | None = None
    content_type: str | None = None
    body: bytes = b""


@dataclasses.dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, JSON body (None: none), extra headers, and the caller, if one was checked."""

    status: int
    media: dict[str, Any] | None
    headers: Headers = ()
    caller: str | None = None


class Playback:
    """Start, heartbeat and stop, for `/concurrency` (the seed's shape) and `/v1/sessions`."""

    def __init__(self, concurrency: Concurrency, identity: Identity, config: Config) -> None:
        self._concurrency = concurrency
        self._identity = identity
        self._max_id_chars = config.max_id_chars
        self._retry_after_s = config.retry_after_s
        self._start_fields = dict.fromkeys(("userId", "deviceId", "streamId"), config.max_id_chars)
        self._start_fields["token"] = MAX_TOKEN_CHARS
        self._session_fields = {"sessionKey": config.max_id_chars, "token": MAX_TOKEN_CHARS}

    async def start(self, route: str, request: Request) -> Answer:
        """Start or renew a session; `route` is LEGACY or NATIVE."""
        caller = None
        try:
            body = json_object(request.body, request.content_type)
            fields = require_strings(body, self._start_fields, OPTIONAL_START_FIELDS)
            user, limits, who = self._identity.start_user(request.authorization, fields.get("userId"))
            caller = who.name
            device, stream, token = fields["deviceId"], fields["streamId"], fields.get("token")
            grant = await self._concurrency.start(user, device, stream, limits, who.vouched, token)
        except (ServiceError, KeysError) as exc:
            return self._failed(exc, caller)
        if route == LEGACY:
            return Answer(200, legacy_body(grant), caller=caller)
        if grant.status == "initiated":
            location = (("Location", f"{NATIVE}/{grant.session.sid}"),)
            return Answer(201, session_body(grant), location, caller=caller)
        return Answer(200, session_body(grant), caller=caller)

    async def heartbeat(self, sid: str | None, request: Request) -> Answer:
        """Extend a session: named by `sid` and a Bearer token (NATIVE), or by the body (LEGACY: no sid)."""
        try:
            sid, token, shape = self._session_of(sid, request)
            return Answer(200, shape(await self._concurrency.heartbeat(token, sid)))
        except (ServiceError, KeysError) as exc:
            return self._failed(exc)

    async def stop(self, sid: str | None, request: Request) -> Answer:
        """End a session at once; as `heartbeat` for where its id and token come from."""
        try:
            sid, token, _ = self._session_of(sid, request)
            await self._concurrency.stop(token, sid)
        except (ServiceError, KeysError) as exc:
            return self._failed(exc)
        return Answer(204, None)

    def _session_of(
        self, sid: str | None, request: Request
    ) -> tuple[str, str, Callable[[Grant], dict[str, Any]]]:
        if sid is None:
            fields = require_strings(json_object(request.body, request.content_type), self._session_fields)
            return fields["sessionKey"], fields["token"], legacy_body
        if len(sid) > self._max_id_chars:
            raise BadRequest(f"sessionId is longer than {self._max_id_chars} characters", field="sessionId")
        return sid, bearer_token(request.authorization), session_body

    def _failed(self, exc: ServiceError | KeysError, caller: str | None = None) -> Answer:
        status, media, headers = error_answer(exc, self._retry_after_s)
        return Answer(status, media, headers, caller)
