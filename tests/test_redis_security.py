"""Least-privilege Redis: the service over TLS as the ACL user of infra/redis/users.acl, default user off.

Real redis-server processes, standalone and a 3-master cluster, TLS only (`--port 0`), a throwaway CA
(tests/tls.py). The real service passes starts, heartbeats, stops, listing and kicks as that user with
nothing refused; the user is refused everything else; a wrong or missing CA, a wrong host name or plain
redis:// leave the service unready with 503s. The rules and how they were found: docs/operations.md."""

import re
import secrets

import pytest
import redis
from blocking import Blocking
from cluster import LoopbackCluster
from layout import user_key
from players import admitted, assert_error, assert_gone, bearer, heartbeat, new_user, start, stop
from processes import TEST_TTL_S, RedisServer, ServerProcess, free_port, wait_until
from tls import (
    ACL_TEMPLATE,
    ADMIN_USER,
    OTHER_ADDRESS,
    SERVICE_USER,
    client_options,
    make_pki,
    server_args,
    write_acl_file,
)

from api.config import Config
from api.connection import connect
from api.errors import StoreUnavailable
from api.sessions import Limits
from api.store import KEY_PREFIX, RedisStore

pytestmark = [pytest.mark.redis, pytest.mark.http]

ADMIN_TOKEN = "operator-" + secrets.token_urlsafe(24)
LUA_SOURCE = (ACL_TEMPLATE.parent.parent.parent / "api" / "lua.py").read_text()
TTL_MS, TOMB_MS = 60_000, 65_000


def service_rules():
    """The service user's rules in infra/redis/users.acl (the words after its name and password)."""
    for line in ACL_TEMPLATE.read_text().splitlines():
        _, name, _password, *rules = line.split()
        if name == SERVICE_USER:
            return rules
    raise AssertionError(f"no user {SERVICE_USER} in {ACL_TEMPLATE}")


def test_the_rules_allow_every_command_the_scripts_call():
    called = {name.lower() for name in re.findall(r"redis\.p?call\(\s*'([A-Za-z]+)'", LUA_SOURCE)}
    assert {"time", "hget", "hgetall", "hset", "hdel", "pttl", "pexpire"} <= called  # the scan finds them
    allowed = {rule[1:] for rule in service_rules() if rule.startswith("+")}
    assert called <= allowed, f"scripts call commands the ACL refuses: {sorted(called - allowed)}"


# --- the servers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def logins(tmp_path_factory):
    return write_acl_file(tmp_path_factory.mktemp("acl"))


class Backend:
    """A TLS Redis, standalone or cluster: the service's settings for it and the tests' admin clients."""

    def __init__(self, mode, ports, nodes, master_of=None):
        self.mode, self.ports, self.nodes = mode, ports, nodes
        self.master_of = master_of  # cluster: the port of the master of a key

    def url(self, scheme="rediss", host="127.0.0.1", userinfo="", query=""):
        return f"{scheme}://{userinfo}{host}:{self.ports[0]}" + (f"?{query}" if query else "")

    def users_on_every_node(self):
        """Return one new user per master (their sessions live on it)."""
        if self.master_of is None:
            return [new_user("tls")]
        found = {}
        while len(found) < len(self.ports):
            user = new_user("tls")
            found.setdefault(self.master_of(user_key(user)), user)
        return list(found.values())

    def reset(self):
        """Forget what happened before: empty ACL log and statistics, no scripts loaded, no sessions."""
        for node in self.nodes.values():
            node.acl_log_reset()
            node.config_resetstat()
            node.script_flush()
            node.flushall()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory, pki, logins):
    port = free_port()
    admin = client_options(pki, ADMIN_USER, logins.admin_password)
    server = RedisServer(
        tmp_path_factory.mktemp("tls-redis"), *server_args(pki, logins, port), port=port, client_options=admin
    )
    yield Backend("standalone", [port], {port: server.client})
    server.stop()


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, pki, logins):
    """Three TLS-only masters; the cluster bus and redis-cli's `--cluster create` over TLS too."""

    def node_args(port):
        return [*server_args(pki, logins, port), "--tls-cluster", "yes", "--tls-replication", "yes"]

    cluster = LoopbackCluster(
        tmp_path_factory.mktemp("tls-cluster"),
        node_args=node_args,
        client_options=client_options(pki, ADMIN_USER, logins.admin_password),
        cli_args=["--tls", "--cacert", pki.ca_file, "--user", ADMIN_USER, "--pass", logins.admin_password],
    )
    yield Backend("cluster", cluster.ports, cluster.nodes, cluster.master_of)
    cluster.stop()


