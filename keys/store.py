"""Signing keys on disk: a manifest `keys.json` (kid, alg, state, times of each key), a private PEM per key.

A key moves next -> active -> retiring -> retired, or to revoked at any time. `next`, `active` and
`retiring` keys are published in the JWKS; `active` and `retiring` keys verify; the newest active key whose
activation time has come signs. All states live in the one manifest, so a rotation is one atomic rename: a
reader sees the key set before it or after it, never half of it. Every file is written to a temporary name
and renamed into place.
"""

import base64
import contextlib
import dataclasses
import fcntl
import functools
import getpass
import hashlib
import json
import logging
import math
import os
import re
import stat
import tempfile
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALGORITHMS = ("ES256", "EdDSA", "RS256")
TOKEN_TYPE = "session+jwt"  # the `typ` of every token we sign (RFC 8725 3.11)
STATES = ("next", "active", "retiring", "retired", "revoked")
PUBLISHED_STATES = ("next", "active", "retiring")
VERIFYING_STATES = ("active", "retiring")
PRIVATE_STATES = PUBLISHED_STATES  # keys whose private PEM is kept; retired and revoked ones are deleted
RSA_BITS = 3072
MIN_RSA_BITS = 2048
MANIFEST = "keys.json"
AUDIT_LOG = "keys.log"
ENV_KID_SOURCE = "env"

log = logging.getLogger(__name__)

_KID = re.compile(r"[A-Za-z0-9_-]{43}")  # a base64url SHA-256 thumbprint; also safe as a file name
_JWK_EXPORTERS = {"ES256": ECAlgorithm, "EdDSA": OKPAlgorithm, "RS256": RSAAlgorithm}
# Made once: building them costs a few microseconds on every signature otherwise.
_SHA256 = hashes.SHA256()
_ECDSA_SHA256 = ec.ECDSA(_SHA256)
_PKCS1 = padding.PKCS1v15()
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


class KeyStoreError(Exception):
    """The key directory or one of its files is unusable; the message names the file."""


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """One key: identity, state, times (epoch seconds, by state entered) and its private key if kept."""

    kid: str
    alg: str
    state: str
    created: float
    times: dict
    private_key: object = None
    source: str = "dir"

    @functools.cached_property
    def public_key(self):
        return None if self.private_key is None else self.private_key.public_key()

    @functools.cached_property
    def header(self):
        """The protected header of every token this key signs."""
        return {"alg": self.alg, "kid": self.kid, "typ": TOKEN_TYPE}

    @functools.cached_property
    def header_segment(self):
        return b64url(json.dumps(self.header, separators=(",", ":")).encode())

    @property
    def active_from(self):
        """When this key starts (or started) signing; `None` for keys that never signed."""
        return self.times.get("active", self.created if self.state == "active" else None)

    @property
    def active_until(self):
        """When this key stops signing: its retirement time, or never while it is active."""
        return self.times.get("retiring", math.inf) if self.state == "retiring" else math.inf

    def sign(self, data):
        """Return the JWS signature of `data` (for ES256 the fixed-size r || s of RFC 7518, not DER)."""
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.private_key.sign(data, _ECDSA_SHA256))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if self.alg == "EdDSA":
            return self.private_key.sign(data)
        return self.private_key.sign(data, _PKCS1, _SHA256)

    def verify(self, signature, data):
        """Return whether `signature` is this key's JWS signature of `data`."""
        try:
            if self.alg == "ES256":
                if len(signature) != 64:
                    return False
                r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                self.public_key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
            elif self.alg == "EdDSA":
                self.public_key.verify(signature, data)
            else:
                self.public_key.verify(signature, data, _PKCS1, _SHA256)
        except InvalidSignature:
            return False
        return True

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


