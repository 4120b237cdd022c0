"""The processes of a run, each on a free loopback port, pinned where asked, and always stopped."""

import contextlib
import dataclasses
import http.client
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import redis

STOP_TIMEOUT_S = 10.0


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(command, cpus):
    """Return `command` run on the given CPUs through taskset; unchanged when `cpus` is empty."""
    if not cpus:
        return list(command)
    return ["taskset", "--cpu-list", ",".join(str(cpu) for cpu in sorted(cpus)), *command]


def wait_until(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


class Process:
    """A child in its own process group, so Ctrl-C reaches only the bench, which stops the group."""

    def __init__(self, command, log_path, env=None):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed by stop()
        try:
            self._proc = subprocess.Popen(
                command, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        except BaseException:
            self._log.close()
            raise

    def running(self):
        return self._proc.poll() is None

    def cpu_seconds(self):
        """Return the user+system CPU time used so far by the live processes of the group."""
        return sum(group_cpu_times(self._proc.pid))

    def cpu_times(self):
        """Return (user, system) CPU seconds used so far by the live processes of the group."""
        return group_cpu_times(self._proc.pid)

    def log_tail(self, lines=20):
        with open(self.log_path, "rb") as file:
            return "\n".join(file.read().decode(errors="replace").splitlines()[-lines:])

    def stop(self):
        """Terminate the group (a server's workers too), killing it if it lingers."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        else:
            # The leader is gone; its children (gunicorn workers) may not be.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._log.close()


def group_cpu_seconds(pgid, proc=pathlib.Path("/proc")):
    """Return the CPU time (user + system) of the live processes in process group `pgid`."""
    return sum(group_cpu_times(pgid, proc))


def group_cpu_times(pgid, proc=pathlib.Path("/proc")):
    """Return (user, system) CPU seconds of the live processes in process group `pgid`."""
    user = system = 0
    for stat in proc.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name may hold spaces and parentheses; the fields after its last ")" do not.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # pgrp; then utime and stime are fields 14 and 15 of stat(5)
            user, system = user + int(fields[11]), system + int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


@dataclasses.dataclass(frozen=True)
class RedisServer:
    port: int
    url: str
    client: redis.Redis


@contextlib.contextmanager
def redis_server(workdir, cpus=()):
    """Run a throw-away redis-server (no persistence) in `workdir`; yield its port, URL and a client."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = Process(pinned([*command, "--dir", str(workdir)], cpus), workdir / "redis.log")
    client = redis.Redis(port=port)
    try:
        wait_until(lambda: _answers(process, client), 10, f"redis-server on port {port}")
        yield RedisServer(port, f"redis://127.0.0.1:{port}/0", client)
    finally:
        client.close()
        process.stop()


def _answers(process, client):
    if not process.running():
        raise BenchError(f"redis-server exited:\n{process.log_tail()}")
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


def server_command(server, bind, workers, threads):
    """Return the command that serves the app with `serve --server SERVER`."""
    command = [sys.executable, "-m", "api.cli", "serve", "--bind", bind]
    return command + ["--workers", str(workers), "--threads", str(threads), "--server", server]


@dataclasses.dataclass(frozen=True)
class Service:
    port: int
    url: str
    process: Process


@contextlib.contextmanager
def service(workdir, env, server, workers, threads, cpus=()):
    """Run the service over `env` (CONCURRENCY_* variables) until /healthz answers; yield its URL."""
    port = free_port()
    command = pinned(server_command(server, f"127.0.0.1:{port}", workers, threads), cpus)
    process = Process(command, workdir / "server.log", env={**os.environ, **env})
    try:
        wait_until(lambda: _healthy(process, port), 30, f"the service on port {port}")
        yield Service(port, f"http://127.0.0.1:{port}", process)
    finally:
        process.stop()


def _healthy(process, port):
    if not process.running():
        raise BenchError(f"the service exited:\n{process.log_tail()}")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()
