"""The verifier examples of examples/verify, run against the real service and its JWKS.

Three verifiers guard GET /media/STREAM/...: Python (PyJWT's PyJWKClient, verify.py), Node (`jose`,
verify.mjs) and nginx with njs (nginx/, installed from Debian by scripts/ensure-proxy). Each must let a valid
token through only for its own stream and session, refuse expired, forged, other-audience and otherwise wrong
tokens, keep the JWKS for its max-age and refetch it for an unknown kid (rate-limited), and follow a key
rotation and a revocation driven by the real CLI, without a restart. njs 0.7.9 has no Ed25519: nginx refuses
EdDSA tokens, and a test says so.
"""

import base64
import contextlib
import functools
import hashlib
import hmac
import http.server
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from players import admitted, jwks, metric_values, start, unverified_claims
from processes import ServerProcess, free_port, request, wait_until

from api.config import Config
from keys import jws
from keys.material import SigningKey, generate_private_key
from keys.records import ALGORITHMS, KeyRecord
from keys.store import KeyStore

pytestmark = [pytest.mark.http, pytest.mark.redis]

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "verify"
ISSUER, AUDIENCE = "concurrency-service", "playback"
STREAM, OTHER_STREAM = "film-a", "film-b"
JWKS_ROUTE = "/.well-known/jwks.json"
SUPPORTED = {"python": ALGORITHMS, "node": ALGORITHMS, "nginx": ("ES256", "RS256")}  # njs: no Ed25519


# --- the verifiers, as processes ------------------------------------------------------------------------


