"""Shared fixtures: keys, fakeredis and real redis-server stores, the app, the real server process."""

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

import fakeredis
import falcon.testing
import pytest
import redis

from api.app import create_app
from api.config import Config
from api.store import RedisStore
from keys.keyring import Keyring
from keys.store import KeyStore

TEST_TTL_S = 60


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
    """A real redis-server on a loopback port (a free one unless given), in its own temporary directory."""

    def __init__(self, workdir, *extra_args, port=None):
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; run scripts/test, which installs it")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._proc = subprocess.Popen(
            [*args, "--dir", str(workdir), *extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self.client = redis.Redis(port=self.port)
        wait_until(self._answers, what=f"redis-server on port {self.port}")

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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def real_redis(redis_server):
    redis_server.client.flushall()
    return redis.Redis(port=redis_server.port)


@pytest.fixture
def fake_redis():
    return fakeredis.FakeRedis()


@pytest.fixture(params=["fakeredis", "redis-server"])
def any_redis(request):
    """Run a test on fakeredis and on a real redis-server."""
    return request.getfixturevalue("fake_redis" if request.param == "fakeredis" else "real_redis")


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    KeyStore(str(directory)).generate("ES256")
    return str(directory)


@pytest.fixture
def keyring(keys_dir):
    return Keyring.open(keys_dir)


@pytest.fixture
def config(keys_dir):
    return Config(keys_dir=keys_dir, session_ttl_s=TEST_TTL_S, buckets=64)


def make_client(config, redis_client, keyring):
    store = RedisStore(redis_client, config.buckets)
    return falcon.testing.TestClient(create_app(config, store, keyring))


@pytest.fixture
def client(config, fake_redis, keyring):
    """The app over fakeredis."""
    return make_client(config, fake_redis, keyring)


@pytest.fixture
def real_client(config, real_redis, keyring):
    """The app over a real redis-server."""
    return make_client(config, real_redis, keyring)


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

    def __init__(self, redis_url, keys_dir, workers=2, threads=4, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {
            **os.environ,
            "CONCURRENCY_REDIS_URL": redis_url,
            "CONCURRENCY_KEYS_DIR": keys_dir,
            **{Config.env_name(k): str(v) for k, v in env.items()},
        }
        command = [sys.executable, "-m", "api.cli", "serve", "--bind", f"127.0.0.1:{self.port}"]
        command += ["--workers", str(workers), "--threads", str(threads)]
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


@pytest.fixture(scope="session")
def server(redis_server, keys_dir):
    """The real service, two workers, over the session's redis-server."""
    process = ServerProcess(redis_server.url, keys_dir, session_ttl_s=TEST_TTL_S)
    yield process
    process.stop()
