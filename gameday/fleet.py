"""The fleet: a Redis Cluster, two service instances sharing one key directory, and HAProxy in front.

Every process runs in its own process group with its log in the run's directory, and `stop()` ends it
however the run ends; nothing here outlives the game day."""

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import redis

STOP_TIMEOUT_S = 10.0
CLUSTER_BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000
CALLER_NAME = "gameday"


class GamedayError(Exception):
    """The game day cannot go on; the message says why."""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_ports(count):
    """Return `count` ports whose cluster bus ports are free too (ephemeral ports + 10000 may overflow)."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 30000)
        if port not in ports and _port_free(port) and _port_free(port + CLUSTER_BUS_OFFSET):
            ports.append(port)
    return ports


def wait_until(predicate, timeout_s, what, interval_s=0.05):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise GamedayError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def http_get(port, path, timeout_s=2.0):
    """Return (status, body) of a GET on a loopback port; (None, error text) when it cannot connect."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()
    except OSError as exc:
        return None, str(exc).encode()
    finally:
        connection.close()


class Process:
    """A child in its own process group, its output in a log file."""

    def __init__(self, command, log_path, env=None):
        self.command = command
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
        try:
            self._proc = subprocess.Popen(
                command, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except BaseException:
            self._log.close()
            raise
        self.pid = self._proc.pid

    def running(self):
        return self._proc.poll() is None

    def signal(self, sig):
        """Send `sig` to the process itself (not its group), as an orchestrator does."""
        if self._proc.poll() is None:
            self._proc.send_signal(sig)

    def wait(self, timeout_s):
        """Wait for the process to exit; return its exit status, or None if it still runs."""
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines=20):
        with open(self.log_path, "rb") as file:
            return "\n".join(file.read().decode(errors="replace").splitlines()[-lines:])

    def stop(self):
        """Terminate the group (a server's workers too), killing it if it lingers."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            if self.wait(STOP_TIMEOUT_S) is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self._proc.wait()
        # The leader is gone; its children (a server's workers) may not be.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


def _binary(name, package):
    path = shutil.which(name)
    if path is None:
        raise GamedayError(f"{name} is not installed (apt-get install {package}; scripts/gameday does it)")
    return path


class Cluster:
    """A Redis Cluster on loopback: three masters with a replica each (`redis-cli --cluster create`)."""

    # `cluster-require-full-coverage no`: a dead shard fails only its own users. A short
    # `cluster-node-timeout`, but longer than the hang the game day inflicts, so that a hang stays a hang.

    def __init__(self, workdir, node_timeout_ms):
        self._server = _binary("redis-server", "redis-server")
        self._cli = _binary("redis-cli", "redis-server")
        self._workdir = workdir
        self.node_timeout_ms = node_timeout_ms
        self.ports = cluster_ports(6)
        self.url = ",".join(f"redis://127.0.0.1:{port}" for port in self.ports)
        self._procs: dict[int, Process] = {}
        self._clients = {port: redis.Redis(port=port, socket_timeout=0.5) for port in self.ports}
        self.paused: set[int] = set()
        self.dead: set[int] = set()

    def start(self):
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            wait_until(lambda port=port: self._answers(port), 10, f"redis-server on port {port}")
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        made = subprocess.run(
            [self._cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True,
            timeout=60,
        )
        if made.returncode != 0:
            raise GamedayError(f"redis-cli --cluster create failed:\n{made.stdout.decode()[-2000:]}")
        wait_until(self._ready, 30, "cluster_state:ok and every replica linked", interval_s=0.1)

    def _spawn(self, port):
        args = [self._server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no"]
        args += ["--dir", str(self._workdir)]
        self._procs[port] = Process(args, self._workdir / f"redis-{port}.log")

    def _answers(self, port):
        if not self._procs[port].running():
            raise GamedayError(f"redis-server on port {port} exited:\n{self._procs[port].log_tail()}")
        try:
            return self._clients[port].ping()
        except redis.RedisError:
            return False

    def _ready(self):
        try:
            for client in self._clients.values():
                info = client.cluster("info")
                if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != len(self.ports):
                    return False
                replication = client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
        except redis.RedisError:
            return False
        return True

    def client(self, port):
        return self._clients[port]

    def reachable(self):
        return [port for port in self.ports if port not in self.paused and port not in self.dead]

    def topology(self):
        """Return {master port: [replica ports]} of the masters serving slots, as a live node sees them."""
        for port in self.reachable():
            try:
                nodes = self._clients[port].cluster("nodes")
            except redis.RedisError:
                continue
            ids = {node["node_id"]: int(address.rsplit(":", 1)[1]) for address, node in nodes.items()}
            masters: dict[int, list[int]] = {}
            for address, node in nodes.items():
                if "master" in node["flags"] and "fail" not in node["flags"] and node["slots"]:
                    masters.setdefault(int(address.rsplit(":", 1)[1]), [])
            for node in nodes.values():
                master = ids.get(node.get("master_id") or "")
                if "slave" in node["flags"] and "fail" not in node["flags"] and master in masters:
                    masters[master].append(ids[node["node_id"]])
            return masters
        raise GamedayError("no Redis node answers")

    def role(self, port):
        """Return 'master', 'slave', or None when the node does not answer."""
        try:
            return self._clients[port].info("replication")["role"]
        except redis.RedisError:
            return None

    def linked(self, replica):
        """Return whether `replica` is a replica with its link to its master up."""
        try:
            replication = self._clients[replica].info("replication")
        except redis.RedisError:
            return False
        return replication["role"] == "slave" and replication["master_link_status"] == "up"

    def state_ok(self, port):
        try:
            return self._clients[port].cluster("info")["cluster_state"] == "ok"
        except redis.RedisError:
            return False

    def kill(self, port):
        self.dead.add(port)
        self._procs[port].signal(signal.SIGKILL)
        self._procs[port].wait(STOP_TIMEOUT_S)

    def restart(self, port):
        """Start a killed node again on its port and config file: it comes back empty and rejoins."""
        self._procs[port].stop()
        self._spawn(port)
        wait_until(lambda: self._answers(port), 10, f"redis-server on port {port} again")
        self.dead.discard(port)

    def pause(self, port):
        self.paused.add(port)
        self._procs[port].signal(signal.SIGSTOP)

    def resume(self, port):
        self._procs[port].signal(signal.SIGCONT)
        self.paused.discard(port)

    def version(self):
        out = subprocess.run([self._server, "--version"], capture_output=True, text=True).stdout
        return next((part[2:] for part in out.split() if part.startswith("v=")), "?")

    def stop(self):
        for proc in self._procs.values():
            proc.stop()
        for client in self._clients.values():
            client.close()


class Keys:
    """The key directory every instance reads, and the operator's `keys` commands on it."""

    def __init__(self, directory, env):
        self.dir = directory
        self._env = env
        directory.mkdir(mode=0o700)

    def run(self, *args):
        """Run `concurrency-service keys ARGS --dir DIR`; return (exit status, stdout + stderr)."""
        command = [sys.executable, "-m", "api.cli", "keys", *args, "--dir", str(self.dir)]
        done = subprocess.run(command, capture_output=True, text=True, env=self._env, timeout=60)
        return done.returncode, (done.stdout + done.stderr).strip()

    def listing(self):
        """Return the keys as `keys list --json` prints them."""
        status, out = self.run("list", "--json")
        if status != 0:
            raise GamedayError(f"keys list failed: {out}")
        return json.loads(out[out.index("[") :])

    def kid(self, state):
        return next((key["kid"] for key in self.listing() if key["state"] == state), None)