class Verifier:
    """One example verifier as a long-running process on a free loopback port."""

    kind = ""

    def __init__(self, jwks_url, workdir, refresh_interval_s=None):
        self.port = free_port()
        self.jwks_url = jwks_url
        self.refresh_interval_s = refresh_interval_s
        self.workdir = pathlib.Path(workdir)
        self.log = tempfile.NamedTemporaryFile(prefix=f"verifier-{self.kind}-", suffix=".log")  # noqa: SIM115
        self._proc = subprocess.Popen(
            self.command(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=EXAMPLES
        )
        try:
            wait_until(self._answers, timeout_s=20, what=f"the {self.kind} verifier on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def command(self):
        raise NotImplementedError

    def options(self):
        """The command-line options of the Python and Node examples."""
        options = ["--jwks-url", self.jwks_url, "--port", str(self.port)]
        if self.refresh_interval_s is not None:
            options += ["--refresh-interval", str(self.refresh_interval_s)]
        return options

    def _answers(self):
        if self._proc.poll() is not None:
            raise AssertionError(f"{self.kind} verifier exited: {self.output()}")
        try:
            return request(self.port, "GET", "/", timeout_s=1).status > 0
        except OSError:
            return False

    @property
    def pid(self):
        return self._proc.pid if self._proc.poll() is None else None

    def get(self, stream, token=None, sid=None, cookie=None, query_token=False, file="seg-1.ts"):
        """GET /media/STREAM/FILE with the token (Bearer or ?token=) and the session id (?sid= or cookie)."""
        query = {}
        headers = {}
        if token is not None and query_token:
            query["token"] = token
        elif token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if sid is not None:
            query["sid"] = sid
        if cookie is not None:
            headers["Cookie"] = f"sid={cookie}"
        path = f"/media/{urllib.parse.quote(stream, safe='')}/{file}"
        if query:
            path += "?" + urllib.parse.urlencode(query)
        return request(self.port, "GET", path, headers=headers)

    def output(self):
        with open(self.log.name, "rb") as file:
            return file.read().decode(errors="replace")

    def stop(self):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self.log.close()


class PythonVerifier(Verifier):
    kind = "python"

    def command(self):
        return [sys.executable, str(EXAMPLES / "verify.py"), *self.options()]


class NodeVerifier(Verifier):
    kind = "node"

    def command(self):
        return [shutil.which("node"), str(EXAMPLES / "verify.mjs"), *self.options()]


class NginxVerifier(Verifier):
    kind = "nginx"
    njs_module = ""  # set by the nginx_module fixture
    refresh_interval = 10  # nginx.conf: limit_req rate=6r/m

    def command(self):
        prefix = self.workdir / "nginx"
        media = prefix / "media"
        for stream in (STREAM, OTHER_STREAM):
            (media / "media" / stream).mkdir(parents=True, exist_ok=True)
            (media / "media" / stream / "seg-1.ts").write_text(f"segment 1 of {stream}\n")
        values = {
            "NJS_MODULE": self.njs_module,
            "PREFIX": str(prefix),
            "LISTEN": f"127.0.0.1:{self.port}",
            "JWKS_URL": self.jwks_url,
            "SCRIPT_DIR": str(EXAMPLES / "nginx"),
            "MEDIA_ROOT": str(media),
            "ISSUER": ISSUER,
            "AUDIENCE": AUDIENCE,
        }
        config = (EXAMPLES / "nginx" / "nginx.conf").read_text()
        for name, value in values.items():
            config = config.replace("${" + name + "}", value)
        assert not any("${" + name + "}" in config for name in values)
        if os.geteuid() == 0:  # workers would run as nobody, who cannot enter pytest's private temp dirs
            config = "user root;\n" + config
        (prefix / "nginx.conf").write_text(config)
        return [
            shutil.which("nginx") or "/usr/sbin/nginx",
            "-p",
            str(prefix),
            "-c",
            "nginx.conf",
            "-e",
            "stderr",
        ]


VERIFIERS = {"python": PythonVerifier, "node": NodeVerifier, "nginx": NginxVerifier}


@pytest.fixture(scope="session")
def node_modules():
    """Install `jose` into examples/verify from its package-lock.json when missing (as test_interop does)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are required for the Node verifier; scripts/test installs them")
    if not (EXAMPLES / "node_modules" / "jose").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=EXAMPLES, check=True, timeout=300
        )


@pytest.fixture(scope="session")
def nginx_module():
    """Install nginx and njs from Debian when missing (scripts/ensure-proxy); return the module's path."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-proxy")], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    NginxVerifier.njs_module = done.stdout.strip().splitlines()[-1]
    return NginxVerifier.njs_module


def start_verifier(kind, jwks_url, workdir, request, **options):
    """Start the verifier of `kind`, installing what it needs first."""
    request.getfixturevalue({"python": "redis_server", "node": "node_modules", "nginx": "nginx_module"}[kind])
    return VERIFIERS[kind](jwks_url, workdir, **options)


# --- the service, and tokens of every kind ---------------------------------------------------------------


class Service:
    """The real service over one key directory, and the means to sign tokens as it (or as a forger) would."""

    def __init__(self, redis_url, directory, **settings):
        self.directory = directory
        self.server = ServerProcess(redis_url, directory, workers=1, threads=2, **settings)
        self.jwks_url = f"{self.server.url}{JWKS_ROUTE}"

    def session(self, stream=STREAM):
        """Start a session; return (sessionId, token)."""
        user = f"verify-{uuid.uuid4().hex[:12]}"
        return admitted(start(self.server, user=user, device="tv", stream=stream))

    def active_key(self):
        return next(k for k in KeyStore(self.directory).load() if k.state == "active")

    def jwks_fetches(self):
        """How many JWKS requests the service has answered (its request-latency histogram's count)."""
        values = metric_values(self.server)
        return sum(
            value
            for (name, labels), value in values.items()
            if name == "concurrency_request_seconds_count" and dict(labels).get("route") == JWKS_ROUTE
        )

    def stop(self):
        self.server.stop()


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode(value):
    return b64(json.dumps(value, separators=(",", ":")).encode())


def signed(key, claims, header=None):
    """A compact JWS of `claims` with `header` (ours by default), signed by `key` (a SigningKey)."""
    header = header if header is not None else {"alg": key.alg, "kid": key.kid, "typ": jws.TOKEN_TYPE}
    signing_input = f"{encode(header)}.{encode(claims)}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


@functools.cache
def unpublished_key(alg):
    return generate_private_key(alg)


def impostor(kid, alg):
    """A key nobody published (one per algorithm, made once), under `kid`."""
    return SigningKey(KeyRecord(kid, alg, "active", time.time(), {}), unpublished_key(alg))


def public_pem(key):
    return key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hs256_with_public_key(key, claims):
    """The alg-confusion forgery: HS256 with our public key (PEM) as the HMAC secret."""
    signing_input = f"{encode({'alg': 'HS256', 'kid': key.kid, 'typ': jws.TOKEN_TYPE})}.{encode(claims)}"
    mac = hmac.new(public_pem(key), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def other_alg(alg):
    return next(a for a in ("ES256", "RS256", "EdDSA", "ES384") if a != alg)


# Each case makes a token from a genuine one (its claims, the service's active key) and names the answer.
def _case(status, make):
    return {"status": status, "make": make}


def _resigned(**changes):
    return lambda key, claims, token: signed(key, {**claims, **changes})


CASES = {
    "genuine": _case(200, lambda key, claims, token: token),
    "re-signed by the service's key": _case(200, lambda key, claims, token: signed(key, claims)),
    "expired a moment ago, within the leeway": _case(
        200, lambda key, claims, token: signed(key, {**claims, "exp": int(time.time()) - 1})
    ),
    "expired": _case(401, lambda key, claims, token: signed(key, {**claims, "exp": int(time.time()) - 60})),
    "issued in the future": _case(
        401, lambda key, claims, token: signed(key, {**claims, "iat": time.time() + 120})
    ),
    "other audience": _case(401, _resigned(aud="licence")),
    "audience list without ours": _case(401, _resigned(aud=["licence", "ads"])),
    "audience list with ours": _case(401, _resigned(aud=["playback", "ads"])),  # we write one string
    "other issuer": _case(401, _resigned(iss="concurrency-service-staging")),
    "no sid claim": _case(
        401, lambda key, claims, token: signed(key, {k: v for k, v in claims.items() if k != "sid"})
    ),
    "no exp claim": _case(
        401, lambda key, claims, token: signed(key, {k: v for k, v in claims.items() if k != "exp"})
    ),
    # times are numbers: PyJWT alone would read these with int()
    "exp a numeric string": _case(
        401, lambda key, claims, token: signed(key, {**claims, "exp": str(claims["exp"])})
    ),
    "iat a numeric string": _case(
        401, lambda key, claims, token: signed(key, {**claims, "iat": str(claims["iat"])})
    ),
    "typ JWT": _case(
        401, lambda key, claims, token: signed(key, claims, {"alg": key.alg, "kid": key.kid, "typ": "JWT"})
    ),
    # exactly session+jwt: jose's own typ check would lower-case it and take a media type's "application/"
    "typ application/session+jwt": _case(
        401,
        lambda key, claims, token: signed(
            key, claims, {"alg": key.alg, "kid": key.kid, "typ": "application/session+jwt"}
        ),
    ),
    "typ SESSION+JWT": _case(
        401,
        lambda key, claims, token: signed(
            key, claims, {"alg": key.alg, "kid": key.kid, "typ": "SESSION+JWT"}
        ),
    ),
    "no typ": _case(401, lambda key, claims, token: signed(key, claims, {"alg": key.alg, "kid": key.kid})),
    "forged: unpublished key under the real kid": _case(
        401, lambda key, claims, token: signed(impostor(key.kid, key.alg), claims)
    ),
    "forged: unknown kid": _case(
        401, lambda key, claims, token: jws.sign(impostor(b64(os.urandom(32)), key.alg), claims)
    ),
    "forged: alg none": _case(
        401,
        lambda key, claims, token: (
            f"{encode({'alg': 'none', 'kid': key.kid, 'typ': jws.TOKEN_TYPE})}.{encode(claims)}."
        ),
    ),
    "forged: HS256 with the public key as secret": _case(
        401, lambda key, claims, token: hs256_with_public_key(key, claims)
    ),
    "forged: header alg other than the key's": _case(
        401,
        lambda key, claims, token: signed(
            key, claims, {"alg": other_alg(key.alg), "kid": key.kid, "typ": jws.TOKEN_TYPE}
        ),
    ),
    "tampered payload": _case(
        401,
        lambda key, claims, token: ".".join(
            [token.split(".")[0], encode({**claims, "sub": "someone-else"}), token.split(".")[2]]
        ),
    ),
    "garbage": _case(401, lambda key, claims, token: "not.a.token"),
}


# --- one service per algorithm, one verifier of each kind over it ------------------------------------------


COMBOS = [(alg, kind) for alg in ALGORITHMS for kind in VERIFIERS if alg in SUPPORTED[kind]]


@pytest.fixture(scope="module")
def services(redis_server, tmp_path_factory):
    """Return service(alg): the real service signing with `alg` (default JWKS max-age, 300 s), made once."""
    made = {}

    def service(alg):
        if alg not in made:
            directory = str(tmp_path_factory.mktemp(f"verifiers-{alg}"))
            KeyStore(directory).generate(alg)
            made[alg] = Service(redis_server.url, directory, session_ttl_s=60)
        return made[alg]

    yield service
    for own in made.values():
        own.stop()


@pytest.fixture(scope="module", params=COMBOS, ids=[f"{kind}-{alg}" for alg, kind in COMBOS])
def deployment(request, services, tmp_path_factory):
    """(service, verifier): one example verifier over the JWKS of the service signing with one algorithm."""
    alg, kind = request.param
    service = services(alg)
    verifier = start_verifier(kind, service.jwks_url, tmp_path_factory.mktemp(kind), request)
    yield service, verifier
    verifier.stop()


@pytest.mark.parametrize("case", CASES)
def test_token_checks(case, deployment):
    service, verifier = deployment
    sid, token = service.session()
    key = service.active_key()
    made = CASES[case]["make"](key, unverified_claims(token), token)
    answer = verifier.get(STREAM, made, sid=sid)
    assert answer.status == CASES[case]["status"], (answer.status, answer.body, verifier.output()[-3000:])
    if answer.status == 401 and verifier.kind != "nginx":
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_resource_binding(deployment):
    """A valid token opens its own stream and session only."""
    service, verifier = deployment
    sid, token = service.session(STREAM)
    other_sid, _ = service.session(STREAM)
    ok = verifier.get(STREAM, token, sid=sid)
    assert ok.status == 200, (ok.body, verifier.output()[-3000:])
    if verifier.kind == "nginx":
        assert ok.body == f"segment 1 of {STREAM}\n".encode()
    else:
        assert ok.json()["claims"]["sid"] == sid and ok.json()["claims"]["stream"] == STREAM
    assert verifier.get(STREAM, token).status == 200  # no session named: the stream alone binds
    assert verifier.get(STREAM, token, cookie=sid).status == 200
    assert verifier.get(STREAM, token, sid=sid, query_token=True).status == 200  # ?token= for media players
    assert verifier.get(OTHER_STREAM, token, sid=sid).status == 403
    assert verifier.get(OTHER_STREAM, token).status == 403
    assert verifier.get(STREAM, token, sid=other_sid).status == 403
    assert verifier.get(STREAM, token, cookie=other_sid).status == 403
    assert verifier.get(STREAM).status == 401  # no token at all
    # dot segments, percent-encoded or not, are resolved (or refused) before the stream is read: each of
    # these is a request for OTHER_STREAM
    for dots in ("..", "%2e%2e", "%2E%2E"):
        path = f"/media/{STREAM}/{dots}/{OTHER_STREAM}/seg-1.ts?sid={sid}"
        answer = request(verifier.port, "GET", path, headers={"Authorization": f"Bearer {token}"})
        assert answer.status in (403, 404), (dots, answer.status, answer.body)


def test_the_longest_token_passes(deployment):
    """A token for the longest ids the service takes (256 four-byte characters each) is not too long."""
    service, verifier = deployment
    face = "\N{GRINNING FACE}"
    user, stream = uuid.uuid4().hex[:8] + face * 248, "s" + face * 255
    sid, token = admitted(start(service.server, user=user, device=face * 256, stream=stream))
    assert len(token) > 4096
    answer = verifier.get(stream, token, sid=sid)
    # nginx lets it through to the file, which is not there: no directory has a name that long
    assert answer.status == (404 if verifier.kind == "nginx" else 200), (
        answer.body,
        verifier.output()[-3000:],
    )


def test_jwks_cached_and_unknown_kids_rate_limited(deployment):
    """Within max-age, verifying costs no JWKS request; a burst of unknown kids costs at most one."""
    service, verifier = deployment
    sid, token = service.session()
    assert verifier.get(STREAM, token, sid=sid).status == 200  # the JWKS is in the verifier's cache now
    key = service.active_key()
    claims = unverified_claims(token)
    before = service.jwks_fetches()
    for _ in range(5):
        assert verifier.get(STREAM, token, sid=sid).status == 200
    assert service.jwks_fetches() == before
    for _ in range(10):
        forged = jws.sign(impostor(b64(os.urandom(32)), key.alg), claims)
        assert verifier.get(STREAM, forged, sid=sid).status == 401
    assert service.jwks_fetches() - before <= 1
    assert verifier.get(STREAM, token, sid=sid).status == 200


class FakeJwks:
    """A copy of the service's JWKS on a server of its own, which can be told to answer 503 or to hang."""

    def __init__(self, keys, max_age_s=300):
        self.body = json.dumps(keys).encode()
        self.max_age_s = max_age_s
        self.mode = "ok"  # or "503", or "hang" (until released)
        self.requests = self.hanging = 0
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}{JWKS_ROUTE}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handler(self):
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with fake._lock:
                    fake.requests += 1
                    mode = fake.mode
                    fake.hanging += mode == "hang"
                if mode == "hang":
                    fake._released.wait(30)
                status, body = (503, b"{}") if mode == "503" else (200, fake.body)
                with contextlib.suppress(OSError):  # the verifier may have given up meanwhile
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Cache-Control", f"public, max-age={fake.max_age_s}")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format, *args):  # noqa: A002 (the base class's name)
                pass

        return Handler

    def release(self):
        self._released.set()

    def stop(self):
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def fake_jwks(services):
    """A FakeJwks of the ES256 service's JWKS."""
    fake = FakeJwks(jwks(services("ES256").server))
    yield fake
    fake.stop()


def forged_token(service, token):
    """The claims of `token`, signed by an unpublished key under a random kid."""
    return jws.sign(impostor(b64(os.urandom(32)), service.active_key().alg), unverified_claims(token))


@pytest.mark.parametrize("kind", ["python", "node"])
def test_forged_kids_during_a_jwks_outage_cost_one_request_per_interval(
    kind, services, fake_jwks, tmp_path, request
):
    """While the JWKS answers 503, a burst of forged kids costs one JWKS request per refresh interval."""
    service, interval_s = services("ES256"), 2
    verifier = start_verifier(kind, fake_jwks.url, tmp_path, request, refresh_interval_s=interval_s)
    try:
        sid, token = service.session()
        assert verifier.get(STREAM, token, sid=sid).status == 200  # the JWKS is cached for 300 s now
        time.sleep(interval_s + 0.1)  # an unknown kid may refetch now
        fake_jwks.mode = "503"
        before, started = fake_jwks.requests, time.monotonic()
        for _ in range(20):
            assert verifier.get(STREAM, forged_token(service, token), sid=sid).status in (401, 503)
        assert verifier.get(STREAM, token, sid=sid).status == 200  # the cached JWKS serves on
        intervals = 1 + int((time.monotonic() - started) / interval_s)
        assert fake_jwks.requests - before <= intervals, (fake_jwks.requests - before, intervals)
    finally:
        verifier.stop()


@pytest.mark.parametrize("kind", ["python", "node"])
def test_a_hanging_jwks_refetch_holds_up_no_valid_token(kind, services, fake_jwks, tmp_path, request):
    """While a forged kid's refetch hangs, a valid token of a cached key passes at once."""
    service, interval_s = services("ES256"), 1
    verifier = start_verifier(kind, fake_jwks.url, tmp_path, request, refresh_interval_s=interval_s)
    try:
        sid, token = service.session()
        assert verifier.get(STREAM, token, sid=sid).status == 200
        time.sleep(interval_s + 0.1)
        fake_jwks.mode = "hang"
        stuck = []
        forger = threading.Thread(
            target=lambda: stuck.append(verifier.get(STREAM, forged_token(service, token)))
        )
        forger.start()
        try:
            wait_until(lambda: fake_jwks.hanging, timeout_s=5, what="the forged kid's refetch to hang")
            started = time.monotonic()
            answer = verifier.get(STREAM, token, sid=sid)
            took_s = time.monotonic() - started
        finally:
            fake_jwks.release()
            forger.join()
        assert answer.status == 200 and took_s < 1, (answer.status, took_s)  # the fetch timeout is 5 s
        assert stuck[0].status in (401, 503)
    finally:
        verifier.stop()


def test_python_fails_fast_while_an_expired_jwks_cannot_be_had(services, fake_jwks, tmp_path, request):
    """Once a fetch of the expired JWKS failed, the next requests of the interval answer 503 without one."""
    service = services("ES256")
    fake_jwks.max_age_s = 1
    verifier = start_verifier("python", fake_jwks.url, tmp_path, request, refresh_interval_s=30)
    try:
        sid, token = service.session()
        assert verifier.get(STREAM, token, sid=sid).status == 200
        fake_jwks.mode = "503"
        time.sleep(1.2)  # the cached JWKS expires
        before = fake_jwks.requests
        for _ in range(5):
            assert verifier.get(STREAM, token, sid=sid).status == 503
        assert fake_jwks.requests - before == 1
    finally:
        verifier.stop()


def test_nginx_refuses_eddsa(redis_server, tmp_path, request):
    """njs 0.7.9 has no Ed25519: a genuine EdDSA token is refused (fail closed), with the reason."""
    directory = str(tmp_path / "keys")
    KeyStore(directory).generate("EdDSA")
    own = Service(redis_server.url, directory, session_ttl_s=60)
    try:
        nginx = start_verifier("nginx", own.jwks_url, tmp_path, request)
        try:
            sid, token = own.session()
            answer = nginx.get(STREAM, token, sid=sid)
            assert answer.status == 401
            assert "key algorithm EdDSA is not supported here" in nginx.output()
        finally:
            nginx.stop()
    finally:
        own.stop()


# --- rotation and revocation, driven by the real CLI ------------------------------------------------------

MAX_AGE_S = 2
RELOAD_S = 0.2
NEW_ALG = {"python": "EdDSA", "node": "RS256", "nginx": "RS256"}  # rotate to another algorithm, too


@pytest.mark.parametrize("kind", list(VERIFIERS))
def test_unknown_kid_refetches_the_jwks_at_most_once_per_interval(kind, redis_server, tmp_path, request):
    """A key published after the cache filled is fetched at once; another right after waits its turn."""
    settings = {"session_ttl_s": 60, "keys_reload_s": RELOAD_S}  # JWKS max-age: the default 300 s
    directory = str(tmp_path / "keys")
    KeyStore(directory).generate("ES256")
    own = Service(redis_server.url, directory, **settings)
    try:
        # Python and Node count every fetch towards the interval (as PyJWKClient's cooldown does); nginx
        # counts only its refetches (limit_req on the refresh location)
        interval_s = 8 if kind != "nginx" else NginxVerifier.refresh_interval  # a CLI run and requests fit
        verifier = start_verifier(kind, own.jwks_url, tmp_path, request, refresh_interval_s=interval_s)
        try:
            sid, token = own.session()
            claims = unverified_claims(token)
            filled = time.monotonic()
            assert verifier.get(STREAM, token, sid=sid).status == 200  # the JWKS is cached for 300 s now

            def publish():
                """Make a `next` key (published, not signing) as `keys rotate` does; return it once served."""
                kid = keys_cli(directory, "generate", **settings).strip()
                polls = []  # the JWKS requests made here, to tell them from the verifier's

                def served():
                    polls.append(kid)
                    return kid in {k["kid"] for k in jwks(own.server)["keys"]}

                wait_until(served, what="the new key in the JWKS")
                return next(k for k in KeyStore(directory).load() if k.kid == kid), len(polls)

            first, _ = publish()
            if kind != "nginx":
                time.sleep(max(0.0, filled + interval_s + 0.1 - time.monotonic()))
            before = own.jwks_fetches()
            refetched = time.monotonic()
            answer = verifier.get(STREAM, signed(first, claims), sid=sid)
            assert answer.status == 200, answer.body  # refetched at once
            assert own.jwks_fetches() == before + 1
            forged = jws.sign(impostor(b64(os.urandom(32)), "ES256"), claims)
            assert verifier.get(STREAM, forged, sid=sid).status == 401
            second, polls = publish()
            # a genuine key published a moment later: not refetched for it yet (rate-limited), refused
            assert verifier.get(STREAM, signed(second, claims), sid=sid).status == 401
            assert time.monotonic() - refetched < interval_s, "too slow to show the rate limit"
            assert own.jwks_fetches() == before + 1 + polls
        finally:
            verifier.stop()
    finally:
        own.stop()


def keys_cli(directory, *args, **settings):
    """Run `python -m api.cli keys ARGS --dir DIR` with the service's settings; return its stdout."""
    environ = {**os.environ, **{Config.env_name(k): str(v) for k, v in settings.items()}}
    command = [sys.executable, "-m", "api.cli", "keys", *args, "--dir", directory]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def kid_of(token):
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]


def first_time(predicate, timeout_s, what):
    """Check predicate() every 50 ms until it holds; return the wall-clock time it first did."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
    return time.time()


@pytest.mark.parametrize("kind", list(VERIFIERS))
def test_rotation_and_revocation_reach_the_running_verifier(kind, redis_server, tmp_path, request):
    """Under steady traffic, the verifier takes up the new key after the switch and drops a revoked one."""
    # One service, one key directory: nothing lags, so the switch need not wait for a propagation bound.
    settings = {
        "session_ttl_s": 60,
        "jwks_max_age_s": MAX_AGE_S,
        "keys_reload_s": RELOAD_S,
        "keys_propagation_s": 0,
    }
    directory = str(tmp_path / "keys")
    KeyStore(directory).generate("ES256")
    own = Service(redis_server.url, directory, **settings)
    try:
        cache_control = own.server.request("GET", JWKS_ROUTE).headers["cache-control"]
        assert cache_control == f"public, max-age={MAX_AGE_S}"
        verifier = start_verifier(kind, own.jwks_url, tmp_path, request)
        try:
            pid = verifier.pid
            old_sid, old_token = own.session()
            old = kid_of(old_token)

            def old_passes():
                return verifier.get(STREAM, old_token, sid=old_sid).status == 200

            assert old_passes()  # the verifier holds the JWKS now
            said = keys_cli(directory, "rotate", "--force", "--alg", NEW_ALG[kind], **settings)
            new = next(r for r in KeyStore(directory).records() if r.state == "active")
            assert f"{new.kid} signs from" in said
            fresh = []

            def new_kid_signs():
                assert old_passes()  # traffic goes on meanwhile, and the old key verifies throughout
                fresh[:] = own.session()
                return kid_of(fresh[1]) == new.kid

            signed_at = first_time(new_kid_signs, 10, "the service to sign with the new key")
            new_sid, new_token = fresh
            accepted_at = first_time(
                lambda: verifier.get(STREAM, new_token, sid=new_sid).status == 200,
                MAX_AGE_S + 10,
                f"the {kind} verifier to accept the new key's token",
            )
            picked_up_s = accepted_at - new.times["active"]  # the switch time the CLI scheduled
            assert old_passes()  # the old key is retiring: published, its tokens still valid

            keys_cli(directory, "revoke", old, **settings)
            revoked_at = os.stat(os.path.join(directory, "keys.json")).st_mtime
            refused_at = first_time(
                lambda: verifier.get(STREAM, old_token, sid=old_sid).status == 401,
                RELOAD_S + MAX_AGE_S + 10,
                f"the {kind} verifier to refuse the revoked key's token",
            )
            refused_s = refused_at - revoked_at
            assert verifier.get(STREAM, new_token, sid=new_sid).status == 200
            assert verifier.pid == pid  # the same process throughout: no restart
        finally:
            verifier.stop()
    finally:
        own.stop()
    print(
        f"\n{kind} (JWKS max-age {MAX_AGE_S} s, key reload {RELOAD_S} s): the new {NEW_ALG[kind]} key's"
        f" first token came {signed_at - new.times['active']:.2f} s after the scheduled switch and passed"
        f" the verifier {accepted_at - signed_at:.2f} s later ({picked_up_s:.2f} s after the switch);"
        f" the revoked key's token was refused {refused_s:.2f} s after `keys revoke` wrote keys.json"
    )
    # Within max-age plus room for nginx's whole-second cache, the polling and a stall of the machine; a
    # verifier that kept the JWKS its default time (5 minutes and more) or never refetched is far past it.
    assert picked_up_s < MAX_AGE_S + 5
    assert refused_s < RELOAD_S + MAX_AGE_S + 5
