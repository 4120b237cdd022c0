"""The Redis store and its Lua scripts, on fakeredis and on a real redis-server."""

import concurrent.futures
import re
import threading
import time

import hiredis
import pytest
import redis
from layout import live_sessions, marks, redis_now_ms, stored_sessions, tombstones, user_key

from api import store as store_module
from api.errors import LimitReached, SessionGone, StoreUnavailable
from api.lua import EPOCH_MS, MAX_TOMBSTONES
from api.sessions import Limits, Session
from api.store import RedisStore, _runner_of, _script_failed, escape, unescape

TTL_MS = 60_000
TOMB_MS = 65_000


def sessions_of(client, user):
    """Return {sid: (device, stream)} as Redis holds them for `user`."""
    return {sid: (device, stream) for sid, (_, device, stream) in live_sessions(client, user).items()}


@pytest.mark.backends
def test_admit_until_the_limit(store, any_redis):
    sids = {store.admit("ann", f"dev{i}", "film", Limits(3), TTL_MS, TOMB_MS).session.sid for i in range(3)}
    with pytest.raises(LimitReached) as refused:
        store.admit("ann", "dev9", "film", Limits(3), TTL_MS, TOMB_MS)
    holders = refused.value.holders
    assert {h.sid for h in holders} == sids
    assert {h.device for h in holders} == {"dev0", "dev1", "dev2"}
    assert all(isinstance(h.started_ms, int) for h in holders)
    assert set(sessions_of(any_redis, "ann")) == sids


@pytest.mark.backends
def test_same_device_and_stream_renews_the_same_session(store):
    first = store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS)
    again = store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS)
    assert (first.status, again.status) == ("initiated", "updated")
    assert again.session.sid == first.session.sid


@pytest.mark.backends
def test_users_do_not_share_a_limit(store):
    store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS)
    assert store.admit("bob", "tv", "film", Limits(1), TTL_MS, TOMB_MS).status == "initiated"
    with pytest.raises(LimitReached):
        store.admit("ann", "phone", "film", Limits(1), TTL_MS, TOMB_MS)


@pytest.mark.backends
def test_release_frees_the_slot_and_refresh_never_revives(store, any_redis):
    session = store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS).session
    assert store.release(session, TOMB_MS) is True
    assert store.release(session, TOMB_MS) is False
    with pytest.raises(SessionGone):
        store.refresh(session, TTL_MS)
    assert sessions_of(any_redis, "ann") == {}
    assert store.admit("ann", "phone", "film", Limits(1), TTL_MS, TOMB_MS).status == "initiated"


@pytest.mark.backends
def test_refresh_needs_the_owner(store):
    session = store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS).session
    with pytest.raises(SessionGone):
        store.refresh(Session("bob", session.sid, "tv", "film"), TTL_MS)
    assert store.release(Session("bob", session.sid, "tv", "film"), TOMB_MS) is False
    store.refresh(session, TTL_MS)


@pytest.mark.parametrize(
    "user", ["{slot}", "a:b", "pipe|user", "100%", "ünïcödé 🎬", "}{", "x" * 256, "with space"]
)
@pytest.mark.backends
def test_ids_of_any_content(store, any_redis, user):
    device, stream = f"dev|{user}", f"%7C{user}"
    session = store.admit(user, device, stream, Limits(1), TTL_MS, TOMB_MS).session
    assert sessions_of(any_redis, user) == {session.sid: (device, stream)}
    with pytest.raises(LimitReached) as refused:
        store.admit(user, "other", stream, Limits(1), TTL_MS, TOMB_MS)
    assert refused.value.holders[0].device == device
    assert refused.value.holders[0].stream == stream
    key = user_key(user)
    assert re.fullmatch(r"c:[A-Za-z0-9_-]{12}", key) and user not in key  # no braces: no id picks a slot


def test_escape_round_trips():
    for value in ["", "|", "%", "%7C", "a|b%c", "%%||"]:
        assert unescape(escape(value)) == value
        assert "|" not in escape(value)


@pytest.mark.backends
def test_every_key_has_a_ttl(store, any_redis):
    for i in range(20):
        session = store.admit(f"user{i}", "tv", "film", Limits(2), TTL_MS, TOMB_MS).session
        store.refresh(session, TTL_MS)
        if i % 3 == 0:
            store.release(session, TOMB_MS)
    keys = any_redis.keys("*")
    assert keys
    assert all(0 < any_redis.pttl(key) <= TOMB_MS for key in keys)


