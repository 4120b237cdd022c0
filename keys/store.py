"""Signing keys on disk: one private PEM (0600) and one JSON metadata file per key.

A key moves through states next -> active -> retiring -> retired, or to revoked at any time.
Only `next`, `active` and `retiring` keys are published; `active` and `retiring` verify;
exactly one `active` key signs. Every write goes to a temporary file renamed into place,
so a reader never sees half a key.
"""

import base64
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import stat
import tempfile
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALGORITHMS = ("ES256", "EdDSA", "RS256")
STATES = ("next", "active", "retiring", "retired", "revoked")
PUBLISHED_STATES = ("next", "active", "retiring")
VERIFYING_STATES = ("active", "retiring")
RSA_BITS = 3072

_JWK_EXPORTERS = {"ES256": ECAlgorithm, "EdDSA": OKPAlgorithm, "RS256": RSAAlgorithm}
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


class KeyStoreError(Exception):
    """The key directory or one of its files is unusable; the message names the file."""


@dataclasses.dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    state: str
    created: float
    private_key: object

    @functools.cached_property
    def public_key(self):
        return self.private_key.public_key()

    def public_jwk(self):
        """Return the public JWK with `kid`, `alg` and `use`; never private members."""
        jwk = _JWK_EXPORTERS[self.alg].to_jwk(self.public_key, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def generate_private_key(alg):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise KeyStoreError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")


def thumbprint(alg, public_key):
    """Return the RFC 7638 JWK thumbprint, used as `kid`."""
    jwk = _JWK_EXPORTERS[alg].to_jwk(public_key, as_dict=True)
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


class KeyStore:
    """The key directory: load, create and change the state of keys."""

    def __init__(self, directory, clock=time.time):
        self.directory = directory
        self._clock = clock

    def load(self):
        """Return every key in the directory, oldest first; raise KeyStoreError naming a bad file."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeyStoreError(f"cannot read key directory {self.directory}: {exc.strerror}") from None
        keys = [self._load_one(name[: -len(".json")]) for name in names if name.endswith(".json")]
        return sorted(keys, key=lambda key: key.created)

    def fingerprint(self):
        """Return a cheap summary of the directory that changes whenever a key file does."""
        try:
            with os.scandir(self.directory) as entries:
                return tuple(sorted((e.name, e.stat().st_mtime_ns) for e in entries))
        except OSError:
            return ()

    def generate(self, alg="ES256", state=None):
        """Create a key; it becomes `active` when none is, else `next`."""
        if alg not in ALGORITHMS:
            raise KeyStoreError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")
        if state is None:
            state = "next" if any(k.state == "active" for k in self.load()) else "active"
        private_key = generate_private_key(alg)
        kid = thumbprint(alg, private_key.public_key())
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._write(f"{kid}.pem", pem, mode=0o600)
        now = self._clock()
        self._write_meta({"kid": kid, "alg": alg, "state": state, "created": now, "changed": now})
        return kid

    def set_state(self, kid, state):
        if state not in STATES:
            raise KeyStoreError(f"unknown state {state!r}")
        meta = self._read_meta(kid)
        meta.update(state=state, changed=self._clock())
        self._write_meta(meta)

    def meta(self, kid):
        return self._read_meta(kid)

    def delete(self, kid):
        for suffix in (".json", ".pem"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, kid + suffix))

    def _load_one(self, kid):
        meta = self._read_meta(kid)
        path = os.path.join(self.directory, f"{kid}.pem")
        try:
            mode = os.stat(path).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyStoreError(f"{path}: private key is readable by others; run chmod 600 {path}")
            with open(path, "rb") as file:
                private_key = serialization.load_pem_private_key(file.read(), password=None)
        except FileNotFoundError:
            raise KeyStoreError(f"{path}: private key file is missing") from None
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"{path}: not a readable private key ({exc})") from None
        if thumbprint(meta["alg"], private_key.public_key()) != kid:
            raise KeyStoreError(f"{path}: key does not match its kid")
        return SigningKey(kid, meta["alg"], meta["state"], meta["created"], private_key)

    def _read_meta(self, kid):
        path = os.path.join(self.directory, f"{kid}.json")
        try:
            with open(path, encoding="utf-8") as file:
                meta = json.load(file)
        except FileNotFoundError:
            raise KeyStoreError(f"{path}: no such key") from None
        except (OSError, ValueError) as exc:
            raise KeyStoreError(f"{path}: unreadable key metadata ({exc})") from None
        if not isinstance(meta, dict) or meta.get("kid") != kid:
            raise KeyStoreError(f"{path}: metadata does not name kid {kid}")
        if meta.get("alg") not in ALGORITHMS or meta.get("state") not in STATES:
            raise KeyStoreError(f"{path}: bad alg or state in metadata")
        if not isinstance(meta.get("created"), (int, float)):
            raise KeyStoreError(f"{path}: bad creation time in metadata")
        return meta

    def _write_meta(self, meta):
        self._write(
            f"{meta['kid']}.json",
            json.dumps(meta, indent=2).encode() + b"\n",
            mode=0o644,
        )

    def _write(self, name, data, mode):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, os.path.join(self.directory, name))
        except BaseException:
            os.unlink(tmp)
            raise
