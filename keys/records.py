"""Key records: what the manifest says of each key (identity, state, times), without key material.

A key moves next -> active -> retiring -> retired, or to revoked at any time. `next`, `active` and
`retiring` keys are published in the JWKS, and every published key verifies: an instance whose view of the
key directory lags still holds a new key as `next` and must accept what up-to-date instances sign with it.
The newest active key whose activation time has come signs.
"""

import dataclasses
import math
import re
from typing import Any

from .errors import KeyStoreError

ALGORITHMS = ("ES256", "EdDSA", "RS256")
STATES = ("next", "active", "retiring", "retired", "revoked")
PUBLISHED_STATES = ("next", "active", "retiring")
VERIFYING_STATES = PUBLISHED_STATES  # what a verifier outside accepts, we accept
SIGNING_STATES = ("active", "retiring")  # those with a signing window (the manifest's times)
PRIVATE_STATES = PUBLISHED_STATES  # keys whose private PEM is kept; retired and revoked ones are deleted

KID = re.compile(r"[A-Za-z0-9_-]{43}")  # a base64url SHA-256 thumbprint; also safe as a file name


@dataclasses.dataclass
class KeyRecord:
    """One key of the manifest; `times` holds when it entered each state (epoch seconds)."""

    kid: str
    alg: str
    state: str
    created: float
    times: dict[str, float]

    @property
    def active_from(self) -> float | None:
        """When this key starts (or started) signing; None for keys that never signed."""
        return self.times.get("active", self.created if self.state == "active" else None)

    @property
    def active_until(self) -> float:
        """When this key stops signing: its retirement time, or never while it is active."""
        return self.times.get("retiring", math.inf) if self.state == "retiring" else math.inf

    @property
    def since(self) -> float:
        """When this key entered its current state."""
        return self.times.get(self.state, self.created)

    def signs_at_or_after(self, now: float) -> bool:
        """Whether this key signs now or will sign later."""
        return self.state == "active" or (self.state == "retiring" and self.active_until > now)

    def enter(self, state: str, at: float) -> None:
        self.state = state
        self.times[state] = at

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: object, path: str) -> "KeyRecord":
        """Check one manifest entry; raise KeyStoreError naming `path` and the key."""
        if not isinstance(value, dict):
            raise KeyStoreError(f"{path}: every key must be an object")
        kid = value.get("kid")
        if not isinstance(kid, str) or not KID.fullmatch(kid):
            raise KeyStoreError(f"{path}: bad kid {str(kid)[:60]!r}")
        if value.get("alg") not in ALGORITHMS:
            raise KeyStoreError(f"{path}: key {kid}: alg must be one of {', '.join(ALGORITHMS)}")
        if value.get("state") not in STATES:
            raise KeyStoreError(f"{path}: key {kid}: state must be one of {', '.join(STATES)}")
        times = value.get("times", {})
        numbers = [value.get("created"), *times.values()] if isinstance(times, dict) else [None]
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in numbers):
            raise KeyStoreError(f"{path}: key {kid}: times must be numbers (epoch seconds)")
        if set(times) - set(STATES):
            raise KeyStoreError(f"{path}: key {kid}: times are named by state")
        return cls(kid, value["alg"], value["state"], value["created"], dict(times))


def checked_kid(kid: object) -> str:
    """Return `kid` if it is a key id; raise KeyStoreError otherwise."""
    if not isinstance(kid, str) or not KID.fullmatch(kid):
        raise KeyStoreError(f"{kid!r} is not a key id (43 base64url characters)")
    return kid
