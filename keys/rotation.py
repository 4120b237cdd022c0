"""The key lifecycle: rotate, retire, revoke, prune and maintain, refusing any step that would break a token.

Instances see a change of the key directory at different moments, up to the propagation bound plus one
reload interval late (`RotationPolicy.view_lag_s`). A rotation therefore switches signing that lag (and a
margin) after it is written, so every instance has loaded it first; a retiring key stays until its last
token has expired plus that lag again, for an instance that sees the switch later still. The reasoning is
in docs/operations.md, "Signing-key rotation".

Times are epoch seconds from this host's clock; the service compares them with Redis server time, so hosts
must agree to well within `ACTIVATION_MARGIN_S` (NTP does).
"""

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Literal

from .errors import KeyStoreError, RotationRefused
from .records import PRIVATE_STATES, KeyRecord
from .store import KeyStore

ACTIVATION_MARGIN_S = 1.0
STALE_TEMP_FILE_S = 3600

StepKind = Literal[
    "made-active",  # the directory had no active key: one was made and signs now
    "made-next",  # a next key was made and published
    "wait-for-caches",  # run rotate again at `at`, once verifiers' cached JWKS hold the next key
    "signs-from",  # the key signs from `at`
    "signs-now",  # the key signs from now on, instead of a revoked one
    "signs-on",  # the key goes on signing: the rotation to a revoked key is called off
    "retiring",  # the key stopped signing; it may be pruned after `at`
    "retired",  # withdrawn from the JWKS and from verification
    "pruned",  # retired because its last token expired
    "stays-retiring",  # still verifies tokens until `at`
    "revoked",  # withdrawn at once
    "next-rotation",  # `maintain` makes the key active at its first run after `at`
]


@dataclasses.dataclass(frozen=True)
class Step:
    """One thing a lifecycle command did, for the CLI to tell the operator."""

    kind: StepKind
    kid: str
    at: float | None = None
    alg: str = ""


@dataclasses.dataclass(frozen=True)
class RotationPolicy:
    """The service settings that bound the lifecycle."""

    jwks_max_age_s: float = 300
    reload_interval_s: float = 1.0
    token_lifetime_s: float = 60
    leeway_s: float = 5
    propagation_s: float = 30  # how late a change of the key directory may reach an instance's copy

    @property
    def view_lag_s(self) -> float:
        """How late an instance may act on a change: the change reaches its directory, then a worker polls."""
        return self.propagation_s + self.reload_interval_s

    @property
    def activation_delay_s(self) -> float:
        """How far ahead a rotation schedules the switch: every instance has loaded it before any signs."""
        return self.view_lag_s + ACTIVATION_MARGIN_S

    @property
    def retiring_s(self) -> float:
        """How long a key stays verifiable after its switch: its last token's lifetime, plus a lag's worth.

        An instance within the bound stops signing with the key at the switch; the added lag keeps the
        tokens of one that sees the switch later still (up to twice the bound) from meeting a pruned set."""
        return self.token_lifetime_s + self.leeway_s + self.view_lag_s


