"""The session domain (api/concurrency.py) over a real RedisStore, with the tokens it hands out."""

import dataclasses
import time

import hiredis
import jwt
import pytest
from blocking import Blocking
from redis.exceptions import ResponseError

from api.concurrency import Concurrency
from api.errors import InvalidToken, SessionGone, StoreFailed, StoreUnavailable
from api.sessions import Admission, Limits, Session
from api.store import RedisStore
from api.tokens import SessionTokens

LIMITS = Limits(3)


class Clock:
    """A clock the test moves by hand; starts at the real time, as Redis's clock does."""

    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


class Counts:
    """The `count` callable: records every event with its n."""

    def __init__(self):
        self.calls = []

    def __call__(self, event, n=1):
        self.calls.append((event, n))

    def total(self, event):
        return sum(n for name, n in self.calls if name == event)


class Down:
    """A store whose every operation finds Redis unreachable."""

    async def _down(self, *args, **kwargs):
        raise StoreUnavailable()

    admit = refresh = release = kick = sessions = _down


class Recording:
    """A store that records what it was asked and answers as a healthy Redis would."""

    def __init__(self, clock):
        self.calls = []
        self._clock = clock

    def _now_ms(self):
        return int(self._clock() * 1000)

    async def admit(self, user, device, stream, limits, ttl_ms, tombstone_ms, renew="*"):
        self.calls.append(("admit", tombstone_ms))
        return Admission(Session(user, "sid-1", device, stream), "initiated", self._now_ms())

    async def refresh(self, session, ttl_ms, token_exp_ms=0, limit=0, stream_limit=0, device_limit=0):
        self.calls.append(("refresh", token_exp_ms))
        self.limits = (limit, stream_limit, device_limit)
        return "updated", self._now_ms()

    async def release(self, session, tombstone_ms):
        self.calls.append(("release", tombstone_ms))
        return True

    async def kick(self, user, sid, tombstone_ms):
        self.calls.append(("kick", tombstone_ms))
        return []


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tokens(keyring, config, clock):
    return SessionTokens(keyring, config.issuer, config.audience, config.token_leeway_s, clock=clock)


@pytest.fixture
def counts():
    return Counts()


@pytest.fixture
def service(store, tokens, config, counts, clock):
    return Blocking(Concurrency(store.target, tokens, config, count=counts, clock=clock))


def claims_of(grant, keyring, config):
    """Decode a Grant's token with a general JOSE library."""
    key = keyring.current.signing
    return jwt.decode(grant.token, key.public_key, algorithms=[key.alg], audience=config.audience)


def test_start_grants_a_token_for_the_session(service, keyring, config):
    grant = service.start("ann", "tv", "film", Limits(2))
    assert grant.status == "initiated"
    assert grant.ttl_s == config.session_ttl_s
    assert (grant.session.user, grant.session.device, grant.session.stream) == ("ann", "tv", "film")
    claims = claims_of(grant, keyring, config)
    assert (claims["sub"], claims["sid"]) == ("ann", grant.session.sid)
    assert (claims["device"], claims["stream"], claims["lim"]) == ("tv", "film", 2)
    assert claims["iss"] == config.issuer
    assert claims["exp"] - claims["iat"] == config.session_ttl_s


def test_start_of_the_same_user_device_and_stream_renews(service):
    first = service.start("ann", "tv", "film", LIMITS)
    again = service.start("ann", "tv", "film", LIMITS)
    assert again.status == "updated"
    assert again.session.sid == first.session.sid
    assert service.start("ann", "phone", "film", LIMITS).session.sid != first.session.sid


def test_heartbeat_refreshes_with_a_fresh_token(service, keyring, config):
    grant = service.start("ann", "tv", "film", Limits(2))
    beat = service.heartbeat(grant.token, grant.session.sid)
    assert beat.status == "updated"
    assert beat.session == Session("ann", grant.session.sid, "tv", "film")
    assert beat.token != grant.token
    assert claims_of(beat, keyring, config)["lim"] == 2


def test_heartbeat_with_the_token_of_another_session_is_refused(service):
    mine = service.start("ann", "tv", "film", LIMITS)
    other = service.start("ann", "phone", "film", LIMITS)
    with pytest.raises(InvalidToken, match="another session"):
        service.heartbeat(mine.token, other.session.sid)
    with pytest.raises(InvalidToken, match="another session"):
        service.stop(mine.token, other.session.sid)
    assert [s.sid for s in service.sessions("ann")[1]] == [mine.session.sid, other.session.sid]


