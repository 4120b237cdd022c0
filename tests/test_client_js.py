"""The player module (clients/js/concurrency.js) against the real server: in headless Chromium and in Node.

The browser loads clients/js/test/browser.html from a small server of the test's own that also forwards
`/v1/*` to the service, so that the page and the service share one origin (the service sends no CORS
headers). Playwright drives Debian's chromium (scripts/ensure-browser installs it). The same scenarios run
under Node's test runner (clients/js/test/*.test.mjs), with the servers' addresses in the environment.
"""

import http.server
import mimetypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from players import admitted, assert_gone, bearer, heartbeat, new_user, session_claims, start, stop
from processes import RedisServer, ServerProcess, request, wait_until

pytestmark = [pytest.mark.http, pytest.mark.redis, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = ROOT / "clients" / "js"
ADMIN = "admin-" + secrets.token_urlsafe(24)
TTL_S = 4  # short, so that heartbeats come every ~2 s
FRAGILE_TTL_S = 10  # the Redis pause must fit in one token's lifetime
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TAP_SUMMARY = re.compile(r"^# (tests|pass|fail|skipped|cancelled|todo|duration_ms) ([\d.]+)$", re.MULTILINE)
FORWARDED_REQUEST_HEADERS = ("content-type", "authorization", "accept", "x-request-id")
FORWARDED_ANSWER_HEADERS = ("content-type", "retry-after", "www-authenticate", "location", "x-request-id")


class SameOriginServer:
    """Serves clients/js (the module and the test page) and forwards `/v1/*` to the service.

    Every forwarded call is recorded in `calls` (method, path, Authorization, status, answered token)."""

    def __init__(self, upstream_port, pages=None):
        self.calls = []
        pages = pages or {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                if path.startswith("/v1/"):
                    self._forward()
                elif path == "/blank":
                    self._send(200, {"Content-Type": "text/html"}, b"<!doctype html><title>elsewhere</title>")
                elif path in pages:
                    self._send(200, {"Content-Type": "text/html", "Cache-Control": "no-store"}, pages[path])
                else:
                    self._static(path)

            def do_POST(self):
                self._forward()

            def do_PUT(self):
                self._forward()

            def do_DELETE(self):
                self._forward()

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED_REQUEST_HEADERS}
                answer = request(upstream_port, self.command, self.path, body, headers)
                token = None
                if answer.status in (200, 201):
                    token = answer.json().get("token")
                owner.calls.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "authorization": self.headers.get("Authorization"),
                        "status": answer.status,
                        "token": token,
                        "at": time.monotonic(),
                    }
                )
                kept = {k: v for k, v in answer.headers.items() if k in FORWARDED_ANSWER_HEADERS}
                self._send(answer.status, kept, answer.body)

            def _static(self, path):
                file = (CLIENT_DIR / path.lstrip("/")).resolve()
                served = file.is_relative_to(CLIENT_DIR) and file.suffix in (".js", ".html")
                if not (served and file.is_file()):
                    self._send(404, {"Content-Type": "text/plain"}, b"not found")
                    return
                kind = "text/javascript" if file.suffix == ".js" else mimetypes.guess_type(file.name)[0]
                self._send(200, {"Content-Type": kind, "Cache-Control": "no-store"}, file.read_bytes())

            def _send(self, status, headers, body):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="same-origin", daemon=True)
        self._thread.start()

    def calls_of(self, session_id):
        return [c for c in self.calls if c["path"] == f"/v1/sessions/{session_id}"]

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


# --- servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(redis_server, keys_dir):
    """Short tokens, an admin secret for kicks, one stream per account."""
    process = ServerProcess(redis_server.url, keys_dir, session_ttl_s=TTL_S, admin_token=ADMIN, max_streams=1)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def fragile(tmp_path_factory, keys_dir):
    """A service on a Redis of its own, which the tests pause; short Redis timeouts."""
    redis = RedisServer(tmp_path_factory.mktemp("fragile-redis"))
    try:
        process = ServerProcess(redis.url, keys_dir, session_ttl_s=FRAGILE_TTL_S, redis_timeout_s=0.2)
        process.redis = redis
        yield process
        process.stop()
    finally:
        redis.stop()  # also lets a paused redis-server go on (SIGCONT) before stopping it


