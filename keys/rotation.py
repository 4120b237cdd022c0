"""The key lifecycle: rotate, retire, revoke and prune, refusing any step that would break a live token.

Times are epoch seconds from this host's clock; the service compares them with Redis server time, so hosts
must agree to well within `ACTIVATION_MARGIN_S` (NTP does).
"""

import dataclasses
import os
import time

from .store import KeyStoreError

ACTIVATION_MARGIN_S = 1.0
STALE_TEMP_FILE_S = 3600


class RotationRefused(KeyStoreError):
    """The step would break live tokens or leave no active key; the message says what to do instead."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """The service settings that bound the lifecycle."""

    jwks_max_age_s: float = 300
    reload_interval_s: float = 1.0
    token_lifetime_s: float = 60
    leeway_s: float = 5

    @property
    def activation_delay_s(self):
        """How far ahead a rotation schedules the switch: every worker verifies the key before any signs."""
        return self.reload_interval_s + ACTIVATION_MARGIN_S

    @property
    def retiring_s(self):
        """How long a key must stay verifiable after it stops signing: until its last token has expired."""
        return self.token_lifetime_s + self.leeway_s


class Lifecycle:
    """Change key states in the store; every method returns the lines to tell the operator."""

    def __init__(self, store, policy, clock=time.time):
        self._store = store
        self._policy = policy
        self._clock = clock

    def rotate(self, force=False, alg=None):
        """Make the next key active (soon), the active one retiring, and a new next key."""
        with self._store.locked():
            records, now = self._store.records(), self._clock()
            actives = [r for r in records if r["state"] == "active"]
            pending = [r for r in actives if r["times"].get("active", r["created"]) > now]
            if pending:
                kid, at = pending[0]["kid"], _at(pending[0]["times"]["active"])
                raise RotationRefused(f"a rotation is already under way: {kid} signs from {at}")
            nexts = [r for r in records if r["state"] == "next"]
            said = []
            if nexts:
                candidate = nexts[0]
                self._check_published(candidate, now, force)
            else:
                candidate = self._store.create(alg or _alg_of(actives), "next")
                records.append(candidate)
                self._store.changed("generate", candidate["kid"], alg=candidate["alg"], state="next")
                said.append(f"made next key {candidate['kid']} ({candidate['alg']}); it is published now")
                if not force:
                    self._store.save(records)
                    ready = now + self._policy.jwks_max_age_s
                    return [
                        *said,
                        f"verifiers may cache the JWKS for {self._policy.jwks_max_age_s:g} s: run"
                        f" `concurrency-service keys rotate` again after {_at(ready)}"
                        " (or now with --force, which may fail tokens at verifiers holding an old JWKS)",
                    ]
            switch = now + self._policy.activation_delay_s
            _enter(candidate, "active", switch)
            for record in actives:
                _enter(record, "retiring", switch)
            successor = self._store.create(alg or candidate["alg"], "next")
            self._store.save([*records, successor])
            self._store.changed("activate", candidate["kid"], signs_from=round(switch, 3), forced=force)
            for record in actives:
                self._store.changed("retire-signing", record["kid"], state="retiring", until=round(switch, 3))
            self._store.changed("generate", successor["kid"], alg=successor["alg"], state="next")
        prunable = switch + self._policy.retiring_s
        return [
            *said,
            f"{candidate['kid']} signs from {_at(switch)} (every worker verifies it by then)",
            *(f"{r['kid']} is retiring: it verifies until pruned, after {_at(prunable)}" for r in actives),
            f"made next key {successor['kid']} ({successor['alg']}) for the next rotation",
        ]

    def retire(self, kid, force=False):
        """Withdraw a next or retiring key from the JWKS and from verification."""
        with self._store.locked():
            records, now = self._store.records(), self._clock()
            record = _find(records, kid, self._store.manifest_path)
            if record["state"] in ("retired", "revoked"):
                raise RotationRefused(f"{kid} is already {record['state']}")
            if record["state"] == "active":
                raise RotationRefused(f"{kid} is the active key; run `concurrency-service keys rotate` first")
            if _signs_at_or_after(record, now):
                raise RotationRefused(f"{kid} still signs until {_at(record['times']['retiring'])}")
            if record["state"] == "retiring":
                safe_at = record["times"]["retiring"] + self._policy.retiring_s
                if now < safe_at and not force:
                    raise RotationRefused(
                        f"tokens signed by {kid} may be valid until {_at(safe_at)}; retiring it now fails"
                        " them."
                        " Wait, or use --force (or `keys revoke` if the key is compromised)"
                    )
            _enter(record, "retired", now)
            self._store.save(records)
            self._store.delete_private(kid)
            self._store.changed("retire", kid, state="retired", forced=force)
        return [f"{kid} is retired: gone from the JWKS and from verification within {self._reach()}"]

    def revoke(self, kid):
        """Withdraw a key at once, whatever its state; a key scheduled to take over signs from now."""
        with self._store.locked():
            records, now = self._store.records(), self._clock()
            record = _find(records, kid, self._store.manifest_path)
            if record["state"] == "revoked":
                raise RotationRefused(f"{kid} is already revoked")
            said = []
            if _signs_at_or_after(record, now):
                others = [r for r in records if r is not record and r["state"] == "active"]
                if not others:
                    raise RotationRefused(
                        f"{kid} is the only active key; run `concurrency-service keys rotate --force` first,"
                        " then revoke it"
                    )
                for other in others:
                    if other["times"].get("active", other["created"]) > now:
                        other["times"]["active"] = now
                        said.append(f"{other['kid']} signs from now")
                        self._store.changed("activate", other["kid"], signs_from=round(now, 3), forced=True)
            _enter(record, "revoked", now)
            self._store.save(records)
            self._store.delete_private(kid)
            self._store.changed("revoke", kid, state="revoked")
        return [*said, f"{kid} is revoked: gone from the JWKS and from verification within {self._reach()}"]

    def prune(self):
        """Retire every retiring key whose last token has expired; clean up stale temporary files."""
        said = []
        with self._store.locked():
            records, now = self._store.records(), self._clock()
            done = [
                r
                for r in records
                if r["state"] == "retiring" and r["times"]["retiring"] + self._policy.retiring_s <= now
            ]
            for record in done:
                _enter(record, "retired", now)
            if done:
                self._store.save(records)
            for record in done:
                self._store.delete_private(record["kid"])
                self._store.changed("prune", record["kid"], state="retired")
                said.append(f"{record['kid']} is retired (its last token expired)")
            self._remove_stale_temp_files(now)
        waiting = [r for r in records if r["state"] == "retiring"]
        said += [
            f"{r['kid']} stays retiring until {_at(r['times']['retiring'] + self._policy.retiring_s)}"
            for r in waiting
        ]
        return said or ["nothing to prune"]

    def _check_published(self, candidate, now, force):
        published_s = now - candidate["times"].get("next", candidate["created"])
        if published_s < self._policy.jwks_max_age_s and not force:
            raise RotationRefused(
                f"next key {candidate['kid']} has been published for {published_s:.0f} s, but verifiers may"
                f" cache the JWKS for {self._policy.jwks_max_age_s:g} s: run `keys rotate` again after"
                f" {_at(candidate['times'].get('next', candidate['created']) + self._policy.jwks_max_age_s)},"
                " or use --force"
            )

    def _reach(self):
        return f"{self._policy.reload_interval_s:g} s (the workers' reload interval)"

    def _remove_stale_temp_files(self, now):
        with os.scandir(self._store.directory) as entries:
            for entry in entries:
                if entry.name.startswith(".tmp-") and entry.stat().st_mtime < now - STALE_TEMP_FILE_S:
                    os.unlink(entry.path)


def _enter(record, state, at):
    record["state"] = state
    record["times"][state] = at


def _find(records, kid, path):
    for record in records:
        if record["kid"] == kid:
            return record
    raise KeyStoreError(f"{path}: no key {kid}")


def _signs_at_or_after(record, now):
    return record["state"] == "active" or (
        record["state"] == "retiring" and record["times"]["retiring"] > now
    )


def _alg_of(actives):
    return actives[-1]["alg"] if actives else "ES256"


def _at(epoch_s):
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch_s))
