"""Service configuration: every CONCURRENCY_* variable, read here only, parsed once into typed values."""

import dataclasses
import math
import os
import re
import types
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

AT_LIMIT_CHOICES = ("reject", "evict-oldest")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Asymmetric only: an HMAC algorithm would let anyone holding the identity provider's public key sign.
USER_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
# Where gunicorn's workers share Prometheus figures. prometheus_client reads it when first imported,
# so `serve` sets it before anything imports that library.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CALLER_MODES = ("user-token", "trusted-caller", "anonymous")
CALLER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_SECRET_CHARS = 16
MAX_ID_CHARS = 256
MAX_TOKEN_CHARS = 6144  # the longest session token we issue (ids of MAX_ID_CHARS 4-byte characters) fits
# The longest valid request: three ids whose characters are JSON-escaped surrogate pairs, and a token.
MIN_BODY_BYTES = 3 * 12 * MAX_ID_CHARS + MAX_TOKEN_CHARS + 256
MIN_HEADER_BYTES = 8192  # the HTTP server's smallest read buffer; a session token in Authorization fits

_NONE: Mapping[str, Any] = types.MappingProxyType({})


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


def _setting(
    env: str, default: Any, parse: Callable[[str, str], Any] | None = None, secret: bool = False
) -> Any:
    """Declare a field read from the variable `env`; `parse(raw, env)` turns its text into the value.

    A secret is left out of the config's repr, so it never reaches a log line."""
    metadata = {"env": env, "parse": parse}
    if isinstance(default, Mapping):  # immutable, but dataclasses take only hashable defaults as such
        return dataclasses.field(default_factory=lambda: default, metadata=metadata, repr=not secret)
    return dataclasses.field(default=default, metadata=metadata, repr=not secret)


