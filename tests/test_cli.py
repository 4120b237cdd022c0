"""`concurrency-service serve`: what it refuses to start with, and says so in one line."""

import pytest
from players import CALLER_NAME, CALLER_SECRET
from processes import ServerProcess

from api.cli import main


@pytest.fixture
def anonymous(monkeypatch, keys_dir):
    for name in (
        "CONCURRENCY_USER_JWKS",
        "CONCURRENCY_CALLERS",
        "CONCURRENCY_AUTH",
        "CONCURRENCY_ALLOW_ANONYMOUS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONCURRENCY_KEYS_DIR", keys_dir)


@pytest.mark.parametrize("bind", ["0.0.0.0:8000", "10.1.2.3:8000", "[::]:8000", "example.com:8000"])
def test_anonymous_mode_refuses_a_non_loopback_address(anonymous, capsys, bind):
    assert main(["serve", "--bind", bind]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"refusing to serve anonymous callers on {bind}" in err and "CONCURRENCY_ALLOW_ANONYMOUS" in err


def test_serve_refuses_without_a_key_and_says_how_to_make_one(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CONCURRENCY_KEYS_DIR", str(tmp_path))
    assert main(["serve"]) == 2
    assert f"concurrency-service keys generate --dir {tmp_path}" in capsys.readouterr().err


@pytest.mark.http
@pytest.mark.parametrize(
    "env",
    [{"allow_anonymous": "true"}, {"callers": f"{CALLER_NAME}:{CALLER_SECRET}"}],
    ids=["anonymous-allowed", "trusted-callers"],
)
def test_a_non_loopback_address_serves_when_allowed_or_authenticated(redis_server, keys_dir, env):
    server = ServerProcess(redis_server.url, keys_dir, host="0.0.0.0", **env)
    try:
        ready = server.request("GET", "/readyz")
        assert ready.status == 200, server.output()
        assert ready.json()["callers"] == (["anonymous"] if "allow_anonymous" in env else ["trusted-caller"])
    finally:
        server.stop()
