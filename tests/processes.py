"""Real processes for the tests: redis-server and the service on free loopback ports, and HTTP to them."""

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import redis

from api.config import Config

TEST_TTL_S = 60
# The Redis timeout of the tests' servers and stores: a loaded machine can stall a round trip past the
# 0.25 s default, and any test would see a 503. The tests of timeouts and outages set their own.
PATIENT_TIMEOUT_S = 5


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s=10.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class RedisServer:
    """A real redis-server on a loopback port (a free one unless given), in its own temporary directory.

    `extra_args` come last, so they may override the port (`--port 0 --tls-port P`); `client_options` are
    those of `client`, which must be able to PING it (TLS, a user)."""

    def __init__(self, workdir, *extra_args, port=None, client_options=None):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; run scripts/test, which installs it")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._proc = subprocess.Popen(
            [*args, "--dir", str(workdir), *extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self.client = redis.Redis(port=self.port, **(client_options or {}))
        try:
            wait_until(self._answers, what=f"redis-server on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _answers(self):
        try:
            return self.client.ping()
        except redis.ConnectionError:
            return False

    def signal(self, sig):
        self._proc.send_signal(sig)

    def stop(self):
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self.client.close()


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


def request(port, method, path, body=None, headers=None, timeout_s=10):
    """Send one HTTP request over a new loopback connection; `body` may be an object (sent as JSON)."""
    headers = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        connection.close()


class ServerProcess:
    """The real `concurrency-service serve` process on a free port."""

    def __init__(self, redis_url, keys_dir, workers=2, threads=4, host="127.0.0.1", server=None, **env):
        env.setdefault("drain_s", 0)  # tests stop many servers; the shutdown tests ask for a drain
        env.setdefault("redis_timeout_s", PATIENT_TIMEOUT_S)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {
            **os.environ,
            "CONCURRENCY_REDIS_URL": redis_url,
            "CONCURRENCY_KEYS_DIR": keys_dir,
            **{Config.env_name(k): str(v) for k, v in env.items()},
        }
        command = [sys.executable, "-m", "api.cli", "serve", "--bind", f"{host}:{self.port}"]
        command += ["--workers", str(workers), "--threads", str(threads)]
        command += ["--server", server] if server else []
        self.log = tempfile.NamedTemporaryFile(prefix="concurrency-service-", suffix=".log")  # noqa: SIM115
        self._proc = subprocess.Popen(
            command, env=environ, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until(self._answers, timeout_s=20, what=f"the service on port {self.port}")
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    def _answers(self):
        if self._proc.poll() is not None:
            raise AssertionError(f"server exited: {self.output()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def request(self, method, path, body=None, headers=None, timeout_s=10):
        return request(self.port, method, path, body, headers, timeout_s)

    def output(self):
        """Return what the server has logged so far."""
        with open(self.log.name, "rb") as file:
            return file.read().decode(errors="replace")

    @property
    def pid(self):
        return self._proc.pid

    def terminate(self):
        """Send SIGTERM to the server process alone, as a container runtime does to its first process."""
        self._proc.send_signal(signal.SIGTERM)

    def wait(self, timeout_s):
        """Wait for the server process to exit; return its exit status."""
        return self._proc.wait(timeout=timeout_s)

    def stop(self):
        """Stop the server and its workers (its whole process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)  # workers that outlived their master
        self._proc.wait()
        self.log.close()