def algorithm_of(private_key):
    """Return the one algorithm a private key may sign with, or None if we do not support its kind."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size >= MIN_RSA_BITS:
        return "RS256"
    return None


def thumbprint(alg, public_key):
    """Return the RFC 7638 JWK thumbprint, used as `kid`."""
    jwk = _JWK_EXPORTERS[alg].to_jwk(public_key, as_dict=True)
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest()).decode()


def pem_of(private_key):
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_pem(data, where):
    """Parse a private PEM and name its algorithm; raise KeyStoreError naming `where`."""
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"{where}: not a readable unencrypted private key ({exc})") from None
    alg = algorithm_of(private_key)
    if alg is None:
        raise KeyStoreError(
            f"{where}: unsupported key type; use P-256 (ES256), Ed25519 (EdDSA) or RSA >= 2048"
        )
    return private_key, alg


class KeyStore:
    """The key directory: read the manifest and PEMs, create keys, change their states."""

    def __init__(self, directory, clock=time.time, env_pem=None, env_name="CONCURRENCY_SIGNING_KEY_PEM"):
        self.directory = directory
        self._clock = clock
        self._env_pem = env_pem or None
        self._env_name = env_name

    @property
    def manifest_path(self):
        return os.path.join(self.directory, MANIFEST)

    def load(self):
        """Return every key, oldest first, with the private keys of published ones; errors name the file."""
        keys = []
        for record in self.records():
            private_key = self._read_private(record) if record["state"] in PRIVATE_STATES else None
            keys.append(_key(record, private_key))
        env_key = self._env_key(keys)
        return [env_key, *keys] if env_key else keys

    def records(self):
        """Return the manifest's key records (no private keys), oldest first."""
        path = self.manifest_path
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeyStoreError(f"{path}: cannot read key manifest ({exc.strerror})") from None
        try:
            manifest = json.loads(data)
        except ValueError as exc:
            raise KeyStoreError(f"{path}: corrupt or half-written key manifest ({exc})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("keys"), list):
            raise KeyStoreError(f'{path}: key manifest must be an object with a "keys" list')
        records = [_check_record(record, path) for record in manifest["keys"]]
        if len({r["kid"] for r in records}) != len(records):
            raise KeyStoreError(f"{path}: a kid appears twice")
        return sorted(records, key=lambda r: r["created"])

    def fingerprint(self):
        """Return a cheap summary of the key files that changes whenever one of them does."""
        try:
            with os.scandir(self.directory) as entries:
                return tuple(
                    sorted(
                        (e.name, s.st_ino, s.st_mtime_ns, s.st_ctime_ns, s.st_mode, s.st_size)
                        for e in entries
                        if e.name == MANIFEST or e.name.endswith(".pem")
                        for s in (e.stat(),)
                    )
                )
        except OSError:
            return ()

    def generate(self, alg="ES256", state=None):
        """Create a key and return its kid; it becomes `active` when no key is, else `next`."""
        with self.locked():
            records = self.records()
            if state is None:
                has_active = self._env_pem or any(r["state"] == "active" for r in records)
                state = "next" if has_active else "active"
            record = self.create(alg, state)
            self.save([*records, record])
            self.changed("generate", record["kid"], alg=alg, state=state)
        return record["kid"]

    def create(self, alg, state):
        """Make a key and write its private PEM; return its manifest record, for the caller to save."""
        if alg not in ALGORITHMS:
            raise KeyStoreError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")
        private_key = generate_private_key(alg)
        kid = thumbprint(alg, private_key.public_key())
        self._write(f"{kid}.pem", pem_of(private_key), mode=0o600)
        now = self._clock()
        return {"kid": kid, "alg": alg, "state": state, "created": now, "times": {state: now}}

    def save(self, records):
        """Write the manifest atomically; call inside `locked()`."""
        body = json.dumps({"keys": records}, indent=2).encode() + b"\n"
        self._write(MANIFEST, body, mode=0o644)

    def delete_private(self, kid):
        """Remove a key's private PEM (after the manifest no longer needs it)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, f"{_checked_kid(kid)}.pem"))

    @contextlib.contextmanager
    def locked(self):
        """Hold the directory's write lock, so two commands never interleave their changes."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.directory, ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def changed(self, action, kid, **details):
        """Log a change and append it to the directory's audit trail, `keys.log` (JSON lines)."""
        entry = {"time": round(self._clock(), 3), "action": action, "kid": kid, "user": _user(), **details}
        log.info("key %s: %s %s", action, kid, " ".join(f"{k}={v}" for k, v in details.items()))
        fd = os.open(os.path.join(self.directory, AUDIT_LOG), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry, sort_keys=True) + "\n")

    def _env_key(self, directory_keys):
        """The key from the environment: it signs until a directory key becomes active, then it retires."""
        if not self._env_pem:
            return None
        private_key, alg = load_pem(self._env_pem.encode(), f"${self._env_name}")
        kid = thumbprint(alg, private_key.public_key())
        if any(k.kid == kid for k in directory_keys):
            raise KeyStoreError(f"${self._env_name}: key {kid} is also in {self.manifest_path}")
        takeover = min((k.active_from for k in directory_keys if k.state == "active"), default=None)
        if takeover is None:
            return SigningKey(kid, alg, "active", 0.0, {"active": 0.0}, private_key, ENV_KID_SOURCE)
        times = {"active": 0.0, "retiring": takeover}
        return SigningKey(kid, alg, "retiring", 0.0, times, private_key, ENV_KID_SOURCE)

    def _read_private(self, record):
        path = os.path.join(self.directory, f"{record['kid']}.pem")
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise KeyStoreError(f"{path}: private key file is missing") from None
        except OSError as exc:
            raise KeyStoreError(f"{path}: cannot read private key ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as file:
            if os.fstat(fd).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyStoreError(f"{path}: private key is readable by others; run chmod 600 {path}")
            data = file.read()
        private_key, alg = load_pem(data, path)
        if alg != record["alg"]:
            raise KeyStoreError(f"{path}: {alg} key, but {MANIFEST} says {record['alg']}")
        if thumbprint(alg, private_key.public_key()) != record["kid"]:
            raise KeyStoreError(f"{path}: key does not match its kid")
        return private_key

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
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _key(record, private_key):
    return SigningKey(
        record["kid"], record["alg"], record["state"], record["created"], record["times"], private_key
    )


def _checked_kid(kid):
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise KeyStoreError(f"{kid!r} is not a key id (43 base64url characters)")
    return kid


def _check_record(record, path):
    if not isinstance(record, dict):
        raise KeyStoreError(f"{path}: every key must be an object")
    kid = record.get("kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise KeyStoreError(f"{path}: bad kid {str(kid)[:60]!r}")
    if record.get("alg") not in ALGORITHMS:
        raise KeyStoreError(f"{path}: key {kid}: alg must be one of {', '.join(ALGORITHMS)}")
    if record.get("state") not in STATES:
        raise KeyStoreError(f"{path}: key {kid}: state must be one of {', '.join(STATES)}")
    times = record.get("times", {})
    numbers = [record.get("created"), *times.values()] if isinstance(times, dict) else [None]
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in numbers):
        raise KeyStoreError(f"{path}: key {kid}: times must be numbers (epoch seconds)")
    if set(times) - set(STATES):
        raise KeyStoreError(f"{path}: key {kid}: times are named by state")
    return {**record, "times": dict(times)}


def _user():
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
