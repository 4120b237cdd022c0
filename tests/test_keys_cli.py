"""`concurrency-service keys ...` as an operator runs it: output, exit codes, refusals, logging."""

import json
import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from api.cli import main
from keys.cli import duration
from keys.rotation import at

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def keys(tmp_path, monkeypatch, capsys):
    """Run `concurrency-service keys ARGS --dir DIR` in-process; return (exit code, stdout, stderr)."""
    directory = str(tmp_path / "keys")
    monkeypatch.setenv("CONCURRENCY_KEYS_DIR", directory)
    monkeypatch.delenv("CONCURRENCY_SIGNING_KEY_PEM", raising=False)

    def run(*args):
        code = main(["keys", *args])
        out, err = capsys.readouterr()
        return code, out, err

    run.directory = directory
    return run


def records(directory):
    with open(os.path.join(directory, "keys.json")) as file:
        return json.load(file)["keys"]


def test_generate_prints_the_kid(keys):
    code, out, err = keys("generate")
    assert code == 0
    kid = out.strip()
    assert [r["kid"] for r in records(keys.directory)] == [kid]
    assert "key generate" in err and kid in err  # every change is logged


def test_generate_refuses_a_second_active_key(keys):
    """It would sign at once, before instances and verifiers that have not seen it know it: 401s."""
    first = keys("generate")[1].strip()
    code, _, err = keys("generate", "--state", "active")
    assert code == 2 and "keys rotate" in err
    assert [(r["kid"], r["state"]) for r in records(keys.directory)] == [(first, "active")]
    assert os.listdir(keys.directory).count(f"{first}.pem") == 1
    assert len([n for n in os.listdir(keys.directory) if n.endswith(".pem")]) == 1


def test_generate_beside_an_environment_key_makes_a_next_key(keys, monkeypatch):
    """The environment key is active: a directory key must be published before it takes over."""
    from keys.material import generate_private_key, pem_of

    monkeypatch.setenv("CONCURRENCY_SIGNING_KEY_PEM", pem_of(generate_private_key("ES256")).decode())
    assert keys("generate")[0] == 0
    assert [r["state"] for r in records(keys.directory)] == ["next"]
    assert keys("generate", "--state", "active")[0] == 2


def test_generate_rs256_with_explicit_dir(keys, tmp_path):
    other = str(tmp_path / "other")
    code, out, _ = keys("generate", "--dir", other, "--alg", "RS256")
    assert code == 0 and records(other)[0]["alg"] == "RS256"


def test_list_shows_kid_alg_state_age(keys):
    keys("generate")
    keys("generate", "--alg", "EdDSA")
    code, out, _ = keys("list")
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["KID", "ALG", "STATE", "AGE", "IN"]
    assert "ES256" in lines[1] and "active" in lines[1]
    assert "EdDSA" in lines[2] and "next" in lines[2]
    code, out, _ = keys("list", "--json")
    assert [r["state"] for r in json.loads(out)] == ["active", "next"]


def test_rotate_waits_for_the_jwks_max_age_unless_forced(keys, monkeypatch):
    keys("generate")
    code, out, _ = keys("rotate")
    assert code == 0 and "made next key" in out and "again after" in out
    code, _, err = keys("rotate")
    assert code == 2
    assert "verifiers may cache the JWKS for 300 s" in err and "--force" in err
    monkeypatch.setenv("CONCURRENCY_JWKS_MAX_AGE", "0")
    code, out, _ = keys("rotate")
    assert code == 0 and "signs from" in out


def test_rotate_force_then_prune_then_jwks(keys):
    first = keys("generate")[1].strip()
    code, out, err = keys("rotate", "--force")
    assert code == 0 and f"{first} is retiring" in out and "key activate" in err
    code, _, err = keys("retire", first, "--force")
    assert code == 2 and f"{first} still signs until" in err
    code, out, _ = keys("prune")
    assert code == 0 and f"{first} stays retiring until" in out
    code, out, _ = keys("jwks")
    published = [k["kid"] for k in json.loads(out)["keys"]]
    assert published[0] == first and len(published) == 3


def test_revoke_refuses_to_leave_no_active_key(keys):
    kid = keys("generate")[1].strip()
    code, _, err = keys("revoke", kid)
    assert code == 2 and "only active key" in err
    assert records(keys.directory)[0]["state"] == "active"