@pytest.fixture(params=["standalone", "cluster"])
def tls_backend(request):
    return request.getfixturevalue("tls_redis" if request.param == "standalone" else "tls_cluster")


@pytest.fixture
def make_tls_store():
    """Return make(backend, **config): a RedisStore made as the service makes it; all closed after."""
    made = []

    def make(backend, **values):
        client = connect(Config(**{"redis_mode": backend.mode, "redis_timeout_s": 2.0, **values}))
        made.append((client, RedisStore(client)))
        return Blocking(made[-1][1])

    yield make
    for client, store in made:
        store.close()
        client.close()


def service_settings(backend, pki, logins, **changes):
    """The service's settings for `backend`: its user and password apart from the URL, our CA."""
    settings = {
        "redis_mode": backend.mode,
        "redis_ca_file": pki.ca_file,
        "redis_username": SERVICE_USER,
        "redis_password": logins.service_password,
    }
    return {**settings, **changes}


# --- (a) the service works as that user, and asks for nothing more --------------------------------


def test_the_service_serves_over_tls_as_its_acl_user(tls_backend, pki, logins, keys_dir):
    tls_backend.reset()
    users = tls_backend.users_on_every_node()
    settings = service_settings(tls_backend, pki, logins)
    service = ServerProcess(
        tls_backend.url(), keys_dir, workers=1, session_ttl_s=TEST_TTL_S, admin_token=ADMIN_TOKEN, **settings
    )
    try:
        wait_until(lambda: service.request("GET", "/readyz").status == 200, what="ready over TLS")
        for user in users:
            sid, token = admitted(start(service, user=user, device="tv"))
            beat = heartbeat(service, sid, token)
            assert beat.status == 200, beat.body
            listed = service.request("GET", f"/v1/users/{user}/sessions", headers=bearer(ADMIN_TOKEN))
            assert listed.status == 200, listed.body
            assert [s["sessionId"] for s in listed.json()["sessions"]] == [sid]
            assert stop(service, sid, beat.json()["token"]).status == 204

            kicked, kicked_token = admitted(start(service, user=user, device="phone"))
            answer = service.request(
                "DELETE", f"/v1/users/{user}/sessions/{kicked}", headers=bearer(ADMIN_TOKEN)
            )
            assert answer.status == 204, answer.body
            assert_gone(heartbeat(service, kicked, kicked_token), "kicked")
            admitted(start(service, user=user, device="tablet"))
        logged_in = set()
        for node in tls_backend.nodes.values():
            logged_in |= {client["user"] for client in node.client_list()}
        assert logged_in == {ADMIN_USER, SERVICE_USER}  # the default user is off: nobody else
        assert "Traceback" not in service.output()
    finally:
        service.stop()
    for port, node in tls_backend.nodes.items():
        assert node.acl_log() == [], f"node {port} refused the service something"
        # NOSCRIPT: the first EVALSHA of each script, then EVAL loads it. No NOPERM, and no ERR (such as
        # redis-py's CLIENT SETINFO or CLIENT MAINT_NOTIFICATIONS on connect, unknown to Redis 7.0).
        errors = node.info("errorstats")
        assert set(errors) <= {"errorstat_NOSCRIPT"}, (port, errors)
        assert all(key.startswith(KEY_PREFIX.encode()) for key in node.keys("*"))
    assert sum(node.dbsize() for node in tls_backend.nodes.values()) == len(users)