class Service:
    """One `concurrency-service serve` instance on a fixed port; it can be stopped and started again."""

    def __init__(self, name, workdir, env, workers, threads):
        self.name = name
        self.port = free_port()
        self._workdir = workdir
        self._env = env
        self._workers, self._threads = workers, threads
        self.process: Process | None = None
        self.logs: list = []  # one log per incarnation

    def start(self, timeout_s=30.0):
        command = [sys.executable, "-m", "api.cli", "serve", "--bind", f"127.0.0.1:{self.port}"]
        command += ["--workers", str(self._workers), "--threads", str(self._threads)]
        log = self._workdir / f"service-{self.name}-{len(self.logs) + 1}.log"
        self.logs.append(log)
        self.process = Process(command, log, env=self._env)
        wait_until(self._ready, timeout_s, f"instance {self.name} to answer /readyz", interval_s=0.1)

    def _ready(self):
        assert self.process is not None
        if not self.process.running():
            raise GamedayError(f"instance {self.name} exited:\n{self.process.log_tail()}")
        return http_get(self.port, "/readyz", timeout_s=1.0)[0] == 200

    def terminate(self, timeout_s=20.0):
        """SIGTERM the server process, as an orchestrator does; return (exit status, seconds to exit)."""
        assert self.process is not None
        began = time.monotonic()
        self.process.signal(signal.SIGTERM)
        status = self.process.wait(timeout_s)
        took = time.monotonic() - began
        self.process.stop()  # workers that outlived it, or a process that ignored SIGTERM
        return status, took

    def metrics(self):
        """Return the text of /metrics, or None when the instance does not answer."""
        status, body = http_get(self.port, "/metrics")
        return body.decode() if status == 200 else None

    def stop(self):
        if self.process is not None:
            self.process.stop()


