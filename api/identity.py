"""Who is asking (user access tokens, the admin secret) and what a user may play."""

import hmac
import json
import logging
from typing import Any, Protocol

import falcon
import jwt

from .config import AT_LIMIT_CHOICES, Config
from .errors import BadRequest, Forbidden, InvalidToken
from .requests import bearer_token
from .sessions import Limits

log = logging.getLogger(__name__)

JWKS_FETCH_TIMEOUT_S = 2
JWKS_CACHE_S = 300

Claims = dict[str, Any]


class JwkSource(Protocol):
    """What PyJWKClient offers: the key that signed a token, by its `kid`."""

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK: ...


class Identity:
    """Verify user access tokens (when configured) and decide each user's limits."""

    def __init__(self, config: Config, jwk_source: JwkSource | None = None) -> None:
        self._config = config
        self._jwk_source = jwk_source or _jwk_source(config.user_jwks)
        self._default_limits = Limits(
            config.max_streams, config.stream_limit, config.at_limit == "evict-oldest"
        )

    @property
    def required(self) -> bool:
        """Whether starting a session needs a verified user token."""
        return self._jwk_source is not None

    def user_claims(self, req: falcon.Request) -> Claims:
        """Return the verified claims of the request's user access token."""
        token = bearer_token(req, "user access token")
        if self._jwk_source is None:
            raise InvalidToken("user tokens are not configured")
        try:
            key = self._jwk_source.get_signing_key_from_jwt(token)
            if key.algorithm_name not in self._config.user_algorithms:
                raise InvalidToken("user token algorithm is not allowed")
            claims: Claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                issuer=self._config.user_issuer,
                audience=self._config.user_audience,
                leeway=self._config.token_leeway_s,
                options={"require": ["sub", "exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, jwt.PyJWKClientError, ValueError) as exc:
            raise InvalidToken(f"user token is invalid: {exc}") from None
        return claims

    def limits(self, claims: Claims | None = None) -> Limits:
        """Return the limits for a user: from the token's limit claim, else its plan, else the defaults."""
        if not claims:
            return self._default_limits
        config = self._config
        plan = claims.get(config.plan_claim)
        plan = plan if isinstance(plan, str) else None
        limit = claims.get(config.limit_claim)
        if not (type(limit) is int and limit > 0):
            limit = config.plan_limits.get(plan, config.max_streams) if plan else config.max_streams
        behaviour = claims.get(config.behaviour_claim)
        if behaviour not in AT_LIMIT_CHOICES:
            behaviour = config.plan_at_limit.get(plan, config.at_limit) if plan else config.at_limit
        return Limits(limit, config.stream_limit, behaviour == "evict-oldest")

    def start_user(self, req: falcon.Request, body_user: str | None) -> tuple[str, Limits]:
        """Return (user, limits) for a start: from the verified token when required, else the body."""
        if not self.required:
            if body_user is None:
                raise BadRequest("field 'userId' is required", field="userId")
            return body_user, self.limits()
        claims = self.user_claims(req)
        longest = self._config.max_id_chars
        if not isinstance(claims["sub"], str) or not 0 < len(claims["sub"]) <= longest:
            raise InvalidToken(f"user token 'sub' must be a user id of at most {longest} characters")
        if body_user is not None and body_user != claims["sub"]:
            raise Forbidden("userId does not match the user token", field="userId")
        return claims["sub"], self.limits(claims)

    def authorize_owner(self, req: falcon.Request, user: str) -> None:
        """Allow the user themself (verified user token) or an operator with the admin secret."""
        if not (self._config.admin_token or self.required):
            raise Forbidden("session management is not enabled: configure an admin token or user tokens")
        token = bearer_token(req, "admin secret or user access token")
        if self._config.admin_token and hmac.compare_digest(
            token.encode(), self._config.admin_token.encode()
        ):
            return
        if not self.required:
            raise InvalidToken("admin secret is wrong")
        if self.user_claims(req)["sub"] != user:
            raise Forbidden("a user may only manage their own sessions")


def _jwk_source(source: str) -> JwkSource | None:
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
