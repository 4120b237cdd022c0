"""The key directory: formats, permissions, atomic writes and clear errors naming the file."""

import base64
import json
import os
import stat
import threading

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey

from keys.errors import KeyStoreError
from keys.material import generate_private_key, pem_of, thumbprint
from keys.store import MANIFEST, KeyStore


@pytest.fixture
def store(tmp_path):
    return KeyStore(str(tmp_path / "keys"))


def manifest(store):
    with open(store.manifest_path) as file:
        return json.load(file)


def test_first_key_is_active_then_next(store):
    first = store.generate("ES256")
    second = store.generate("EdDSA")
    records = {r["kid"]: r for r in manifest(store)["keys"]}
    assert records[first]["state"] == "active" and records[second]["state"] == "next"
    assert records[second]["alg"] == "EdDSA"
    assert records[second]["times"] == {"next": records[second]["created"]}
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    for kid in (first, second):
        assert stat.S_IMODE(os.stat(os.path.join(store.directory, f"{kid}.pem")).st_mode) == 0o600
    assert not [n for n in os.listdir(store.directory) if n.startswith(".tmp-")]


def test_kid_is_the_rfc7638_thumbprint(store):
    kid = store.generate("ES256")
    (key,) = store.load()
    jwk = ECKey.import_key(key.public_jwk())
    assert kid == jwk.thumbprint()


def test_load_gives_private_keys_of_published_keys_only(store):
    store.generate("ES256")
    keys = store.load()
    assert keys[0].private_key is not None
    assert "d" not in keys[0].public_jwk()


def test_missing_directory_is_empty(tmp_path):
    assert KeyStore(str(tmp_path / "nowhere")).load() == []


def test_group_readable_private_key_names_the_file(store):
    kid = store.generate("ES256")
    path = os.path.join(store.directory, f"{kid}.pem")
    os.chmod(path, 0o640)
    with pytest.raises(KeyStoreError, match=f"{path}: private key is readable by others; run chmod 600"):
        store.load()


def test_corrupt_manifest_names_the_file(store):
    store.generate("ES256")
    with open(store.manifest_path) as file:
        text = file.read()
    with open(store.manifest_path, "w") as file:
        file.write(text[: len(text) // 2])  # half-written, as a careless copy would leave it
    with pytest.raises(KeyStoreError, match=f"{store.manifest_path}: corrupt or half-written"):
        store.load()


@pytest.mark.parametrize(
    "text",
    [
        '{"keys": [{"times": {"active": NaN}}]}',  # every comparison with it is false
        '{"keys": [], "keys": []}',
        "[" * 100_000,
    ],
)
def test_a_manifest_that_is_not_strict_json_names_the_file(store, text):
    store.generate("ES256")
    with open(store.manifest_path, "w") as file:
        file.write(text)
    with pytest.raises(KeyStoreError, match=f"{store.manifest_path}: corrupt or half-written"):
        store.load()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(kid="../../etc/passwd"), "bad kid"),
        (lambda r: r.update(alg="HS256"), "alg must be one of"),
        (lambda r: r.update(state="on"), "state must be one of"),
        (lambda r: r.update(created="yesterday"), "times must be numbers"),
        (lambda r: r["times"].update(someday=1), "times are named by state"),
    ],
)
def test_bad_manifest_record_names_the_file(store, change, message):
    store.generate("ES256")
    data = manifest(store)
    change(data["keys"][0])
    with open(store.manifest_path, "w") as file:
        json.dump(data, file)
    with pytest.raises(KeyStoreError, match=message) as raised:
        store.load()
    assert MANIFEST in str(raised.value)


