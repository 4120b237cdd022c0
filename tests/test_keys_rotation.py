"""The key lifecycle: rotate, retire, revoke, prune, and the refusals that protect live tokens."""

import os

import pytest

from keys.errors import KeyStoreError, RotationRefused
from keys.keyring import KeySet
from keys.rotation import ACTIVATION_MARGIN_S, Lifecycle, RotationPolicy, Step
from keys.store import KeyStore

POLICY = RotationPolicy(
    jwks_max_age_s=300, reload_interval_s=1, token_lifetime_s=60, leeway_s=5, propagation_s=30
)
LAG_S = 31  # propagation bound + reload interval: how late an instance may act on a change


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    return KeyStore(str(tmp_path), clock=clock)


@pytest.fixture
def lifecycle(store, clock):
    return Lifecycle(store, POLICY, clock=clock)


def states(store):
    return {r.kid: r.state for r in store.records()}


def by_state(store, state):
    return [r.kid for r in store.records() if r.state == state]


def audit(store):
    with open(os.path.join(store.directory, "keys.log")) as file:
        return file.read()


def test_rotate_without_next_key_makes_one_and_says_wait(store, lifecycle, clock):
    active = store.generate("ES256")
    said = lifecycle.rotate()
    (made,) = by_state(store, "next")
    assert by_state(store, "active") == [active]
    assert said == [
        Step("made-next", made, clock.now, "ES256"),
        Step("wait-for-caches", made, clock.now + POLICY.jwks_max_age_s),
    ]


def test_rotate_refuses_a_next_key_younger_than_the_jwks_max_age(store, lifecycle, clock):
    store.generate("ES256")
    store.generate("ES256")
    clock.now += 299
    with pytest.raises(
        RotationRefused, match="published for 299 s, but verifiers may cache the JWKS for 300 s"
    ):
        lifecycle.rotate()


def test_rotate_moves_every_state_and_schedules_the_switch(store, lifecycle, clock):
    old = store.generate("ES256")
    nxt = store.generate("EdDSA")
    clock.now += 300
    said = lifecycle.rotate()
    records = {r.kid: r for r in store.records()}
    (successor,) = by_state(store, "next")
    assert (records[old].state, records[nxt].state) == ("retiring", "active")
    switch = clock.now + LAG_S + ACTIVATION_MARGIN_S  # every instance has loaded the rotation by then
    assert records[nxt].times["active"] == switch == records[old].times["retiring"]
    assert records[successor].alg == "EdDSA"
    assert Step("signs-from", nxt, switch) in said
    assert Step("retiring", old, switch + POLICY.retiring_s) in said
    keys = KeySet(store.load())
    assert keys.signing_at(clock.now).kid == old
    assert keys.signing_at(clock.now + LAG_S).kid == old  # an instance that loaded it last has not switched
    assert keys.signing_at(switch).kid == nxt
    assert set(keys.verifying) == {old, nxt, successor}
    assert {k["kid"] for k in keys.jwks["keys"]} == {old, nxt, successor}
    for action in ("activate", "retire-signing", "generate"):
        assert f'"action": "{action}"' in audit(store)


def test_rotate_force_activates_a_young_or_missing_next_key(store, lifecycle):
    old = store.generate("RS256")
    lifecycle.rotate(force=True)
    (new,) = by_state(store, "active")
    assert by_state(store, "retiring") == [old]
    assert new != old and len(by_state(store, "next")) == 1
    assert {r.alg for r in store.records()} == {"RS256"}


def test_rotate_refuses_while_a_switch_is_pending(store, lifecycle):
    store.generate("ES256")
    lifecycle.rotate(force=True)
    with pytest.raises(RotationRefused, match="a rotation is already under way"):
        lifecycle.rotate(force=True)


def test_retire_refuses_the_active_key(store, lifecycle):
    active = store.generate("ES256")
    with pytest.raises(RotationRefused, match="is the active key"):
        lifecycle.retire(active)
    assert states(store)[active] == "active"


def test_retire_a_next_key(store, lifecycle):
    store.generate("ES256")
    nxt = store.generate("ES256")
    lifecycle.retire(nxt)
    assert states(store)[nxt] == "retired"
    assert not os.path.exists(os.path.join(store.directory, f"{nxt}.pem"))


def test_retire_a_retiring_key_waits_for_its_tokens(store, lifecycle, clock):
    old = store.generate("ES256")
    lifecycle.rotate(force=True)
    clock.now += POLICY.activation_delay_s + 10
    with pytest.raises(RotationRefused, match="may be valid until"):
        lifecycle.retire(old)
    lifecycle.retire(old, force=True)
    assert states(store)[old] == "retired"


