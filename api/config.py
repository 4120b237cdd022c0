"""Service configuration: one frozen object, read from CONCURRENCY_* variables."""

import dataclasses
import os

ENV_PREFIX = "CONCURRENCY_"


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Config:
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_mode: str = "standalone"  # or "cluster"
    redis_timeout_s: float = 0.25
    max_streams: int = 3
    session_ttl_s: int = 60
    buckets: int = 65536
    keys_dir: str = "keys.d"
    issuer: str = "concurrency-service"
    audience: str = "playback"
    token_leeway_s: int = 5
    jwks_max_age_s: int = 300
    max_body_bytes: int = 4096
    max_id_chars: int = 256
    retry_after_s: int = 1

    def __post_init__(self):
        positive = (
            "max_streams",
            "session_ttl_s",
            "buckets",
            "max_body_bytes",
            "max_id_chars",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.env_name(name)} must be at least 1")
        if self.redis_mode not in ("standalone", "cluster"):
            raise ConfigError(f"{self.env_name('redis_mode')} must be 'standalone' or 'cluster'")

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
                values[field.name] = kind(raw)
            except ValueError:
                raise ConfigError(
                    f"{cls.env_name(field.name)}={raw!r} is not a valid {kind.__name__}"
                ) from None
        return cls(**values, **overrides)
