"""Signing and verifying session tokens for each algorithm, across a rotation."""

import base64
import json
import time

import jwt
import pytest

from api.config import MAX_ID_CHARS, MAX_TOKEN_CHARS
from api.errors import InvalidToken
from api.sessions import Session
from api.tokens import SessionTokens
from keys.errors import InvalidJws
from keys.jws import TOKEN_TYPE
from keys.keyring import Keyring
from keys.records import ALGORITHMS
from keys.rotation import Lifecycle, RotationPolicy
from keys.store import KeyStore

REJECTED = (InvalidToken, InvalidJws)  # claim problems, JWS problems
SESSION = Session("ann", "sid-1", "tv", "film")
ISSUER, AUDIENCE = "concurrency-service", "playback"


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def key_dirs(tmp_path_factory):
    """One directory per algorithm, each with one active key (RSA keys are slow to make: once per module)."""
    dirs = {}
    for alg in ALGORITHMS:
        directory = str(tmp_path_factory.mktemp(alg))
        KeyStore(directory).generate(alg)
        dirs[alg] = directory
    return dirs


def decode_segment(text):
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_sign_then_verify(key_dirs, alg):
    keyring = Keyring.open(key_dirs[alg])
    tokens = SessionTokens(keyring, ISSUER, AUDIENCE)
    now = int(time.time())
    token = tokens.sign(SESSION, now, 60)
    header = decode_segment(token.split(".")[0])
    key = keyring.current.signing
    assert header == {"alg": alg, "kid": key.kid, "typ": TOKEN_TYPE}
    claims = tokens.verify(token)
    assert claims["sub"] == "ann" and claims["sid"] == "sid-1"
    assert (claims["device"], claims["stream"]) == ("tv", "film")
    assert claims["exp"] - claims["iat"] == 60 and claims["iat"] == now
    assert set(claims) == {"iss", "aud", "sub", "sid", "device", "stream", "iat", "exp", "jti"}
    # a general JOSE library agrees
    assert jwt.decode(token, key.public_key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER) == claims


def test_every_token_has_its_own_jti(key_dirs):
    tokens = SessionTokens(Keyring.open(key_dirs["ES256"]), ISSUER, AUDIENCE)
    now = int(time.time())
    jtis = {tokens.verify(tokens.sign(SESSION, now, 60))["jti"] for _ in range(50)}
    assert len(jtis) == 50


def test_ids_of_any_content_round_trip(key_dirs):
    tokens = SessionTokens(Keyring.open(key_dirs["EdDSA"]), ISSUER, AUDIENCE)
    odd = Session('ü{x}|"\\\n', "s", "d\u0000", "🎬")
    claims = tokens.verify(tokens.sign(odd, int(time.time()), 60))
    assert (claims["sub"], claims["device"], claims["stream"]) == (odd.user, odd.device, odd.stream)


def test_expiry_and_leeway(key_dirs):
    clock = Clock()
    tokens = SessionTokens(Keyring.open(key_dirs["ES256"]), ISSUER, AUDIENCE, leeway_s=5, clock=clock)
    token = tokens.sign(SESSION, int(clock.now), 10)
    clock.now += 14
    assert tokens.verify(token)
    clock.now += 2
    with pytest.raises(REJECTED, match="expired"):
        tokens.verify(token)


def test_issued_in_the_future(key_dirs):
    clock = Clock()
    tokens = SessionTokens(Keyring.open(key_dirs["ES256"]), ISSUER, AUDIENCE, leeway_s=5, clock=clock)
    with pytest.raises(REJECTED, match="future"):
        tokens.verify(tokens.sign(SESSION, int(clock.now) + 30, 60))


def test_other_issuer_or_audience_is_refused(key_dirs):
    keyring = Keyring.open(key_dirs["ES256"])
    token = SessionTokens(keyring, "other-issuer", AUDIENCE).sign(SESSION, int(time.time()), 60)
    with pytest.raises(REJECTED, match="issuer"):
        SessionTokens(keyring, ISSUER, AUDIENCE).verify(token)
    token = SessionTokens(keyring, ISSUER, "cdn").sign(SESSION, int(time.time()), 60)
    with pytest.raises(REJECTED, match="audience"):
        SessionTokens(keyring, ISSUER, AUDIENCE).verify(token)


def test_rotation_switches_signing_at_the_scheduled_time(tmp_path):
    clock = Clock()
    store = KeyStore(str(tmp_path), clock=clock)
    first = store.generate("ES256")
    keyring = Keyring(store, reload_interval_s=0)
    tokens = SessionTokens(keyring, ISSUER, AUDIENCE, clock=clock)
    policy = RotationPolicy(
        jwks_max_age_s=300, reload_interval_s=1, token_lifetime_s=60, leeway_s=5, propagation_s=30
    )
    Lifecycle(store, policy, clock=clock).rotate(force=True)
    second = next(r.kid for r in store.records() if r.state == "active")
    now = int(clock.now)

    def kid_at(t):
        return decode_segment(tokens.sign(SESSION, t, 60).split(".")[0])["kid"]

    # every worker verifies the new key from now on, but it signs only after the activation delay: the reload
    # interval, the propagation bound and a margin, by when every instance has loaded the rotation
    assert second in keyring.current.verifying
    assert kid_at(now) == first
    assert kid_at(now + 31) == first
    assert kid_at(now + 33) == second
    old_token = tokens.sign(SESSION, now, 60)
    clock.now += 33
    assert tokens.verify(old_token)["sid"] == "sid-1"  # the retiring key still verifies


def test_verify_reads_no_disk_for_an_unknown_kid(tmp_path):
    class CountingStore(KeyStore):
        calls = 0

        def fingerprint(self):
            CountingStore.calls += 1
            return super().fingerprint()

        def load(self):
            CountingStore.calls += 1
            return super().load()

    store = CountingStore(str(tmp_path))
    store.generate("ES256")
    keyring = Keyring(store, reload_interval_s=60)
    tokens = SessionTokens(keyring, ISSUER, AUDIENCE)
    header, payload, signature = tokens.sign(SESSION, int(time.time()), 60).split(".")
    CountingStore.calls = 0
    for i in range(1000):
        forged = dict(decode_segment(header), kid=f"unknown-{i}")
        token = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        with pytest.raises(REJECTED, match="unknown key"):
            tokens.verify(f"{token}.{payload}.{signature}")
    assert CountingStore.calls == 0


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_the_longest_token_the_service_can_issue_is_accepted(key_dirs, alg):
    """Ids at the length limit in the characters JSON makes longest (control characters are refused), every
    extra claim: the token stays within MAX_TOKEN_CHARS, so a start never hands out one it then refuses."""
    tokens = SessionTokens(Keyring.open(key_dirs[alg]), ISSUER, AUDIENCE)
    for char in ("🎬", '"', "\\"):  # four bytes of UTF-8; two bytes escaped
        longest = char * MAX_ID_CHARS
        session = Session(longest, "A" * MAX_ID_CHARS, longest, longest)
        extra = {"lim": 2**53, "dlim": 2**53, "degraded": True, "cex": 2**40}
        token = tokens.sign(session, int(time.time()), 2**31, extra)
        assert len(token) <= MAX_TOKEN_CHARS, (char, len(token))
        assert tokens.verify(token)["sub"] == longest
