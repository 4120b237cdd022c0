"""The identity provider's access tokens: verified with its JWKS (a URL, cached, or a file)."""

import json
from typing import Any, Protocol

import jwt

from .config import Config
from .errors import InvalidToken
from .requests import text_problem

JWKS_FETCH_TIMEOUT_S = 2
JWKS_CACHE_S = 300

Claims = dict[str, Any]


class JwkSource(Protocol):
    """What PyJWKClient offers: the key that signed a token, by its `kid`."""

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK: ...


class UserTokens:
    """Verify user access tokens: our issuer, our audience, an allowed algorithm bound to the key."""

    def __init__(self, config: Config, source: JwkSource) -> None:
        self._config = config
        self._source = source

    def verify(self, token: str) -> Claims:
        """Return the verified claims of a user access token; raise InvalidToken naming the problem."""
        config = self._config
        try:
            key = self._source.get_signing_key_from_jwt(token)
            if key.algorithm_name not in config.user_algorithms:
                raise InvalidToken("user token algorithm is not allowed")
            claims: Claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                issuer=config.user_issuer,
                audience=config.user_audience,
                leeway=config.token_leeway_s,
                options={"require": ["sub", "exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, jwt.PyJWKClientError, ValueError) as exc:
            raise InvalidToken(f"user token is invalid: {exc}") from None
        longest, sub = config.max_id_chars, claims["sub"]
        if not isinstance(sub, str) or not 0 < len(sub) <= longest:
            raise InvalidToken(f"user token 'sub' must be a user id of at most {longest} characters")
        problem = text_problem(sub)
        if problem:
            raise InvalidToken(f"user token 'sub' {problem}")
        return claims


def jwks_from(source: str) -> JwkSource | None:
    """Return a cached JWKS URL client or a fixed file; None when user tokens are not configured."""
    if not source:
        return None
    if source.startswith(("https://", "http://")):
        return jwt.PyJWKClient(source, cache_keys=True, lifespan=JWKS_CACHE_S, timeout=JWKS_FETCH_TIMEOUT_S)
    with open(source, encoding="utf-8") as file:
        return _FileJwks(json.load(file))


class _FileJwks:
    """A JWKS read from a file once; PyJWKClient's interface, without the network."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(document).keys}

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self._keys:
            raise jwt.PyJWKClientError(f"no key with kid {kid!r}")
        return self._keys[kid]
