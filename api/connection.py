"""Connect to Redis: a standalone client or a Redis Cluster, every call bounded by the configured timeout."""

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .cluster import LazyCluster
from .config import Config


def connect(config: Config) -> redis.Redis | LazyCluster:
    """Return a redis-py client whose calls fail within the configured timeout.

    In cluster mode CONCURRENCY_REDIS_URL is one URL or a comma-separated list of them (startup nodes;
    the first one's credentials and TLS apply to all), and an unreachable cluster is not an error yet."""
    options = {
        "socket_timeout": config.redis_timeout_s,
        "socket_connect_timeout": config.redis_timeout_s,
    }
    if config.redis_mode == "cluster":
        return LazyCluster(config.redis_url, options, retry_after_s=max(1.0, config.redis_timeout_s))
    return redis.Redis.from_url(config.redis_url, retry=Retry(NoBackoff(), 1), **options)
