"""What start, heartbeat, stop and kick mean, apart from the HTTP shape of either API."""

import logging
import time

from .errors import InvalidToken, StoreUnavailable
from .store import Admission, Session, new_session_id

log = logging.getLogger(__name__)


class Concurrency:
    """Admit, refresh and release sessions and hand out their tokens."""

    def __init__(self, store, tokens, config, count=lambda event, n=1: None, clock=time.time):
        self._store = store
        self._tokens = tokens
        self._ttl_s = config.session_ttl_s
        self._degraded_ttl_s = config.degraded_ttl_s
        # An ended session's tombstone outlives every token it was given, leeway included.
        self._tombstone_ms = (config.session_ttl_s + config.token_leeway_s) * 1000
        self._resume = config.resume
        self._fail_open = config.on_store_error == "open"
        self._count = count  # count(event, n): evicted, kicked, resumed, degraded
        self._clock = clock

    def start(self, user, device, stream, policy):
        """Return (admission, token) for a new or renewed session; raise LimitReached at the limit."""
        try:
            admission = self._store.admit(
                user, device, stream, policy, self._ttl_s * 1000, self._tombstone_ms
            )
        except StoreUnavailable:
            if not self._fail_open:
                raise
            session = Session(user, new_session_id(), device, stream)
            log.warning("store down: admitting %s degraded", session.sid)
            self._count("degraded")
            return Admission(session, "initiated", 0), self._sign_degraded(session, policy.limit)
        for sid in admission.evicted:
            log.info("evicted session %s of user %s", sid, user)
        self._count("evicted", len(admission.evicted))
        return admission, self._sign(admission.session, admission.now_ms, policy.limit)

    def heartbeat(self, token, sid):
        """Verify the token of session `sid`, extend the session and return a fresh token."""
        claims = self._tokens.verify(token)
        session = _session(claims, sid)
        limit = claims.get("lim", 0)
        token_exp_ms = claims["exp"] * 1000 if self._resume else 0
        try:
            status, now_ms = self._store.refresh(session, self._ttl_s * 1000, token_exp_ms, limit)
        except StoreUnavailable:
            if not (self._fail_open and claims.get("degraded")):
                raise
            self._count("degraded")
            return session, self._sign_degraded(session, limit)
        if status == "resumed":
            log.info("resumed session %s of user %s", sid, session.user)
            self._count("resumed")
        return session, self._sign(session, now_ms, limit)

    def stop(self, token, sid):
        """Verify the token of session `sid` and end the session at once."""
        self._store.release(_session(self._tokens.verify(token), sid), self._tombstone_ms)

    def kick(self, user, sid=None):
        """End one session of `user`, or all of them; return the sids ended."""
        ended = self._store.kick(user, sid, self._tombstone_ms)
        self._count("kicked", len(ended))
        return ended

    def sessions(self, user):
        """Return (server ms, live sessions of `user`)."""
        return self._store.sessions(user)

    @property
    def ttl_s(self):
        return self._ttl_s

    def _sign(self, session, now_ms, limit):
        return self._tokens.sign(session, now_ms // 1000, self._ttl_s, {"lim": limit})

    def _sign_degraded(self, session, limit):
        """Sign with the app clock: the store that keeps time is down."""
        extra = {"lim": limit, "degraded": True}
        return self._tokens.sign(session, int(self._clock()), self._degraded_ttl_s, extra)


def _session(claims, sid):
    if claims["sid"] != sid:
        raise InvalidToken("token belongs to another session")
    return Session(claims["sub"], sid, claims["device"], claims["stream"])
