"""How api/connection.py builds the Redis clients: TLS, the CA file, the user and password, for both modes.

What redis-py is given is read back from the client it built (standalone) or from what LazyCluster hands to
RedisCluster (cluster); tests/test_redis_security.py runs both against real TLS servers with the ACL."""

import ssl

import pytest
import redis
from redis.connection import Connection, SSLConnection

import api.cluster
from api.config import Config
from api.connection import connect, redis_target

PEM = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"


@pytest.fixture
def ca_file(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_text(PEM)
    return str(path)


@pytest.fixture
def standalone():
    """Return make(**config): the standalone client's connection (not connected), its pool closed after."""
    clients = []

    def make(**values):
        clients.append(connect(Config(**values)))
        return clients[-1].connection_pool.make_connection()

    yield make
    for client in clients:
        client.close()


class RecordingCluster:
    """Stands in for redis-py's RedisCluster: records what LazyCluster passes it."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        RecordingCluster.made.append(kwargs)


@pytest.fixture
def cluster_kwargs(monkeypatch):
    """Return make(**config): the keyword arguments connect() hands to RedisCluster in cluster mode."""
    monkeypatch.setattr(api.cluster, "RedisCluster", RecordingCluster)
    RecordingCluster.made = []

    def make(**values):
        connect(Config(redis_mode="cluster", **values))
        (kwargs,) = RecordingCluster.made
        RecordingCluster.made = []
        return kwargs

    return make


def test_rediss_verifies_the_certificate_against_the_ca_file_and_the_host_name(standalone, ca_file):
    connection = standalone(redis_url="rediss://cache.internal:6380/0", redis_ca_file=ca_file)
    assert isinstance(connection, SSLConnection)
    assert connection.ca_certs == ca_file
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert connection.check_hostname is True
    assert (connection.host, connection.port) == ("cache.internal", 6380)


def test_rediss_without_a_ca_file_verifies_against_the_system_cas(standalone):
    connection = standalone(redis_url="rediss://cache.internal:6380/0")
    assert isinstance(connection, SSLConnection)
    assert connection.ca_certs is None and connection.ca_path is None and connection.ca_data is None
    assert (connection.cert_reqs, connection.check_hostname) == (ssl.CERT_REQUIRED, True)


def test_only_the_url_turns_host_name_verification_off(standalone, ca_file):
    url = "rediss://10.0.0.7:6380/0?ssl_check_hostname=false"
    connection = standalone(redis_url=url, redis_ca_file=ca_file)
    assert (connection.cert_reqs, connection.check_hostname) == (ssl.CERT_REQUIRED, False)


def test_a_plain_url_stays_plain_and_still_logs_in(standalone):
    connection = standalone(redis_url="redis://cache:6379/0", redis_username="svc", redis_password="pw")
    assert type(connection) is Connection
    assert (connection.username, connection.password) == ("svc", "pw")


@pytest.mark.parametrize(
    ("url", "settings", "user"),
    [
        ("rediss://cache:6380", {}, (None, None)),
        ("rediss://svc:in%40url@cache:6380", {}, ("svc", "in@url")),
        ("rediss://:in-url@cache:6380", {}, (None, "in-url")),
        ("rediss://cache:6380", {"redis_username": "svc", "redis_password": "set"}, ("svc", "set")),
        ("rediss://cache:6380", {"redis_password": "set"}, (None, "set")),  # the default user
        ("rediss://old:in-url@cache:6380", {"redis_username": "u", "redis_password": "set"}, ("u", "set")),
        ("rediss://svc:in-url@cache:6380", {"redis_password": "set"}, ("svc", "set")),
        ("rediss://old:in-url@cache:6380", {"redis_username": "svc"}, ("svc", "in-url")),
    ],
)
def test_the_settings_complete_or_replace_the_urls_user_and_password(
    standalone, cluster_kwargs, url, settings, user
):
    connection = standalone(redis_url=url, **settings)
    assert (connection.username, connection.password) == user
    kwargs = cluster_kwargs(redis_url=url, **settings)
    assert (kwargs.get("username"), kwargs.get("password")) == user
    assert kwargs["url"] == "rediss://cache:6380", "redis-py lets a URL's credentials win over the options"


def test_cluster_mode_gets_the_same_tls_and_credentials(cluster_kwargs, ca_file):
    kwargs = cluster_kwargs(
        redis_url="rediss://u:p@10.0.0.1:6379,rediss://10.0.0.2:6379",
        redis_ca_file=ca_file,
        redis_username="svc",
        redis_password="set",
    )
    assert kwargs["url"] == "rediss://10.0.0.1:6379"
    assert [(node.host, node.port) for node in kwargs["startup_nodes"]] == [("10.0.0.2", 6379)]
    assert (kwargs["username"], kwargs["password"]) == ("svc", "set")
    assert kwargs["ssl_ca_certs"] == ca_file
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == ("required", True)


def test_no_client_setinfo_nor_maint_notifications_on_connect(standalone, cluster_kwargs):
    """Both are outside the service's ACL: redis-py must not send them on every new connection."""
    connection = standalone(redis_url="redis://cache:6379/0")
    assert connection.driver_info is None
    assert not getattr(connection.maint_notifications_config, "enabled", False)
    default = redis.Redis().connection_pool.make_connection()  # redis-py's defaults: both on
    assert default.driver_info is not None and default.maint_notifications_config.enabled == "auto"
    kwargs = cluster_kwargs(redis_url="redis://10.0.0.1:6379")
    assert kwargs["driver_info"] is None and not kwargs["maint_notifications_config"].enabled


def test_the_password_stays_out_of_the_urls():
    urls, options = redis_target(Config(redis_url="rediss://svc:secret@cache:6380/0"))
    assert urls == ["rediss://cache:6380/0"]
    assert options["password"] == "secret"


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
        ("unix://svc:pw@/run/redis.sock", "unix:///run/redis.sock"),
        (
            "rediss://svc:p%40ss@[::1]:6380/0?ssl_check_hostname=false",
            "rediss://[::1]:6380/0?ssl_check_hostname=false",
        ),
    ],
)
def test_urls_lose_only_their_userinfo(url, kept):
    assert redis_target(Config(redis_url=url))[0] == [kept]
