"""The Redis session store: admit, refresh and release sessions, one script call each."""

import dataclasses
import functools
import hashlib
import ipaddress
import logging
import secrets
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import Encoder, parse_url
from redis.exceptions import (
    MaxConnectionsError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
)
from redis.retry import Retry

from . import scripts
from .errors import LimitReached, SessionGone, StoreUnavailable
from .scripting import FastScript, Pipeline

log = logging.getLogger(__name__)


def new_session_id():
    """Return 96 random bits, url-safe: unguessable and short enough to keep Redis small."""
    return secrets.token_urlsafe(12)


def escape(value):
    """Make an id safe to store between `|` separators."""
    return value.replace("%", "%25").replace("|", "%7C")


def unescape(value):
    return value.replace("%7C", "|").replace("%25", "%")


@dataclasses.dataclass(frozen=True)
class Session:
    user: str
    sid: str
    device: str
    stream: str
    started_ms: int | None = None
    expires_ms: int | None = None


@dataclasses.dataclass(frozen=True)
class Policy:
    """What a user may play: at most `limit` sessions, `stream_limit` of one stream (0: no such limit)."""

    limit: int
    stream_limit: int = 0
    evict_oldest: bool = False


@dataclasses.dataclass(frozen=True)
class Admission:
    session: Session
    status: str  # "initiated" or "updated"
    now_ms: int
    evicted: tuple = ()


def connect(config):
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


class LazyCluster:
    """A `RedisCluster` made now if the cluster answers, else on use; it remembers nodes that just failed.

    RedisCluster's constructor reads the slot map from the startup nodes and raises when none answers;
    made on use, the service starts without the cluster, answers 503 (and /readyz not ready) and
    recovers when the cluster appears. After a failed attempt, or after a node's connection failed or
    timed out, calls to it fail at once for `retry_after_s` instead of each waiting for the timeout:
    a hung master must not take every worker thread from the users of the healthy ones."""

    def __init__(self, urls, options, retry_after_s=1.0):
        self._urls = [url.strip() for url in urls.split(",") if url.strip()]
        if not self._urls:
            raise ValueError("the redis cluster URL is empty")
        for url in self._urls:  # a malformed URL fails at boot, not as a 503 on every request
            parsed = parse_url(url)
            if "path" in parsed or parsed.get("db", 0) != 0:
                raise ValueError(f"redis cluster URL {url!r}: no unix sockets, and only database 0")
        self._options = options
        self._retry_after_s = retry_after_s
        self._client = None
        self._failure = None  # (monotonic time, message) of the last failed attempt to connect
        self._lock = threading.Lock()
        self.failed = {}  # node name -> monotonic time until which calls to it fail at once
        self._next_slots_read = 0.0
        try:  # now if it answers: then every node it names is a startup node, not only the URL's
            self.client()
        except RedisClusterException as exc:
            log.warning("%s; trying again on use", exc)

    def client(self):
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

    def check_node(self, client, key):
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

    def node_failed(self, exc):
        """Remember the node of a connection error or timeout (redis-py sets `exc.connection`)."""
        connection = getattr(exc, "connection", None)
        if connection is not None and not isinstance(exc, MaxConnectionsError):
            self.failed[f"{connection.host}:{connection.port}"] = time.monotonic() + self._retry_after_s

    def slot_not_covered(self, client):
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

    def register_script(self, script):
        return ClusterScript(self, script)

    def get_encoder(self):
        return Encoder("utf-8", "strict", False)  # RedisCluster's default; the scripts' SHA1 needs it

    def ping(self):
        """Whether the cluster answers: its default node, or another primary if that one fails.

        Not every node: one dead shard fails its own users, not the readiness of every instance."""
        return self.client().ping(target_nodes=RedisCluster.DEFAULT_NODE)

    def close(self):
        if self._client is not None:
            self._client.disconnect_connection_pools()  # close() alone leaves them open with a URL
            self._client.close()

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.client(), name)


class ClusterScript(Script):
    """A Lua script on a LazyCluster: EVALSHA; where the key's node lacks the script, EVAL loads it there.

    redis-py's Script sends SCRIPT LOAD to every primary, which fails while any master is down and
    would then fail the healthy masters' users on every call until it is back."""

    def __call__(self, keys=None, args=None, client=None):
        cluster = self.registered_client
        client = client or cluster.client()
        keys, args = keys or [], args or []
        try:
            return self._run(cluster, client, keys, args)
        except SlotNotCoveredError:
            if not cluster.slot_not_covered(client):
                raise
        return self._run(cluster, client, keys, args)  # once more, on the map just read

    def _run(self, cluster, client, keys, args):
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


def _new_cluster(urls, options):
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