def test_emergency_revocation(keys):
    old = keys("generate")[1].strip()
    assert keys("rotate", "--force")[0] == 0
    code, out, _ = keys("revoke", old)
    assert code == 0 and "signs from now" in out and f"{old} is revoked" in out
    code, out, _ = keys("jwks")
    assert old not in out


def test_bad_directory_is_a_clear_error(keys):
    keys("generate")
    with open(os.path.join(keys.directory, "keys.json"), "w") as file:
        file.write("{")
    code, _, err = keys("list")
    assert code == 2 and "keys.json: corrupt or half-written key manifest" in err


def test_installed_command(tmp_path):
    """The console script runs the same commands as a subprocess (as the runbook does)."""
    command = [sys.executable, "-m", "api.cli", "keys", "generate", "--dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    assert len(done.stdout.strip()) == 43


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="what root does (CI runs as root)")


@pytest.fixture
def reachable(tmp_path):
    """A directory everyone may reach (pytest's own are root's alone), as a service's home is."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="keys-cli-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path)


@ROOT_ONLY
def test_root_acts_as_the_owner_of_the_key_directory(reachable):
    """`sudo concurrency-service keys ...` on the service's directory: what it writes is the service's to
    read, and nothing in the directory can lead root's powers elsewhere (it runs with the owner's)."""
    tmp_path = reachable
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    victim = tmp_path / "victim"
    victim.write_text("root's own\n")
    os.chmod(victim, 0o600)
    os.symlink(victim, directory / ".tmp-old")  # what a root prune would have unlinked: only the link
    done = as_root("generate", "--dir", str(directory))
    assert done.returncode == 0, done.stderr
    kid = done.stdout.strip()
    for name in (f"{kid}.pem", "keys.json", "keys.log", ".lock"):
        owner = os.stat(directory / name)
        assert (owner.st_uid, owner.st_gid) == (65534, 65534), name
    assert victim.read_text() == "root's own\n" and os.stat(victim).st_uid == 0


def as_root(*args, cwd=ROOT):
    """Run `concurrency-service keys ARGS` in a process of its own (it may give up root's powers)."""
    command = [sys.executable, "-m", "api.cli", "keys", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=cwd)


@ROOT_ONLY
def test_root_makes_a_missing_key_directory_as_the_owner_of_where_it_goes(reachable):
    """`sudo scripts/run` in a user's checkout: the development keys are the user's, not root's."""
    os.chown(reachable, 65534, 65534)
    done = as_root("generate", "--dir", str(reachable / "dev-keys"))
    assert done.returncode == 0, done.stderr
    owner = os.stat(reachable / "dev-keys")
    assert (owner.st_uid, owner.st_gid) == (65534, 65534)


@ROOT_ONLY
def test_root_works_with_the_owners_own_group_not_the_directorys(reachable):
    """`chown svc dir` on a directory root made leaves it in root's group: that group is not taken."""
    directory = reachable / "keys"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 0)
    done = as_root("generate", "--dir", str(directory))
    assert done.returncode == 0, done.stderr
    assert os.stat(directory / "keys.json").st_gid == pwd.getpwuid(65534).pw_gid != 0


REFUSED = "as root, every directory and link on its way must be root's or its owner's"


@ROOT_ONLY
def test_root_follows_no_link_of_a_third_user(reachable):
    """A symlink of someone else's (uid 65534) leads nowhere: not into a directory only root may write,
    not into another user's (65533) private one, not to a place yet to be made."""
    os.chown(reachable, 65534, 65534)
    root_only, private = reachable / "root-only", reachable / "private"
    root_only.mkdir(mode=0o755)
    os.chown(root_only, 0, 0)
    private.mkdir(mode=0o700)
    os.chown(private, 65533, 65533)
    links = {"into-root-only": root_only, "into-private": private / "keys", "dangling": "/nonexistent/keys"}
    for name, target in links.items():
        os.symlink(target, reachable / name)
        os.lchown(reachable / name, 65534, 65534)
        done = as_root("generate", "--dir", str(reachable / name))
        assert done.returncode == 2 and REFUSED in done.stderr, (name, done.stderr)
    assert os.listdir(root_only) == [] and os.listdir(private) == [] and not os.path.exists("/nonexistent")


