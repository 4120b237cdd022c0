"""What only a Redis Cluster has: slots spread over masters, failover, a hung or dead master.

The store, HTTP and race suites run on the cluster too: their tests marked `backends` (conftest.py)."""

import collections
import itertools
import random
import statistics
import threading
import time

import pytest
from blocking import Blocking
from cluster import LoopbackCluster, cluster_ports
from layout import SESSION_KEYS, user_key
from players import assert_error, legacy_heartbeat, legacy_start, legacy_started, legacy_stop, new_user
from processes import TEST_TTL_S, ServerProcess, wait_until

from api.config import Config
from api.connection import connect
from api.errors import StoreUnavailable
from api.sessions import Limits
from api.store import RedisStore

pytestmark = [pytest.mark.http, pytest.mark.redis, pytest.mark.backends("cluster")]

TTL_MS, TOMB_MS = 60_000, 65_000


# --- the cluster itself ---------------------------------------------------------------------------


def holders(cluster, ports=None):
    """Return {sessionKey: port of the master whose memory holds it}, read from each master directly."""
    found = {}
    for port in ports or cluster.masters:
        node = cluster.nodes[port]
        for key in node.scan_iter(match=SESSION_KEYS):
            assert cluster.master_of(key) == port, (key, port)  # each key lives where its slot says
            found.update(dict.fromkeys((sid.decode() for sid in node.hkeys(key)), port))
    return found


def test_users_spread_over_all_three_masters(cluster, server, real_redis):
    sessions = {legacy_started(server, new_user("spread"), "tv")[0] for _ in range(30)}
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
    owner = cluster.master_of(user_key(user))
    assert script_calls(cluster) == {port: {"evalsha": 5} if port == owner else {} for port in cluster.ports}


def test_a_node_that_lost_its_scripts_loads_them_alone(cluster, store, real_redis):
    """A restarted or promoted node has no scripts: EVAL loads them there, SCRIPT LOAD goes nowhere."""
    users = [f"flush-{i}" for i in range(12)]
    flushed = cluster.ports[1]
    assert any(cluster.master_of(user_key(user)) == flushed for user in users)
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
        server = ServerProcess(
            f"redis://127.0.0.1:{ports[0]}/0", keys_dir, redis_mode="cluster", redis_timeout_s=0.25
        )
        assert server.request("GET", "/healthz").status == 200
        for _ in range(2):  # nothing listening; then nodes up, but no cluster made of them yet
            not_ready = server.request("GET", "/readyz")
            assert not_ready.status == 503
            assert not_ready.json()["checks"]["redis"] is False
            answer, took = timed(lambda: legacy_start(server, new_user(), "tv"))
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
            answer = legacy_start(server, new_user(), "tv")
            assert answer.status == 200, server.output()
            sid, token = answer.json()["sessionKey"], answer.json()["token"]
            assert legacy_heartbeat(server, sid, token).status == 200, server.output()
            assert legacy_stop(server, sid, token).status == 204, server.output()
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
                answer, took = timed(lambda sid=sid, token=token: legacy_heartbeat(server, sid, token))
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


def users_on(cluster, port, count):
    """Return `count` new user ids whose sessions the master on `port` holds."""
    users = (new_user("on") for _ in itertools.count())
    return list(itertools.islice((u for u in users if cluster.master_of(user_key(u)) == port), count))


def test_a_hung_then_dead_master_fails_only_its_own_users(keys_dir, tmp_path):
    """Users on the other masters keep working; the dead master's users get 503 quickly; nothing hangs."""
    doomed = LoopbackCluster(tmp_path)
    victim, survivor = doomed.ports[0], doomed.ports[1]
    urls = ",".join(f"redis://127.0.0.1:{port}" for port in doomed.ports)  # the victim's first
    server, clients = None, []
    try:
        server = ServerProcess(
            urls, keys_dir, redis_mode="cluster", session_ttl_s=TEST_TTL_S, redis_timeout_s=0.25
        )
        sessions = [legacy_started(server, new_user("outage"), "tv") for _ in range(24)]
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
            assert legacy_heartbeat(server, sid, token).status == 200
        on_victim, elsewhere = users_on(doomed, victim, 6), users_on(doomed, survivor, 6)
        answers = [legacy_start(server, user, "tv") for user in on_victim + elsewhere]
        assert [a.status for a in answers] == [503] * 6 + [200] * 6
        alive = holders(doomed, [port for port in doomed.ports if port != victim])
        assert all(a.json()["sessionKey"] in alive for a in answers if a.status == 200)
        assert "Traceback" not in server.output()

        # A process starting now: with the other nodes listed it serves their users; with only the
        # dead node's URL, nobody (hence: list several nodes, or a DNS name that follows the cluster).
        clients.append(connect(Config(redis_mode="cluster", redis_url=urls)))
        clients.append(connect(Config(redis_mode="cluster", redis_url=f"redis://127.0.0.1:{victim}")))
        listed, only_dead = (Blocking(RedisStore(client)) for client in clients)
        for i in range(12):
            user = f"late-{i}"
            if doomed.master_of(user_key(user)) == victim:
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
        server = ServerProcess(
            replicated.url, keys_dir, redis_mode="cluster", session_ttl_s=TEST_TTL_S, redis_timeout_s=0.25
        )
        sessions = [legacy_started(server, new_user("failover"), "tv") for _ in range(24)]
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
                assert legacy_heartbeat(server, sid, token).status == 200
            for sid, token in list(waiting):
                answer, took = timed(lambda sid=sid, token=token: legacy_heartbeat(server, sid, token))
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
