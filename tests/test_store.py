"""The Redis store and its Lua scripts, on fakeredis and on a real redis-server."""

import time

import pytest

from api.errors import LimitReached, SessionGone, StoreUnavailable
from api.store import RedisStore, Session, escape, unescape

TTL_MS = 60_000


@pytest.fixture
def store(any_redis):
    return RedisStore(any_redis, buckets=64)


def sessions_of(client, store, user):
    """Return {sid: (device, stream)} as Redis holds them for `user`."""
    found = {}
    for sid, value in client.hgetall(store.bucket_key(user)).items():
        _, _, owner, device, stream = value.decode().split("|")
        if unescape(owner) == user:
            found[sid.decode()] = (unescape(device), unescape(stream))
    return found


def test_admit_until_the_limit(store, any_redis):
    sids = {store.admit("ann", f"dev{i}", "film", 3, TTL_MS).session.sid for i in range(3)}
    with pytest.raises(LimitReached) as refused:
        store.admit("ann", "dev9", "film", 3, TTL_MS)
    holders = refused.value.details["sessions"]
    assert {h["sessionKey"] for h in holders} == sids
    assert {h["deviceId"] for h in holders} == {"dev0", "dev1", "dev2"}
    assert all(isinstance(h["started"], int) for h in holders)
    assert set(sessions_of(any_redis, store, "ann")) == sids


def test_same_device_and_stream_renews_the_same_session(store):
    first = store.admit("ann", "tv", "film", 1, TTL_MS)
    again = store.admit("ann", "tv", "film", 1, TTL_MS)
    assert (first.status, again.status) == ("initiated", "updated")
    assert again.session.sid == first.session.sid


def test_users_in_one_bucket_do_not_share_a_limit(any_redis):
    store = RedisStore(any_redis, buckets=1)
    store.admit("ann", "tv", "film", 1, TTL_MS)
    assert store.admit("bob", "tv", "film", 1, TTL_MS).status == "initiated"
    with pytest.raises(LimitReached):
        store.admit("ann", "phone", "film", 1, TTL_MS)


def test_release_frees_the_slot_and_refresh_never_revives(store, any_redis):
    session = store.admit("ann", "tv", "film", 1, TTL_MS).session
    assert store.release(session) is True
    assert store.release(session) is False
    with pytest.raises(SessionGone):
        store.refresh(session, TTL_MS)
    assert sessions_of(any_redis, store, "ann") == {}
    assert store.admit("ann", "phone", "film", 1, TTL_MS).status == "initiated"


def test_refresh_needs_the_owner(store):
    session = store.admit("ann", "tv", "film", 1, TTL_MS).session
    with pytest.raises(SessionGone):
        store.refresh(Session("bob", session.sid, "tv", "film"), TTL_MS)
    assert store.release(Session("bob", session.sid, "tv", "film")) is False
    store.refresh(session, TTL_MS)


@pytest.mark.parametrize(
    "user", ["{slot}", "a:b", "pipe|user", "100%", "ünïcödé 🎬", "}{", "x" * 256, "with space"]
)
def test_ids_of_any_content(store, any_redis, user):
    device, stream = f"dev|{user}", f"%7C{user}"
    session = store.admit(user, device, stream, 1, TTL_MS).session
    assert sessions_of(any_redis, store, user) == {session.sid: (device, stream)}
    with pytest.raises(LimitReached) as refused:
        store.admit(user, "other", stream, 1, TTL_MS)
    assert refused.value.details["sessions"][0]["deviceId"] == device
    assert refused.value.details["sessions"][0]["streamId"] == stream
    key = store.bucket_key(user)
    assert key.count("{") == 1 and key.count("}") == 1 and user not in key


def test_escape_round_trips():
    for value in ["", "|", "%", "%7C", "a|b%c", "%%||"]:
        assert unescape(escape(value)) == value
        assert "|" not in escape(value)


def test_every_key_has_a_ttl(store, any_redis):
    for i in range(20):
        session = store.admit(f"user{i}", "tv", "film", 2, TTL_MS).session
        store.refresh(session, TTL_MS)
        if i % 3 == 0:
            store.release(session)
    keys = any_redis.keys("*")
    assert keys
    assert all(0 < any_redis.pttl(key) <= TTL_MS for key in keys)


def test_unreachable_redis_is_store_unavailable():
    import redis

    client = redis.Redis(port=1, socket_connect_timeout=0.1, socket_timeout=0.1)
    store = RedisStore(client, buckets=64)
    with pytest.raises(StoreUnavailable):
        store.admit("ann", "tv", "film", 1, TTL_MS)
    assert store.ping() is False


# Real redis-server only: expiry, server time, the script cache.


@pytest.fixture
def real_store(real_redis):
    return RedisStore(real_redis, buckets=64)


def test_sessions_expire_by_server_time(real_store, real_redis):
    session = real_store.admit("ann", "tv", "film", 1, 1000).session
    time.sleep(0.6)
    real_store.refresh(session, 1000)
    time.sleep(0.6)
    real_store.refresh(session, 1000)  # alive: the heartbeat pushed its expiry
    time.sleep(1.2)
    with pytest.raises(SessionGone):
        real_store.refresh(session, 1000)
    assert sessions_of(real_redis, real_store, "ann") == {}
    assert real_store.admit("ann", "phone", "film", 1, 1000).status == "initiated"


def test_expired_sessions_are_pruned_on_start(real_store, real_redis):
    real_store.admit("ann", "tv", "film", 5, 300)
    real_store.admit("bob", "tv", "film", 5, 60_000)
    time.sleep(0.4)
    real_store.admit("bob", "phone", "film", 5, 60_000)  # same bucket scan prunes ann's expired one
    if real_store.bucket_key("ann") == real_store.bucket_key("bob"):
        assert sessions_of(real_redis, real_store, "ann") == {}
    assert len(sessions_of(real_redis, real_store, "bob")) == 2


def test_bucket_expires_with_its_sessions(real_store, real_redis):
    real_store.admit("ann", "tv", "film", 1, 500)
    key = real_store.bucket_key("ann")
    assert 0 < real_redis.pttl(key) <= 500
    time.sleep(0.7)
    assert real_redis.exists(key) == 0


def test_times_come_from_the_redis_server(real_store, real_redis):
    seconds, micros = real_redis.time()
    admission = real_store.admit("ann", "tv", "film", 1, TTL_MS)
    assert abs(admission.now_ms - (seconds * 1000 + micros // 1000)) < 1000
    value = real_redis.hget(real_store.bucket_key("ann"), admission.session.sid).decode()
    expires, started = (int(part, 36) for part in value.split("|")[:2])
    assert expires - started == TTL_MS


def test_scripts_survive_a_script_flush(real_store, real_redis):
    real_store.admit("ann", "tv", "film", 2, TTL_MS)
    real_redis.script_flush()
    assert real_store.admit("ann", "phone", "film", 2, TTL_MS).status == "initiated"


def test_one_round_trip_per_operation(real_store, real_redis):
    warm = real_store.admit("ann", "tv", "film", 2, TTL_MS).session
    real_store.refresh(warm, TTL_MS)
    real_store.release(warm)  # the first call of each script loads it into Redis
    session = real_store.admit("ann", "tv", "film", 2, TTL_MS).session
    real_redis.config_resetstat()
    real_store.admit("ann", "phone", "film", 2, TTL_MS)
    real_store.refresh(session, TTL_MS)
    real_store.release(session)
    stats = real_redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3
    assert "cmdstat_script|load" not in stats
    assert not any(name.startswith("cmdstat_eval") and name != "cmdstat_evalsha" for name in stats)