@ROOT_ONLY
def test_root_refuses_a_root_owned_key_directory_that_others_could_redirect(keys, tmp_path):
    """Whoever may change a directory on the way could swap what the path names between root's check and
    its writes; a path that is root's alone all the way is resolved once and used."""
    os.chmod(tmp_path, 0o755)
    mine, theirs, shared = (tmp_path / name for name in ("mine", "theirs", "shared"))
    for parent in (mine, theirs, shared):
        parent.mkdir()
        (parent / "keys").mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    os.chmod(shared, 0o777)  # not sticky: anyone may rename what is in it
    for refused in (theirs / "keys", shared / "keys", shared / "new-keys"):
        code, _, err = keys("list", "--dir", str(refused))
        assert code == 2 and REFUSED in err, refused
    (tmp_path / "link").symlink_to(mine)
    assert keys("list", "--dir", str(tmp_path / "link" / "keys"))[0] == 0
    os.chmod(shared, 0o1777)  # sticky, as /tmp: only the owner renames its entries
    assert keys("list", "--dir", str(shared / "keys"))[0] == 0
    code, _, err = keys("generate", "--dir", str(shared / "new-keys"))  # but anyone may add one first
    assert code == 2 and "as root" in err and not (shared / "new-keys").exists()


def key_starting_with_a_dash(keys):
    """Generate next keys until one's kid starts with '-' (one in 64 does); return that kid."""
    for _ in range(2000):
        kid = keys("generate")[1].strip()
        if kid.startswith("-"):
            return kid
    raise AssertionError("no kid started with '-' in 2000 keys")


@pytest.mark.parametrize("command", ["retire", "revoke"])
def test_kid_that_starts_with_a_dash_is_taken_as_typed(keys, command):
    keys("generate")
    kid = key_starting_with_a_dash(keys)
    code, out, err = keys(command, kid, "--force") if command == "retire" else keys(command, kid)
    assert code == 0, err
    assert f"{kid} is {command}d" in out
    assert {r["kid"]: r["state"] for r in records(keys.directory)}[kid] == f"{command}d"


def test_rotate_schedules_the_switch_after_the_propagation_bound(keys, monkeypatch):
    monkeypatch.setenv("CONCURRENCY_KEYS_PROPAGATION", "100")
    monkeypatch.setenv("CONCURRENCY_KEYS_RELOAD", "2")
    keys("generate")
    before = time.time()
    code, out, _ = keys("rotate", "--force")
    after = time.time()
    (active,) = [r for r in records(keys.directory) if r["state"] == "active"]
    assert code == 0 and f"{active['kid']} signs from" in out
    assert before + 103 <= active["times"]["active"] <= after + 103  # propagation + reload + 1 s margin


def test_maintain_does_what_is_due_and_nothing_more(keys, monkeypatch):
    code, out, _ = keys("maintain")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].startswith("made active key") and lines[1].startswith("made next key")
    active, nxt = records(keys.directory)
    waits = f"{nxt['kid']} becomes active at the first `keys maintain` after"
    assert lines[2] == f"{waits} {at(active['created'] + 30 * 86400)}"  # the default --rotate-after, 30d
    code, out, _ = keys("maintain", "--rotate-after", "12h")
    assert code == 0 and out == f"{waits} {at(active['created'] + 43200)}\n"
    monkeypatch.setenv("CONCURRENCY_JWKS_MAX_AGE", "0")
    code, out, _ = keys("maintain", "--rotate-after", "0.001s")
    assert code == 0 and f"{nxt['kid']} signs from" in out and f"{active['kid']} is retiring" in out
    assert [r["state"] for r in records(keys.directory)] == ["retiring", "active", "next"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 2592000), ("12h", 43200), ("90m", 5400), ("3600s", 3600), ("1.5", 1.5)]
)
def test_durations(text, seconds):
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-1d", "1w", "d", "infd", "nan", "12 hours"])
def test_bad_durations_are_refused(keys, capsys, text):
    with pytest.raises(SystemExit) as exited:
        keys("maintain", f"--rotate-after={text}")
    assert exited.value.code == 2
    assert "is not a duration such as 30d" in capsys.readouterr().err
    assert not os.path.exists(keys.directory)
