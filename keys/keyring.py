"""The keys a worker uses right now, reloaded from the key store when its files change."""

import hashlib
import json
import logging
import threading
import time

from .store import PUBLISHED_STATES, VERIFYING_STATES, KeyStore, KeyStoreError

log = logging.getLogger(__name__)

RELOAD_INTERVAL_S = 2.0


class NoSigningKey(KeyStoreError):
    """No key is active."""


class KeySet:
    """An immutable snapshot: the signing key, the verifying keys by kid, the JWKS document."""

    def __init__(self, keys):
        active = [k for k in keys if k.state == "active"]
        self.signing = active[-1] if active else None
        self.verifying = {k.kid: k for k in keys if k.state in VERIFYING_STATES}
        self.jwks = {"keys": [k.public_jwk() for k in keys if k.state in PUBLISHED_STATES]}
        self.jwks_body = json.dumps(self.jwks, separators=(",", ":")).encode()
        self.etag = hashlib.sha256(self.jwks_body).hexdigest()[:32]


class Keyring:
    """Serve the current KeySet; poll the key directory so rotations reach every worker."""

    def __init__(self, store, reload_interval_s=RELOAD_INTERVAL_S, clock=time.monotonic):
        self._store = store
        self._interval = reload_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._fingerprint = store.fingerprint()
        self._keys = KeySet(store.load())
        self._checked = clock()

    @classmethod
    def from_dir(cls, directory, **kwargs):
        return cls(KeyStore(directory), **kwargs)

    @property
    def current(self):
        """Return the current KeySet, reloading first when the interval has passed."""
        if self._clock() - self._checked >= self._interval:
            self.reload()
        return self._keys

    @property
    def signing_key(self):
        key = self.current.signing
        if key is None:
            raise NoSigningKey(f"no active signing key in {self._store.directory}")
        return key

    def reload(self):
        """Swap in the directory's keys if they changed; keep the old set if the new one is broken."""
        with self._lock:
            self._checked = self._clock()
            fingerprint = self._store.fingerprint()
            if fingerprint == self._fingerprint:
                return
            try:
                keys = KeySet(self._store.load())
            except KeyStoreError as exc:
                log.error("keeping previous keys: %s", exc)
                return
            if keys.signing is None:
                log.error("keeping previous keys: no active key in %s", self._store.directory)
                return
            self._keys, self._fingerprint = keys, fingerprint
            log.info(
                "keys reloaded: signing kid %s, %d published",
                keys.signing.kid,
                len(keys.jwks["keys"]),
            )
