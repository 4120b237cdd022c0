"""The keyring: JWKS and verifying sets by state, time-gated polling, and keeping the last good set."""

import json
import logging
import os

import pytest

from keys.errors import KeyStoreError
from keys.keyring import RETRY_REJECTED_S, Keyring, KeySet
from keys.material import generate_private_key, pem_of
from keys.store import KeyStore


class Ticker:
    """A monotonic clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class CountingStore(KeyStore):
    def __init__(self, directory):
        super().__init__(directory)
        self.fingerprints = self.loads = 0

    def fingerprint(self):
        self.fingerprints += 1
        return super().fingerprint()

    def load(self):
        self.loads += 1
        return super().load()


def set_states(store, states):
    """Rewrite the manifest with the given state per kid."""
    records = store.records()
    for record in records:
        state = states.get(record.kid, record.state)
        record.state = state
        record.times.setdefault(state, record.created)
    with store.locked():
        store.save(records)


@pytest.fixture
def store(tmp_path):
    return CountingStore(str(tmp_path))


def test_states_decide_publishing_and_verifying(store):
    kids = [store.generate("ES256") for _ in range(5)]
    set_states(store, dict(zip(kids, ["active", "next", "retiring", "retired", "revoked"], strict=True)))
    keys = KeySet(store.load())
    published = [k["kid"] for k in keys.jwks["keys"]]
    assert published == kids[:3]
    assert set(keys.verifying) == set(published)  # a published key verifies, next keys too
    assert keys.signing.kid == kids[0]
    assert keys.signing_at(4e9).kid == kids[0]  # a next key never signs, however late
    for jwk in keys.jwks["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
        assert jwk["use"] == "sig" and jwk["alg"] == "ES256"
    assert json.loads(keys.jwks_body) == keys.jwks


def test_retired_and_revoked_keys_lose_their_private_key_file(store):
    kid = store.generate("ES256")
    other = store.generate("ES256")
    set_states(store, {other: "revoked"})
    store.delete_private(other)
    keys = store.load()
    assert [k.kid for k in keys] == [kid, other]
    assert keys[1].private_key is None


def test_polls_at_most_once_per_interval(store):
    store.generate("ES256")
    clock = Ticker()
    keyring = Keyring(store, reload_interval_s=1.0, clock=clock)
    store.fingerprints = store.loads = 0
    for _ in range(1000):
        keyring.current  # noqa: B018
    assert (store.fingerprints, store.loads) == (0, 0)
    clock.now += 1.0
    for _ in range(1000):
        keyring.current  # noqa: B018
    assert (store.fingerprints, store.loads) == (1, 0)  # unchanged directory: a stat, no parsing


def test_picks_up_a_change_after_the_interval(store):
    store.generate("ES256")
    clock = Ticker()
    keyring = Keyring(store, reload_interval_s=1.0, clock=clock)
    before = keyring.current
    kid = store.generate("EdDSA")
    assert keyring.current is before
    clock.now += 1.0
    after = keyring.current
    assert after is not before and kid in [k["kid"] for k in after.jwks["keys"]]
    assert after.etag != before.etag


@pytest.mark.parametrize(
    "damage", ["truncate-manifest", "chmod-pem", "truncate-pem", "unreadable-pem", "no-active-key"]
)
def test_keeps_the_previous_set_when_the_directory_breaks(store, damage, caplog):
    kid = store.generate("ES256")
    clock = Ticker()
    keyring = Keyring(store, reload_interval_s=1.0, clock=clock)
    good = keyring.current
    pem_path = os.path.join(store.directory, f"{kid}.pem")
    if damage == "truncate-manifest":
        with open(store.manifest_path, "r+") as file:
            file.truncate(10)
    elif damage == "chmod-pem":
        os.chmod(pem_path, 0o644)
    elif damage == "truncate-pem":
        with open(pem_path, "r+b") as file:
            file.truncate(40)
    elif damage == "unreadable-pem":  # opens, then read() fails: as EIO or ESTALE on a network file system
        os.unlink(pem_path)
        os.mkdir(pem_path, 0o700)
    else:
        set_states(store, {kid: "retired"})
    with caplog.at_level(logging.ERROR, logger="keys.keyring"):
        for _ in range(3):
            clock.now += 1.0
            assert keyring.current is good
    errors = [r.getMessage() for r in caplog.records if r.name == "keys.keyring"]
    assert len(errors) == 1  # logged once, not at every poll
    assert "keeping the previous signing keys" in errors[0] and store.directory in errors[0]


def test_recovers_when_the_directory_is_fixed(store):
    kid = store.generate("ES256")
    clock = Ticker()
    keyring = Keyring(store, reload_interval_s=1.0, clock=clock)
    pem_path = os.path.join(store.directory, f"{kid}.pem")
    os.chmod(pem_path, 0o644)
    other = store.generate("ES256")
    clock.now += 1.0
    assert other not in [k["kid"] for k in keyring.current.jwks["keys"]]
    os.chmod(pem_path, 0o600)
    clock.now += 1.0
    assert other in [k["kid"] for k in keyring.current.jwks["keys"]]


def test_a_set_refused_while_the_directory_was_group_writable_is_taken_once_it_is_fixed(store):
    """The directory's own mode counts when loading, so it counts in the fingerprint too."""
    store.generate("ES256")
    clock = Ticker()
    keyring = Keyring(store, reload_interval_s=1.0, clock=clock)
    other = store.generate("ES256")
    os.chmod(store.directory, 0o770)
    clock.now += 1.0
    assert other not in keyring.current.verifying
    os.chmod(store.directory, 0o700)
    clock.now += 1.0
    assert other in keyring.current.verifying


