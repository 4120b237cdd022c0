"""What start, heartbeat, stop and kick mean, apart from the HTTP shape of either API.

Coroutines, as the store's calls are: api/sync.py runs them on a thread, the event loop awaits them.
"""

import logging
import time
from collections.abc import Callable

from .config import Config
from .errors import InvalidToken, LimitReached, SessionGone, StoreUnavailable, TokenExpired
from .sessions import Grant, Limits, Session, new_session_id
from .store import RENEW_NONE, RENEW_SAME, RedisStore
from .tokens import Claims, SessionTokens

log = logging.getLogger(__name__)

Count = Callable[[str, int], None]  # count(event, n): evicted, kicked, resumed, degraded


def _no_count(event: str, n: int = 1) -> None:
    pass


class Concurrency:
    """Admit, refresh and release sessions and hand out their tokens."""

    def __init__(
        self,
        store: RedisStore,
        tokens: SessionTokens,
        config: Config,
        count: Count = _no_count,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._ttl_s = config.session_ttl_s
        self.ttl_ms = self._ttl_s * 1000
        self._degraded_ttl_s = config.degraded_ttl_s
        # An ended session's tombstone outlives every token it was given, leeway included.
        self._tombstone_ms = (config.longest_token_s + config.token_leeway_s) * 1000
        self._resume = config.resume
        self._stream_limit = config.stream_limit
        self._fail_open = config.on_store_error == "open"
        self._count = count
        self._clock = clock

    async def start(
        self,
        user: str,
        device: str,
        stream: str,
        limits: Limits,
        vouched: bool = True,
        token: str | None = None,
    ) -> Grant:
        """Start a session, or renew one of this device and stream; raise LimitReached at the limit.

        A caller that speaks for the user (`vouched`) renews the session of the same device and stream.
        Anyone else renews only the session whose token it shows, else starts a new one: a start never
        hands the token of a session to a caller that does not hold it, and the 403 at the limit shows
        such a caller how many sessions play, not their keys."""
        renew = RENEW_SAME if vouched else RENEW_NONE
        if token is not None:
            claims = self._tokens.verify(token)
            if (claims["sub"], claims["device"], claims["stream"]) != (user, device, stream):
                raise InvalidToken("token belongs to another user, device or stream")
            renew = claims["sid"]
        limit_claims = _limit_claims(limits.limit, limits.device_limit)
        try:
            admission = await self._store.admit(
                user, device, stream, limits, self.ttl_ms, self._tombstone_ms, renew
            )
        except LimitReached as refused:
            refused.visible = vouched
            raise
        except StoreUnavailable:
            if not self._fail_open:
                raise
            session = Session(user, new_session_id(), device, stream)
            return self._degraded(session, "initiated", limit_claims, confirmed_s=int(self._clock()))
        for sid in admission.evicted:
            log.info("evicted session %s of user %s", sid, user)
        self._count("evicted", len(admission.evicted))
        return self._grant(admission.session, admission.status, admission.now_ms, limit_claims)

    async def heartbeat(self, token: str, sid: str) -> Grant:
        """Verify the token of session `sid`, extend the session and return a Grant with a fresh token."""
        try:
            claims = self._tokens.verify(token)
        except TokenExpired:
            raise SessionGone("expired") from None
        session = _session(claims, sid)
        limit, device_limit = claims.get("lim", 0), claims.get("dlim", 0)
        limit_claims = _limit_claims(limit, device_limit)
        token_exp_ms = claims["exp"] * 1000 if self._resume else 0
        try:
            args = (token_exp_ms, limit, self._stream_limit, device_limit)
            status, now_ms = await self._store.refresh(session, self.ttl_ms, *args)
        except StoreUnavailable:
            if not self._fail_open:
                raise
            confirmed_s = int(claims.get("cex") or claims["exp"])  # a normal token's exp is store-confirmed
            return self._degraded(session, "updated", limit_claims, confirmed_s)
        if status == "resumed":
            log.info("resumed session %s of user %s", sid, session.user)
            self._count("resumed", 1)
        return self._grant(session, "updated", now_ms, limit_claims)

    async def stop(self, token: str, sid: str) -> None:
        """Verify the token of session `sid` and end the session at once."""
        await self._store.release(_session(self._tokens.verify(token), sid), self._tombstone_ms)

    async def kick(self, user: str, sid: str | None = None) -> list[str]:
        """End one session of `user`, or all of them; return the sids ended."""
        ended = await self._store.kick(user, sid, self._tombstone_ms)
        self._count("kicked", len(ended))
        return ended

    async def sessions(self, user: str) -> tuple[int, list[Session]]:
        """Return (server ms, live sessions of `user`)."""
        return await self._store.sessions(user)

    def _grant(self, session: Session, status: str, now_ms: int, limit_claims: Claims) -> Grant:
        token = self._tokens.sign(session, now_ms // 1000, self._ttl_s, limit_claims)
        return Grant(session, status, token, self._ttl_s)

    def _degraded(self, session: Session, status: str, limit_claims: Claims, confirmed_s: int) -> Grant:
        """Keep the player playing while the store is down: a short token signed on the app clock.

        `confirmed_s` is when the session's last store-confirmed lifetime ends (`cex`, carried from token to
        token): a chain of degraded tokens ends at most the degraded lifetime after it, so it can never
        outlive the tombstone of a session ended before the store went down (that lives longer)."""
        now_s = int(self._clock())
        ttl_s = min(self._degraded_ttl_s, confirmed_s + self._degraded_ttl_s - now_s)
        if ttl_s <= 0:
            raise SessionGone("expired")
        log.warning("store down: session %s of user %s goes on degraded", session.sid, session.user)
        self._count("degraded", 1)
        extra = {**limit_claims, "degraded": True, "cex": confirmed_s}
        token = self._tokens.sign(session, now_s, ttl_s, extra)
        return Grant(session, status, token, ttl_s)


def _limit_claims(limit: int, device_limit: int) -> Claims:
    """Return the claims that carry the user's limits to a resumption: `lim`, and `dlim` if there is one."""
    return {"lim": limit, "dlim": device_limit} if device_limit else {"lim": limit}


def _session(claims: Claims, sid: str) -> Session:
    if claims["sid"] != sid:
        raise InvalidToken("token belongs to another session")
    return Session(claims["sub"], sid, claims["device"], claims["stream"])
