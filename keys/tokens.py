"""Session tokens: sign with the active key, verify per RFC 8725 against our own key set only.

Compact JWS framing and the claim checks are done here in a few lines, the signatures by `cryptography`
(keys/store.py): `jwt.encode`/`jwt.decode` cost about as much again as the signature operations on every
heartbeat. Verification is deliberately narrower than a general JOSE library: only
the exact header we write (`alg`, `kid`, `typ`), the key named by `kid` from our own set with that key's
one algorithm, a fixed claim set, and strict compact serialization.
"""

import base64
import binascii
import collections
import contextlib
import hashlib
import json
import math
import re
import secrets
import time

from api.errors import InvalidToken, TokenExpired

from .keyring import NoSigningKey
from .store import ALGORITHMS, TOKEN_TYPE, b64url

HEADER_PARAMS = frozenset({"alg", "kid", "typ"})
REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "iat", "exp", "jti", "device", "stream")
STRING_CLAIMS = ("sub", "sid", "jti", "device", "stream")
MAX_TOKEN_CHARS = 4096
ISSUED_CACHE_SIZE = 32768

_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # made once, as json.dumps(..., separators) is not
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class Tokens:
    """Sign and verify session tokens."""

    def __init__(
        self, keyring, issuer, audience, leeway_s=5, clock=time.time, issued_cache_size=ISSUED_CACHE_SIZE
    ):
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s
        self._clock = clock
        # The tokens this process signed and not yet saw again, by keyed digest: a player's next
        # heartbeat brings back the token its last one got, and a token byte-for-byte equal to one we
        # signed needs no signature check (its claims are still checked). Misses take the full path.
        self._issued = collections.OrderedDict()
        self._issued_max = issued_cache_size
        self._digest_key = secrets.token_bytes(16)

    def sign(self, session, now_s, ttl_s, extra=None):
        """Return a token for `session` (user, sid, device, stream), valid `ttl_s` from `now_s`.

        `extra` claims (the session's limit `lim`, `degraded`) are added after the standard ones."""
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
            "jti": secrets.token_urlsafe(12),
            **(extra or {}),
        }
        signing_input = key.header_segment + b"." + b64url(_ENCODE(claims).encode())
        token = (signing_input + b"." + b64url(key.sign(signing_input))).decode()
        if self._issued_max:
            if len(self._issued) >= self._issued_max:
                with contextlib.suppress(KeyError):  # another thread may have emptied it meanwhile
                    self._issued.popitem(last=False)
            self._issued[self._digest(token)] = (key.kid, claims)
        return token

    def verify(self, token):
        """Return the claims of a valid token; raise InvalidToken naming what is wrong."""
        if not isinstance(token, str) or not token:
            raise InvalidToken("token is missing")
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("token is too long")
        issued = self._issued.pop(self._digest(token), None)
        if issued and issued[0] in self._keyring.current.verifying:  # not revoked since
            return self._checked(issued[1])
        if not _COMPACT.fullmatch(token):
            raise InvalidToken("token is not a compact JWS (three base64url parts)")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(header_b64, "header")
        kid = header.get("kid")
        key = self._keyring.current.verifying.get(kid) if isinstance(kid, str) else None
        if key is None or header != key.header:
            raise _header_problem(header, key)
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode()
        if not key.verify(_b64decode(signature_b64, "signature"), signing_input):
            raise InvalidToken("token signature is invalid")
        return self._checked(_json_object(payload_b64, "payload"))

    def _digest(self, token):
        return hashlib.blake2b(token.encode(), digest_size=16, key=self._digest_key).digest()

    def _checked(self, claims):
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
        return claims


def _header_problem(header, key):
    """Name what is wrong with a header that is not exactly one of ours."""
    if not HEADER_PARAMS.issuperset(header):
        return InvalidToken("token header has unexpected parameters")
    if header.get("typ") != TOKEN_TYPE:
        return InvalidToken("token has the wrong type")
    if header.get("alg") not in ALGORITHMS:
        return InvalidToken("token algorithm is not allowed")
    if key is None:
        return InvalidToken("token is signed with an unknown key")
    return InvalidToken("token algorithm does not match its key")


def _b64decode(segment, part):
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken(f"token {part} is not base64url") from None


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(
    parse_constant=_no_constants
)  # made once: json.loads(..., parse_constant) makes one a call


def _json_object(segment, part):
    try:
        value = _JSON.decode(_b64decode(segment, part).decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidToken(f"token {part} is not a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidToken(f"token {part} is not a JSON object")
    return value


def _seconds(claims, name):
    value = claims[name]
    if type(value) not in (int, float) or not math.isfinite(value):
        raise InvalidToken(f"token claim {name!r} must be a number of seconds")
    return value