def test_a_set_refused_for_what_its_fingerprint_does_not_show_is_read_again_later(store, monkeypatch):
    """A read that failed for a moment (EIO, EACCES) is retried after RETRY_REJECTED_S, not only on the
    next write to the directory."""
    store.generate("ES256")
    clock = Ticker()
    keyring = Keyring(store, reload_interval_s=1.0, clock=clock)
    other = store.generate("ES256")
    load = store.load

    def fails_once():
        monkeypatch.setattr(store, "load", load)
        raise KeyStoreError("input/output error")

    monkeypatch.setattr(store, "load", fails_once)
    clock.now += 1.0
    assert other not in keyring.current.verifying
    clock.now += 1.0
    assert other not in keyring.current.verifying  # not read again at every poll
    clock.now += RETRY_REJECTED_S
    assert other in keyring.current.verifying


def test_app_answers_while_the_directory_is_broken(store, config, fake_redis, make_client):
    store.generate("ES256")
    keyring = Keyring(store, reload_interval_s=0)
    client = make_client(config, fake_redis, keyring)
    started = client.simulate_post("/v1/sessions", json={"userId": "u", "deviceId": "d", "streamId": "s"})
    with open(store.manifest_path, "w") as file:
        file.write('{"keys": [')
    beat = client.simulate_put(
        f"/v1/sessions/{started.json['sessionId']}",
        headers={"Authorization": f"Bearer {started.json['token']}"},
    )
    assert beat.status_code == 200
    assert client.simulate_get("/.well-known/jwks.json").status_code == 200
    assert client.simulate_get("/readyz").json["checks"]["keys"] is True


def test_startup_with_a_broken_directory_names_the_file(store):
    store.generate("ES256")
    with open(store.manifest_path, "w") as file:
        file.write("{")
    with pytest.raises(KeyStoreError, match="keys.json: corrupt or half-written"):
        Keyring(store)


def test_open_takes_the_interval_and_a_pem_key(tmp_path):
    pem = pem_of(generate_private_key("EdDSA")).decode()
    keyring = Keyring.open(str(tmp_path), env_pem=pem, reload_interval_s=0.25)
    assert keyring.reload_interval_s == 0.25
    assert keyring.signing_key.alg == "EdDSA" and keyring.signing_key.source == "env"


def test_jwks_over_http_is_cacheable_with_etag(client, keyring, config):
    answer = client.simulate_get("/.well-known/jwks.json")
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == f"public, max-age={config.jwks_max_age_s}"
    assert answer.headers["content-type"] == "application/jwk-set+json"
    etag = answer.headers["etag"]
    assert etag == f'"{keyring.current.etag}"'
    for match in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
        cached = client.simulate_get("/.well-known/jwks.json", headers={"If-None-Match": match})
        assert cached.status_code == 304 and cached.content == b""
        assert cached.headers["etag"] == etag
    stale = client.simulate_get("/.well-known/jwks.json", headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.json == keyring.current.jwks
