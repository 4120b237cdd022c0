"""What start, heartbeat and stop mean, apart from the HTTP shape of either API."""

from .errors import InvalidToken
from .store import Session


class Concurrency:
    """Admit, refresh and release sessions and hand out their tokens."""

    def __init__(self, store, tokens, max_streams, session_ttl_s):
        self._store = store
        self._tokens = tokens
        self._max_streams = max_streams
        self._ttl_s = session_ttl_s

    def start(self, user, device, stream):
        """Return (admission, token) for a new or renewed session; raise LimitReached at the limit."""
        admission = self._store.admit(user, device, stream, self._max_streams, self._ttl_s * 1000)
        return admission, self._sign(admission.session, admission.now_ms)

    def heartbeat(self, token, sid):
        """Verify the token of session `sid`, extend the session and return a fresh token."""
        session = self._session(token, sid)
        now_ms = self._store.refresh(session, self._ttl_s * 1000)
        return session, self._sign(session, now_ms)

    def stop(self, token, sid):
        """Verify the token of session `sid` and end the session at once."""
        self._store.release(self._session(token, sid))

    def _session(self, token, sid):
        claims = self._tokens.verify(token)
        if claims["sid"] != sid:
            raise InvalidToken("token belongs to another session")
        return Session(claims["sub"], sid, claims["device"], claims["stream"])

    def _sign(self, session, now_ms):
        return self._tokens.sign(session, now_ms // 1000, self._ttl_s)
