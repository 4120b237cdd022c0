"""Session tokens: the claims the service signs and the rules a token must meet to be accepted.

The JWS itself (header, serialization, signature) is keys/jws.py; this module decides what a session
token says and checks every claim (RFC 8725): issuer, audience, types, expiry with a small leeway.
"""

import math
import time
from collections.abc import Callable
from typing import Any

from keys import jws
from keys.errors import NoSigningKey
from keys.keyring import Keyring

from .config import MAX_TOKEN_CHARS
from .errors import InvalidToken, TokenExpired
from .sessions import Session

REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "iat", "exp", "jti", "device", "stream")
STRING_CLAIMS = ("sub", "sid", "jti", "device", "stream")

Claims = dict[str, Any]


class SessionTokens:
    """Sign session tokens with the active key; accept only valid ones signed by a key of ours."""

    def __init__(
        self,
        keyring: Keyring,
        issuer: str,
        audience: str,
        leeway_s: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s
        self._clock = clock

    def sign(self, session: Session, now_s: int, ttl_s: int, extra: Claims | None = None) -> str:
        """Return a token for `session` (user, sid, device, stream), valid `ttl_s` from `now_s`.

        `extra` claims (the user's limits `lim` and `dlim`, `degraded`) are added after the standard ones."""
        key = self._keyring.current.signing_at(now_s)
        if key is None:
            raise NoSigningKey("no key is active")
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": session.user,
            "sid": session.sid,
            "device": session.device,
            "stream": session.stream,
            "iat": now_s,
            "exp": now_s + ttl_s,
            **(extra or {}),
        }
        return jws.sign(key, claims)  # adds the jti: a nonce, and the MAC that spares the ECDSA verify

    def verify(self, token: str) -> Claims:
        """Return the claims of a valid token; raise InvalidToken or InvalidJws naming what is wrong."""
        if not isinstance(token, str) or not token:
            raise InvalidToken("token is missing")
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("token is too long")
        return self._checked(jws.verify(token, self._keyring.current.verifying))

    def _checked(self, claims: Claims) -> Claims:
        for name in REQUIRED_CLAIMS:
            if name not in claims:
                raise InvalidToken(f"token claim {name!r} is missing")
        if claims["iss"] != self._issuer:
            raise InvalidToken("token has the wrong issuer")
        if claims["aud"] != self._audience:
            raise InvalidToken("token has the wrong audience")
        for name in STRING_CLAIMS:
            if not isinstance(claims[name], str):
                raise InvalidToken(f"token claim {name!r} must be a string")
        now = self._clock()
        if _seconds(claims, "exp") <= now - self._leeway_s:
            raise TokenExpired("token has expired")
        if _seconds(claims, "iat") > now + self._leeway_s:
            raise InvalidToken("token is issued in the future")
        if "nbf" in claims and _seconds(claims, "nbf") > now + self._leeway_s:
            raise InvalidToken("token is not valid yet")
        if "cex" in claims and type(claims["cex"]) is not int:
            raise InvalidToken("token claim 'cex' must be whole seconds")
        return claims


def _seconds(claims: Claims, name: str) -> float:
    value = claims[name]
    if type(value) not in (int, float) or not math.isfinite(value):
        raise InvalidToken(f"token claim {name!r} must be a number of seconds")
    return float(value)
