"""Service configuration: one frozen object, read from CONCURRENCY_* variables."""

import dataclasses
import os

ENV_PREFIX = "CONCURRENCY_"


AT_LIMIT_CHOICES = ("reject", "evict-oldest")
# Where gunicorn's workers share Prometheus figures. prometheus_client reads it when first imported,
# so `serve` sets it before anything imports that library.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Config:
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_mode: str = "standalone"  # or "cluster"
    redis_timeout_s: float = 0.25
    max_streams: int = 3
    stream_limit: int = 0  # sessions of one streamId per user; 0: no such limit
    at_limit: str = "reject"  # or "evict-oldest"
    session_ttl_s: int = 60
    resume: bool = True  # re-admit a session whose Redis entry was lost, while its token is valid
    on_store_error: str = "closed"  # "open": admit with short-lived degraded tokens while Redis is down
    degraded_ttl_s: int = 45  # a little over one heartbeat interval
    buckets: int = 65536
    keys_dir: str = "keys.d"
    issuer: str = "concurrency-service"
    audience: str = "playback"
    token_leeway_s: int = 5
    token_cache_size: int = 32768  # tokens a worker remembers signing (about 700 bytes each); 0: off
    jwks_max_age_s: int = 300
    max_body_bytes: int = 4096
    max_id_chars: int = 256
    retry_after_s: int = 1
    access_log: bool = False  # one JSON line per request; metrics cover the counts either way
    log_level: str = "INFO"
    admin_token: str = ""  # secret for the session-management routes; empty: no admin access
    user_jwks: str = ""  # URL or file of the identity provider's JWKS; set: starts need a user token
    user_issuer: str = ""
    user_audience: str = ""
    user_algorithms: str = "RS256,ES256,EdDSA"
    limit_claim: str = "climit"
    behaviour_claim: str = "cbeh"
    plan_claim: str = "plan"
    plan_limits: str = ""  # e.g. "basic=1,standard=2,premium=4"
    plan_at_limit: str = ""  # e.g. "premium=evict-oldest"

    def __post_init__(self):
        at_least_one = ("max_streams", "session_ttl_s", "degraded_ttl_s", "buckets", "max_body_bytes")
        for name in (*at_least_one, "max_id_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.env_name(name)} must be at least 1")
        for name in ("stream_limit", "token_leeway_s", "token_cache_size", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{self.env_name(name)} must not be negative")
        if not self.redis_timeout_s > 0:
            raise ConfigError(f"{self.env_name('redis_timeout_s')} must be a positive number of seconds")
        choices = {
            "redis_mode": ("standalone", "cluster"),
            "at_limit": AT_LIMIT_CHOICES,
            "on_store_error": ("closed", "open"),
            "log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{self.env_name(name)} must be one of {', '.join(allowed)}")
        for plan, value in self.plan_map("plan_limits").items():
            if not (value.isdigit() and int(value) > 0):
                raise ConfigError(f"{self.env_name('plan_limits')}: {plan!r} needs a positive integer")
        for plan, value in self.plan_map("plan_at_limit").items():
            if value not in AT_LIMIT_CHOICES:
                raise ConfigError(f"{self.env_name('plan_at_limit')}: {plan!r} needs reject or evict-oldest")
        if self.user_jwks and not (self.user_issuer and self.user_audience):
            # RFC 8725 3.9, 3.10: a token the identity provider issued to another app must not pass.
            raise ConfigError(
                "CONCURRENCY_USER_ISSUER and CONCURRENCY_USER_AUDIENCE are required with USER_JWKS"
            )

    def plan_map(self, name):
        """Parse a `plan=value,plan=value` setting."""
        raw = getattr(self, name).strip()
        pairs = [item.partition("=") for item in raw.split(",")] if raw else []
        if any(not sep or not plan.strip() for plan, sep, _ in pairs):
            raise ConfigError(f"{self.env_name(name)} must look like 'basic=1,premium=4'")
        return {plan.strip(): value.strip() for plan, _, value in pairs}

    @property
    def longest_token_s(self):
        """How long any token we sign can be valid: the session TTL, or the degraded one in open mode."""
        if self.on_store_error == "open":
            return max(self.session_ttl_s, self.degraded_ttl_s)
        return self.session_ttl_s

    @staticmethod
    def env_name(field_name):
        """Return the variable for a field: `session_ttl_s` is CONCURRENCY_SESSION_TTL (seconds)."""
        return ENV_PREFIX + field_name.upper().removesuffix("_S")

    @classmethod
    def from_env(cls, environ=os.environ, **overrides):
        """Build from CONCURRENCY_* variables; explicit overrides win."""
        values = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(cls.env_name(field.name))
            if raw is None or field.name in overrides:
                continue
            kind = type(field.default)
            try:
                values[field.name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError:
                raise ConfigError(
                    f"{cls.env_name(field.name)}={raw!r} is not a valid {kind.__name__}"
                ) from None
        return cls(**values, **overrides)


def _parse_bool(raw):
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)
