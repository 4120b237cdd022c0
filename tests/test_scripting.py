"""FastScript: EVALSHA on per-thread connections, against a real redis-server."""

import signal
import threading
import time

import pytest
import redis

from api.errors import StoreUnavailable
from api.scripting import FastScript, ThreadConnections
from api.store import Policy, RedisStore

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
def connections(real_redis):
    return ThreadConnections(real_redis)


def test_loads_the_script_on_first_use_and_after_a_flush(connections, real_redis):
    script = FastScript(connections, ECHO)
    assert script(keys=["k"], args=["a"]) == [b"k", b"a"]
    real_redis.script_flush()
    assert script(keys=["k"], args=["b"]) == [b"k", b"b"]


def test_each_thread_keeps_its_own_connection(connections):
    seen = set()

    def grab():
        seen.add(id(connections.get()))
        assert connections.get() is connections.get()

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 4


def test_script_errors_are_redis_errors(connections):
    with pytest.raises(redis.ResponseError):
        FastScript(connections, "return redis.call('NOSUCHCOMMAND')")(keys=["k"], args=[])


def test_a_stale_connection_is_replaced_once(connections, real_redis):
    script = FastScript(connections, ECHO)
    script(keys=["k"], args=["a"])
    real_redis.client_kill_filter(_type="normal", skipme=True)  # the server drops our kept connection
    assert script(keys=["k"], args=["again"]) == [b"k", b"again"]


def test_after_a_timeout_calls_fail_at_once_for_a_moment(redis_server):
    client = redis.Redis(port=redis_server.port, socket_timeout=0.2)
    connections = ThreadConnections(client, pause_s=0.5)
    script = FastScript(connections, ECHO)
    script(keys=["k"], args=["warm"])
    redis_server.signal(signal.SIGSTOP)
    try:
        with pytest.raises(redis.TimeoutError):
            script(keys=["k"], args=["hung"])
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            script(keys=["k"], args=["paused"])
        assert time.monotonic() - started < 0.05  # failed at once, no second timeout
    finally:
        redis_server.signal(signal.SIGCONT)
    time.sleep(0.55)
    assert script(keys=["k"], args=["back"]) == [b"k", b"back"]
    client.close()


def test_a_start_arriving_after_its_deadline_is_refused(redis_server, real_redis):
    client = redis.Redis(port=redis_server.port, socket_timeout=0.25)
    store = RedisStore(client, buckets=8, timeout_s=0.25)
    store.admit("warm", "tv", "film", Policy(3), 60_000, 65_000)  # learns the server clock
    redis_server.signal(signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable):
            store.admit("ann", "tv", "film", Policy(3), 60_000, 65_000)
        time.sleep(0.3)  # past the deadline while Redis still sleeps on the request
    finally:
        redis_server.signal(signal.SIGCONT)
    time.sleep(0.1)
    assert real_redis.hgetall(store.bucket_key("ann")) == {}
    client.close()
