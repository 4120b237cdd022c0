"""Session tokens: sign with the active key, verify per RFC 8725 against our own key set only."""

import secrets

import jwt

from api.errors import InvalidToken

TOKEN_TYPE = "session+jwt"
HEADER_PARAMS = frozenset({"alg", "kid", "typ"})
REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "iat", "exp", "jti")
MAX_TOKEN_CHARS = 4096


class Tokens:
    """Sign and verify session tokens."""

    def __init__(self, keyring, issuer, audience, leeway_s=5):
        self._keyring = keyring
        self._issuer = issuer
        self._audience = audience
        self._leeway_s = leeway_s

    def sign(self, session, now_s, ttl_s):
        """Return a token for `session` (user, sid, device, stream), valid `ttl_s` from `now_s`."""
        key = self._keyring.signing_key
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
        }
        headers = {"kid": key.kid, "typ": TOKEN_TYPE}
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers)

    def verify(self, token):
        """Return the claims of a valid token; raise InvalidToken naming what is wrong."""
        if not isinstance(token, str) or not token:
            raise InvalidToken("token is missing")
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken("token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("token is malformed") from None
        if not HEADER_PARAMS.issuperset(header):
            raise InvalidToken("token header has unexpected parameters")
        if header.get("typ") != TOKEN_TYPE:
            raise InvalidToken("token has the wrong type")
        kid = header.get("kid")
        key = self._keyring.current.verifying.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("token is signed with an unknown key")
        if header.get("alg") != key.alg:
            raise InvalidToken("token algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token has expired") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token is invalid: {exc}") from None
        for name in ("sub", "sid", "device", "stream"):
            if not isinstance(claims.get(name), str):
                raise InvalidToken(f"token claim {name!r} is missing or not a string")
        return claims
