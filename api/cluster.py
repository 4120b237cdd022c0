"""Redis Cluster: a client made on first success, scripts that load where they are missing, nodes
that just failed answered at once."""

import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.exceptions import (
    MaxConnectionsError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
)
from redis.retry import Retry

from .lua import Script

log = logging.getLogger(__name__)


class LazyCluster:
    """A `RedisCluster` made now if the cluster answers, else on use; it remembers nodes that just failed.

    RedisCluster's constructor reads the slot map from the startup nodes and raises when none answers;
    made on use, the service starts without the cluster, answers 503 (and /readyz not ready) and
    recovers when the cluster appears. After a failed attempt, or after a node's connection failed or
    timed out, calls to it fail at once for `retry_after_s` instead of each waiting for the timeout:
    a hung master must not take every worker thread from the users of the healthy ones."""

    def __init__(self, urls: str, options: dict[str, Any], retry_after_s: float = 1.0) -> None:
        self._urls = [url.strip() for url in urls.split(",") if url.strip()]
        if not self._urls:
            raise ValueError("the redis cluster URL is empty")
        for url in self._urls:  # a malformed URL fails at boot, not as a 503 on every request
            parsed = parse_url(url)
            if "path" in parsed or parsed.get("db", 0) != 0:
                raise ValueError(f"redis cluster URL {url!r}: no unix sockets, and only database 0")
        self._options = options
        self._retry_after_s = retry_after_s
        self._client: RedisCluster | None = None
        self._failure: tuple[float, str] | None = None  # (monotonic time, message) of the last failed try
        self._lock = threading.Lock()
        self.failed: dict[str, float] = {}  # node name -> monotonic time until which calls to it fail at once
        self._next_slots_read = 0.0
        self._scripts: dict[str, ClusterScript] = {}
        try:  # now if it answers: then every node it names is a startup node, not only the URL's
            self.client()
        except RedisClusterException as exc:
            log.warning("%s; trying again on use", exc)

    def client(self) -> RedisCluster:
        """Return the RedisCluster, making it if needed; raise RedisClusterException while unreachable."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                if self._failure and time.monotonic() - self._failure[0] < self._retry_after_s:
                    raise RedisClusterException(self._failure[1])
                try:
                    self._client = _new_cluster(self._urls, self._options)
                except Exception as exc:  # RedisError, RedisClusterException, IndexError if no slots yet...
                    message = f"redis cluster unreachable: {type(exc).__name__}: {exc}"
                    self._failure = (time.monotonic(), message)
                    raise RedisClusterException(message) from exc
            return self._client

    def check_node(self, client: RedisCluster, key: str) -> str | None:
        """Raise RedisClusterException if the node serving `key` failed less than `retry_after_s` ago.

        Once that time is up, let one call through to try it (and return the node's name) while the
        others keep failing at once for another `retry_after_s`."""
        name = client.get_node_from_key(key).name
        until = self.failed.get(name)
        if until is None:
            return None
        now = time.monotonic()
        if now < until:
            raise RedisClusterException(f"redis node {name} failed less than {self._retry_after_s}s ago")
        self.failed[name] = now + self._retry_after_s
        return name

    def node_failed(self, exc: Exception) -> None:
        """Remember the node of a connection error or timeout (redis-py sets `exc.connection`)."""
        connection = getattr(exc, "connection", None)
        if connection is not None and not isinstance(exc, MaxConnectionsError):
            self.failed[f"{connection.host}:{connection.port}"] = time.monotonic() + self._retry_after_s

    def slot_not_covered(self, client: RedisCluster) -> bool:
        """Read the slot map again, at most once per `retry_after_s`; return whether it was read.

        redis-py does not when the map it holds lacks a slot (say, read while the cluster was being
        made): its users would fail until some other error made it read the map again."""
        now = time.monotonic()
        if now < self._next_slots_read:
            return False
        self._next_slots_read = now + self._retry_after_s
        try:
            client.nodes_manager.initialize()
        except (RedisError, RedisClusterException) as exc:
            log.warning("reading the redis cluster's slot map: %s", exc)
            return False
        return True

    async def run(self, script: Script, key: str, args: Sequence[object]) -> Any:
        """Run `script` on the node serving `key` (blocking the calling thread; see api/sync.py)."""
        runner = self._scripts.get(script.name)
        if runner is None:
            runner = self._scripts[script.name] = ClusterScript(self, script.source)
        return runner(keys=[key], args=args)

    async def ping(self) -> bool:
        """Whether the cluster answers: its default node, or another primary if that one fails.

        Not every node: one dead shard fails its own users, not the readiness of every instance."""
        return bool(self.client().ping(target_nodes=RedisCluster.DEFAULT_NODE))

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect_connection_pools()  # close() alone leaves them open with a URL
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.client(), name)


class ClusterScript:
    """A Lua script on a LazyCluster: EVALSHA; where the key's node lacks the script, EVAL loads it there.

    redis-py's Script sends SCRIPT LOAD to every primary, which fails while any master is down and
    would then fail the healthy masters' users on every call until it is back."""

    def __init__(self, cluster: LazyCluster, script: str) -> None:
        self._cluster = cluster
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()

    def __call__(
        self, keys: Sequence[str] | None = None, args: Sequence[Any] | None = None, client: Any = None
    ) -> Any:
        cluster = self._cluster
        client = client or cluster.client()
        keys, args = keys or [], args or []
        try:
            return self._run(cluster, client, keys, args)
        except SlotNotCoveredError:
            if not cluster.slot_not_covered(client):
                raise
        return self._run(cluster, client, keys, args)  # once more, on the map just read

    def _run(
        self, cluster: LazyCluster, client: RedisCluster, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        trying = cluster.check_node(client, keys[0]) if cluster.failed else None  # {}: all answer
        try:
            try:
                reply = client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                reply = client.eval(self.script, len(keys), *keys, *args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            cluster.node_failed(exc)
            raise
        if trying is not None:
            cluster.failed.pop(trying, None)
        return reply


def _new_cluster(urls: list[str], options: dict[str, Any]) -> RedisCluster:
    nodes = [parse_url(url) for url in urls]
    return RedisCluster(
        url=urls[0],
        startup_nodes=[ClusterNode(node["host"], node.get("port", 6379)) for node in nodes[1:]],
        # One retry, no backoff: after a failover the retry reaches the new master (redis-py reads the
        # slot map again after a connection error), and a hung master answers within twice the socket
        # timeout instead of after redis-py's default of three retries with backoff.
        retry=Retry(NoBackoff(), 1),
        # Uncovered slots fail their own users (SlotNotCoveredError), not the client as a whole.
        require_full_coverage=False,
        # Only IPs: use the nodes found as startup nodes, so the listed ones may go away. Any name (such
        # as a configuration endpoint): keep asking it, it follows the cluster in DNS.
        dynamic_startup_nodes=all(_is_ip(node["host"]) for node in nodes),
        **options,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