def test_heartbeat_with_an_expired_token_says_expired(service, clock, config):
    grant = service.start("ann", "tv", "film", LIMITS)
    clock.now += config.session_ttl_s + config.token_leeway_s + 1
    with pytest.raises(SessionGone) as gone:
        service.heartbeat(grant.token, grant.session.sid)
    assert gone.value.reason == "expired"


def test_stop_then_heartbeat_says_stopped(service):
    grant = service.start("ann", "tv", "film", LIMITS)
    service.stop(grant.token, grant.session.sid)
    assert service.sessions("ann")[1] == []
    with pytest.raises(SessionGone) as gone:
        service.heartbeat(grant.token, grant.session.sid)
    assert gone.value.reason == "stopped"


def test_kick_ends_the_sessions_and_counts_them(service, counts):
    grants = [service.start("ann", device, "film", LIMITS) for device in ("tv", "phone")]
    ended = service.kick("ann")
    assert sorted(ended) == sorted(g.session.sid for g in grants)
    assert counts.total("kicked") == 2
    for grant in grants:
        with pytest.raises(SessionGone) as gone:
            service.heartbeat(grant.token, grant.session.sid)
        assert gone.value.reason == "kicked"


def test_kick_of_one_session_leaves_the_others(service, counts):
    tv = service.start("ann", "tv", "film", LIMITS)
    phone = service.start("ann", "phone", "film", LIMITS)
    assert service.kick("ann", tv.session.sid) == [tv.session.sid]
    assert counts.total("kicked") == 1
    assert [s.sid for s in service.sessions("ann")[1]] == [phone.session.sid]


def test_evict_oldest_ends_the_oldest_and_counts_it(service, counts):
    limits = Limits(1, evict_oldest=True)
    oldest = service.start("ann", "tv", "film", limits)
    newest = service.start("ann", "phone", "film", limits)
    assert newest.status == "initiated"
    assert counts.total("evicted") == 1
    assert [s.sid for s in service.sessions("ann")[1]] == [newest.session.sid]
    with pytest.raises(SessionGone) as gone:
        service.heartbeat(oldest.token, oldest.session.sid)
    assert gone.value.reason == "evicted"


def test_a_lost_session_resumes_while_its_token_is_valid(any_redis, service, counts):
    grant = service.start("ann", "tv", "film", LIMITS)
    any_redis.flushall()  # Redis lost the session (failover, restart without persistence)
    beat = service.heartbeat(grant.token, grant.session.sid)
    assert beat.status == "updated"
    assert counts.total("resumed") == 1
    assert [s.sid for s in service.sessions("ann")[1]] == [grant.session.sid]


def test_the_token_carries_the_device_limit_from_start_to_heartbeat(service, keyring, config):
    grant = service.start("ann", "tv", "film", Limits(2, device_limit=3))
    assert claims_of(grant, keyring, config)["dlim"] == 3
    beat = service.heartbeat(grant.token, grant.session.sid)
    assert (claims_of(beat, keyring, config)["lim"], claims_of(beat, keyring, config)["dlim"]) == (2, 3)
    assert "dlim" not in claims_of(service.start("bob", "tv", "film", Limits(2)), keyring, config)


def test_a_lost_session_resumes_only_within_the_device_limit_of_its_token(any_redis, service):
    limits = Limits(3, device_limit=1)
    lost = service.start("ann", "tv", "film", limits)
    any_redis.flushall()
    service.start("ann", "phone", "film", limits)  # the only device the user may play on now
    with pytest.raises(SessionGone) as gone:
        service.heartbeat(lost.token, lost.session.sid)
    assert gone.value.reason == "limit"
    assert [s.device for s in service.sessions("ann")[1]] == ["phone"]


def test_a_lost_session_is_gone_without_resume(store, any_redis, tokens, config, counts):
    service = Blocking(
        Concurrency(store.target, tokens, dataclasses.replace(config, resume=False), count=counts)
    )
    grant = service.start("ann", "tv", "film", LIMITS)
    any_redis.flushall()
    with pytest.raises(SessionGone) as gone:
        service.heartbeat(grant.token, grant.session.sid)
    assert gone.value.reason == "expired"
    assert counts.total("resumed") == 0