def test_half_written_private_key_names_the_file(store):
    kid = store.generate("ES256")
    path = os.path.join(store.directory, f"{kid}.pem")
    with open(path, "rb") as file:
        pem = file.read()
    with open(path, "wb") as file:
        file.write(pem[: len(pem) // 2])
    with pytest.raises(KeyStoreError, match=f"{path}: not a readable"):
        store.load()


def test_missing_private_key_names_the_file(store):
    kid = store.generate("ES256")
    path = os.path.join(store.directory, f"{kid}.pem")
    os.unlink(path)
    with pytest.raises(KeyStoreError, match=f"{path}: private key file is missing"):
        store.load()


def test_an_unreadable_private_key_names_the_file(store):
    """What `read` raises (here a directory in the PEM's place; EIO or ESTALE on a network file system) is
    a KeyStoreError, which a reload survives, not an OSError that reached a heartbeat as a 500."""
    kid = store.generate("ES256")
    path = os.path.join(store.directory, f"{kid}.pem")
    os.unlink(path)
    os.mkdir(path, 0o700)
    with pytest.raises(KeyStoreError, match=f"{path}: not a plain file"):
        store.load()


@pytest.mark.parametrize(
    "name, kind",
    [
        (".lock", "symlink"),
        ("keys.log", "symlink"),
        *((name, "fifo") for name in (".lock", "keys.log", MANIFEST)),
    ],
)
def test_a_symlink_or_a_fifo_in_place_of_the_lock_the_log_or_the_manifest_is_refused(
    store, tmp_path, name, kind
):
    """A symlinked lock or log would lead a command's writes elsewhere; a FIFO would block it for ever,
    holding the lock that the hourly `maintain` waits for."""
    store.generate("ES256")
    victim = tmp_path / "victim"
    victim.write_text("someone else's\n")
    path = os.path.join(store.directory, name)
    os.unlink(path)
    os.symlink(victim, path) if kind == "symlink" else os.mkfifo(path, 0o600)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(raised(store.generate, "ES256")), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert len(outcome) == 1, "the command blocked"
    assert isinstance(outcome[0], KeyStoreError) and name in str(outcome[0])
    assert victim.read_text() == "someone else's\n"


def raised(call, *args):
    try:
        call(*args)
    except Exception as exc:  # noqa: BLE001 -- the test looks at it
        return exc
    return None


def unsupported_curve_pem():
    """A PKCS#8 EC key on secp112r1, which OpenSSL parses and cryptography refuses (UnsupportedAlgorithm)."""

    def tlv(tag, body):
        return bytes([tag, len(body)]) + body

    sec1 = tlv(0x30, tlv(0x02, b"\x01") + tlv(0x04, b"\x01" * 14))
    algorithm = bytes.fromhex("06072a8648ce3d0201") + bytes.fromhex("06052b81040006")
    der = tlv(0x30, tlv(0x02, b"\x00") + tlv(0x30, algorithm) + tlv(0x04, sec1))
    return b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(der) + b"-----END PRIVATE KEY-----\n"


def test_a_key_of_an_unsupported_curve_names_the_file(store):
    kid = store.generate("ES256")
    path = os.path.join(store.directory, f"{kid}.pem")
    with open(path, "wb") as file:
        file.write(unsupported_curve_pem())
    with pytest.raises(KeyStoreError, match=f"{path}: not a readable unencrypted private key"):
        store.load()


def test_swapped_private_key_names_the_file(store):
    kid = store.generate("ES256")
    path = os.path.join(store.directory, f"{kid}.pem")
    with open(path, "wb") as file:
        file.write(pem_of(generate_private_key("ES256")))
    with pytest.raises(KeyStoreError, match=f"{path}: key does not match its kid"):
        store.load()


def test_private_key_of_another_algorithm_names_the_file(store):
    kid = store.generate("ES256")
    path = os.path.join(store.directory, f"{kid}.pem")
    with open(path, "wb") as file:
        file.write(pem_of(generate_private_key("EdDSA")))
    with pytest.raises(KeyStoreError, match=f"{path}: EdDSA key, but keys.json says ES256"):
        store.load()


def test_failed_write_leaves_no_partial_file(store, monkeypatch):
    store.generate("ES256")
    before = manifest(store)

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        store.generate("ES256")
    monkeypatch.undo()
    assert manifest(store) == before
    assert not [n for n in os.listdir(store.directory) if n.startswith(".tmp-")]


def test_fingerprint_follows_key_files_only(store):
    store.generate("ES256")
    before = store.fingerprint()
    assert store.fingerprint() == before
    with open(os.path.join(store.directory, "notes.txt"), "w") as file:
        file.write("unrelated")
    store.changed("note", "-")  # the audit log is not a key file either
    assert store.fingerprint() == before
    store.generate("ES256")
    assert store.fingerprint() != before


def test_every_change_is_audited(store):
    kid = store.generate("ES256")
    with open(os.path.join(store.directory, "keys.log")) as file:
        entries = [json.loads(line) for line in file]
    assert entries[-1]["action"] == "generate" and entries[-1]["kid"] == kid
    assert {"time", "user", "alg", "state"} <= set(entries[-1])


def test_unsupported_algorithm(store):
    with pytest.raises(KeyStoreError, match="unsupported algorithm 'HS256'"):
        store.generate("HS256")


# -- one key from the environment ----------------------------------------------------------------------


def pem(private_key):
    return pem_of(private_key).decode()


def test_environment_key_alone_is_active(tmp_path):
    private_key = ec.generate_private_key(ec.SECP256R1())
    (key,) = KeyStore(str(tmp_path), env_pem=pem(private_key)).load()
    assert (key.state, key.alg, key.source) == ("active", "ES256", "env")
    assert key.kid == thumbprint("ES256", private_key.public_key())


def test_environment_key_hands_over_to_a_directory_key(tmp_path):
    env = pem(ec.generate_private_key(ec.SECP256R1()))
    store = KeyStore(str(tmp_path), env_pem=env)
    kid = store.generate("ES256")
    assert next(r for r in store.records() if r.kid == kid).state == "next"  # the env key signs meanwhile
    records = store.records()
    records[0].state, records[0].times = "active", {"active": 5.0}
    with store.locked():
        store.save(records)
    env_key, dir_key = store.load()
    assert (env_key.state, env_key.record.active_until) == ("retiring", 5.0)
    assert dir_key.state == "active"


@pytest.mark.parametrize(
    "value, message",
    [
        ("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n", "not a readable"),
        ("", None),
        (None, None),
    ],
)
def test_environment_key_errors_name_the_variable(tmp_path, value, message):
    store = KeyStore(str(tmp_path), env_pem=value)
    if message is None:
        assert store.load() == []
    else:
        with pytest.raises(KeyStoreError, match=r"^\$CONCURRENCY_SIGNING_KEY_PEM: " + message):
            store.load()


def test_environment_key_too_weak(tmp_path):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    text = weak.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(KeyStoreError, match="unsupported key type"):
        KeyStore(str(tmp_path), env_pem=text).load()


@pytest.mark.parametrize("mode", [0o775, 0o777, 0o1777])
def test_a_key_directory_others_may_write_is_refused(store, mode):
    store.generate("ES256")
    os.chmod(store.directory, mode)
    try:
        with pytest.raises(KeyStoreError, match=f"{store.directory}: key directory is writable by others"):
            store.load()
    finally:
        os.chmod(store.directory, 0o700)
    assert store.load()


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_manifest_others_may_write_is_refused(store, mode):
    store.generate("ES256")
    os.chmod(store.manifest_path, mode)
    with pytest.raises(KeyStoreError, match=f"{store.manifest_path}: key manifest is writable by others"):
        store.load()