class Lifecycle:
    """Change key states in the store; every method returns the steps it took."""

    def __init__(
        self, store: KeyStore, policy: RotationPolicy, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock

    def rotate(self, force: bool = False, alg: str | None = None) -> list[Step]:
        """Make the next key active (soon), the active one retiring, and a new next key."""
        with self._store.locked():
            return self._rotate(self._store.records(), self._clock(), force, alg)

    def maintain(self, rotate_after_s: float) -> list[Step]:
        """Keep the directory ready: an active key, a next key, rotations when due, no key kept past its time.

        Safe to run at any time and as often as wanted (hourly from a scheduler): it changes only what is
        due, and a second run right after the first changes nothing."""
        store = self._store
        with store.locked():
            records, now = store.records(), self._clock()
            steps = []
            actives = [r for r in records if r.state == "active"]
            if not actives and not store.has_env_key:  # a new directory: no instance can have started on it
                first = store.create("ES256", "active")
                records.append(first)
                store.save(records)
                store.changed("generate", first.kid, alg=first.alg, state="active")
                steps.append(Step("made-active", first.kid, now, first.alg))
                actives = [first]
            steps += self._prune(records, now)
            nexts = [r for r in records if r.state == "next"]
            if not nexts:
                nexts = [store.create(_alg_of(actives), "next")]
                records.append(nexts[0])
                store.save(records)
                store.changed("generate", nexts[0].kid, alg=nexts[0].alg, state="next")
                steps.append(Step("made-next", nexts[0].kid, now, nexts[0].alg))
            signing_since = max((r.active_from or 0 for r in actives), default=-math.inf)  # env key: long ago
            due = max(signing_since + rotate_after_s, _published(nexts[0]) + self._policy.jwks_max_age_s)
            if due > now:
                return [*steps, Step("next-rotation", nexts[0].kid, due)]
            return steps + self._rotate(records, now, force=False, alg=None)

    def _rotate(self, records: list[KeyRecord], now: float, force: bool, alg: str | None) -> list[Step]:
        store = self._store
        actives = [r for r in records if r.state == "active"]
        pending = [r for r in actives if (r.active_from or 0) > now]
        if pending:
            raise RotationRefused(
                f"a rotation is already under way: {pending[0].kid} signs from {at(pending[0].since)}"
            )
        nexts = [r for r in records if r.state == "next"]
        steps = []
        if nexts:
            candidate = nexts[0]
            self._check_published(candidate, now, force)
        else:
            candidate = store.create(alg or _alg_of(actives), "next")
            records.append(candidate)
            store.changed("generate", candidate.kid, alg=candidate.alg, state="next")
            steps.append(Step("made-next", candidate.kid, now, candidate.alg))
            if not force:
                store.save(records)
                return [*steps, Step("wait-for-caches", candidate.kid, now + self._policy.jwks_max_age_s)]
        switch = now + self._policy.activation_delay_s
        candidate.enter("active", switch)
        for record in actives:
            record.enter("retiring", switch)
        successor = store.create(alg or candidate.alg, "next")
        records.append(successor)
        store.save(records)
        store.changed("activate", candidate.kid, signs_from=round(switch, 3), forced=force)
        for record in actives:
            store.changed("retire-signing", record.kid, state="retiring", until=round(switch, 3))
        store.changed("generate", successor.kid, alg=successor.alg, state="next")
        prunable = switch + self._policy.retiring_s
        return [
            *steps,
            Step("signs-from", candidate.kid, switch),
            *(Step("retiring", r.kid, prunable) for r in actives),
            Step("made-next", successor.kid, now, successor.alg),
        ]

    def retire(self, kid: str, force: bool = False) -> list[Step]:
        """Withdraw a next or retiring key from the JWKS and from verification."""
        with self._store.locked():
            records, now = self._store.records(), self._clock()
            record = _find(records, kid, self._store.manifest_path)
            if record.state in ("retired", "revoked"):
                raise RotationRefused(f"{kid} is already {record.state}")
            if record.state == "active":
                raise RotationRefused(f"{kid} is the active key; run `concurrency-service keys rotate` first")
            if record.signs_at_or_after(now):
                raise RotationRefused(f"{kid} still signs until {at(record.active_until)}")
            if record.state == "retiring":
                safe_at = record.active_until + self._policy.retiring_s
                if now < safe_at and not force:
                    raise RotationRefused(
                        f"tokens signed by {kid} may be valid until {at(safe_at)}; retiring it now fails"
                        " them. Wait, or use --force (or `keys revoke` if the key is compromised)"
                    )
            record.enter("retired", now)
            self._store.save(records)
            self._store.delete_private(kid)
            self._store.changed("retire", kid, state="retired", forced=force)
        return [Step("retired", kid, now)]

    def revoke(self, kid: str) -> list[Step]:
        """Withdraw a key at once, whatever its state. If it signs, or will: a key scheduled to take over
        from it signs from now, and a key it was to take over from goes on signing."""
        with self._store.locked():
            records, now = self._store.records(), self._clock()
            record = _find(records, kid, self._store.manifest_path)
            if record.state == "revoked":
                raise RotationRefused(f"{kid} is already revoked")
            steps = []
            if record.signs_at_or_after(now):
                others = [r for r in records if r is not record and r.signs_at_or_after(now)]
                if not others:
                    raise RotationRefused(
                        f"{kid} is the only active key; run `concurrency-service keys rotate --force` first,"
                        " then revoke it"
                    )
                for other in others:
                    if other.state == "retiring":  # it still signs: the rotation to `kid` is called off
                        other.state = "active"
                        other.times.pop("retiring", None)
                        steps.append(Step("signs-on", other.kid, now))
                        self._store.changed("activate", other.kid, rotation_cancelled=True)
                    elif other.since > now:
                        other.times["active"] = now
                        steps.append(Step("signs-now", other.kid, now))
                        self._store.changed("activate", other.kid, signs_from=round(now, 3), forced=True)
            record.enter("revoked", now)
            self._store.save(records)
            self._store.delete_private(kid)
            self._store.changed("revoke", kid, state="revoked")
        return [*steps, Step("revoked", kid, now)]

    def prune(self) -> list[Step]:
        """Retire every retiring key whose last token has expired; clean up what a crash left behind."""
        with self._store.locked():
            return self._prune(self._store.records(), self._clock())

    def _prune(self, records: list[KeyRecord], now: float) -> list[Step]:
        retiring = [r for r in records if r.state == "retiring"]
        done = [r for r in retiring if r.active_until + self._policy.retiring_s <= now]
        for record in done:
            record.enter("retired", now)
        if done:
            self._store.save(records)
        for record in records:  # the keys retired now, and any whose PEM a command dying halfway left
            if record.state not in PRIVATE_STATES:
                self._store.delete_private(record.kid)
        for record in done:
            self._store.changed("prune", record.kid, state="retired")
        for kid in self._store.remove_leftovers({r.kid for r in records}, now - STALE_TEMP_FILE_S):
            self._store.changed("prune", kid, state="never recorded")  # written by a command that died
        waiting = [r for r in retiring if r.state == "retiring"]
        return [Step("pruned", r.kid, now) for r in done] + [
            Step("stays-retiring", r.kid, r.active_until + self._policy.retiring_s) for r in waiting
        ]

    def _check_published(self, candidate: KeyRecord, now: float, force: bool) -> None:
        # Max-age alone suffices: the key reached every instance's JWKS a view lag after it was published at
        # the latest, and the switch comes a view lag after now, so any cache fetched before has expired.
        published = _published(candidate)
        if now - published < self._policy.jwks_max_age_s and not force:
            raise RotationRefused(
                f"next key {candidate.kid} has been published for {now - published:.0f} s, but verifiers may"
                f" cache the JWKS for {self._policy.jwks_max_age_s:g} s: run `keys rotate` again after"
                f" {at(published + self._policy.jwks_max_age_s)}, or use --force"
            )


def at(epoch_s: float) -> str:
    """Format a time for the operator."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch_s))


def _find(records: list[KeyRecord], kid: str, path: str) -> KeyRecord:
    for record in records:
        if record.kid == kid:
            return record
    raise KeyStoreError(f"{path}: no key {kid}")


def _published(record: KeyRecord) -> float:
    return record.times.get("next", record.created)


def _alg_of(actives: list[KeyRecord]) -> str:
    return actives[-1].alg if actives else "ES256"