# --- the browser ----------------------------------------------------------------------------------


def ensure_chromium():
    """Return the path of Debian's chromium, installing it (scripts/ensure-browser) when it is missing."""
    if not os.access("/usr/bin/chromium", os.X_OK):
        subprocess.run([str(ROOT / "scripts" / "ensure-browser")], check=True, timeout=600)
    return "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium with a fresh profile, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS
        )
        yield context
        context.close()


@pytest.fixture
def open_page(browser):
    """Return open(origin): a page of the harness served by that SameOriginServer; closed after the test."""
    pages = []

    def open_(origin, path="/test/browser.html", ready="window.harnessReady === true"):
        page = browser.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(origin.url + path)
        page.wait_for_function(ready, timeout=10_000)
        pages.append(page)
        return page

    yield open_
    for page in pages:
        errors = page.errors
        if not page.is_closed():
            page.close()
        assert errors == [], errors


def integration_page():
    """The complete minimal page of docs/integration.md (its one html block)."""
    [html] = re.findall(r"^```html\n(.*?)^```$", (ROOT / "docs" / "integration.md").read_text(), re.M | re.S)
    return html.encode()


@pytest.fixture(scope="module")
def origin(service):
    server = SameOriginServer(service.port, pages={"/example.html": integration_page()})
    yield server
    server.close()


@pytest.fixture(scope="module")
def fragile_origin(fragile):
    server = SameOriginServer(fragile.port)
    yield server
    server.close()


def start_in(page, user, device="tv", stream="match-42"):
    ids = {"userId": user, "deviceId": device, "streamId": stream}
    return page.evaluate("(r) => window.startSession(r)", ids)


def started_in(page, user, **kwargs):
    answer = start_in(page, user, **kwargs)
    assert "error" not in answer, answer
    return answer


def events(page, sid, kind=None):
    logged = page.evaluate("(id) => window.sessionEvents(id)", sid)
    return [e for e in logged if kind is None or e["type"] == kind]


def wait_for_events(page, sid, kind, count, timeout_s):
    page.wait_for_function(
        "([id, kind, n]) => window.sessionEvents(id).filter((e) => e.type === kind).length >= n",
        arg=[sid, kind, count],
        timeout=timeout_s * 1000,
    )
    return events(page, sid, kind)


# --- browser scenarios ----------------------------------------------------------------------------


def test_browser_start_answers_a_verifiable_session_token(service, origin, open_page):
    page = open_page(origin)
    user = new_user("js")
    answer = started_in(page, user)
    assert answer["status"] == "initiated"
    assert answer["expiresIn"] == TTL_S
    claims = session_claims(service, answer["token"])
    assert (claims["sid"], claims["sub"], claims["device"], claims["stream"]) == (
        answer["id"],
        user,
        "tv",
        "match-42",
    )
    [call] = [c for c in origin.calls if c["token"] == answer["token"]]
    assert (call["method"], call["status"], call["authorization"]) == ("POST", 201, None)
    assert page.evaluate("(id) => window.stopSession(id)", answer["id"]) is True
    assert_gone(heartbeat(service, answer["id"], answer["token"]), "stopped")
    assert [e["detail"] for e in events(page, answer["id"])] == [{"reason": "stopped"}]