def test_revoke_refuses_the_only_active_key(store, lifecycle):
    active = store.generate("ES256")
    with pytest.raises(
        RotationRefused, match="only active key; run `concurrency-service keys rotate --force`"
    ):
        lifecycle.revoke(active)


def test_revoke_during_a_switch_makes_the_new_key_sign_now(store, lifecycle, clock):
    old = store.generate("ES256")
    lifecycle.rotate(force=True)
    (new,) = by_state(store, "active")
    said = lifecycle.revoke(old)
    assert said == [Step("signs-now", new, clock.now), Step("revoked", old, clock.now)]
    keys = KeySet(store.load())
    assert keys.signing_at(clock.now).kid == new
    assert old not in keys.verifying and old not in {k["kid"] for k in keys.jwks["keys"]}
    assert not os.path.exists(os.path.join(store.directory, f"{old}.pem"))
    assert '"action": "revoke"' in audit(store)


def test_revoking_a_rotations_new_key_calls_the_rotation_off(store, lifecycle, clock):
    """Before its switch the new key (leaked, say) is withdrawn at once, and the old one goes on signing:
    it was refused, so the leaked key stayed trusted and then signed from its switch."""
    old = store.generate("ES256")
    lifecycle.rotate(force=True)
    (new,) = by_state(store, "active")
    said = lifecycle.revoke(new)
    assert said == [Step("signs-on", old, clock.now), Step("revoked", new, clock.now)]
    assert states(store)[old] == "active"
    keys = KeySet(store.load())
    assert keys.signing_at(clock.now + 10 * LAG_S).kid == old
    assert new not in keys.verifying
    assert '"rotation_cancelled": true' in audit(store)
    lifecycle.rotate(force=True)  # a rotation may start again
    assert states(store)[old] == "retiring"


def test_revoke_is_final(store, lifecycle):
    store.generate("ES256")
    nxt = store.generate("ES256")
    lifecycle.revoke(nxt)
    with pytest.raises(RotationRefused, match="already revoked"):
        lifecycle.revoke(nxt)
    with pytest.raises(RotationRefused, match="already revoked"):
        lifecycle.retire(nxt)


def test_unknown_kid(lifecycle, store):
    store.generate("ES256")
    with pytest.raises(KeyStoreError, match="no key nope"):
        lifecycle.revoke("nope")


def test_prune_waits_for_the_longest_token_lifetime_plus_leeway_plus_a_lag(store, lifecycle, clock):
    old = store.generate("ES256")
    lifecycle.rotate(force=True)
    switch = next(r for r in store.records() if r.kid == old).times["retiring"]
    prunable = switch + POLICY.token_lifetime_s + POLICY.leeway_s + LAG_S
    assert POLICY.retiring_s == prunable - switch
    # an instance that sees the switch a lag late signs with the old key until then: its tokens must verify
    clock.now = prunable - 0.5
    said = lifecycle.prune()
    assert states(store)[old] == "retiring" and said == [Step("stays-retiring", old, prunable)]
    clock.now += 0.5
    said = lifecycle.prune()
    assert states(store)[old] == "retired" and said == [Step("pruned", old, clock.now)]
    assert not os.path.exists(os.path.join(store.directory, f"{old}.pem"))
    assert lifecycle.prune() == []


def test_prune_removes_stale_temporary_files(store, lifecycle, clock):
    store.generate("ES256")
    stale = os.path.join(store.directory, ".tmp-crashed")
    with open(stale, "w") as file:
        file.write("half")
    os.utime(stale, (clock.now - 7200, clock.now - 7200))
    fresh = os.path.join(store.directory, ".tmp-writing")
    with open(fresh, "w") as file:
        file.write("half")
    os.utime(fresh, (clock.now, clock.now))
    lifecycle.prune()
    assert not os.path.exists(stale) and os.path.exists(fresh)


def test_prune_deletes_the_private_key_a_crash_left_behind(store, lifecycle, clock):
    """A command that died after saving the manifest but before deleting the PEM leaves a key on disk."""
    retired = store.generate("ES256")
    lifecycle.rotate(force=True)
    clock.now = next(r for r in store.records() if r.kid == retired).times["retiring"] + POLICY.retiring_s
    lifecycle.prune()
    revoked = store.generate("ES256", state="next")
    lifecycle.revoke(revoked)
    assert (states(store)[retired], states(store)[revoked]) == ("retired", "revoked")
    for kid in (retired, revoked):
        with open(os.path.join(store.directory, f"{kid}.pem"), "w") as file:
            file.write("left behind")
    lifecycle.prune()
    assert not any(os.path.exists(os.path.join(store.directory, f"{kid}.pem")) for kid in (retired, revoked))
    store.load()  # raises if a key that still signs or verifies lost its PEM