def test_unreachable_redis_is_store_unavailable(make_store):
    import redis

    client = redis.Redis(port=1, socket_connect_timeout=0.1, socket_timeout=0.1)
    store = make_store(client)
    with pytest.raises(StoreUnavailable):
        store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS)
    assert store.ping() is False


# Real redis-server only: expiry, server time, the script cache.


def test_sessions_expire_by_server_time(real_store, real_redis):
    ttl_ms = 3000
    session = real_store.admit("ann", "tv", "film", Limits(1), ttl_ms, TOMB_MS).session
    for _ in range(3):  # 3.6 s in all, past the TTL: alive only because each refresh pushed its expiry
        time.sleep(1.2)
        real_store.refresh(session, ttl_ms)
    time.sleep(ttl_ms / 1000 + 0.5)
    with pytest.raises(SessionGone):
        real_store.refresh(session, ttl_ms)
    assert sessions_of(real_redis, "ann") == {}
    assert real_store.admit("ann", "phone", "film", Limits(1), ttl_ms, TOMB_MS).status == "initiated"


def test_expired_sessions_are_pruned_on_start(real_store, real_redis):
    real_store.admit("ann", "phone", "film", Limits(5), 60_000, TOMB_MS)
    expired = real_store.admit("ann", "tv", "film", Limits(5), 300, TOMB_MS).session.sid
    time.sleep(0.4)
    assert real_redis.hexists(user_key("ann"), expired)  # still stored, though expired
    real_store.admit("ann", "laptop", "film", Limits(5), 60_000, TOMB_MS)
    assert not real_redis.hexists(user_key("ann"), expired)
    assert len(sessions_of(real_redis, "ann")) == 2


def test_user_key_expires_with_its_sessions(real_store, real_redis):
    real_store.admit("ann", "tv", "film", Limits(1), 2000, TOMB_MS)
    key = user_key("ann")
    assert 0 < real_redis.pttl(key) <= 2000
    time.sleep(2.2)
    assert real_redis.exists(key) == 0