def _is_ip(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class RedisStore:
    """Sessions of all users in Redis hashes, one bucket per group of users."""

    def __init__(self, client, buckets, new_sid=new_session_id, timeout_s=0.25):
        self._client = client
        self._buckets = buckets
        self._new_sid = new_sid
        self._timeout_ms = int(timeout_s * 1000)
        self._server_offset_ms = None  # Redis clock minus this process's monotonic clock
        self._pipeline = None
        if isinstance(client, redis.Redis):  # the fast path; a cluster routes each call by its key
            self._pipeline = Pipeline(client)
            register = functools.partial(FastScript, self._pipeline)
        else:
            register = client.register_script
        self._admit = register(scripts.ADMIT)
        self._refresh = register(scripts.REFRESH)
        self._release = register(scripts.RELEASE)
        self._kick = register(scripts.KICK)
        self._list = register(scripts.LIST)

    def _learn_server_time(self, now_ms):
        self._server_offset_ms = now_ms - time.monotonic_ns() // 1_000_000

    def _deadline_ms(self):
        """Return the Redis time after which a start must not run (0: not known yet).

        A start sent just before Redis hangs runs when it wakes, long after its player was told 503:
        it would hold a slot nobody plays. Redis refuses it once its answer would come too late."""
        if self._server_offset_ms is None:  # learned from the first answer of Redis
            return 0
        return time.monotonic_ns() // 1_000_000 + self._server_offset_ms + self._timeout_ms

    def bucket_key(self, user):
        """Return the hash holding `user`'s sessions; its tag is a hash, so ids never pick a slot."""
        digest = hashlib.blake2b(user.encode(), digest_size=8).digest()
        return "cs:{%x}" % (int.from_bytes(digest, "big") % self._buckets)

    def admit(self, user, device, stream, policy, ttl_ms, tombstone_ms):
        """Start a session or renew the same user+device+stream; at a limit evict or raise LimitReached."""
        evict = "1" if policy.evict_oldest else "0"
        args = (escape(user), escape(device), escape(stream), self._new_sid(), ttl_ms)
        args += (policy.limit, policy.stream_limit, evict, tombstone_ms, self._deadline_ms())
        reply = self._call(self._admit, user, args)
        status, now_ms = reply[0].decode(), int(reply[1])
        self._learn_server_time(now_ms)
        if status == "late":
            raise StoreUnavailable("session store answered too late; retry shortly")
        if status == "limit":
            limit, scope = policy.limit, "account"
            message = f"user already plays {limit} of {limit} allowed streams"
        elif status == "stream_limit":
            limit, scope = policy.stream_limit, "stream"
            message = f"this stream already plays on {limit} devices"
        if status in ("limit", "stream_limit"):
            sessions = [_public(s) for s in _sessions(user, reply[2:])]
            raise LimitReached(message, limit=limit, scope=scope, sessions=sessions)
        session = Session(user, reply[2].decode(), device, stream)
        return Admission(session, status, now_ms, tuple(sid.decode() for sid in reply[3:]))

    def refresh(self, session, ttl_ms, token_exp_ms=0, limit=0, stream_limit=0):
        """Extend a live session, or resume a lost one; raise SessionGone(reason) if it ended.

        Return (status, server ms) with status "updated" or "resumed"."""
        args = (session.sid, escape(session.user), ttl_ms, token_exp_ms, limit)
        args += (escape(session.device), escape(session.stream), stream_limit)
        reply = self._call(self._refresh, session.user, args)
        status, now_ms = reply[0].decode(), int(reply[1])
        self._learn_server_time(now_ms)
        if status == "gone":
            reason = reply[2].decode()
            raise SessionGone(f"session has ended ({reason}); stop playback", reason=reason)
        return status, now_ms

    def release(self, session, tombstone_ms):
        """End a session at once; return whether it was live."""
        args = (session.sid, escape(session.user), tombstone_ms)
        return bool(self._call(self._release, session.user, args))

    def kick(self, user, sid, tombstone_ms):
        """End one session of `user` (or all when `sid` is None); return the sids ended."""
        reply = self._call(self._kick, user, (escape(user), sid or "", tombstone_ms))
        return [sid.decode() for sid in reply]

    def sessions(self, user):
        """Return (server ms, the live sessions of `user`, oldest first)."""
        reply = self._call(self._list, user, (escape(user),))
        return int(reply[0]), _sessions(user, reply[1:])

    def ping(self):
        """Whether Redis answers, through the same gate as the scripts."""
        try:
            if self._pipeline:
                return self._pipeline.execute("PING") in (b"PONG", "PONG")
            return bool(self._client.ping())
        except (RedisError, RedisClusterException):
            return False

    def _call(self, script, user, args):
        try:
            return script(keys=[self.bucket_key(user)], args=args)
        except (RedisError, RedisClusterException) as exc:
            log.warning("redis unavailable: %s", exc)
            raise StoreUnavailable("session store is unavailable; retry shortly") from None


def _sessions(user, flat):
    """Decode the scripts' flattened listing: sid, started, expires, device, stream (times base 36)."""
    return [
        Session(
            user,
            flat[i].decode(),
            unescape(flat[i + 3].decode()),
            unescape(flat[i + 4].decode()),
            started_ms=int(flat[i + 1], 36),
            expires_ms=int(flat[i + 2], 36),
        )
        for i in range(0, len(flat), 5)
    ]


def _public(session):
    """Return a session as the 403 listing shows it."""
    return {
        "sessionKey": session.sid,
        "deviceId": session.device,
        "streamId": session.stream,
        "started": session.started_ms // 1000,
    }
