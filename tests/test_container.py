"""The container image: built by scripts/build-image (podman), run from a read-only root as uid 10001 against
a real redis-server on the host, stopped with SIGTERM; and infra/compose.yaml checked against the image."""

import contextlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from processes import RedisServer, free_port, request, wait_until

from api.config import Config

pytestmark = pytest.mark.container

ROOT = pathlib.Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("CONCURRENCY_TEST_IMAGE", "localhost/concurrency-service:test")
SERVICE_UID = 10001
STOP_TIMEOUT_S = 10


def podman(*args, check=True, timeout=120):
    """Run `podman ARGS`; return the completed process (text output)."""
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


@pytest.fixture(scope="session")
def image():
    """Build the image with scripts/build-image; remove it (and its build-stage layers) afterwards."""
    start = time.monotonic()
    subprocess.run([str(ROOT / "scripts" / "build-image"), "--tag", IMAGE], check=True, timeout=1200)
    print(f"\ntest_container: scripts/build-image took {time.monotonic() - start:.1f} s")
    yield IMAGE
    if os.environ.get("KEEP_IMAGE"):
        return
    podman("rmi", "--force", IMAGE, check=False)
    # The build stage's layers are no part of any tagged image now; its LABEL names them.
    podman("image", "prune", "--force", "--filter", "label=concurrency-service.stage=build", check=False)


@pytest.fixture
def keys_volume(tmp_path):
    """A key directory made by the CLI, owned by the image's user (the service refuses keys others read)."""
    directory = tmp_path / "keys"
    cli = pathlib.Path(sys.executable).with_name("concurrency-service")
    subprocess.run([str(cli), "keys", "generate", "--dir", str(directory)], check=True, capture_output=True)
    if os.geteuid() == 0:  # rootful podman: uid 10001 inside is uid 10001 here
        for path in [directory, *directory.iterdir()]:
            os.chown(path, SERVICE_UID, SERVICE_UID)
    else:  # rootless podman: the container's uid 10001 is a subordinate id of ours
        podman("unshare", "chown", "-R", f"{SERVICE_UID}:{SERVICE_UID}", str(directory))
    return directory


class Container:
    """A detached `podman run` of the image; removed (forcibly) by `remove`."""

    def __init__(self, image, *args, options=()):
        self.name = f"concurrency-test-{uuid.uuid4().hex[:12]}"
        podman("run", "--detach", "--name", self.name, *options, image, *args)

    def exec(self, *command, check=True):
        return podman("exec", self.name, *command, check=check)

    def inspect(self):
        return json.loads(podman("container", "inspect", self.name).stdout)[0]

    def logs(self):
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self):
        podman("rm", "--force", "--time", "0", self.name, check=False)


def _answers(port, path):
    try:
        return request(port, "GET", path, timeout_s=2).status == 200
    except OSError:
        return False