@pytest.mark.backends
def test_times_come_from_the_redis_server(real_store, real_redis):
    seconds, micros = real_redis.time()
    admission = real_store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS)
    assert abs(admission.now_ms - (seconds * 1000 + micros // 1000)) < 1000
    (entry,) = stored_sessions(real_redis).values()
    assert abs(entry.expires_ms - (admission.now_ms + TTL_MS)) <= 1


def test_scripts_survive_a_script_flush(real_store, real_redis):
    real_store.admit("ann", "tv", "film", Limits(2), TTL_MS, TOMB_MS)
    real_redis.script_flush()
    assert real_store.admit("ann", "phone", "film", Limits(2), TTL_MS, TOMB_MS).status == "initiated"


def test_one_round_trip_per_operation(real_store, real_redis):
    warm = real_store.admit("ann", "tv", "film", Limits(2), TTL_MS, TOMB_MS).session
    real_store.refresh(warm, TTL_MS)
    real_store.release(warm, TOMB_MS)  # the first call of each script loads it into Redis
    session = real_store.admit("ann", "tv", "film", Limits(2), TTL_MS, TOMB_MS).session
    real_redis.config_resetstat()
    real_store.admit("ann", "phone", "film", Limits(2), TTL_MS, TOMB_MS)
    real_store.refresh(session, TTL_MS)
    real_store.release(session, TOMB_MS)
    stats = real_redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3
    assert "cmdstat_script|load" not in stats
    assert not any(name.startswith("cmdstat_eval") and name != "cmdstat_evalsha" for name in stats)


class Stalled:
    """A runner whose process stalls for `seconds` before sending a call, or after its answer came."""

    def __init__(self, client, seconds):
        self._runner = _runner_of(client)
        self.seconds, self.before, self.after = seconds, False, False

    async def run(self, script, key, args):
        if self.before:
            time.sleep(self.seconds)
        reply = await self._runner.run(script, key, args)
        if self.after:
            time.sleep(self.seconds)
        return reply

    def close(self):
        self._runner.close()


def test_a_start_that_reaches_redis_after_its_timeout_is_refused_and_leaves_nothing(make_store, real_redis):
    runner = Stalled(real_redis, seconds=1.0)
    store = make_store(runner, timeout_s=0.1)
    store.admit("ann", "tv", "film", Limits(2), TTL_MS, TOMB_MS)  # learns the Redis clock
    runner.before = True
    with pytest.raises(StoreUnavailable):
        store.admit("bob", "tv", "film", Limits(2), TTL_MS, TOMB_MS)
    assert live_sessions(real_redis, "bob") == {}


def test_an_answer_read_late_does_not_make_the_next_start_late(make_store, real_redis):
    """An answer read late (the process stalled) lowers no bound on the Redis clock."""
    runner = Stalled(real_redis, seconds=1.0)
    store = make_store(runner, timeout_s=0.5)
    store.admit("ann", "tv", "film", Limits(3), TTL_MS, TOMB_MS)  # learns the Redis clock
    runner.after = True
    store.admit("ann", "tablet", "film", Limits(3), TTL_MS, TOMB_MS)
    runner.after = False
    assert store.admit("ann", "phone", "film", Limits(3), TTL_MS, TOMB_MS).status == "initiated"


def test_the_clocks_rounding_is_no_step_back_of_the_redis_clock(monkeypatch):
    """Both clocks count whole milliseconds, so a bound can be a millisecond or two off; a real step back of
    the Redis clock is relearned."""
    local = [0]
    monkeypatch.setattr(store_module, "_local_ms", lambda: local[0])
    store = RedisStore(object(), timeout_s=0.25)

    def answer(sent_ms, redis_ms, read_ms):
        local[0] = read_ms
        store._learn_server_time(redis_ms, sent_ms)
        return store._deadline_ms(0) - 250  # the offset learned

    assert answer(0, 5000, 1) == 4999
    assert answer(10, 5008, 1010) == 4999  # read a second late, and its upper bound rounded 1 ms under
    assert answer(2000, 5999, 2001) == 3998  # the Redis clock went back a second


def test_an_answer_slow_to_run_does_not_let_a_later_start_run_past_its_timeout(make_store, real_redis):
    """A script that ran long after it was sent says little of the Redis clock: the next start's deadline
    must still be its player's timeout, or a start told 503 could run after all and hold a slot."""
    runner = Stalled(real_redis, seconds=0.3)
    store = make_store(runner, timeout_s=0.5)
    runner.before = True
    store.admit("ann", "tv", "film", Limits(3), TTL_MS, TOMB_MS)  # ran 0.3 s after it was sent: in time
    runner.seconds = 0.6  # past the timeout, though within it plus that first answer's 0.3 s
    with pytest.raises(StoreUnavailable):
        store.admit("bob", "tv", "film", Limits(3), TTL_MS, TOMB_MS)
    assert live_sessions(real_redis, "bob") == {}


def test_an_answer_slower_than_the_timeout_does_not_push_the_next_deadline_back(make_store, real_redis):
    runner = Stalled(real_redis, seconds=2.0)
    store = make_store(runner, timeout_s=0.5)
    store.admit("ann", "tv", "film", Limits(4), TTL_MS, TOMB_MS)  # quick answers: learned from
    store.admit("ann", "tablet", "film", Limits(4), TTL_MS, TOMB_MS)
    runner.before = True
    with pytest.raises(StoreUnavailable):  # ran 2 s after it was sent: late, and teaches nothing
        store.admit("ann", "phone", "film", Limits(4), TTL_MS, TOMB_MS)
    runner.seconds = 1.0  # past the timeout, though within it plus the slow answer's 2 s
    with pytest.raises(StoreUnavailable):
        store.admit("bob", "tv", "film", Limits(3), TTL_MS, TOMB_MS)
    assert live_sessions(real_redis, "bob") == {}


# Plans, eviction, per-stream limits, kicks, resumption.


def far_future_ms(client):
    seconds, _ = client.time()
    return (seconds + 60) * 1000


def gone_reason(store, session):
    with pytest.raises(SessionGone) as gone:
        store.refresh(session, TTL_MS)
    return gone.value.details["reason"]


@pytest.mark.backends
def test_stop_leaves_a_tombstone_that_says_stopped(store):
    session = store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS).session
    store.release(session, TOMB_MS)
    assert gone_reason(store, session) == "stopped"


@pytest.mark.backends
def test_evict_oldest_admits_and_ends_the_least_recently_started(store, any_redis):
    policy = Limits(2, evict_oldest=True)
    first = store.admit("ann", "d1", "film", policy, TTL_MS, TOMB_MS).session
    time.sleep(0.005)  # distinct start times
    second = store.admit("ann", "d2", "film", policy, TTL_MS, TOMB_MS).session
    time.sleep(0.005)
    third = store.admit("ann", "d3", "film", policy, TTL_MS, TOMB_MS)
    assert third.status == "initiated"
    assert third.evicted == (first.sid,)
    assert gone_reason(store, first) == "evicted"
    assert set(sessions_of(any_redis, "ann")) == {second.sid, third.session.sid}


@pytest.mark.backends
def test_stream_limit(store):
    policy = Limits(5, stream_limit=1)
    store.admit("ann", "tv", "match", policy, TTL_MS, TOMB_MS)
    with pytest.raises(LimitReached) as refused:
        store.admit("ann", "phone", "match", policy, TTL_MS, TOMB_MS)
    assert refused.value.scope == "stream"
    assert [s.device for s in refused.value.holders] == ["tv"]
    assert store.admit("ann", "phone", "other", policy, TTL_MS, TOMB_MS).status == "initiated"


@pytest.mark.backends
def test_stream_limit_with_eviction(store):
    policy = Limits(5, stream_limit=1, evict_oldest=True)
    first = store.admit("ann", "tv", "match", policy, TTL_MS, TOMB_MS).session
    second = store.admit("ann", "phone", "match", policy, TTL_MS, TOMB_MS)
    assert second.evicted == (first.sid,)


@pytest.mark.backends
def test_kick_one_and_all(store, any_redis):
    sessions = [store.admit("ann", f"d{i}", "film", Limits(3), TTL_MS, TOMB_MS).session for i in range(3)]
    other = store.admit("bob", "tv", "film", Limits(3), TTL_MS, TOMB_MS).session
    assert store.kick("ann", sessions[0].sid, TOMB_MS) == [sessions[0].sid]
    assert store.kick("ann", "no-such-sid", TOMB_MS) == []
    assert store.kick("ann", other.sid, TOMB_MS) == []  # bob's session is not ann's to kick
    assert gone_reason(store, sessions[0]) == "kicked"
    assert sorted(store.kick("ann", None, TOMB_MS)) == sorted(s.sid for s in sessions[1:])
    assert sessions_of(any_redis, "ann") == {}
    assert gone_reason(store, sessions[2]) == "kicked"
    store.refresh(other, TTL_MS)
    assert store.admit("ann", "new", "film", Limits(1), TTL_MS, TOMB_MS).status == "initiated"


@pytest.mark.backends
def test_list_sessions(store):
    made = [store.admit("ann", f"d{i}", f"s{i}", Limits(3), TTL_MS, TOMB_MS).session for i in range(2)]
    now_ms, listed = store.sessions("ann")
    assert [(s.sid, s.device, s.stream) for s in listed] == [(m.sid, m.device, m.stream) for m in made]
    assert all(s.started_ms <= now_ms < s.expires_ms <= now_ms + TTL_MS for s in listed)
    assert store.sessions("nobody")[1] == []


@pytest.mark.backends
def test_lost_session_resumes_while_its_token_is_valid(store, any_redis):
    session = store.admit("ann", "tv", "film", Limits(2), TTL_MS, TOMB_MS).session
    any_redis.flushall()  # a failover lost the entry
    status, _ = store.refresh(session, TTL_MS, far_future_ms(any_redis), 2)
    assert status == "resumed"
    assert sessions_of(any_redis, "ann") == {session.sid: ("tv", "film")}
    assert store.refresh(session, TTL_MS, far_future_ms(any_redis), 2)[0] == "updated"


@pytest.mark.backends
def test_lost_session_does_not_resume_over_the_limit_or_with_an_expired_token(store, any_redis):
    session = store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS).session
    any_redis.flushall()
    store.admit("ann", "phone", "film", Limits(1), TTL_MS, TOMB_MS)  # someone took the slot meanwhile
    with pytest.raises(SessionGone) as gone:
        store.refresh(session, TTL_MS, far_future_ms(any_redis), 1)
    assert gone.value.details["reason"] == "limit"
    with pytest.raises(SessionGone) as gone:
        store.refresh(session, TTL_MS, 1000, 5)  # token expired long ago (server time)
    assert gone.value.details["reason"] == "expired"