def test_a_slot_moving_between_masters_needs_nothing_outside_the_acl(
    tls_cluster, pki, logins, make_tls_store
):
    """A start for a user whose slot is being resharded: redis-py follows the ASK redirection (ASKING)."""
    tls_cluster.reset()
    store = make_tls_store(
        tls_cluster, redis_url=tls_cluster.url(), **service_settings(tls_cluster, pki, logins)
    )
    user = new_user("moving")
    key = user_key(user)
    source = tls_cluster.master_of(key)
    target = next(port for port in tls_cluster.ports if port != source)
    slot = tls_cluster.nodes[source].cluster("keyslot", key)
    ids = {port: node.cluster("myid") for port, node in tls_cluster.nodes.items()}
    tls_cluster.nodes[target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])
    tls_cluster.nodes[source].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])
    try:
        assert store.admit(user, "tv", "film", Limits(2), TTL_MS, TOMB_MS).status == "initiated"
        # the new key went to where the slot is going, through the ASK redirection
        counts = {port: node.cluster("countkeysinslot", slot) for port, node in tls_cluster.nodes.items()}
        assert (counts[source], counts[target]) == (0, 1)
    finally:  # finish the move, as redis-cli --cluster reshard would: every node gives the slot to the target
        for node in tls_cluster.nodes.values():
            node.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
    assert tls_cluster.nodes[target].exists(key) == 1
    for port, node in tls_cluster.nodes.items():
        assert node.acl_log() == [], f"node {port} refused the service something"


# --- (b) and nothing else ------------------------------------------------------------------------

OUTSIDE = "other:key"  # not under the service's prefix
INSIDE = KEY_PREFIX + "AAAAAAAAAAAA"  # a key of the service's shape

REFUSED = {
    "FLUSHALL": ("FLUSHALL",),
    "CONFIG GET": ("CONFIG", "GET", "*"),
    "CONFIG SET": ("CONFIG", "SET", "appendonly", "no"),
    "KEYS": ("KEYS", "*"),
    "SCAN": ("SCAN", "0"),
    "SET outside": ("SET", OUTSIDE, "x"),
    "GET outside": ("GET", OUTSIDE),
    "DEL outside": ("DEL", OUTSIDE),
    "SET inside": ("SET", INSIDE, "x"),  # not a command it needs, even on its own keys
    "DEL inside": ("DEL", INSIDE),
    "HGET outside": ("HGET", OUTSIDE, "f"),  # a command it needs, on a key not its own
    "HSET outside": ("HSET", OUTSIDE, "f", "x"),
    "SCRIPT LOAD": ("SCRIPT", "LOAD", "return 1"),
    "SCRIPT FLUSH": ("SCRIPT", "FLUSH"),
    "CLIENT LIST": ("CLIENT", "LIST"),
    "ACL LIST": ("ACL", "LIST"),
    "SELECT": ("SELECT", "1"),
    "EVAL declaring a key outside": ("EVAL", "return redis.call('HGET', KEYS[1], 'f')", 1, OUTSIDE),
    "EVAL touching a key outside": ("EVAL", f"return redis.call('SET', '{OUTSIDE}', 'x')", 1, INSIDE),
    "EVAL hiding a key outside": ("EVAL", f"return redis.call('HSET', '{OUTSIDE}', 'f', 'x')", 1, INSIDE),
    "EVAL calling FLUSHALL": ("EVAL", "return redis.call('FLUSHALL')", 0),
    "EVAL calling KEYS": ("EVAL", "return redis.call('KEYS', '*')", 0),
}


def refused(exc):
    """NOPERM; from inside a script Redis 7.0 words it "The user executing the script can't ..." (ERR)."""
    return isinstance(exc, redis.exceptions.NoPermissionError) or "user executing the script can't" in str(
        exc
    )


