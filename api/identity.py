"""Who is asking, and what they may do for a user: user tokens, trusted callers, the admin secret, anonymous.

Credentials come in the `Authorization` header: `Bearer <user access token>` (user-token mode) or
`Bearer <admin secret>`, and `Basic base64(name:secret)` for a trusted caller. In anonymous mode (for
development) nobody is asked for anything, so nothing an anonymous caller gets may help it act on
sessions it does not already hold.
"""

import base64
import collections
import dataclasses
import hashlib
import hmac

from .config import AT_LIMIT_CHOICES, Config
from .errors import BadRequest, Forbidden, InvalidCredentials, InvalidToken
from .sessions import Limits
from .user_tokens import Claims, JwkSource, UserTokens, jwks_from

ANONYMOUS = "anonymous"
USER = "user"  # the caller name of a user presenting their own access token
ADMIN = "admin"
MAX_LIMIT_CLAIM = 10_000  # the most sessions or devices a user token's claim may allow


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who made a request: a name for logs and metrics; `vouched`: authenticated to act for the user."""

    name: str
    vouched: bool


class Identity:
    """Authenticate callers by the configured modes and decide each user's limits."""

    def __init__(self, config: Config, jwk_source: JwkSource | None = None) -> None:
        self._config = config
        self.modes = config.caller_modes
        if "user-token" in self.modes:
            jwk_source = jwk_source or jwks_from(config.user_jwks)
        self._user_tokens = UserTokens(config, jwk_source) if jwk_source else None
        self._callers = _Credentials(config.callers) if "trusted-caller" in self.modes else None
        self._default_limits = Limits(
            config.max_streams, config.stream_limit, config.at_limit == "evict-oldest", config.device_limit
        )

    @property
    def anonymous(self) -> bool:
        """Whether starts take the body's userId on trust."""
        return self.modes == (ANONYMOUS,)

    def limits(self, claims: Claims | None = None) -> Limits:
        """Return the limits for a user: each from the token's claim, else its plan, else the defaults."""
        if not claims:
            return self._default_limits
        config = self._config
        plan = claims.get(config.plan_claim)
        plan = plan if isinstance(plan, str) else ""
        limit = _positive(claims, config.limit_claim) or config.plan_limits.get(plan, config.max_streams)
        device_limit = _positive(claims, config.device_limit_claim) or config.plan_device_limits.get(
            plan, config.device_limit
        )
        behaviour = claims.get(config.behaviour_claim)
        if behaviour not in AT_LIMIT_CHOICES:
            behaviour = config.plan_at_limit.get(plan, config.at_limit)
        return Limits(limit, config.stream_limit, behaviour == "evict-oldest", device_limit)

    def start_user(self, authorization: str | None, body_user: str | None) -> tuple[str, Limits, Caller]:
        """Return (user, limits, caller) for a start, by the credential in the Authorization header."""
        scheme, credential = _split(authorization)
        if scheme == "basic":
            name = self._trusted_caller(credential)
            if body_user is None:
                raise BadRequest("field 'userId' is required of a trusted caller", field="userId")
            return body_user, self.limits(), Caller(name, vouched=True)
        if scheme == "bearer" and self._user_tokens:
            claims = self._user_tokens.verify(credential)
            if body_user is not None and body_user != claims["sub"]:
                raise Forbidden("userId does not match the user token", field="userId")
            return claims["sub"], self.limits(claims), Caller(USER, vouched=True)
        if not self.anonymous:
            raise self._missing("a user access token or a trusted caller's credential")
        if scheme:
            raise InvalidToken("this service takes no credentials (anonymous mode); send none")
        if body_user is None:
            raise BadRequest("field 'userId' is required", field="userId")
        return body_user, self._default_limits, Caller(ANONYMOUS, vouched=False)

    def authorize_owner(self, authorization: str | None, user: str) -> Caller:
        """Allow the user themself (user token), a trusted caller, or an operator with the admin secret."""
        if not (self._config.admin_token or self._user_tokens or self._callers):
            raise Forbidden("session management is not enabled: configure an admin token or authentication")
        scheme, credential = _split(authorization)
        if scheme == "basic":
            return Caller(self._trusted_caller(credential), vouched=True)
        if scheme != "bearer":
            raise self._missing("an admin secret, a user access token or a trusted caller's credential")
        if self._config.admin_token and _same(credential, self._config.admin_token):
            return Caller(ADMIN, vouched=True)
        if not self._user_tokens:
            raise InvalidToken("admin secret is wrong")
        if self._user_tokens.verify(credential)["sub"] != user:
            raise Forbidden("a user may only manage their own sessions")
        return Caller(USER, vouched=True)

    def _trusted_caller(self, credential: str) -> str:
        if self._callers is None:
            raise InvalidCredentials("trusted callers are not configured on this service")
        return self._callers.authenticate(credential)

    def _missing(self, what: str) -> Exception:
        if self._user_tokens or self._config.admin_token:
            return InvalidToken(f"Authorization: Bearer <token> is required: {what}")
        return InvalidCredentials(f"Authorization: Basic <name:secret> is required: {what}")


class _Credentials:
    """Trusted callers' secrets, by name (two per name while one is rotated), compared in constant time."""

    def __init__(self, callers: tuple[tuple[str, str], ...]) -> None:
        self._digests: dict[str, list[bytes]] = collections.defaultdict(list)
        for name, secret in callers:
            self._digests[name].append(_digest(secret))

    def authenticate(self, credential: str) -> str:
        """Return the caller's name for a valid `base64(name:secret)`; raise InvalidCredentials otherwise."""
        try:
            name, sep, secret = base64.b64decode(credential, validate=True).decode().partition(":")
        except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 (UnicodeDecodeError)
            raise InvalidCredentials("Basic credential is not base64 of name:secret") from None
        given = _digest(secret)
        # Every stored digest of the name is compared, so the time taken says nothing about which matched.
        matched = [hmac.compare_digest(given, digest) for digest in self._digests.get(name, ())]
        if not (sep and any(matched)):
            raise InvalidCredentials("trusted caller credential is wrong")
        return name


def _positive(claims: Claims, name: str) -> int:
    """Return the limit claim `name` if it is a positive int (not a bool, float or string), else 0; refuse
    one over MAX_LIMIT_CLAIM (a mistake, not a plan: its digits would make tokens too long to accept)."""
    claim = claims.get(name)
    if type(claim) is not int or claim <= 0:
        return 0
    if claim > MAX_LIMIT_CLAIM:
        raise InvalidToken(f"user token claim {name!r} is over {MAX_LIMIT_CLAIM}")
    return claim


def _split(authorization: str | None) -> tuple[str, str]:
    """Return (scheme in lower case, credential) of an Authorization header; ('', '') when absent."""
    if not authorization:
        return "", ""
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() not in ("bearer", "basic") or not credential.strip():
        raise InvalidToken("Authorization header must be 'Bearer <token>' or 'Basic <credential>'")
    return scheme.lower(), credential.strip()


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _same(given: str, secret: str) -> bool:
    """Compare secrets in constant time, whatever their lengths."""
    return hmac.compare_digest(_digest(given), _digest(secret))