@pytest.mark.parametrize("server", ["asyncio", "granian", "gunicorn"])
def test_serves_from_read_only_root_as_non_root_and_stops_on_sigterm(image, keys_volume, tmp_path, server):
    redis_server = RedisServer(tmp_path)
    port = free_port()
    options = [
        "--network=host",
        "--read-only",
        "--read-only-tmpfs=false",  # only the /tmp below is writable: no /run, /var/tmp
        "--tmpfs=/tmp:rw,mode=1777,size=64m",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        f"--volume={keys_volume}:/keys:ro",
        f"--env=CONCURRENCY_REDIS_URL={redis_server.url}",
        f"--env=HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz",
        f"--stop-timeout={STOP_TIMEOUT_S}",
    ]
    bind = ["serve", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--server", server]
    container = Container(image, *bind, options=options)
    try:
        try:
            wait_until(
                lambda: _answers(port, "/readyz"), timeout_s=60, what=f"/readyz of {server} in the container"
            )
        except AssertionError:
            raise AssertionError(f"the container never became ready; its log:\n{container.logs()}") from None

        started = request(port, "POST", "/v1/sessions", {"userId": "u1", "deviceId": "d1", "streamId": "s1"})
        assert started.status == 201, started.body
        session = started.json()
        assert session["token"]
        beat = request(
            port,
            "PUT",
            f"/v1/sessions/{session['sessionId']}",
            headers={"Authorization": f"Bearer {session['token']}"},
        )
        assert beat.status == 200, beat.body
        assert beat.json()["token"] and beat.json()["token"] != session["token"]

        # Every process in the container runs as the image's user, none as root.
        assert container.exec("id", "-u").stdout.strip() == str(SERVICE_UID)
        uids = container.exec("sh", "-c", "grep -h '^Uid:' /proc/[0-9]*/status").stdout.split("\n")
        assert uids and all(line.split()[1:] == [str(SERVICE_UID)] * 4 for line in filter(None, uids)), uids

        # Read-only root: the service runs, writing only its metrics directory under /tmp.
        assert container.inspect()["HostConfig"]["ReadonlyRootfs"] is True
        denied = container.exec("sh", "-c", "touch /opt/venv/probe || touch /probe", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied
        assert re.search(r"concurrency-metrics-", container.exec("ls", "/tmp").stdout)

        # The image's HEALTHCHECK (python urllib, no curl), run on demand: no systemd timer here.
        health = podman("healthcheck", "run", container.name, check=False)
        assert health.returncode == 0, health
        state = container.inspect()["State"]
        assert (state.get("Health") or state.get("Healthcheck"))["Status"] == "healthy"

        start = time.monotonic()
        podman("stop", "--time", str(STOP_TIMEOUT_S), container.name, timeout=STOP_TIMEOUT_S + 30)
        stop_s = time.monotonic() - start
        state = container.inspect()["State"]
        print(
            f"\ntest_container: {server} stopped by SIGTERM in {stop_s:.2f} s, exit code {state['ExitCode']}"
        )
        print("".join(f"  | {line}\n" for line in container.logs().splitlines()[-6:]))
        assert state["ExitCode"] == 0, f"{server} exited {state['ExitCode']} on SIGTERM:\n{container.logs()}"
        assert stop_s < STOP_TIMEOUT_S, f"{server} took {stop_s:.1f} s: it was killed, not stopped by SIGTERM"
    finally:
        container.remove()
        redis_server.stop()


def test_final_image_has_no_build_tools_sources_or_keys(image):
    script = """
        for tool in gcc cc c++ make; do command -v "$tool" && echo "found $tool"; done
        [ ! -e /opt/venv/bin/pip ] || echo "pip in the virtualenv"
        [ ! -e /src ] || echo "build sources in /src"
        [ -z "$(ls -A /keys)" ] || echo "files in /keys"
        find / -xdev \\( -name '*.pem' -o -name '*.key' -o -name keys.json \\) -type f \
            -exec grep -l 'PRIVATE KEY' {} + 2>/dev/null | sed 's/^/private key: /'
        true
    """
    found = podman("run", "--rm", "--network=none", "--user=0", "--entrypoint=sh", image, "-c", script)
    assert found.stdout.strip() == "", found.stdout


def test_image_metadata(image):
    details = json.loads(podman("image", "inspect", image).stdout)[0]
    config = details["Config"]
    assert config["User"].split(":")[0] == str(SERVICE_UID)
    assert config["Entrypoint"] == ["concurrency-service"]
    assert config["Cmd"] == ["serve", "--bind", "0.0.0.0:8000"]
    assert "8000/tcp" in config["ExposedPorts"]
    assert config["StopSignal"] == "SIGTERM"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["CONCURRENCY_KEYS_DIR"] == "/keys"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HEALTHCHECK_URL"] == "http://127.0.0.1:8000/healthz"
    healthcheck = details.get("Healthcheck") or config.get("Healthcheck")
    assert healthcheck["Test"][:2] == ["CMD", "python3"] and "urllib" in healthcheck["Test"][-1]
    assert "concurrency-service.stage" not in (config.get("Labels") or {}), "build-stage label leaked"


# Variables the service reads besides Config's fields, and the image's own.
OTHER_ENV = {
    "CONCURRENCY_ALLOW_ANONYMOUS",
    "CONCURRENCY_KEYS_RELOAD",
    "CONCURRENCY_SIGNING_KEY_PEM",
    "HEALTHCHECK_URL",
}


def _mount(volume):
    """Split a compose short-syntax volume SOURCE:TARGET[:MODE]; SOURCE may hold ${VAR:-default}."""
    source, _, rest = volume.rpartition(":/")
    target, _, mode = f"/{rest}".partition(":")
    return source, target, mode or "rw"


def test_compose_file_is_consistent_with_the_image():
    path = ROOT / "infra" / "compose.yaml"
    compose = yaml.safe_load(path.read_text())
    services = compose["services"]
    image_ref = re.compile(r"^(\$\{CONCURRENCY_IMAGE:-)?localhost/concurrency-service:test\}?$")
    replicas = {name: s for name, s in services.items() if image_ref.match(s.get("image", ""))}
    assert len(replicas) >= 2, f"two replicas of the image expected, found {sorted(replicas)}"
    assert "redis" in services and "redis" in services["redis"]["image"]

    known_env = {Config.env_name(field) for field in Config.__dataclass_fields__} | OTHER_ENV
    key_sources = set()
    for name, replica in replicas.items():
        env = replica["environment"]
        assert set(env) <= known_env, f"{name}: unknown variables {set(env) - known_env}"
        assert env["CONCURRENCY_REDIS_URL"].startswith("redis://redis:"), name
        assert env.get("CONCURRENCY_KEYS_DIR", "/keys") == "/keys", name
        assert env.get("HEALTHCHECK_URL", "http://127.0.0.1:8000/healthz").endswith(":8000/healthz"), name
        command = replica.get("command", ["serve", "--bind", "0.0.0.0:8000"])
        assert command[0] == "serve" and command[command.index("--bind") + 1] == "0.0.0.0:8000", name
        assert all(port.endswith(":8000") for port in replica.get("ports", [])), name
        keys = [(src, mode) for src, target, mode in map(_mount, replica["volumes"]) if target == "/keys"]
        assert len(keys) == 1 and keys[0][1] == "ro", f"{name}: mount the key directory read-only at /keys"
        key_sources.add(keys[0][0])
        assert replica["read_only"] is True and "/tmp" in replica["tmpfs"], name
        user = str(replica.get("user", SERVICE_UID))
        assert re.fullmatch(rf"(\$\{{\w+:-)?{SERVICE_UID}\}}?", user), (
            f"{name}: runs as {user}, not the image's user"
        )
    assert len(key_sources) == 1, f"all replicas must read one key directory, not {key_sources}"

    balancers = [s for s in services.values() if re.search(r"haproxy|nginx", s.get("image", ""))]
    assert len(balancers) == 1
    balancer = balancers[0]
    assert set(replicas) <= set(balancer["depends_on"])
    for source, _, _ in map(_mount, balancer["volumes"]):
        assert (path.parent / source).is_file(), f"the balancer mounts {source}, which is missing"
    haproxy_cfg = (path.parent / "haproxy.cfg").read_text()
    for name in replicas:
        assert re.search(rf"^\s*server\s+\S+\s+{re.escape(name)}:8000\b", haproxy_cfg, re.M), name
    assert "/readyz" in haproxy_cfg

    # A real parser, where there is one: `podman compose` (podman >= 4.7), haproxy's own check.
    if shutil.which("podman") and podman("compose", "version", check=False).returncode == 0:
        with contextlib.chdir(path.parent):
            podman("compose", "-f", str(path), "config")
    if shutil.which("haproxy"):
        subprocess.run(
            ["haproxy", "-c", "-f", str(path.parent / "haproxy.cfg")], check=True, capture_output=True
        )
