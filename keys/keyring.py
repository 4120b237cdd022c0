"""The keys a worker uses right now, reloaded from the key store when its files change.

Each worker polls the key directory at most once per reload interval (`CONCURRENCY_KEYS_RELOAD`, default
1 s), on the first request after the interval: a `stat` of a few files, no parsing unless something changed.
A changed directory is loaded whole into a new KeySet that replaces the old one in one assignment; a broken
one is logged and ignored, so a bad write never takes a worker down or leaves it half-rotated.
"""

import hashlib
import json
import logging
import math
import os
import threading
import time

from .store import PUBLISHED_STATES, VERIFYING_STATES, KeyStore, KeyStoreError

log = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 1.0
RELOAD_ENV = "CONCURRENCY_KEYS_RELOAD"
PEM_ENV = "CONCURRENCY_SIGNING_KEY_PEM"


class NoSigningKey(KeyStoreError):
    """No key is active."""


class KeySet:
    """An immutable snapshot: the signing schedule, the verifying keys by kid, the JWKS document."""

    def __init__(self, keys):
        self.keys = tuple(keys)
        self.verifying = {k.kid: k for k in keys if k.state in VERIFYING_STATES}
        # Newest activation first: the first key whose window holds `now` signs. A rotation schedules the new
        # key's activation a little ahead, so every worker verifies it before any worker signs with it.
        windows = [
            (k.active_from, k.active_until, k) for k in self.verifying.values() if k.active_from is not None
        ]
        windows.sort(key=lambda w: w[0], reverse=True)
        if windows:  # the oldest signer also covers any earlier time, so a clock behind ours still gets a key
            windows[-1] = (-math.inf, *windows[-1][1:])
        self._windows = windows
        self.jwks = {"keys": [k.public_jwk() for k in keys if k.state in PUBLISHED_STATES]}
        self.jwks_body = json.dumps(self.jwks, separators=(",", ":")).encode()
        self.etag = hashlib.sha256(self.jwks_body).hexdigest()[:32]  # unquoted; the resource quotes it

    def signing_at(self, now_s):
        """Return the key that signs at `now_s` (epoch seconds), or None."""
        for start, end, key in self._windows:
            if start <= now_s < end:
                return key
        return None

    @property
    def signing(self):
        return self.signing_at(time.time())


class Keyring:
    """Serve the current KeySet; poll the key directory so rotations reach every worker."""

    def __init__(self, store, reload_interval_s=RELOAD_INTERVAL_S, clock=time.monotonic):
        self._store = store
        self._interval = reload_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fingerprint = store.fingerprint()
        self._keys = KeySet(store.load())
        self._rejected = None
        self._next_check = clock() + reload_interval_s

    @classmethod
    def from_dir(cls, directory, environ=None, **kwargs):
        """Build over `directory`, with the reload interval and optional PEM key from the environment."""
        environ = os.environ if environ is None else environ
        if RELOAD_ENV in environ and "reload_interval_s" not in kwargs:
            try:
                kwargs["reload_interval_s"] = float(environ[RELOAD_ENV])
            except ValueError:
                raise KeyStoreError(
                    f"{RELOAD_ENV}={environ[RELOAD_ENV]!r} is not a number of seconds"
                ) from None
        return cls(KeyStore(directory, env_pem=environ.get(PEM_ENV)), **kwargs)

    @property
    def reload_interval_s(self):
        return self._interval

    @property
    def current(self):
        """Return the current KeySet, checking the directory first when the interval has passed."""
        if self._clock() >= self._next_check:
            self._poll()
        return self._keys

    @property
    def signing_key(self):
        key = self.current.signing
        if key is None:
            raise NoSigningKey(f"no active signing key in {self._store.directory}")
        return key

    def reload(self):
        """Check the directory now; return whether a new key set was swapped in."""
        with self._lock:
            return self._reload()

    def _poll(self):
        if self._lock.acquire(blocking=False):  # another thread is already checking: serve the current set
            try:
                self._reload()
            finally:
                self._lock.release()

    def _reload(self):
        self._next_check = self._clock() + self._interval
        fingerprint = self._store.fingerprint()
        if fingerprint in (self._fingerprint, self._rejected):
            return False
        try:
            keys = KeySet(self._store.load())
            if keys.signing is None:
                raise KeyStoreError(f"{self._store.manifest_path}: no key is active")
        except KeyStoreError as exc:
            # The fingerprint was taken before loading, so a write racing the load changes it and is retried.
            log.error("keeping the previous signing keys: %s", exc)
            self._rejected = fingerprint
            return False
        self._keys, self._fingerprint, self._rejected = keys, fingerprint, None
        log.info("signing keys reloaded: %s", ", ".join(f"{k.kid} {k.state}" for k in keys.keys))
        return True
