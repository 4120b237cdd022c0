"""Schemathesis, every check, against docs/openapi.yaml and the real server: 0 failures.

The document describes every caller mode; a body that one mode requires (`userId` in anonymous mode) is
optional in another (user tokens). Each run specializes the document to the server's mode, as the
document says of it, and leaves the rest as is. The management routes run with the admin secret."""

import pathlib
import subprocess
import sys

import pytest
import yaml
from processes import ServerProcess

pytestmark = [pytest.mark.http, pytest.mark.redis]

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "openapi.yaml"
ADMIN = "schemathesis-admin-secret"
EXAMPLES = 25
# Schemathesis's own list for invalid input, and 413.
NEGATIVE_DATA_STATUSES = (400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5xx")


@pytest.fixture(scope="module")
def anonymous_server(redis_server, keys_dir):
    process = ServerProcess(redis_server.url, keys_dir, admin_token=ADMIN)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def anonymous_doc(tmp_path_factory):
    """The document as it holds for an anonymous server: the start body is StartRequest."""
    doc = yaml.safe_load(DOC.read_text())
    doc["components"]["requestBodies"]["Start"]["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/StartRequest"
    }
    path = tmp_path_factory.mktemp("schemathesis") / "openapi.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    # Schemathesis reads this from the directory it runs in. An invalid body may also be too large: the
    # server refuses that with 413 before parsing it, as the document says.
    statuses = ", ".join(f'"{status}"' for status in NEGATIVE_DATA_STATUSES)
    (path.parent / "schemathesis.toml").write_text(
        f"[checks.negative_data_rejection]\nexpected-statuses = [{statuses}]\n"
    )
    return path


def schemathesis(doc, server, *options):
    command = [sys.executable, "-m", "schemathesis.cli", "run", str(doc), "--url", server.url]
    command += ["--checks", "all", "--max-examples", str(EXAMPLES), "--generation-deterministic", *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=doc.parent)
    summary = done.stdout[done.stdout.rfind("SUMMARY") :]
    print(f"\n[schemathesis {' '.join(options)}]\n{summary}")
    return done, summary


@pytest.mark.parametrize(
    "scope, options",
    [
        ("player and operations routes", ("--exclude-path-regex", "^/v1/users")),
        (
            "management routes",
            ("--include-path-regex", "^/v1/users", "--header", f"Authorization: Bearer {ADMIN}"),
        ),
    ],
)
def test_schemathesis_finds_nothing(anonymous_server, anonymous_doc, scope, options):
    done, summary = schemathesis(anonymous_doc, anonymous_server, *options)
    assert done.returncode == 0, done.stdout[-6000:]
    assert "Tested:" in summary and "failures" not in summary.replace("0 failures", ""), summary
    assert (
        "Internal Server Error" not in anonymous_server.output()
        and "Traceback" not in anonymous_server.output()
    )