def test_browser_token_chain_over_heartbeats(service, origin, open_page):
    page = open_page(origin)
    answer = started_in(page, new_user("js"))
    sid = answer["id"]
    for count in (1, 2, 3):
        tokens = wait_for_events(page, sid, "token", count, timeout_s=TTL_S)
        event = tokens[-1]
        assert event["current"] == event["detail"]["token"], "the session's token is the event's token"
        assert event["detail"]["expiresIn"] == TTL_S
        assert event["detail"]["sessionId"] == sid
        # Verified at once, as a CDN would, before this short-lived token expires.
        assert session_claims(service, event["detail"]["token"])["sid"] == sid
    issued = [answer["token"]] + [e["detail"]["token"] for e in tokens]
    assert len(set(issued)) == len(issued), "every heartbeat answers a fresh token"
    beats = [c for c in origin.calls_of(sid) if c["method"] == "PUT"][:3]
    # Each heartbeat carried the token the answer before it gave, one at a time, well inside its lifetime.
    assert [c["authorization"] for c in beats] == [f"Bearer {t}" for t in issued[:3]]
    assert [c["token"] for c in beats] == issued[1:4]
    assert all(c["status"] == 200 for c in beats)
    start_call = next(c for c in origin.calls if c["token"] == answer["token"])
    gaps = [b["at"] - a["at"] for a, b in zip([start_call, *beats], beats, strict=False)]
    assert all(0.3 * TTL_S < gap < TTL_S for gap in gaps), gaps
    assert events(page, sid, "ended") == []
    page.evaluate("(id) => window.stopSession(id)", sid)


def test_browser_kick_ends_the_session(service, origin, open_page):
    page = open_page(origin)
    user = new_user("js")
    sid = started_in(page, user)["id"]
    kicked = service.request("DELETE", f"/v1/users/{user}/sessions/{sid}", headers=bearer(ADMIN))
    assert kicked.status == 204, kicked.body
    [ended] = wait_for_events(page, sid, "ended", 1, timeout_s=2 * TTL_S)
    assert ended["detail"]["reason"] == "kicked"
    assert ended["detail"]["error"]["status"] == 410
    assert page.evaluate("(id) => window.sessionState(id)", sid)["endReason"] == "kicked"
    calls = len(origin.calls_of(sid))
    time.sleep(TTL_S / 2 + 0.5)
    assert len(origin.calls_of(sid)) == calls, "no heartbeat after the end"


def test_browser_limit_rejects_with_limit_reached_error(service, origin, open_page):
    page = open_page(origin)
    user = new_user("js")
    first = started_in(page, user, device="tv")
    refused = start_in(page, user, device="phone")
    error = refused["error"]
    assert error["name"] == "LimitReachedError"
    assert error["isLimitReachedError"] and error["isConcurrencyError"]
    assert (error["status"], error["code"]) == (403, "limit_reached")
    assert (error["limit"], error["scope"]) == (1, "account")
    assert error["sessions"] is None or isinstance(error["sessions"], list)
    page.evaluate("(id) => window.stopSession(id)", first["id"])


def test_browser_survives_a_redis_hang_through_backoff(fragile, fragile_origin, open_page):
    page = open_page(fragile_origin)
    sid = started_in(page, new_user("js"))["id"]
    fragile.redis.signal(signal.SIGSTOP)  # hung until the player has met it: however slow the machine
    try:
        wait_for_events(page, sid, "retry", 1, timeout_s=FRAGILE_TTL_S)
        time.sleep(1.0)  # it backs off, and may retry into the hang again
    finally:
        fragile.redis.signal(signal.SIGCONT)
    [after] = wait_for_events(page, sid, "token", 1, timeout_s=FRAGILE_TTL_S)
    retries = events(page, sid, "retry")
    assert {r["detail"]["error"]["code"] for r in retries} <= {"store_unavailable", "timeout"}
    assert any(r["detail"]["error"]["retryAfterMs"] == 1000 for r in retries)
    assert events(page, sid, "ended") == []
    state = page.evaluate("(id) => window.sessionState(id)", sid)
    assert state["active"] and state["token"] == after["detail"]["token"]
    statuses = [c["status"] for c in fragile_origin.calls_of(sid)]
    assert 503 in statuses and statuses[-1] == 200, statuses
    page.evaluate("(id) => window.stopSession(id)", sid)