def test_fail_open_hands_out_a_degraded_grant(tokens, config, counts, clock, keyring):
    config = dataclasses.replace(config, on_store_error="open", degraded_ttl_s=45)
    service = Blocking(Concurrency(Down(), tokens, config, count=counts, clock=clock))
    clock.now = 1_900_000_000.5  # the app clock, not Redis's, dates a degraded token
    grant = service.start("ann", "tv", "film", Limits(2))
    assert (grant.status, grant.ttl_s) == ("initiated", 45)
    claims = tokens.verify(grant.token)
    assert (claims["degraded"], claims["lim"], claims["sub"]) == (True, 2, "ann")
    assert (claims["iat"], claims["exp"]) == (1_900_000_000, 1_900_000_045)
    assert claims["sid"] == grant.session.sid
    assert counts.total("degraded") == 1

    beat = service.heartbeat(grant.token, grant.session.sid)
    assert (beat.status, beat.ttl_s, beat.session) == ("updated", 45, grant.session)
    assert tokens.verify(beat.token)["degraded"] is True
    assert counts.total("degraded") == 2

    limited = service.start("ann", "phone", "film", Limits(2, device_limit=1))
    assert tokens.verify(limited.token)["dlim"] == 1  # resumption applies it once Redis is back
    assert tokens.verify(service.heartbeat(limited.token, limited.session.sid).token)["dlim"] == 1


class ScriptFails:
    """A runner to which Redis answers that the script failed, as the asyncio runner reads it (hiredis)."""

    async def run(self, script, key, args):
        reader = hiredis.Reader(replyError=ResponseError)
        reader.feed(b"-ERR user_script:57: too many results to unpack script: 3f, on @user_script:57.\r\n")
        raise reader.gets()


def test_a_failing_script_is_never_taken_for_an_outage_so_fail_open_admits_nothing(
    tokens, config, counts, clock
):
    """A script that fails (a bug) is a 500; taken for Redis being down, fail-open would admit past it."""
    config = dataclasses.replace(config, on_store_error="open")
    service = Blocking(Concurrency(RedisStore(ScriptFails()), tokens, config, count=counts, clock=clock))
    with pytest.raises(StoreFailed):
        service.start("ann", "tv", "film", LIMITS)
    token = tokens.sign(Session("ann", "sid-1", "tv", "film"), int(clock()), 60)
    with pytest.raises(StoreFailed):
        service.heartbeat(token, "sid-1")
    assert counts.total("degraded") == 0


def test_fail_closed_reraises(tokens, config, counts, clock):
    service = Blocking(Concurrency(Down(), tokens, config, count=counts, clock=clock))
    assert config.on_store_error == "closed"
    with pytest.raises(StoreUnavailable):
        service.start("ann", "tv", "film", LIMITS)
    token = tokens.sign(Session("ann", "sid-1", "tv", "film"), int(clock()), 60)
    with pytest.raises(StoreUnavailable):
        service.heartbeat(token, "sid-1")
    assert counts.total("degraded") == 0


@pytest.mark.parametrize(
    ("on_store_error", "tombstone_ms"),
    # Closed: the session TTL + leeway. Open: a degraded chain may run the degraded lifetime past the
    # session's last store-confirmed expiry, so that too.
    [("closed", (60 + 7) * 1000), ("open", (60 + 90 + 7) * 1000)],
)
def test_tombstones_outlive_every_token(tokens, config, clock, on_store_error, tombstone_ms):
    config = dataclasses.replace(
        config, session_ttl_s=60, degraded_ttl_s=90, token_leeway_s=7, on_store_error=on_store_error
    )
    store = Recording(clock)
    service = Blocking(Concurrency(store, tokens, config, clock=clock))
    grant = service.start("ann", "tv", "film", LIMITS)
    service.stop(grant.token, grant.session.sid)
    service.kick("ann")
    assert store.calls == [("admit", tombstone_ms), ("release", tombstone_ms), ("kick", tombstone_ms)]


@pytest.mark.parametrize("resume", [True, False])
def test_heartbeat_passes_the_token_expiry_only_with_resume(tokens, config, clock, resume):
    store = Recording(clock)
    service = Blocking(Concurrency(store, tokens, dataclasses.replace(config, resume=resume), clock=clock))
    grant = service.start("ann", "tv", "film", LIMITS)
    exp = tokens.verify(grant.token)["exp"]
    service.heartbeat(grant.token, grant.session.sid)
    assert store.calls[-1] == ("refresh", exp * 1000 if resume else 0)


def test_heartbeat_passes_the_limits_of_its_token_to_the_store(tokens, config, clock):
    store = Recording(clock)
    service = Blocking(Concurrency(store, tokens, dataclasses.replace(config, stream_limit=2), clock=clock))
    grant = service.start("ann", "tv", "film", Limits(4, device_limit=3))
    service.heartbeat(grant.token, grant.session.sid)
    assert store.limits == (4, 2, 3)