def _bool(raw: str, env: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{env}={raw!r} is not a valid bool (true or false)")


def _names(raw: str, env: str) -> tuple[str, ...]:
    """Parse `a,b,c` into a tuple of names."""
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _plans(raw: str, env: str) -> dict[str, str]:
    """Parse a `plan=value,plan=value` setting."""
    pairs = [item.partition("=") for item in raw.split(",")] if raw.strip() else []
    if any(not sep or not plan.strip() for plan, sep, _ in pairs):
        raise ConfigError(f"{env} must look like 'basic=1,premium=4'")
    return {plan.strip(): value.strip() for plan, _, value in pairs}


def _plan_limits(raw: str, env: str) -> Mapping[str, int]:
    plans = _plans(raw, env)
    for plan, value in plans.items():
        if not (value.isascii() and value.isdigit() and int(value) > 0):
            raise ConfigError(f"{env}: {plan!r} needs a positive integer")
    return types.MappingProxyType({plan: int(value) for plan, value in plans.items()})


def _plan_behaviours(raw: str, env: str) -> Mapping[str, str]:
    return types.MappingProxyType(_plans(raw, env))


def _callers(raw: str, env: str) -> tuple[tuple[str, str], ...]:
    """Parse `name:secret,name:secret`; a name may appear twice while its secret is rotated."""
    pairs = [item.strip().partition(":") for item in raw.split(",") if item.strip()]
    if any(not sep for _, sep, _ in pairs):
        raise ConfigError(f"{env} must look like 'playback-api:SECRET,playback-api:NEXT-SECRET'")
    return tuple((name, secret) for name, _, secret in pairs)


@dataclasses.dataclass(frozen=True)
class Config:
    redis_url: str = _setting("CONCURRENCY_REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_mode: str = _setting("CONCURRENCY_REDIS_MODE", "standalone")  # or "cluster"
    redis_timeout_s: float = _setting("CONCURRENCY_REDIS_TIMEOUT", 0.25)
    # rediss:// URLs: the CA certificates (PEM) to verify Redis's certificate with; "": the system's CAs.
    redis_ca_file: str = _setting("CONCURRENCY_REDIS_CA_FILE", "")
    # The Redis user and password (ACL, ElastiCache RBAC); each, when set, wins over the URL's.
    redis_username: str = _setting("CONCURRENCY_REDIS_USERNAME", "")
    redis_password: str = _setting("CONCURRENCY_REDIS_PASSWORD", "", secret=True)
    max_streams: int = _setting("CONCURRENCY_MAX_STREAMS", 3)
    stream_limit: int = _setting("CONCURRENCY_STREAM_LIMIT", 0)  # sessions of one streamId; 0: no limit
    device_limit: int = _setting("CONCURRENCY_DEVICE_LIMIT", 0)  # distinct deviceIds per user; 0: no limit
    at_limit: str = _setting("CONCURRENCY_AT_LIMIT", "reject")  # or "evict-oldest"
    session_ttl_s: int = _setting("CONCURRENCY_SESSION_TTL", 60)
    # Re-admit a session Redis lost, while its token is valid.
    resume: bool = _setting("CONCURRENCY_RESUME", True)
    on_store_error: str = _setting("CONCURRENCY_ON_STORE_ERROR", "closed")  # "open": degraded tokens
    degraded_ttl_s: int = _setting("CONCURRENCY_DEGRADED_TTL", 45)  # a little over one heartbeat interval
    keys_dir: str = _setting("CONCURRENCY_KEYS_DIR", "keys.d")
    keys_reload_s: float = _setting("CONCURRENCY_KEYS_RELOAD", 1.0)  # between checks of the key directory
    # How late a change of the key directory may reach an instance's copy of it (a mounted secret, a sync).
    keys_propagation_s: float = _setting("CONCURRENCY_KEYS_PROPAGATION", 30.0)
    signing_key_pem: str = _setting("CONCURRENCY_SIGNING_KEY_PEM", "", secret=True)  # or the directory's
    issuer: str = _setting("CONCURRENCY_ISSUER", "concurrency-service")
    audience: str = _setting("CONCURRENCY_AUDIENCE", "playback")
    token_leeway_s: int = _setting("CONCURRENCY_TOKEN_LEEWAY", 5)
    jwks_max_age_s: int = _setting("CONCURRENCY_JWKS_MAX_AGE", 300)
    max_body_bytes: int = _setting("CONCURRENCY_MAX_BODY_BYTES", 16384)
    max_header_bytes: int = _setting("CONCURRENCY_MAX_HEADER_BYTES", 16384)  # the request line and headers
    header_timeout_s: float = _setting("CONCURRENCY_HEADER_TIMEOUT", 5.0)  # to send the request's headers
    body_timeout_s: float = _setting("CONCURRENCY_BODY_TIMEOUT", 5.0)  # to send its body, once headers came
    # A kept-alive connection may idle this long between requests: more than a load balancer's idle timeout
    # (AWS ALB: 60 s, infra/terraform 65 s), so that it, not we, closes the connections it keeps.
    keepalive_timeout_s: float = _setting("CONCURRENCY_KEEPALIVE_TIMEOUT", 75.0)
    max_requests: int = _setting("CONCURRENCY_MAX_REQUESTS", 1024)  # in progress at once per worker
    threads: int = _setting("CONCURRENCY_THREADS", 8)  # per worker: the Falcon app's, and cluster calls'
    drain_s: float = _setting("CONCURRENCY_DRAIN", 5.0)  # after SIGTERM: not ready, still serving
    shutdown_timeout_s: float = _setting("CONCURRENCY_SHUTDOWN_TIMEOUT", 10.0)  # then in-flight requests
    max_id_chars: int = _setting("CONCURRENCY_MAX_ID_CHARS", 256)
    retry_after_s: int = _setting("CONCURRENCY_RETRY_AFTER", 1)
    access_log: bool = _setting("CONCURRENCY_ACCESS_LOG", False)  # one JSON line per request
    log_level: str = _setting("CONCURRENCY_LOG_LEVEL", "INFO")
    admin_token: str = _setting("CONCURRENCY_ADMIN_TOKEN", "", secret=True)  # for the management routes
    auth: tuple[str, ...] = _setting("CONCURRENCY_AUTH", (), _names)  # who may act for a user: caller_modes
    callers: tuple[tuple[str, str], ...] = _setting("CONCURRENCY_CALLERS", (), _callers, secret=True)
    allow_anonymous: bool = _setting("CONCURRENCY_ALLOW_ANONYMOUS", False)  # on a non-loopback address
    user_jwks: str = _setting("CONCURRENCY_USER_JWKS", "")  # the identity provider's JWKS, a URL or a file
    user_issuer: str = _setting("CONCURRENCY_USER_ISSUER", "")
    user_audience: str = _setting("CONCURRENCY_USER_AUDIENCE", "")
    user_algorithms: tuple[str, ...] = _setting(
        "CONCURRENCY_USER_ALGORITHMS", ("RS256", "ES256", "EdDSA"), _names
    )
    limit_claim: str = _setting("CONCURRENCY_LIMIT_CLAIM", "climit")
    device_limit_claim: str = _setting("CONCURRENCY_DEVICE_LIMIT_CLAIM", "dlimit")
    behaviour_claim: str = _setting("CONCURRENCY_BEHAVIOUR_CLAIM", "cbeh")
    plan_claim: str = _setting("CONCURRENCY_PLAN_CLAIM", "plan")
    plan_limits: Mapping[str, int] = _setting("CONCURRENCY_PLAN_LIMITS", _NONE, _plan_limits)  # basic=1
    plan_device_limits: Mapping[str, int] = _setting("CONCURRENCY_PLAN_DEVICE_LIMITS", _NONE, _plan_limits)
    plan_at_limit: Mapping[str, str] = _setting("CONCURRENCY_PLAN_AT_LIMIT", _NONE, _plan_behaviours)

    def __post_init__(self) -> None:
        at_least_one = ("max_streams", "session_ttl_s", "degraded_ttl_s", "max_body_bytes", "threads")
        for name in (*at_least_one, "max_id_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.env_name(name)} must be at least 1")
        for name in ("stream_limit", "device_limit", "token_leeway_s", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.env_name(name)} must not be negative")
        for name in (
            "redis_timeout_s",
            "keys_reload_s",
            "header_timeout_s",
            "body_timeout_s",
            "keepalive_timeout_s",
            "shutdown_timeout_s",
        ):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{self.env_name(name)} must be a positive number of seconds")
        if not 0 <= self.keys_propagation_s < math.inf:
            raise ConfigError(f"{self.env_name('keys_propagation_s')} must be a number of seconds, 0 or more")
        unknown = set(self.user_algorithms) - set(USER_ALGORITHMS)
        if unknown or not self.user_algorithms:
            raise ConfigError(
                f"{self.env_name('user_algorithms')} must name some of {', '.join(USER_ALGORITHMS)}"
            )
        choices = {
            "redis_mode": ("standalone", "cluster"),
            "at_limit": AT_LIMIT_CHOICES,
            "on_store_error": ("closed", "open"),
            "log_level": LOG_LEVELS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{self.env_name(name)} must be one of {', '.join(allowed)}")
        for name in ("plan_limits", "plan_device_limits"):
            for plan, limit in getattr(self, name).items():
                if not (type(limit) is int and limit > 0):
                    raise ConfigError(f"{self.env_name(name)}: {plan!r} needs a positive integer")
        for plan, value in self.plan_at_limit.items():
            if value not in AT_LIMIT_CHOICES:
                raise ConfigError(f"{self.env_name('plan_at_limit')}: {plan!r} needs reject or evict-oldest")
        if not 1 <= self.max_id_chars <= MAX_ID_CHARS:
            raise ConfigError(f"{self.env_name('max_id_chars')} must be between 1 and {MAX_ID_CHARS}")
        if not 0 <= self.drain_s < math.inf:
            raise ConfigError(f"{self.env_name('drain_s')} must be a number of seconds, 0 or more")
        if self.max_requests < 1:
            raise ConfigError(f"{self.env_name('max_requests')} must be at least 1")
        if self.max_header_bytes < MIN_HEADER_BYTES:
            raise ConfigError(f"{self.env_name('max_header_bytes')} must be at least {MIN_HEADER_BYTES}")
        if self.max_body_bytes < MIN_BODY_BYTES:
            raise ConfigError(
                f"{self.env_name('max_body_bytes')} must be at least {MIN_BODY_BYTES}: the longest valid"
                " request (three ids of the longest length, JSON-escaped, and a token) must fit"
            )
        self._check_callers()
        self._check_redis()
        if self.user_jwks and not (self.user_issuer and self.user_audience):
            # RFC 8725 3.9, 3.10: a token the identity provider issued to another app must not pass.
            raise ConfigError(
                "CONCURRENCY_USER_ISSUER and CONCURRENCY_USER_AUDIENCE are required with"
                " CONCURRENCY_USER_JWKS"
            )
        if self.user_jwks.lower().startswith("http://") and not _loopback(self.user_jwks):
            # Whoever can change the key set on its way here can sign as any user.
            raise ConfigError(f"{self.env_name('user_jwks')} must be https:// (http:// on loopback only)")

    def _check_redis(self) -> None:
        if not self.redis_urls:
            raise ConfigError(f"{self.env_name('redis_url')} is empty")
        if not self.redis_ca_file:
            return
        if any(not url.startswith("rediss://") for url in self.redis_urls):
            raise ConfigError(
                f"{self.env_name('redis_ca_file')} needs TLS: rediss:// in {self.env_name('redis_url')}"
            )
        if not (os.path.isfile(self.redis_ca_file) and os.access(self.redis_ca_file, os.R_OK)):
            name = self.env_name("redis_ca_file")
            raise ConfigError(f"{name}={self.redis_ca_file!r} is not a readable file")

    def _check_callers(self) -> None:
        modes = set(self.caller_modes)
        if not modes <= set(CALLER_MODES):
            raise ConfigError(f"{self.env_name('auth')} must name some of {', '.join(CALLER_MODES)}")
        if "anonymous" in modes and len(modes) > 1:
            raise ConfigError(f"{self.env_name('auth')}: anonymous cannot be combined with another mode")
        if "user-token" in modes and not self.user_jwks:
            raise ConfigError(f"{self.env_name('auth')}=user-token needs {self.env_name('user_jwks')}")
        if "trusted-caller" in modes and not self.callers:
            raise ConfigError(f"{self.env_name('auth')}=trusted-caller needs {self.env_name('callers')}")
        for name, secret in self.callers:
            if not CALLER_NAME.fullmatch(name):
                raise ConfigError(
                    f"{self.env_name('callers')}: caller name {name!r} must match {CALLER_NAME.pattern}"
                )
            if len(secret) < MIN_SECRET_CHARS:
                raise ConfigError(
                    f"{self.env_name('callers')}: the secret of {name!r} must be at least"
                    f" {MIN_SECRET_CHARS} characters"
                )

    @property
    def caller_modes(self) -> tuple[str, ...]:
        """Who may act for a user: CONCURRENCY_AUTH, else what is configured, else anonymous."""
        if self.auth:
            return self.auth
        derived = ("user-token",) * bool(self.user_jwks) + ("trusted-caller",) * bool(self.callers)
        return derived or ("anonymous",)

    @property
    def redis_urls(self) -> tuple[str, ...]:
        """The Redis URL; in cluster mode the comma-separated startup nodes' URLs."""
        if self.redis_mode != "cluster":
            return (self.redis_url,) if self.redis_url.strip() else ()
        return tuple(url.strip() for url in self.redis_url.split(",") if url.strip())

    @property
    def longest_token_s(self) -> int:
        """How long a session's tokens can stay valid after Redis last confirmed it: the session TTL, and in
        open mode the degraded lifetime on top (a degraded token never outlives the confirmed expiry by
        more)."""
        if self.on_store_error == "open":
            return self.session_ttl_s + self.degraded_ttl_s
        return self.session_ttl_s

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """Return the variable a field is read from."""
        return str(cls.__dataclass_fields__[field_name].metadata["env"])

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> "Config":
        """Build from CONCURRENCY_* variables; explicit overrides win."""
        values = {}
        for field in dataclasses.fields(cls):
            env = field.metadata["env"]
            raw = environ.get(env)
            if raw is None or field.name in overrides:
                continue
            parse = field.metadata["parse"] or _parser(type(field.default))
            values[field.name] = parse(raw, env)
        return cls(**values, **overrides)


def _loopback(url: str) -> bool:
    """Whether `url` names a loopback host, as the fetch will read it: a bracketed IPv6 address alone, or a
    host without brackets or user info (`http://[::1].evil.example/` is not [::1] to urllib)."""
    try:
        netloc = urllib.parse.urlsplit(url).netloc
    except ValueError:
        return False
    host = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]@:]+)(:[0-9]*)?", netloc)
    return host is not None and host[1].strip("[]").lower() in ("localhost", "127.0.0.1", "::1")


def _parser(kind: type) -> Callable[[str, str], Any]:
    """Return the parser of a plain bool, int, float or str setting."""
    if kind is bool:
        return _bool

    def parse(raw: str, env: str) -> Any:
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} is not a valid {kind.__name__}") from None

    return parse
