"""A Redis Cluster of redis-server processes on loopback, for the tests."""

import random
import shutil
import signal
import socket
import subprocess

import pytest
import redis
from processes import wait_until
from redis.cluster import RedisCluster

CLUSTER_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000


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
    (`cluster-require-full-coverage no`), as the operations guide asks of a production cluster.
    `node_args(port)` adds a node's own arguments (TLS), `client_options` are those of `nodes` (TLS, a user)
    and `cli_args` redis-cli's (`--tls ... --user ...`)."""

    def __init__(
        self, workdir, ports=None, create=True, replicas=0, node_args=None, client_options=None, cli_args=()
    ):
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
            args += node_args(port) if node_args else []
            self._procs[port] = subprocess.Popen(
                [*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
        options = {"socket_timeout": 2, **(client_options or {})}
        self.nodes = {port: redis.Redis(port=port, **options) for port in self.ports}
        self._cli = [cli, *cli_args]
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
            [*self._cli, "--cluster", "create", *addresses, *replicas, "--cluster-yes"],
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