@pytest.mark.backends
def test_ended_sessions_never_resume(store, any_redis):
    session = store.admit("ann", "tv", "film", Limits(2), TTL_MS, TOMB_MS).session
    store.release(session, TOMB_MS)
    with pytest.raises(SessionGone):
        store.refresh(session, TTL_MS, far_future_ms(any_redis), 2)
    assert sessions_of(any_redis, "ann") == {}


@pytest.mark.backends
def test_stop_of_a_lost_session_still_blocks_resumption(store, any_redis):
    session = store.admit("ann", "tv", "film", Limits(2), TTL_MS, TOMB_MS).session
    any_redis.flushall()
    assert store.release(session, TOMB_MS) is False
    with pytest.raises(SessionGone):
        store.refresh(session, TTL_MS, far_future_ms(any_redis), 2)


def test_tombstones_expire(real_store, real_redis):
    session = real_store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS).session
    real_store.release(session, 300)
    key = user_key("ann")
    assert real_redis.hget(key, session.sid).startswith(b"~")
    time.sleep(0.4)
    real_store.admit("ann", "phone", "film", Limits(1), TTL_MS, TOMB_MS)  # the scan prunes the tombstone
    assert real_redis.hget(key, session.sid) is None


def test_tombstones_are_capped_stopped_ones_first(real_store, real_redis):
    """A start/stop loop cannot grow a user's hash: past MAX_TOMBSTONES the stopped ones go first, so a
    session kicked before the loop still answers kicked."""
    kicked = real_store.admit("ann", "tv", "film", Limits(1), TTL_MS, TOMB_MS).session
    assert real_store.kick("ann", kicked.sid, TOMB_MS) == [kicked.sid]
    for n in range(MAX_TOMBSTONES + 8):
        session = real_store.admit("ann", f"phone{n}", "film", Limits(1), TTL_MS, TOMB_MS).session
        assert real_store.release(session, TOMB_MS) is True
    left = tombstones(real_redis)
    assert len(left) == MAX_TOMBSTONES and left[kicked.sid] == "kicked"
    assert list(left.values()).count("stopped") == MAX_TOMBSTONES - 1
    with pytest.raises(SessionGone) as gone:
        real_store.refresh(kicked, TTL_MS, far_future_ms(real_redis), 1)
    assert gone.value.details["reason"] == "kicked"


