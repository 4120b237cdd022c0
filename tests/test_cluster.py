"""The service on a real 3-master Redis Cluster on loopback: the store, the HTTP contract, races, failures.

The store, HTTP and race suites run here unchanged, imported from their modules: this module's fixtures
(`any_redis`, `real_redis`, `store`, `real_store`, `server`) replace conftest's with cluster ones."""

import collections
import random
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time

import pytest
import redis
from conftest import TEST_TTL_S, ServerProcess, wait_until
from redis.cluster import RedisCluster
from test_http import (  # noqa: F401 (the imported tests run here)
    assert_error,
    bearer,
    heartbeat,
    new_user,
    start,
    started,
    stop,
    test_escaped_ids_do_not_collide,
    test_health_and_readiness,
    test_heartbeat_returns_a_fresh_token_and_extends_the_session,
    test_ids_of_any_content_work_and_come_back_intact,
    test_legacy_and_native_routes_share_sessions,
    test_limit_answers_403_listing_the_holders,
    test_native_start_heartbeat_stop,
    test_same_user_device_stream_again_is_idempotent,
    test_start_admits_and_returns_a_verifiable_token,
    test_stop_frees_the_slot_at_once_and_the_session_never_comes_back,
    test_stop_requires_the_token,
    test_token_of_one_session_cannot_touch_another,
)
from test_http import test_every_key_has_a_ttl as test_http_every_key_has_a_ttl  # noqa: F401
from test_races import (  # noqa: F401
    test_concurrent_identical_starts_make_one_session,
    test_concurrent_starts_for_many_users_admit_the_limit_each,
    test_concurrent_starts_for_one_user_admit_exactly_the_limit,
    test_heartbeats_racing_a_stop_never_bring_the_session_back,
    test_mixed_start_heartbeat_stop_leave_exactly_the_live_sessions,
)
from test_store import (  # noqa: F401
    test_admit_until_the_limit,
    test_ended_sessions_never_resume,
    test_every_key_has_a_ttl,
    test_evict_oldest_admits_and_ends_the_least_recently_started,
    test_ids_of_any_content,
    test_kick_one_and_all,
    test_list_sessions,
    test_lost_session_does_not_resume_over_the_limit_or_with_an_expired_token,
    test_lost_session_resumes_while_its_token_is_valid,
    test_refresh_needs_the_owner,
    test_release_frees_the_slot_and_refresh_never_revives,
    test_same_device_and_stream_renews_the_same_session,
    test_stop_leaves_a_tombstone_that_says_stopped,
    test_stop_of_a_lost_session_still_blocks_resumption,
    test_stream_limit,
    test_stream_limit_with_eviction,
    test_times_come_from_the_redis_server,
    test_users_in_one_bucket_do_not_share_a_limit,
)

from api.config import Config
from api.connection import connect
from api.errors import StoreUnavailable
from api.sessions import Limits
from api.store import RedisStore

pytestmark = [pytest.mark.http, pytest.mark.redis]

CLUSTER_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
TTL_MS, TOMB_MS = 60_000, 65_000


def cluster_ports(count):
    """Return `count` ports whose cluster bus ports are free too (ephemeral ports + 10000 may overflow)."""
    ports = []
    while len(ports) < count:
        port = random.randrange(20000, 30000)
        if port in ports or not all(_free(p) for p in (port, port + CLUSTER_BUS_OFFSET)):
            continue
        ports.append(port)
    return ports


