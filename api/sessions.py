"""The session domain's records: a session, a user's limits, the outcome of a start."""

import dataclasses
import secrets


def new_session_id() -> str:
    """Return 72 random bits, url-safe: unguessable and short enough to keep Redis small."""
    return secrets.token_urlsafe(9)


@dataclasses.dataclass(frozen=True)
class Session:
    """One playback: a user's stream on a device; times (Redis ms) when read from the store."""

    user: str
    sid: str
    device: str
    stream: str
    started_ms: int | None = None
    expires_ms: int | None = None


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a user may play: at most `limit` sessions, `stream_limit` of one stream, on `device_limit`
    distinct devices (0: no such limit)."""

    limit: int
    stream_limit: int = 0
    evict_oldest: bool = False
    device_limit: int = 0


@dataclasses.dataclass(frozen=True)
class Admission:
    """A start the store accepted: the session, `initiated` or `updated`, server time, sids evicted."""

    session: Session
    status: str
    now_ms: int
    evicted: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a start or heartbeat hands back: the session, its status and a token valid `ttl_s`."""

    session: Session
    status: str  # "initiated" or "updated"
    token: str
    ttl_s: int