@pytest.mark.backends
def test_kicking_more_sessions_than_tombstones_ends_every_one_of_them(store, any_redis):
    """Past MAX_TOMBSTONES some tombstones are dropped; the mark they leave holds every session out."""
    many = MAX_TOMBSTONES + 4
    sessions = [
        store.admit("ann", f"tv{n}", "film", Limits(many), TTL_MS, TOMB_MS).session for n in range(many)
    ]
    assert len(store.kick("ann", None, TOMB_MS)) == many
    assert len(tombstones(any_redis)) == MAX_TOMBSTONES
    assert marks(any_redis) == {user_key("ann"): "kicked"}
    for session in sessions:
        with pytest.raises(SessionGone) as gone:
            store.refresh(session, TTL_MS, far_future_ms(any_redis), many)
        assert gone.value.details["reason"] == "kicked"
    assert sessions_of(any_redis, "ann") == {}
    assert store.admit("ann", "tv", "film", Limits(many), TTL_MS, TOMB_MS).status == "initiated"
    assert store.sessions("ann")[1][0].device == "tv"  # the mark is no session


@pytest.mark.backends
def test_a_stop_whose_tombstone_is_dropped_at_once_stays_stopped(store, any_redis):
    """With the cap full of kicked tombstones, a stop's own tombstone goes first: the mark keeps it ended."""
    many = MAX_TOMBSTONES + 1
    for n in range(MAX_TOMBSTONES):
        store.admit("ann", f"tv{n}", "film", Limits(many), TTL_MS, TOMB_MS)
    store.kick("ann", None, TOMB_MS)
    stopped = store.admit("ann", "phone", "film", Limits(many), TTL_MS, TOMB_MS).session
    assert store.release(stopped, TOMB_MS) is True
    assert stopped.sid not in tombstones(any_redis)
    with pytest.raises(SessionGone) as gone:
        store.refresh(stopped, TTL_MS, far_future_ms(any_redis), many)
    assert gone.value.details["reason"] == "stopped"


