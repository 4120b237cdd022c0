"""Connect to Redis: a standalone client or a Redis Cluster, over TLS for rediss:// URLs, as the configured
Redis user, every call bounded by the configured timeout."""

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from .cluster import LazyCluster
from .config import Config


def connect(config: Config) -> redis.Redis | LazyCluster:
    """Return a redis-py client whose calls fail within the configured timeout.

    In cluster mode CONCURRENCY_REDIS_URL is one URL or a comma-separated list of them (startup nodes;
    the first one's credentials and TLS apply to all), and an unreachable cluster is not an error yet."""
    urls, options = redis_target(config)
    if config.redis_mode == "cluster":
        return LazyCluster(",".join(urls), options, retry_after_s=max(1.0, config.redis_timeout_s))
    return redis.Redis.from_url(urls[0], retry=Retry(NoBackoff(), 1), **options)


def redis_target(config: Config) -> tuple[list[str], dict[str, Any]]:
    """Return the Redis URLs without their credentials, and the options of every connection.

    The user and password are the first URL's, each replaced by CONCURRENCY_REDIS_USERNAME or
    CONCURRENCY_REDIS_PASSWORD where set: they leave the URLs because redis-py lets a URL's win over
    options. A rediss:// URL verifies the server's certificate, against CONCURRENCY_REDIS_CA_FILE if set
    (else the system's CAs), and its host name (unless the URL says `?ssl_check_hostname=false`)."""
    urls = list(config.redis_urls)
    first = parse_url(urls[0])
    options: dict[str, Any] = {
        "socket_timeout": config.redis_timeout_s,
        "socket_connect_timeout": config.redis_timeout_s,
        # On connect, no CLIENT SETINFO and no CLIENT MAINT_NOTIFICATIONS (Redis Enterprise's, tried by
        # redis-py 8 over RESP3): round trips on every new connection for commands outside the ACL
        # (docs/operations.md), refused with NOPERM into the ACL log each time.
        "driver_info": None,
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    username = config.redis_username or first.get("username")
    password = config.redis_password or first.get("password")
    if username:
        options["username"] = username
    if password:
        options["password"] = password
    if urls[0].startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True  # a URL's ?ssl_check_hostname=false wins
        if config.redis_ca_file:
            options["ssl_ca_certs"] = config.redis_ca_file
    return [_without_userinfo(url) for url in urls], options


def _without_userinfo(url: str) -> str:
    """Drop `user:password@` from the URL's authority, leave the rest as written (urlunsplit would turn
    unix:///path into unix:/path)."""
    scheme, separator, rest = url.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    return scheme + separator + rest[:end].rpartition("@")[2] + rest[end:]
