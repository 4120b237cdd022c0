"""The keys a worker uses right now, reloaded from the key store when its files change.

Each worker polls the key directory at most once per reload interval, on the first request after the
interval: a `stat` of a few files, no parsing unless something changed. A changed directory is loaded whole
into a new KeySet that replaces the old one in one assignment; a broken one is logged and ignored, so a bad
write never takes a worker down or leaves it half-rotated.
"""

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .errors import KeyStoreError, NoSigningKey
from .material import SigningKey
from .records import PUBLISHED_STATES, SIGNING_STATES, VERIFYING_STATES
from .store import Fingerprint, KeyStore

log = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 1.0
RETRY_REJECTED_S = 30.0  # a key set refused for what its fingerprint does not show is read again after this


class KeySet:
    """An immutable snapshot: the signing schedule, the verifying keys by kid, the JWKS document."""

    def __init__(self, keys: Iterable[SigningKey]) -> None:
        self.keys = tuple(keys)
        self.verifying = {k.kid: k for k in self.keys if k.state in VERIFYING_STATES}
        # Newest activation first: the first key whose window holds `now` signs. A rotation schedules the new
        # key's activation ahead by the reload interval plus the propagation bound, so every instance has
        # loaded it before any signs with it; until then it verifies as `next` on instances that lag.
        windows = [
            (start, k.record.active_until, k)
            for k in self.keys
            if k.state in SIGNING_STATES and (start := k.record.active_from) is not None
        ]
        windows.sort(key=lambda w: w[0], reverse=True)
        if windows:  # the oldest signer also covers any earlier time, so a clock behind ours still gets a key
            windows[-1] = (-math.inf, *windows[-1][1:])
        self._windows = windows
        self.jwks: dict[str, Any] = {
            "keys": [k.public_jwk() for k in self.keys if k.state in PUBLISHED_STATES]
        }
        self.jwks_body = json.dumps(self.jwks, separators=(",", ":")).encode()
        self.etag = hashlib.sha256(self.jwks_body).hexdigest()[:32]  # unquoted; the resource quotes it

    def signing_at(self, now_s: float) -> SigningKey | None:
        """Return the key that signs at `now_s` (epoch seconds), or None."""
        for start, end, key in self._windows:
            if start <= now_s < end:
                return key
        return None

    @property
    def signing(self) -> SigningKey | None:
        return self.signing_at(time.time())


class Keyring:
    """Serve the current KeySet; poll the key directory so rotations reach every worker."""

    def __init__(
        self,
        store: KeyStore,
        reload_interval_s: float = RELOAD_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._interval = reload_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fingerprint = store.fingerprint()
        self._keys = KeySet(store.load())
        self._rejected: tuple[Fingerprint, float] | None = None  # and when to try it again
        self._next_check = clock() + reload_interval_s

    @classmethod
    def open(
        cls, directory: str, env_pem: str = "", reload_interval_s: float = RELOAD_INTERVAL_S
    ) -> "Keyring":
        """Return the keyring over a key directory and, if given, a PEM key from the environment."""
        return cls(KeyStore(directory, env_pem=env_pem or None), reload_interval_s)

    @property
    def reload_interval_s(self) -> float:
        return self._interval

    @property
    def current(self) -> KeySet:
        """Return the current KeySet, checking the directory first when the interval has passed."""
        if self._clock() >= self._next_check:
            self._poll()
        return self._keys

    @property
    def signing_key(self) -> SigningKey:
        key = self.current.signing
        if key is None:
            raise NoSigningKey(f"no active signing key in {self._store.directory}")
        return key

    def reload(self) -> bool:
        """Check the directory now; return whether a new key set was swapped in."""
        with self._lock:
            return self._reload()

    def _poll(self) -> None:
        if self._lock.acquire(blocking=False):  # another thread is already checking: serve the current set
            try:
                self._reload()
            finally:
                self._lock.release()

    def _reload(self) -> bool:
        now = self._clock()
        self._next_check = now + self._interval
        fingerprint = self._store.fingerprint()
        if fingerprint == self._fingerprint:
            return False
        if self._rejected is not None and self._rejected[0] == fingerprint and now < self._rejected[1]:
            return False
        try:
            keys = KeySet(self._store.load())
            if keys.signing is None:
                raise KeyStoreError(f"{self._store.manifest_path}: no key is active")
        except (KeyStoreError, OSError, RecursionError) as exc:  # whatever stops a read: keep the last set
            # The fingerprint was taken before loading, so a write racing the load changes it and is retried.
            # What the fingerprint does not see (a read that failed for a moment) is retried after a while.
            log.error("keeping the previous signing keys: %s", exc)
            self._rejected = (fingerprint, now + RETRY_REJECTED_S)
            return False
        self._keys, self._fingerprint, self._rejected = keys, fingerprint, None
        log.info("signing keys reloaded: %s", ", ".join(f"{k.kid} {k.state}" for k in keys.keys))
        return True