HAPROXY_CONFIG = """\
global
    maxconn 8000
    stats socket {socket} mode 600 level user
    hard-stop-after 5s

defaults
    mode http
    timeout connect 500ms
    timeout client 60s
    timeout server 5s
    timeout http-keep-alive 60s
    timeout queue 2s
    # /readyz waits up to twice CONCURRENCY_REDIS_TIMEOUT on a hung node: a check timeout of `inter`
    # (HAProxy's default) fails it, and two in a row take every instance out of rotation at once.
    timeout check 2s
    option redispatch 1
    retries 2
    # Only what never reached an instance, or was dropped unanswered by one shutting down: a start of the
    # same user, device and stream by a trusted caller is idempotent, and a heartbeat may come twice.
    retry-on conn-failure empty-response

frontend players
    bind 127.0.0.1:{port}
    http-response set-header X-Gameday-Server %s
    default_backend service

backend service
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter {check_ms}ms fastinter {check_ms}ms downinter {check_ms}ms fall 2 rise 2
{servers}
"""


class LoadBalancer:
    """HAProxy in the foreground in front of the instances: round robin, health check on /readyz."""

    def __init__(self, workdir, services, check_ms=500):
        self._binary = _binary("haproxy", "haproxy")
        self.port = free_port()
        self.socket = workdir / "haproxy.sock"
        servers = "\n".join(f"    server {s.name} 127.0.0.1:{s.port} check" for s in services)
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(
            HAPROXY_CONFIG.format(
                socket=self.socket, port=self.port, check_ms=check_ms, servers=servers.rstrip()
            )
        )
        self._workdir = workdir
        self._names = [s.name for s in services]
        self.process: Process | None = None
        self.transitions: list[tuple[float, str, str]] = []  # (monotonic, server, status)
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self):
        check = subprocess.run([self._binary, "-c", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise GamedayError(f"haproxy refused its configuration:\n{check.stdout}{check.stderr}")
        self.process = Process([self._binary, "-db", "-f", str(self.config)], self._workdir / "haproxy.log")
        wait_until(self._all_up, 20, "HAProxy to see every instance up", interval_s=0.1)
        self._watching.set()
        self._watcher = threading.Thread(target=self._watch, name="haproxy-watch", daemon=True)
        self._watcher.start()

    def version(self):
        out = subprocess.run([self._binary, "-v"], capture_output=True, text=True).stdout
        return out.split()[2] if len(out.split()) > 2 else "?"

    def _stats(self):
        """Return the rows of `show stat` on the stats socket of the backend's servers, by server name."""
        assert self.process is not None
        if not self.process.running():
            raise GamedayError(f"haproxy exited:\n{self.process.log_tail()}")
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket))
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except OSError:
            return {}
        lines = data.decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "service" and row.get("svname") in self._names:
                rows[row["svname"]] = row
        return rows

    def states(self):
        """Return {server: status} ('UP', 'DOWN', 'UP 1/2': going down, 'DOWN 1/2': coming up)."""
        return {name: row["status"] for name, row in self._stats().items()}

    def counters(self):
        """Return {server: {counter: n}}: requests, HAProxy's retries and redispatches, errors, 5xx."""
        names = {
            "stot": "sessions",
            "wretr": "retries",
            "wredis": "redispatches",
            "econ": "connect_errors",
            "eresp": "response_errors",
            "hrsp_5xx": "answers_5xx",
        }
        return {
            server: {label: int(row.get(field) or 0) for field, label in names.items()}
            for server, row in self._stats().items()
        }

    def _all_up(self):
        states = self.states()
        return all(states.get(name) == "UP" for name in self._names)

    def _watch(self):
        last: dict[str, str] = {}
        while self._watching.is_set():
            for name, status in self.states().items():
                if last.get(name) != status:
                    if name in last:
                        self.transitions.append((time.monotonic(), name, status))
                    last[name] = status
            time.sleep(0.1)

    def stop(self):
        self._watching.clear()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        if self.process is not None:
            self.process.stop()