def _free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class LoopbackCluster:
    """Three redis-server masters on loopback joined by `redis-cli --cluster create`; `replicas` each.

    The nodes notice a dead peer after one second and keep serving their own slots meanwhile
    (`cluster-require-full-coverage no`), as the operations guide asks of a production cluster."""

    def __init__(self, workdir, ports=None, create=True, replicas=0):
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            pytest.fail("redis-server and redis-cli are needed; run scripts/test, which installs them")
        self.ports = ports or cluster_ports(3 * (1 + replicas))
        self.masters = self.ports  # known once the cluster is made
        self._replicas = replicas
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        self._procs = {}
        self.down = set()  # paused or killed
        for port in self.ports:
            args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            args += ["--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"]
            self._procs[port] = subprocess.Popen(
                [*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
        self.nodes = {port: redis.Redis(port=port, socket_timeout=2) for port in self.ports}
        self._cli = cli
        try:
            for port in self.ports:
                wait_until(lambda port=port: self._answers(port), what=f"redis-server on port {port}")
            if create:
                self.create()
        except BaseException:
            self.stop()
            raise

    def create(self):
        """Join the nodes and share the slots out, as an operator would; wait until all agree."""
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        replicas = ["--cluster-replicas", str(self._replicas)]
        subprocess.run(
            [self._cli, "--cluster", "create", *addresses, *replicas, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        wait_until(self._ready, timeout_s=20, what="cluster_state:ok on every node")
        self.masters = self.masters_now()

    def wait_for_replication(self):
        """Wait until every replica has every write its master has."""

        def caught_up():
            for port in self.masters:
                info = self.nodes[port].info("replication")
                replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
                if any(replica["offset"] < info["master_repl_offset"] for replica in replicas):
                    return False
            return True

        wait_until(caught_up, what="the replicas to catch up")

    def masters_now(self):
        """Return the ports of the masters serving slots, as a live node sees them."""
        node = next(node for port, node in self.nodes.items() if port not in self.down)
        return sorted(int(master[1]) for _first, _last, master, *_ in node.execute_command("CLUSTER SLOTS"))

    def _answers(self, port):
        try:
            return self.nodes[port].ping()
        except redis.ConnectionError:
            return False

    def _ready(self):
        for node in self.nodes.values():
            info = node.cluster("info")
            if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(self.nodes):
                return False
            replication = node.info("replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
        return True

    def master_of(self, key):
        """Return the port of the master serving `key`'s slot, as the nodes say."""
        node = next(node for port, node in self.nodes.items() if port not in self.down)
        slot = node.cluster("keyslot", key)
        for first, last, master, *_replicas in node.execute_command("CLUSTER SLOTS"):
            if first <= slot <= last:
                return int(master[1])
        raise AssertionError(f"slot {slot} is served by no master")

    def pause(self, port):
        self.down.add(port)
        self._procs[port].send_signal(signal.SIGSTOP)

    def kill(self, port):
        self.down.add(port)
        self._procs[port].kill()
        self._procs[port].wait(timeout=10)

    def stop(self):
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self._procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for node in self.nodes.values():
            node.close()


class Inspector(RedisCluster):
    """A plain redis-py cluster client for the tests' own reads; its KEYS asks every master."""

    def keys(self, pattern="*", **kwargs):
        return super().keys(pattern, target_nodes=RedisCluster.PRIMARIES, **kwargs)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A healthy cluster for the whole session: nothing here kills its nodes."""
    own = LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    yield own
    own.stop()


@pytest.fixture(scope="session")
def inspector(cluster):
    client = Inspector(host="127.0.0.1", port=cluster.ports[0])
    yield client
    client.close()


@pytest.fixture
def any_redis(inspector):
    """Replaces conftest's: the store suite's tests imported below run on the cluster."""
    inspector.flushall()
    return inspector


@pytest.fixture
def real_redis(any_redis):
    return any_redis


def cluster_config(url, **overrides):
    return Config(redis_mode="cluster", redis_url=url, **overrides)


@pytest.fixture(scope="session")
def cluster_store(cluster):
    """The store as the service makes it in cluster mode: through `connect`."""
    client = connect(cluster_config(cluster.url))
    yield RedisStore(client, buckets=64)
    client.close()


@pytest.fixture
def store(any_redis, cluster_store):
    return cluster_store


@pytest.fixture
def real_store(any_redis, cluster_store):
    return cluster_store


@pytest.fixture(scope="session")
def server(cluster, keys_dir):
    """The real service, two workers of four threads, in cluster mode."""
    process = ServerProcess(cluster.url, keys_dir, redis_mode="cluster", session_ttl_s=TEST_TTL_S)
    yield process
    process.stop()


# --- the cluster itself ---------------------------------------------------------------------------


def holders(cluster, ports=None):
    """Return {sessionKey: port of the master whose memory holds it}, read from each master directly."""
    found = {}
    for port in ports or cluster.masters:
        node = cluster.nodes[port]
        for key in node.scan_iter(match="cs:*"):
            assert cluster.master_of(key) == port, (key, port)  # each key lives where its slot says
            found.update(dict.fromkeys((sid.decode() for sid in node.hkeys(key)), port))
    return found


def test_users_spread_over_all_three_masters(cluster, server, real_redis):
    sessions = {started(server, new_user("spread"), "tv")[0] for _ in range(30)}
    where = holders(cluster)
    assert set(where) == sessions
    per_master = collections.Counter(where.values())
    assert set(per_master) == set(cluster.ports), per_master


def script_calls(cluster):
    """Return {port: {command: calls}} of the script commands each node ran since its stats were reset."""
    calls = {}
    for port, node in cluster.nodes.items():
        stats = node.info("commandstats")
        calls[port] = {
            name.removeprefix("cmdstat_"): stat["calls"]
            for name, stat in stats.items()
            if name.startswith(("cmdstat_eval", "cmdstat_script"))
        }
    return calls


def test_each_call_is_one_evalsha_on_one_node(cluster, store, real_redis):
    user = "one-trip"

    def every_operation():
        session = store.admit(user, "phone", "film", Limits(2), TTL_MS, TOMB_MS).session
        store.refresh(session, TTL_MS)
        store.release(session, TOMB_MS)
        store.sessions(user)
        store.kick(user, None, TOMB_MS)

    every_operation()  # the scripts are on every node now
    for node in cluster.nodes.values():
        node.config_resetstat()
    every_operation()
    owner = cluster.master_of(store.bucket_key(user))
    assert script_calls(cluster) == {port: {"evalsha": 5} if port == owner else {} for port in cluster.ports}


def test_a_node_that_lost_its_scripts_loads_them_alone(cluster, store, real_redis):
    """A restarted or promoted node has no scripts: EVAL loads them there, SCRIPT LOAD goes nowhere."""
    users = [f"flush-{i}" for i in range(12)]
    flushed = cluster.ports[1]
    assert any(cluster.master_of(store.bucket_key(user)) == flushed for user in users)
    for user in users:
        store.admit(user, "tv", "film", Limits(2), TTL_MS, TOMB_MS)
    cluster.nodes[flushed].script_flush()
    for node in cluster.nodes.values():
        node.config_resetstat()
    for user in users:
        assert store.admit(user, "phone", "film", Limits(2), TTL_MS, TOMB_MS).status == "initiated"
    calls = script_calls(cluster)
    assert calls[flushed]["eval"] == 1  # one: the scripts are back after it
    assert all("script|load" not in c for c in calls.values())
    assert all("eval" not in c for port, c in calls.items() if port != flushed)


# --- outages --------------------------------------------------------------------------------------


def assert_store_unavailable(answer):
    assert_error(answer, 503, "store_unavailable")
    assert int(answer.headers["retry-after"]) >= 1


def timed(call):
    began = time.monotonic()
    answer = call()
    return answer, time.monotonic() - began


def test_service_starts_without_the_cluster_and_recovers(keys_dir, tmp_path):
    ports = cluster_ports(3)
    server = late = None
    try:
        server = ServerProcess(f"redis://127.0.0.1:{ports[0]}/0", keys_dir, redis_mode="cluster")
        assert server.request("GET", "/healthz").status == 200
        for _ in range(2):  # nothing listening; then nodes up, but no cluster made of them yet
            not_ready = server.request("GET", "/readyz")
            assert not_ready.status == 503
            assert not_ready.json()["checks"]["redis"] is False
            answer, took = timed(lambda: start(server, new_user(), "tv"))
            assert_store_unavailable(answer)
            assert took < 1.0
            if late is None:
                late = LoopbackCluster(tmp_path, ports, create=False)

        late.create()
        created = time.monotonic()
        wait_until(lambda: server.request("GET", "/readyz").status == 200, what="ready once the cluster is")
        print(f"\n[cluster outage] ready {time.monotonic() - created:.2f}s after the cluster was made")
        # A worker that tried while the cluster was forming tries again on use a second later.
        time.sleep(max(0.0, created + 1.0 - time.monotonic()))
        for _ in range(10):
            answer = start(server, new_user(), "tv")
            assert answer.status == 200, server.output()
            sid, token = answer.json()["sessionKey"], answer.json()["token"]
            assert heartbeat(server, sid, token).status == 200, server.output()
            assert stop(server, sid, token).status == 204, server.output()
        assert "Traceback" not in server.output()
    finally:
        if server is not None:
            server.stop()
        if late is not None:
            late.stop()


def hammer(server, lost, kept, seconds, threads=8):
    """Heartbeat users of both kinds from `threads` threads for `seconds`; return [(kind, status, s)]."""
    deadline = time.monotonic() + seconds
    results, errors = [], []

    def run(seed):
        pick = random.Random(seed)
        try:
            while time.monotonic() < deadline:
                kind = pick.choice(("lost", "kept"))
                sid, token = pick.choice(lost if kind == "lost" else kept)
                answer, took = timed(lambda sid=sid, token=token: heartbeat(server, sid, token))
                if kind == "lost":
                    assert_store_unavailable(answer)
                else:
                    assert answer.status == 200, answer.body
                results.append((kind, answer.status, took))
        except BaseException as exc:  # reported on the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(seed,)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=seconds + 30)
    assert not any(worker.is_alive() for worker in workers), "a request hung"
    if errors:
        raise errors[0]
    return results


def latency_report(phase, results):
    lines = []
    for kind in ("lost", "kept"):
        took = sorted(t * 1000 for k, _status, t in results if k == kind)
        assert took, f"no {kind} requests during {phase}"
        p50, p99 = statistics.median(took), took[min(len(took) - 1, int(len(took) * 0.99))]
        lines.append(f"{kind}: n={len(took)} p50={p50:.1f}ms p99={p99:.1f}ms max={took[-1]:.1f}ms")
    print(f"\n[cluster outage] {phase}: " + "; ".join(lines))
    return {kind: max(t for k, _s, t in results if k == kind) for kind in ("lost", "kept")}


def node_flags(cluster, port, seen_from):
    nodes = cluster.nodes[seen_from].cluster("nodes")
    return nodes[f"127.0.0.1:{port}"]["flags"]


def test_a_hung_then_dead_master_fails_only_its_own_users(keys_dir, tmp_path):
    """Users on the other masters keep working; the dead master's users get 503 quickly; nothing hangs."""
    doomed = LoopbackCluster(tmp_path)
    victim, survivor = doomed.ports[0], doomed.ports[1]
    urls = ",".join(f"redis://127.0.0.1:{port}" for port in doomed.ports)  # the victim's first
    server, clients = None, []
    try:
        server = ServerProcess(urls, keys_dir, redis_mode="cluster", session_ttl_s=TEST_TTL_S)
        sessions = [started(server, new_user("outage"), "tv") for _ in range(24)]
        where = holders(doomed)
        lost = [s for s in sessions if where[s[0]] == victim]
        kept = [s for s in sessions if where[s[0]] != victim]
        assert lost and kept

        doomed.pause(victim)  # hung: connections open, nothing answers; each try waits for the timeout
        hung = latency_report("master paused (SIGSTOP)", hammer(server, lost, kept, seconds=2.0))
        doomed.kill(victim)
        killed = latency_report("master killed (SIGKILL)", hammer(server, lost, kept, seconds=1.0))
        wait_until(lambda: "fail" in node_flags(doomed, victim, survivor), what="the cluster to flag it")
        flagged = latency_report("master flagged fail", hammer(server, lost, kept, seconds=1.0))
        for worst in (hung, killed, flagged):
            assert worst["lost"] < 2.0 and worst["kept"] < 2.0, worst

        assert server.request("GET", "/readyz").status == 200  # the instance still serves two thirds
        doomed.nodes[survivor].script_flush()  # as on a restarted node: the scripts load there alone
        for sid, token in kept:
            assert heartbeat(server, sid, token).status == 200
        answers = [start(server, new_user("after"), "tv") for _ in range(12)]
        assert {a.status for a in answers} == {200, 503}
        alive = holders(doomed, [port for port in doomed.ports if port != victim])
        assert all(a.json()["sessionKey"] in alive for a in answers if a.status == 200)
        assert "Traceback" not in server.output()

        # A process starting now: with the other nodes listed it serves their users; with only the
        # dead node's URL, nobody (hence: list several nodes, or a DNS name that follows the cluster).
        clients.append(connect(cluster_config(urls)))
        clients.append(connect(cluster_config(f"redis://127.0.0.1:{victim}")))
        listed, only_dead = (RedisStore(client, buckets=64) for client in clients)
        for i in range(12):
            user = f"late-{i}"
            if doomed.master_of(listed.bucket_key(user)) == victim:
                with pytest.raises(StoreUnavailable):
                    listed.admit(user, "tv", "film", Limits(1), TTL_MS, TOMB_MS)
            else:
                assert listed.admit(user, "tv", "film", Limits(1), TTL_MS, TOMB_MS).status == "initiated"
            with pytest.raises(StoreUnavailable):
                only_dead.admit(user, "tv", "film", Limits(1), TTL_MS, TOMB_MS)
    finally:
        for client in clients:
            client.close()
        if server is not None:
            server.stop()
        doomed.stop()


def test_a_replica_takes_over_and_its_users_come_back(keys_dir, tmp_path):
    """With a replica per master, a killed master's users get 503 until its replica is promoted, then 200."""
    replicated = LoopbackCluster(tmp_path, replicas=1)
    server = None
    try:
        server = ServerProcess(replicated.url, keys_dir, redis_mode="cluster", session_ttl_s=TEST_TTL_S)
        sessions = [started(server, new_user("failover"), "tv") for _ in range(24)]
        where = holders(replicated)
        victim = replicated.masters[0]
        lost = [s for s in sessions if where[s[0]] == victim]
        kept = [s for s in sessions if where[s[0]] != victim]
        assert lost and kept
        replicated.wait_for_replication()

        replicated.kill(victim)
        killed = time.monotonic()
        waiting = list(lost)
        worst = 0.0
        while waiting:
            assert time.monotonic() - killed < 15, "no replica took over"
            for sid, token in kept:
                assert heartbeat(server, sid, token).status == 200
            for sid, token in list(waiting):
                answer, took = timed(lambda sid=sid, token=token: heartbeat(server, sid, token))
                worst = max(worst, took)
                if answer.status == 200:
                    waiting.remove((sid, token))
                else:
                    assert_store_unavailable(answer)
            time.sleep(0.05)
        print(
            f"\n[cluster outage] failover: the dead master's users answered again "
            f"{time.monotonic() - killed:.2f}s after the kill; worst request {worst * 1000:.0f}ms"
        )
        replicated.masters = replicated.masters_now()
        assert victim not in replicated.masters
        assert {sid for sid, _token in lost} <= set(holders(replicated))  # replicated, not resumed
        assert "Traceback" not in server.output()
    finally:
        if server is not None:
            server.stop()
        replicated.stop()