def aged(path, clock, age_s):
    os.utime(path, (clock.now - age_s, clock.now - age_s))
    return path


def test_prune_deletes_a_key_written_but_never_recorded_once_it_is_old(store, lifecycle, clock):
    """A command that died after writing a key but before saving the manifest leaves an orphan PEM. Only
    such a file goes: a `<kid>.pem` holding that kid's key, not some other PEM, link or directory."""
    store.generate("ES256")
    orphan, young = (store.create("ES256", "next").kid for _ in range(2))  # written, never saved
    pem = os.path.join(store.directory, "{}.pem").format
    with open(pem("tls"), "w") as file:
        file.write("-----BEGIN PRIVATE KEY-----\nsomething else\n")
    os.mkdir(pem("a-directory"))
    for name in (orphan, "tls", "a-directory"):
        aged(pem(name), clock, 7200)
    aged(pem(young), clock, 60)
    os.symlink("/nonexistent", pem("dangling"))
    lifecycle.prune()
    assert not os.path.exists(pem(orphan))
    assert all(os.path.lexists(pem(name)) for name in (young, "tls", "dangling", "a-directory"))
    assert f'"kid": "{orphan}"' in audit(store) and "never recorded" in audit(store)
    store.load()


def test_prune_deletes_no_key_where_there_is_no_manifest(store, lifecycle, clock):
    """The manifest moved away, or the wrong directory: every PEM looks unrecorded, and none may go."""
    kid = store.generate("ES256")
    os.rename(store.manifest_path, store.manifest_path + ".aside")
    aged(os.path.join(store.directory, f"{kid}.pem"), clock, 7200)
    lifecycle.prune()
    assert os.path.exists(os.path.join(store.directory, f"{kid}.pem"))


def test_there_is_always_a_signing_key(store, lifecycle, clock):
    """Walk several rotations, revocations and prunes; at every step some key signs and no gap opens."""
    store.generate("ES256")
    for step in range(4):
        clock.now += 400
        lifecycle.rotate()
        for offset in (0, 1, 2, 3):
            assert KeySet(store.load()).signing_at(clock.now + offset) is not None
        if step == 2:
            lifecycle.revoke(by_state(store, "retiring")[0])
        clock.now += 100
        lifecycle.prune()
        assert KeySet(store.load()).signing_at(clock.now) is not None
    assert len(by_state(store, "active")) == 1 and len(by_state(store, "next")) == 1


# -- maintain: what a scheduler runs every hour -------------------------------------------------------

DAY_S = 86400
ROTATE_AFTER_S = 30 * DAY_S


def manifest_and_log(store):
    with open(store.manifest_path, "rb") as manifest:
        return manifest.read(), audit(store)


def test_maintain_makes_an_active_and_a_next_key_in_an_empty_directory(store, lifecycle, clock):
    said = lifecycle.maintain(ROTATE_AFTER_S)
    (active,), (nxt,) = by_state(store, "active"), by_state(store, "next")
    assert said == [
        Step("made-active", active, clock.now, "ES256"),
        Step("made-next", nxt, clock.now, "ES256"),
        Step("next-rotation", nxt, clock.now + ROTATE_AFTER_S),
    ]
    assert KeySet(store.load()).signing_at(clock.now).kid == active


def test_maintain_twice_changes_nothing_the_second_time(store, lifecycle, clock):
    lifecycle.maintain(ROTATE_AFTER_S)
    before = manifest_and_log(store)
    clock.now += 3600
    (step,) = lifecycle.maintain(ROTATE_AFTER_S)
    assert step.kind == "next-rotation"
    assert manifest_and_log(store) == before


def test_maintain_publishes_a_next_key_when_there_is_none(store, lifecycle, clock):
    active = store.generate("EdDSA")
    clock.now += 40 * DAY_S  # old enough to rotate, but a rotation needs a published next key first
    said = lifecycle.maintain(ROTATE_AFTER_S)
    (nxt,) = by_state(store, "next")
    assert said == [
        Step("made-next", nxt, clock.now, "EdDSA"),
        Step("next-rotation", nxt, clock.now + POLICY.jwks_max_age_s),
    ]
    assert by_state(store, "active") == [active]


def test_maintain_waits_for_the_active_key_to_age(store, lifecycle, clock):
    active = store.generate("ES256")
    nxt = store.generate("ES256")
    clock.now += ROTATE_AFTER_S - 1
    assert lifecycle.maintain(ROTATE_AFTER_S) == [Step("next-rotation", nxt, clock.now + 1)]
    assert by_state(store, "active") == [active]