@pytest.mark.parametrize("leave", ["navigate", "close"])
def test_browser_stops_the_session_when_the_page_goes_away(service, origin, open_page, leave):
    page = open_page(origin)
    sid = started_in(page, new_user("js"))["id"]
    last_token = page.evaluate("(id) => window.sessionState(id)", sid)["token"]
    if leave == "navigate":
        page.goto(f"{origin.url}/blank")
    else:
        page.close(run_before_unload=True)

    def stops():
        return [c for c in origin.calls_of(sid) if c["method"] == "DELETE"]

    wait_until(stops, timeout_s=5, what="the keepalive stop")
    [stop] = stops()
    assert stop["status"] == 204
    assert_gone(heartbeat(service, sid, last_token), "stopped")


def test_browser_the_integration_guide_page_works(service, origin, open_page):
    """docs/integration.md's page: refused at the limit, plays with a live token, kicked, played, stopped."""
    user = new_user("page")
    page = open_page(
        origin, f"/example.html?user={user}", ready="typeof window.currentPlaybackToken === 'function'"
    )
    status = page.locator("#status")
    elsewhere = admitted(start(service, device="other-device", user=user))
    page.click("#play")
    page.wait_for_function("() => !document.querySelector('#play').disabled")
    # The devices are named only where the service lists the sessions holding the limit to this caller.
    assert re.fullmatch(
        r"Your account already plays 1 stream\(s\)( \(on other-device\))?\.", status.text_content()
    )
    assert stop(service, *elsewhere).status == 204

    def play():
        page.click("#play")
        page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Playing')")
        sid = re.fullmatch(r"Playing \(session (\S+)\)\.", status.text_content()).group(1)
        token = page.evaluate("window.currentPlaybackToken()")
        assert session_claims(service, token)["sid"] == sid
        return sid, token

    sid, first = play()
    page.wait_for_function("(t) => window.currentPlaybackToken() !== t", arg=first, timeout=2 * TTL_S * 1000)
    assert session_claims(service, page.evaluate("window.currentPlaybackToken()"))["sid"] == sid
    assert service.request("DELETE", f"/v1/users/{user}/sessions/{sid}", headers=bearer(ADMIN)).status == 204
    page.wait_for_function("() => !document.querySelector('#play').disabled", timeout=2 * TTL_S * 1000)
    assert status.text_content() == "Playback was stopped from your account settings."
    assert page.evaluate("window.currentPlaybackToken()") is None

    sid, token = play()
    page.click("#stop")
    page.wait_for_function("() => document.querySelector('#status').textContent === 'Stopped.'")
    wait_until(lambda: heartbeat(service, sid, token).status == 410, timeout_s=5, what="the stop")
    assert_gone(heartbeat(service, sid, token), "stopped")


# --- Node -----------------------------------------------------------------------------------------


def test_node_scenarios(service, fragile):
    """clients/js/test/*.test.mjs under Node's test runner: unit tests on fakes, real-server scenarios."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is required; scripts/test installs it")
    files = sorted(str(p.relative_to(ROOT)) for p in (CLIENT_DIR / "test").glob("*.test.mjs"))
    env = {
        **os.environ,
        "CONCURRENCY_TEST_BASE_URL": service.url,
        "CONCURRENCY_TEST_ADMIN_TOKEN": ADMIN,
        "CONCURRENCY_TEST_TTL_S": str(TTL_S),
        "CONCURRENCY_TEST_FRAGILE_URL": fragile.url,
        "CONCURRENCY_TEST_FRAGILE_TTL_S": str(FRAGILE_TTL_S),
        "CONCURRENCY_TEST_FRAGILE_REDIS_PID": str(fragile.redis.client.info("server")["process_id"]),
    }
    try:
        run = subprocess.run(
            [node, "--test", "--test-reporter=tap", *files],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        fragile.redis.signal(signal.SIGCONT)  # whatever happened to the test that paused it
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    summary = dict(TAP_SUMMARY.findall(output))
    assert summary["fail"] == summary["skipped"] == summary["cancelled"] == "0", output
    assert int(summary["pass"]) == int(summary["tests"]) >= 29, output
    print("node --test:", ", ".join(f"{k} {v}" for k, v in summary.items()))
