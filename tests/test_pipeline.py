"""PipelineRunner and Pipeline: EVALSHA on one pipelined connection, against a real redis-server."""

import hashlib
import signal
import socket
import threading
import time

import pytest
import redis
from layout import user_key

from api import sync
from api.errors import StoreUnavailable
from api.lua import Script
from api.pipeline import PipelineRunner
from api.sessions import Limits
from api.store import RENEW_NONE

ECHO = "return {KEYS[1], ARGV[1]}"


class Called:
    """A script called as `script(keys=[key], args=[...])` through a PipelineRunner, on this thread."""

    def __init__(self, runner, source):
        self._runner = runner
        self._script = Script("test", source, hashlib.sha1(source.encode()).hexdigest())

    def __call__(self, keys, args):
        return sync.run(self._runner.run(self._script, keys[0], args))


@pytest.fixture
def connections(real_redis):
    runner = PipelineRunner(real_redis)
    yield runner
    runner.close()


def test_loads_the_script_on_first_use_and_after_a_flush(connections, real_redis):
    script = Called(connections, ECHO)
    assert script(keys=["k"], args=["a"]) == [b"k", b"a"]
    real_redis.script_flush()
    real_redis.config_resetstat()
    assert script(keys=["k"], args=["b"]) == [b"k", b"b"]
    assert script(keys=["k"], args=["c"]) == [b"k", b"c"]
    # EVAL loads it where it is missing: no SCRIPT LOAD, a command the service's Redis user may not run
    calls = {name: stat["calls"] for name, stat in real_redis.info("commandstats").items()}
    assert (calls["cmdstat_evalsha"], calls["cmdstat_eval"]) == (2, 1)
    assert "cmdstat_script|load" not in calls


def test_concurrent_calls_share_round_trips_and_each_gets_its_own_reply(connections, real_redis):
    script = Called(connections, ECHO)
    script(keys=["k"], args=["warm"])
    real_redis.config_resetstat()
    barrier = threading.Barrier(32)
    replies = {}

    def call(i):
        barrier.wait()
        for j in range(20):
            replies[(i, j)] = script(keys=[f"k{i}"], args=[f"{i}-{j}"])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert replies == {(i, j): [f"k{i}".encode(), f"{i}-{j}".encode()] for i in range(32) for j in range(20)}
    stats = real_redis.info("stats")
    # 640 calls; the CONFIG RESETSTAT and INFO clients add their own reads
    assert real_redis.info("commandstats")["cmdstat_evalsha"]["calls"] == 640
    assert stats["total_reads_processed"] < 640, "calls waiting on a round trip should go together"


def test_errors_reach_only_their_own_call(connections):
    good = Called(connections, ECHO)
    bad = Called(connections, "return redis.error_reply('mine')")
    errors, replies = [], []

    def run(script, out):
        try:
            out.append(script(keys=["k"], args=["x"]))
        except redis.ResponseError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=run, args=(bad if i % 2 else good, replies)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == ["mine"] * 8 and replies == [[b"k", b"x"]] * 8


def test_script_errors_are_redis_errors(connections):
    with pytest.raises(redis.ResponseError):
        Called(connections, "return redis.call('NOSUCHCOMMAND')")(keys=["k"], args=[])


def test_a_stale_connection_is_replaced_once(connections, real_redis):
    script = Called(connections, ECHO)
    script(keys=["k"], args=["a"])
    real_redis.client_kill_filter(_type="normal", skipme=True)  # the server drops our kept connection
    assert script(keys=["k"], args=["again"]) == [b"k", b"again"]


def test_after_a_timeout_calls_fail_at_once_for_a_moment(redis_server):
    client = redis.Redis(port=redis_server.port, socket_timeout=0.2)
    connections = PipelineRunner(client)  # pauses 0.5 s after a timeout
    script = Called(connections, ECHO)
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


def test_a_start_arriving_after_its_deadline_is_refused(redis_server, real_redis, make_store):
    client = redis.Redis(port=redis_server.port, socket_timeout=0.25)
    store = make_store(client, timeout_s=0.25)
    store.admit("warm", "tv", "film", Limits(3), 60_000, 65_000)  # learns the server clock
    redis_server.signal(signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable):
            store.admit("ann", "tv", "film", Limits(3), 60_000, 65_000)
        time.sleep(0.3)  # past the deadline while Redis still sleeps on the request
    finally:
        redis_server.signal(signal.SIGCONT)
    time.sleep(0.1)
    assert real_redis.hgetall(user_key("ann")) == {}
    client.close()


def test_an_unexpected_error_reaches_every_call_and_nobody_hangs(redis_server):
    client = redis.Redis(port=redis_server.port, db=99)  # SELECT 99 fails when the connection opens
    script = Called(PipelineRunner(client), ECHO)
    errors = []

    def call():
        try:
            script(keys=["k"], args=["x"])
        except redis.RedisError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads), "a call waits forever"
    assert len(errors) == 8
    with pytest.raises(redis.RedisError):
        script(keys=["k"], args=["later"])  # the pipeline still works: it answers, it does not hang
    client.close()


class ReplyLosingProxy:
    """A TCP proxy to Redis that, when told to, cuts the connection instead of passing Redis's next reply
    on: the commands ran, their caller never hears."""

    def __init__(self, port):
        self._port = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.lose_next = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self._port))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source, target, replies):
        with source, target:
            try:
                while data := source.recv(65536):
                    if replies and self.lose_next.is_set():
                        self.lose_next.clear()
                        for end in (source, target):  # wakes the other direction's thread too
                            end.shutdown(socket.SHUT_RDWR)
                        return
                    target.sendall(data)
            except OSError:
                pass

    def close(self):
        self._listener.close()


def test_a_batch_whose_reply_was_lost_is_not_sent_again(redis_server, real_redis, make_store):
    """Sent again, the start would meet its own new session: refused 403 while that session holds a slot
    (or, under evict-oldest, evicting a second one). Once sent, the caller gets 503 and nothing runs twice."""
    proxy = ReplyLosingProxy(redis_server.port)
    client = redis.Redis(port=proxy.port)
    store = make_store(client, timeout_s=5)
    try:
        store.admit("ann", "tv", "film", Limits(2), 60_000, 65_000, RENEW_NONE)
        proxy.lose_next.set()
        with pytest.raises(StoreUnavailable):
            store.admit("ann", "phone", "film", Limits(2), 60_000, 65_000, RENEW_NONE)
        assert real_redis.hlen(user_key("ann")) == 2  # the start ran once
        admitted = store.admit("bob", "tv", "film", Limits(2), 60_000, 65_000, RENEW_NONE)
        assert admitted.status == "initiated"  # a new connection serves the next call
    finally:
        client.close()
        proxy.close()
