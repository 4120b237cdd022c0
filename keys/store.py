"""The key directory: a manifest `keys.json` (a record per key), a private PEM per key, an audit log.

All states live in the one manifest, so a rotation is one atomic rename: a reader sees the key set before
it or after it, never half of it. Every file is written to a temporary name and renamed into place.
"""

import contextlib
import fcntl
import getpass
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator

from . import strict_json
from .errors import KeyStoreError
from .material import (
    ENV_SOURCE,
    PrivateKey,
    SigningKey,
    generate_private_key,
    load_pem,
    pem_of,
    thumbprint,
)
from .records import ALGORITHMS, PRIVATE_STATES, KeyRecord, checked_kid

MANIFEST = "keys.json"
AUDIT_LOG = "keys.log"
PEM_ENV = "CONCURRENCY_SIGNING_KEY_PEM"  # named in messages; api/config.py reads it
MAX_PEM_BYTES = 65536  # an RSA-4096 PEM is about 3.3 KB

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int, int, int, int], ...]


class KeyStore:
    """Read the manifest and PEMs, create keys, save changed records, keep the audit log."""

    def __init__(
        self, directory: str, clock: Callable[[], float] = time.time, env_pem: str | None = None
    ) -> None:
        self.directory = directory
        self._clock = clock
        self._env_pem = env_pem or None

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.directory, MANIFEST)

    @property
    def has_env_key(self) -> bool:
        return self._env_pem is not None

    def load(self) -> list[SigningKey]:
        """Return every key, oldest first, with the private keys of published ones; errors name the file."""
        keys = [
            SigningKey(record, self._read_private(record) if record.state in PRIVATE_STATES else None)
            for record in self.records()
        ]
        env_key = self._env_key(keys)
        return [env_key, *keys] if env_key else keys

    def records(self) -> list[KeyRecord]:
        """Return the manifest's key records (no private keys), oldest first."""
        path = self.manifest_path
        _not_writable_by_others(self.directory, "key directory")
        try:
            with os.fdopen(_open_plain(path, os.O_RDONLY), "rb") as file:
                _not_writable_by_others(path, "key manifest", os.fstat(file.fileno()))
                data = file.read()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeyStoreError(f"{path}: cannot read key manifest ({exc.strerror})") from None
        try:
            manifest = strict_json.loads(data)  # NaN times or a kid named twice would be read some way
        except (ValueError, RecursionError) as exc:
            raise KeyStoreError(f"{path}: corrupt or half-written key manifest ({exc})") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("keys"), list):
            raise KeyStoreError(f'{path}: key manifest must be an object with a "keys" list')
        records = [KeyRecord.from_json(value, path) for value in manifest["keys"]]
        if len({r.kid for r in records}) != len(records):
            raise KeyStoreError(f"{path}: a kid appears twice")
        return sorted(records, key=lambda r: r.created)

    def fingerprint(self) -> Fingerprint:
        """Return a cheap summary of the key files, and of the directory (whose mode and owner count when
        loading), that changes whenever one of them does."""
        try:
            own = os.stat(self.directory)
            with os.scandir(self.directory) as entries:
                return (("", own.st_ino, own.st_mode, own.st_uid, own.st_gid, 0),) + tuple(
                    sorted(
                        (e.name, s.st_ino, s.st_mtime_ns, s.st_ctime_ns, s.st_mode, s.st_size)
                        for e in entries
                        if e.name == MANIFEST or e.name.endswith(".pem")
                        for s in (e.stat(),)
                    )
                )
        except OSError:
            return ()

    def generate(self, alg: str = "ES256", state: str | None = None) -> str:
        """Create a key and return its kid; it becomes `active` when no key is, else `next`.

        A second active key is refused: it would sign at once, before instances and verifiers that have not
        seen it yet know it; `keys rotate` publishes a key before it signs."""
        with self.locked():
            records = self.records()
            has_active = self._env_pem or any(r.state == "active" for r in records)
            if state is None:
                state = "next" if has_active else "active"
            elif state == "active" and has_active:
                raise KeyStoreError(
                    "a key is active already: a new active key would sign before it is published; run"
                    " `concurrency-service keys generate` (a next key), then `concurrency-service keys"
                    " rotate`"
                )
            record = self.create(alg, state)
            self.save([*records, record])
            self.changed("generate", record.kid, alg=alg, state=state)
        return record.kid

    def create(self, alg: str, state: str) -> KeyRecord:
        """Make a key and write its private PEM; return its record, for the caller to save."""
        if alg not in ALGORITHMS:
            raise KeyStoreError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")
        private_key = generate_private_key(alg)
        kid = thumbprint(alg, private_key.public_key())
        self._write(f"{kid}.pem", pem_of(private_key), mode=0o600)
        now = self._clock()
        return KeyRecord(kid, alg, state, now, {state: now})

    def save(self, records: list[KeyRecord]) -> None:
        """Write the manifest atomically; call inside `locked()`."""
        body = json.dumps({"keys": [r.to_json() for r in records]}, indent=2).encode() + b"\n"
        self._write(MANIFEST, body, mode=0o644)

    def delete_private(self, kid: str) -> None:
        """Remove a key's private PEM (after the manifest no longer needs it)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, f"{checked_kid(kid)}.pem"))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's write lock, so two commands never interleave their changes."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = self._open_own(".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def changed(self, action: str, kid: str, **details: object) -> None:
        """Log a change and append it to the directory's audit trail, `keys.log` (JSON lines)."""
        entry = {"time": round(self._clock(), 3), "action": action, "kid": kid, "user": _user(), **details}
        log.info("key %s: %s %s", action, kid, " ".join(f"{k}={v}" for k, v in details.items()))
        with os.fdopen(self._open_own(AUDIT_LOG, os.O_WRONLY | os.O_APPEND), "a", encoding="utf-8") as file:
            file.write(json.dumps(entry, sort_keys=True) + "\n")

    def remove_leftovers(self, kids: set[str], older_than: float) -> list[str]:
        """Delete what commands that died left, written before `older_than` (epoch seconds): temporary files,
        and keys written but never recorded: a `<kid>.pem` holding the key of that kid, which no record in
        `kids` names. With no records (no manifest, or the wrong directory) no key is deleted. Return the
        kids of the keys deleted. What is not a regular file, or cannot be read, is left alone."""
        deleted = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                try:
                    if not entry.is_file(follow_symlinks=False) or entry.stat().st_mtime >= older_than:
                        continue
                    if name.startswith(".tmp-"):
                        os.unlink(entry.path)
                    elif (
                        kids
                        and name.endswith(".pem")
                        and name[:-4] not in kids
                        and _holds_own_kid(entry.path)
                    ):
                        os.unlink(entry.path)
                        deleted.append(name[:-4])
                except OSError:
                    continue
        return deleted

    def _env_key(self, directory_keys: list[SigningKey]) -> SigningKey | None:
        """The key from the environment: it signs until a directory key becomes active, then it retires."""
        if not self._env_pem:
            return None
        private_key, alg = load_pem(self._env_pem.encode(), f"${PEM_ENV}")
        kid = thumbprint(alg, private_key.public_key())
        if any(k.kid == kid for k in directory_keys):
            raise KeyStoreError(f"${PEM_ENV}: key {kid} is also in {self.manifest_path}")
        starts = [k.record.active_from for k in directory_keys if k.state == "active"]
        takeover = min((t for t in starts if t is not None), default=None)
        if takeover is None:
            record = KeyRecord(kid, alg, "active", 0.0, {"active": 0.0})
        else:
            record = KeyRecord(kid, alg, "retiring", 0.0, {"active": 0.0, "retiring": takeover})
        return SigningKey(record, private_key, ENV_SOURCE)

    def _read_private(self, record: KeyRecord) -> PrivateKey:
        path = os.path.join(self.directory, f"{record.kid}.pem")
        private_key, alg = load_pem(_read_pem(path), path)
        if alg != record.alg:
            raise KeyStoreError(f"{path}: {alg} key, but {MANIFEST} says {record.alg}")
        if thumbprint(alg, private_key.public_key()) != record.kid:
            raise KeyStoreError(f"{path}: key does not match its kid")
        return private_key

    def _open_own(self, name: str, flags: int) -> int:
        """Open (or create) the lock or the audit log: a plain file, not through a symlink (and a FIFO in its
        place would block the command, and the lock with it)."""
        return _open_plain(os.path.join(self.directory, name), flags | os.O_CREAT | os.O_NOFOLLOW, 0o600)

    def _write(self, name: str, data: bytes, mode: int) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(fd, mode)
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, os.path.join(self.directory, name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _read_pem(path: str) -> bytes:
    """A private key file's bytes; KeyStoreError naming the file if it cannot be read, or others can."""
    try:
        fd = _open_plain(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyStoreError(f"{path}: private key file is missing") from None
    try:
        mode = os.fstat(fd).st_mode
        data = b""  # EIO or ESTALE (a network file system) fail here
        while len(data) <= MAX_PEM_BYTES and (chunk := os.read(fd, MAX_PEM_BYTES + 1 - len(data))):
            data += chunk
    except OSError as exc:
        raise KeyStoreError(f"{path}: cannot read private key ({exc.strerror})") from None
    finally:
        os.close(fd)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyStoreError(f"{path}: private key is readable by others; run chmod 600 {path}")
    if len(data) > MAX_PEM_BYTES:
        raise KeyStoreError(f"{path}: not a private key (over {MAX_PEM_BYTES} bytes)")
    return data


def _open_plain(path: str, flags: int, mode: int = 0o600) -> int:
    """Open a regular file, without blocking on a FIFO in its place; raise KeyStoreError naming it if it
    cannot be opened or is no plain file (FileNotFoundError stays itself)."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyStoreError(f"{path}: cannot open ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KeyStoreError(f"{path}: not a plain file")
    return fd


def _holds_own_kid(path: str) -> bool:
    """Whether `path` is `<kid>.pem` holding the key of that kid: one `KeyStore.create` wrote."""
    kid = os.path.basename(path)[:-4]
    try:
        private_key, alg = load_pem(_read_pem(path), path)
    except KeyStoreError:
        return False
    return thumbprint(alg, private_key.public_key()) == kid


def _not_writable_by_others(path: str, what: str, status: os.stat_result | None = None) -> None:
    """Refuse a key file or directory that someone besides its owner could change."""
    try:
        mode = (status or os.stat(path)).st_mode
    except FileNotFoundError:
        return
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeyStoreError(f"{path}: {what} is writable by others; run chmod go-w {path}")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