def test_the_mark_expires_with_the_tombstones_it_replaced(real_store, real_redis):
    """Once every dropped tombstone would have expired, a lost session resumes again."""
    short_ms = 2000  # all 17 stops come within it, however slow the machine
    for n in range(MAX_TOMBSTONES + 1):
        session = real_store.admit("ann", f"tv{n}", "film", Limits(2), TTL_MS, short_ms).session
        real_store.release(session, short_ms)
    assert marks(real_redis) == {user_key("ann"): "stopped"}
    lost = real_store.admit("ann", "phone", "film", Limits(2), TTL_MS, TOMB_MS).session
    real_redis.hdel(user_key("ann"), lost.sid)
    time.sleep(short_ms / 1000 + 0.1)
    assert real_store.refresh(lost, TTL_MS, far_future_ms(real_redis), 2)[0] == "resumed"


def b36(number):
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(digits[number // 36**i % 36] for i in reversed(range(8)))


@pytest.mark.parametrize("refused_by", ["limit", "device_limit"])
def test_refusals_and_listings_of_thousands_of_sessions_are_answered(real_store, real_redis, refused_by):
    """A user's limit may be large (a `climit` claim); Lua's unpack stops near 8,000 values."""
    many = 2_000
    now_ms = redis_now_ms(real_redis) - EPOCH_MS
    value = b36(now_ms + TTL_MS) + b36(now_ms)
    real_redis.hset(user_key("ann"), mapping={f"s{n:011d}": f"{value}tv|film{n}" for n in range(many)})
    limits = Limits(many) if refused_by == "limit" else Limits(many + 1, device_limit=1)
    with pytest.raises(LimitReached) as refused:
        real_store.admit("ann", "phone", "film", limits, TTL_MS, TOMB_MS)
    assert refused.value.active == (many if refused_by == "limit" else 1)  # sessions, or devices
    assert len(refused.value.holders) == many
    assert len(real_store.sessions("ann")[1]) == many


def test_lost_session_does_not_resume_over_the_stream_limit(store, any_redis):
    session = store.admit("ann", "tv", "match", Limits(5, stream_limit=1), TTL_MS, TOMB_MS).session
    any_redis.flushall()
    store.admit("ann", "phone", "match", Limits(5, stream_limit=1), TTL_MS, TOMB_MS)
    with pytest.raises(SessionGone) as gone:
        store.refresh(session, TTL_MS, far_future_ms(any_redis), 5, stream_limit=1)
    assert gone.value.details["reason"] == "limit"
    assert store.refresh(session, TTL_MS, far_future_ms(any_redis), 5)[0] == "resumed"  # no stream limit


# The device limit: distinct devices among a user's live sessions.


@pytest.mark.backends
def test_device_limit_refuses_a_new_device_and_counts_a_device_once(store, any_redis):
    policy = Limits(5, device_limit=2)
    plays = [("tv", "film"), ("phone", "film"), ("tv", "news")]  # a second stream on the tv: no new device
    made = {
        store.admit("ann", device, stream, policy, TTL_MS, TOMB_MS).session.sid for device, stream in plays
    }
    with pytest.raises(LimitReached) as refused:
        store.admit("ann", "laptop", "film", policy, TTL_MS, TOMB_MS)
    assert (refused.value.scope, refused.value.limit, refused.value.active) == ("device", 2, 2)
    assert {h.sid for h in refused.value.holders} == made  # every session of the devices holding it
    assert set(sessions_of(any_redis, "ann")) == made
    assert store.admit("ann", "phone", "news", policy, TTL_MS, TOMB_MS).status == "initiated"


@pytest.mark.backends
def test_limits_are_checked_stream_then_device_then_account(store):
    policy = Limits(2, stream_limit=1, device_limit=1)
    store.admit("ann", "tv", "film", policy, TTL_MS, TOMB_MS)
    scopes = []
    for device, stream in (("phone", "film"), ("phone", "news"), ("tv", "news"), ("tv", "sport")):
        try:
            store.admit("ann", device, stream, policy, TTL_MS, TOMB_MS)
            scopes.append("admitted")
        except LimitReached as refused:
            scopes.append(refused.scope)
    assert scopes == ["stream", "device", "admitted", "account"]


@pytest.mark.backends
def test_device_limit_evicts_every_session_of_the_least_recently_started_device(store, any_redis):
    policy = Limits(5, device_limit=2, evict_oldest=True)
    started = {}
    for device, stream in (("tv", "a"), ("phone", "a"), ("phone", "b"), ("tv", "b")):
        started[device, stream] = store.admit("ann", device, stream, policy, TTL_MS, TOMB_MS).session
        time.sleep(0.005)  # distinct start times
    # The tv holds the oldest session, but the phone's latest start is older than the tv's.
    laptop = store.admit("ann", "laptop", "a", policy, TTL_MS, TOMB_MS)
    assert sorted(laptop.evicted) == sorted(started["phone", s].sid for s in ("a", "b"))
    assert gone_reason(store, started["phone", "a"]) == gone_reason(store, started["phone", "b"]) == "evicted"
    tv = {started["tv", s].sid for s in ("a", "b")}
    assert set(sessions_of(any_redis, "ann")) == tv | {laptop.session.sid}


@pytest.mark.backends
def test_device_eviction_comes_before_the_account_limit(store, any_redis):
    """Sessions a device eviction ends free account slots: no session beyond that device is evicted."""
    policy = Limits(3, device_limit=2, evict_oldest=True)
    oldest = store.admit("ann", "tv", "a", policy, TTL_MS, TOMB_MS).session
    time.sleep(0.005)
    phone = store.admit("ann", "phone", "a", policy, TTL_MS, TOMB_MS).session
    time.sleep(0.005)
    newer = store.admit("ann", "tv", "b", policy, TTL_MS, TOMB_MS).session
    laptop = store.admit("ann", "laptop", "a", policy, TTL_MS, TOMB_MS)
    assert laptop.evicted == (phone.sid,)
    assert set(sessions_of(any_redis, "ann")) == {oldest.sid, newer.sid, laptop.session.sid}


def test_concurrent_starts_admit_sessions_on_exactly_the_device_limit(real_store, real_redis):
    policy = Limits(10, device_limit=2)
    calls = [(f"device-{i % 10}", f"stream-{i}") for i in range(30)]
    barrier = threading.Barrier(len(calls))

    def start(call):
        barrier.wait(timeout=10)
        try:
            return real_store.admit("ann", *call, policy, TTL_MS, TOMB_MS).session.device
        except LimitReached as refused:
            assert (refused.scope, refused.active) == ("device", 2)
            return None

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        devices = list(pool.map(start, calls))
    admitted = {device for device in devices if device}
    assert len(admitted) == 2
    assert {device for device, _ in sessions_of(real_redis, "ann").values()} == admitted
    assert len(sessions_of(real_redis, "ann")) == len(devices) - devices.count(None)


@pytest.mark.backends
def test_lost_session_resumes_only_within_the_device_limit(store, any_redis):
    policy = Limits(5, device_limit=1)
    on_tv = store.admit("ann", "tv", "film", policy, TTL_MS, TOMB_MS).session
    on_phone = store.admit("ann", "phone", "news", Limits(5), TTL_MS, TOMB_MS).session
    any_redis.flushall()
    store.admit("ann", "phone", "film", policy, TTL_MS, TOMB_MS)  # another device took the only one
    with pytest.raises(SessionGone) as gone:
        store.refresh(on_tv, TTL_MS, far_future_ms(any_redis), 5, device_limit=1)
    assert gone.value.details["reason"] == "limit"
    assert {device for device, _ in sessions_of(any_redis, "ann").values()} == {"phone"}
    # A device that still plays is no new device; without a device limit the tv comes back too.
    assert store.refresh(on_phone, TTL_MS, far_future_ms(any_redis), 5, device_limit=1)[0] == "resumed"
    assert store.refresh(on_tv, TTL_MS, far_future_ms(any_redis), 5)[0] == "resumed"


def test_a_script_failure_is_told_from_redis_being_unable_to_serve(real_redis):
    """Both clients' spelling of a failed script (redis-py strips `ERR`, hiredis does not) is a failure;
    errors with their own code (Redis cannot serve now) are not, even when they name the script."""
    with pytest.raises(redis.ResponseError) as failed:
        real_redis.eval("return x.y", 0)
    reader = hiredis.Reader(replyError=redis.ResponseError)
    reader.feed(b"-ERR user_script:1: too many results to unpack script: 3f, on @user_script:1.\r\n")
    assert _script_failed(failed.value) and _script_failed(reader.gets())
    for outage in (
        redis.ResponseError("MASTERDOWN Link with MASTER is down script: 3f, on @user_script:1."),
        redis.exceptions.ReadOnlyError(
            "You can't write against a read only replica. script: 3f, on @user_script:1."
        ),
        redis.ConnectionError("Connection closed by server."),
        redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
    ):
        assert not _script_failed(outage), outage
