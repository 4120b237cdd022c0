"""Shared fixtures: keys, the app over fakeredis, real redis-server and a real Redis Cluster, the server.

Backends. `any_redis` runs a test on fakeredis and on a real redis-server; `real_redis`, `store`,
`real_store` and `server` follow the session's `backend`. A test marked `backends` runs on every real
backend: a standalone redis-server and a 3-master Redis Cluster (`backends("cluster")`: the cluster only).
"""

import fakeredis
import falcon.testing
import pytest
import redis
from blocking import Blocking
from cluster import Inspector, LoopbackCluster
from idp import IdentityProvider
from players import CALLER_NAME, CALLER_SECRET
from processes import PATIENT_TIMEOUT_S, TEST_TTL_S, RedisServer, ServerProcess

from api.app import create_app
from api.config import Config
from api.connection import connect
from api.store import RedisStore
from keys.keyring import Keyring
from keys.store import KeyStore


def pytest_generate_tests(metafunc):
    """Parametrize `backend` for the tests marked `backends` and for those that take `any_redis`."""
    if "backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("backends")
    kinds = ["fakeredis", "redis"] if "any_redis" in metafunc.fixturenames else ["redis"]
    if marker and marker.args:
        kinds = list(marker.args)
    elif marker:
        kinds.append("cluster")
    if kinds != ["redis"]:
        metafunc.parametrize("backend", kinds, indirect=True)


@pytest.fixture(scope="session")
def backend(request):
    """Where sessions live: "redis" unless parametrized ("fakeredis", "redis" or "cluster")."""
    return getattr(request, "param", "redis")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A healthy 3-master cluster for the whole session: nothing kills its nodes."""
    own = LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    yield own
    own.stop()


@pytest.fixture(scope="session")
def inspector(cluster):
    """A plain cluster client for the tests' own reads."""
    client = Inspector(host="127.0.0.1", port=cluster.ports[0])
    yield client
    client.close()


@pytest.fixture(scope="session")
def cluster_store(cluster):
    """The store as the service makes it in cluster mode: through `connect`."""
    client = connect(Config(redis_mode="cluster", redis_url=cluster.url, redis_timeout_s=PATIENT_TIMEOUT_S))
    yield Blocking(RedisStore(client, timeout_s=PATIENT_TIMEOUT_S))
    client.close()


@pytest.fixture
def real_redis(backend, request):
    """A client of the backend's Redis, emptied first."""
    if backend == "cluster":
        client = request.getfixturevalue("inspector")
    elif backend == "redis":
        client = redis.Redis(port=request.getfixturevalue("redis_server").port)
    else:
        raise AssertionError(f"real_redis on backend {backend!r}")
    client.flushall()
    return client


@pytest.fixture
def fake_redis():
    return fakeredis.FakeRedis()


@pytest.fixture
def any_redis(backend, request):
    """The backend's client: fakeredis, or a real Redis emptied first."""
    return request.getfixturevalue("fake_redis" if backend == "fakeredis" else "real_redis")


@pytest.fixture
def make_store():
    """Return make(client, **options): a RedisStore over `client`, closed when the test ends."""
    made = []

    def make(client, **options):
        options.setdefault("timeout_s", PATIENT_TIMEOUT_S)
        made.append(RedisStore(client, **options))
        return Blocking(made[-1])

    yield make
    for store in made:
        store.close()


def _store(client, backend, request):
    if backend == "cluster":
        return request.getfixturevalue("cluster_store")
    return request.getfixturevalue("make_store")(client)


@pytest.fixture
def store(any_redis, backend, request):
    """The session store over `any_redis`."""
    return _store(any_redis, backend, request)


@pytest.fixture
def real_store(real_redis, backend, request):
    """The session store over `real_redis`."""
    return _store(real_redis, backend, request)


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
    return Config(keys_dir=keys_dir, session_ttl_s=TEST_TTL_S)


@pytest.fixture
def make_client():
    """Return make(config, redis client, keyring): the app over that client, in falcon's TestClient."""

    stores = []

    def make(config, redis_client, keyring):
        stores.append(RedisStore(redis_client, timeout_s=PATIENT_TIMEOUT_S))
        return falcon.testing.TestClient(create_app(config, stores[-1], keyring))

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def client(config, fake_redis, keyring, make_client):
    """The app over fakeredis."""
    return make_client(config, fake_redis, keyring)


@pytest.fixture
def real_client(config, real_redis, keyring, make_client):
    """The app over a real redis-server."""
    return make_client(config, real_redis, keyring)


def _server(backend, keys_dir, request, **env):
    if backend == "cluster":
        url, mode = request.getfixturevalue("cluster").url, "cluster"
    else:
        url, mode = request.getfixturevalue("redis_server").url, "standalone"
    return ServerProcess(url, keys_dir, redis_mode=mode, session_ttl_s=TEST_TTL_S, **env)


@pytest.fixture(scope="session")
def server(backend, keys_dir, request):
    """The real service, two workers, over the backend's Redis; anonymous, as in development."""
    process = _server(backend, keys_dir, request)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def trusted_server(backend, keys_dir, request):
    """The real service in trusted-caller mode: one caller, players.CALLER."""
    process = _server(backend, keys_dir, request, callers=f"{CALLER_NAME}:{CALLER_SECRET}")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def idp():
    """A local identity provider serving its JWKS on loopback."""
    provider = IdentityProvider()
    yield provider
    provider.close()