def test_maintain_waits_for_the_next_key_to_be_published_for_the_jwks_max_age(store, lifecycle, clock):
    active = store.generate("ES256")
    clock.now += 40 * DAY_S
    nxt = store.generate("ES256")
    clock.now += POLICY.jwks_max_age_s - 1
    assert lifecycle.maintain(ROTATE_AFTER_S) == [Step("next-rotation", nxt, clock.now + 1)]
    assert by_state(store, "active") == [active]


def test_maintain_rotates_when_both_are_due(store, lifecycle, clock):
    old = store.generate("ES256")
    nxt = store.generate("ES256")
    clock.now += ROTATE_AFTER_S
    said = lifecycle.maintain(ROTATE_AFTER_S)
    (successor,) = by_state(store, "next")
    switch = clock.now + POLICY.activation_delay_s
    assert said == [
        Step("signs-from", nxt, switch),
        Step("retiring", old, switch + POLICY.retiring_s),
        Step("made-next", successor, clock.now, "ES256"),
    ]
    assert (by_state(store, "active"), by_state(store, "retiring")) == ([nxt], [old])
    # while the switch is pending, another run neither rotates again nor fails
    clock.now += 1
    assert lifecycle.maintain(ROTATE_AFTER_S) == [
        Step("stays-retiring", old, switch + POLICY.retiring_s),
        Step("next-rotation", successor, switch + ROTATE_AFTER_S),
    ]


def test_maintain_prunes_what_is_due(store, lifecycle, clock):
    old = store.generate("ES256")
    lifecycle.rotate(force=True)
    prunable = next(r for r in store.records() if r.kid == old).times["retiring"] + POLICY.retiring_s
    clock.now = prunable - 1
    assert Step("stays-retiring", old, prunable) in lifecycle.maintain(ROTATE_AFTER_S)
    clock.now = prunable
    assert lifecycle.maintain(ROTATE_AFTER_S)[0] == Step("pruned", old, prunable)
    assert states(store)[old] == "retired"
    assert not os.path.exists(os.path.join(store.directory, f"{old}.pem"))


def test_maintain_publishes_a_key_before_it_takes_over_from_an_environment_key(tmp_path, clock):
    env_key = KeyStore(str(tmp_path / "elsewhere"))
    env_kid = env_key.generate("ES256")
    with open(os.path.join(env_key.directory, f"{env_kid}.pem")) as file:
        store = KeyStore(str(tmp_path / "keys"), clock=clock, env_pem=file.read())
    lifecycle = Lifecycle(store, POLICY, clock=clock)
    (made, wait) = lifecycle.maintain(ROTATE_AFTER_S)
    assert (made.kind, wait.kind, by_state(store, "active")) == ("made-next", "next-rotation", [])
    assert KeySet(store.load()).signing_at(clock.now).kid == env_kid
    clock.now = wait.at  # the environment key's age is unknown: rotate as soon as the next key may sign
    said = lifecycle.maintain(ROTATE_AFTER_S)
    assert said[0] == Step("signs-from", made.kid, clock.now + POLICY.activation_delay_s)
    keys = KeySet(store.load())
    assert keys.signing_at(clock.now).kid == env_kid
    assert keys.signing_at(said[0].at).kid == made.kid


def test_hourly_maintain_rotates_monthly_and_never_signs_an_unready_key(store, lifecycle, clock):
    """Run maintain every hour for 100 days: rotations every 30 days, each after the rules allow it."""
    started = clock.now
    switches, prunable, pruned = [], {}, {}
    for _ in range(100 * 24):
        for step in lifecycle.maintain(ROTATE_AFTER_S):
            if step.kind == "signs-from":
                switches.append(step.at)
            elif step.kind in ("retiring", "pruned"):
                (prunable if step.kind == "retiring" else pruned)[step.kid] = step.at
        records = store.records()
        keys = KeySet(store.load())
        assert keys.signing_at(clock.now) is not None
        for record in records:
            if record.state == "active" and record.times.get("next") is not None:
                assert record.times["active"] - record.times["next"] >= POLICY.jwks_max_age_s
        assert sum(r.state == "retiring" for r in records) <= 1
        clock.now += 3600
    assert [round((s - started) / DAY_S) for s in switches] == [30, 60, 90]
    assert [r.state for r in store.records()] == ["retired", "retired", "retired", "active", "next"]
    assert pruned.keys() == prunable.keys()
    assert all(0 <= pruned[kid] - prunable[kid] < 3600 for kid in pruned)  # pruned at the first run after