@pytest.mark.parametrize("command", list(REFUSED.values()), ids=list(REFUSED))
def test_the_service_user_is_refused_everything_else(tls_redis, pki, logins, command):
    (admin,) = tls_redis.nodes.values()
    admin.set(OUTSIDE, "kept")
    admin.hset(INSIDE, "f", "kept")
    admin.acl_log_reset()
    user = redis.Redis(port=tls_redis.ports[0], **client_options(pki, SERVICE_USER, logins.service_password))
    try:
        with pytest.raises(redis.ResponseError) as caught:
            user.execute_command(*command)
        assert refused(caught.value), caught.value
        # what it may do, it can: the refusal is the ACL's
        assert user.hget(INSIDE, "f") == b"kept" and user.ping()
    finally:
        user.close()
    assert admin.get(OUTSIDE) == b"kept" and admin.hget(INSIDE, "f") == b"kept"
    assert admin.config_get("appendonly") == {"appendonly": "no"}
    assert [entry["username"] for entry in admin.acl_log()] == [SERVICE_USER]


# --- (c) (d) a wrong CA, a wrong host name, plain redis://: not ready, 503, never 500 -----------------


@pytest.mark.parametrize("ca", ["system CAs", "another CA"])
def test_without_the_right_ca_the_service_is_not_ready_and_answers_503(
    tls_backend, pki, logins, keys_dir, ca
):
    ca_file = "" if ca == "system CAs" else pki.other_ca_file
    settings = service_settings(tls_backend, pki, logins, redis_ca_file=ca_file)
    service = ServerProcess(tls_backend.url(), keys_dir, workers=1, admin_token=ADMIN_TOKEN, **settings)
    try:
        assert service.request("GET", "/healthz").status == 200
        not_ready = service.request("GET", "/readyz")
        assert not_ready.status == 503 and not_ready.json()["checks"]["redis"] is False
        for _ in range(2):  # also once the first failure is remembered (cluster: the failed client)
            assert_error(start(service, user=new_user("tls")), 503, "store_unavailable")
            listing = service.request("GET", f"/v1/users/{new_user()}/sessions", headers=bearer(ADMIN_TOKEN))
            assert_error(listing, 503, "store_unavailable")
        output = service.output()
        assert "certificate verify failed" in output, output
        assert "Traceback" not in output
    finally:
        service.stop()


def test_the_server_host_name_is_verified(tls_backend, pki, logins, make_tls_store):
    """The certificate names 127.0.0.1 only: another address is refused, unless the URL says not to check."""
    settings = service_settings(tls_backend, pki, logins)
    wrong_name = make_tls_store(tls_backend, redis_url=tls_backend.url(host=OTHER_ADDRESS), **settings)
    assert wrong_name.ping() is False
    with pytest.raises(StoreUnavailable):
        wrong_name.admit(new_user(), "tv", "film", Limits(2), TTL_MS, TOMB_MS)
    unchecked = tls_backend.url(host=OTHER_ADDRESS, query="ssl_check_hostname=false")
    assert make_tls_store(tls_backend, redis_url=unchecked, **settings).ping() is True


def test_plain_redis_to_the_tls_port_fails(tls_backend, pki, logins, make_tls_store):
    settings = service_settings(tls_backend, pki, logins, redis_ca_file="")
    store = make_tls_store(tls_backend, redis_url=tls_backend.url(scheme="redis"), **settings)
    assert store.ping() is False
    with pytest.raises(StoreUnavailable):
        store.admit(new_user(), "tv", "film", Limits(2), TTL_MS, TOMB_MS)


def test_the_password_setting_replaces_the_urls(tls_backend, pki, logins, make_tls_store):
    """ElastiCache and Secrets Manager hand the password over as a variable: it wins over the URL's."""
    url = tls_backend.url(userinfo=f"{SERVICE_USER}:not-the-password@")
    assert make_tls_store(tls_backend, redis_url=url, redis_ca_file=pki.ca_file).ping() is False
    with_setting = make_tls_store(
        tls_backend, redis_url=url, redis_ca_file=pki.ca_file, redis_password=logins.service_password
    )
    assert with_setting.ping() is True
    assert with_setting.admit(new_user(), "tv", "film", Limits(2), TTL_MS, TOMB_MS).status == "initiated"
