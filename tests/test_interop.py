"""Our tokens verify, from the served JWKS alone, with three independent verifiers in two languages.

For each algorithm a real server signs the tokens; PyJWT's PyJWKClient (over HTTP), joserfc, and Node's
`jose` (installed from npm into tests/interop by this test) verify them and refuse a tampered one.
"""

import json
import os
import shutil
import subprocess
import urllib.request

import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet as JoseKeySet
from processes import TEST_TTL_S, ServerProcess

from keys.records import ALGORITHMS
from keys.store import KeyStore

pytestmark = [pytest.mark.http, pytest.mark.redis]

INTEROP_DIR = os.path.join(os.path.dirname(__file__), "interop")
ISSUER, AUDIENCE = "concurrency-service", "playback"


@pytest.fixture(scope="module")
def node_verifier():
    """Return the command that runs tests/interop/verify.mjs, installing `jose` from npm when missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are required for the interop test; scripts/test installs them")
    if not os.path.isdir(os.path.join(INTEROP_DIR, "node_modules", "jose")):
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=INTEROP_DIR,
            check=True,
            timeout=300,
        )
    return [node, os.path.join(INTEROP_DIR, "verify.mjs")]


@pytest.fixture(scope="module", params=ALGORITHMS)
def signed(request, redis_server, tmp_path_factory):
    """A real server whose active key uses one algorithm, and two of its tokens (start and heartbeat)."""
    alg = request.param
    directory = str(tmp_path_factory.mktemp(f"interop-{alg}"))
    kid = KeyStore(directory).generate(alg)
    server = ServerProcess(redis_server.url, directory, workers=2, threads=2, session_ttl_s=TEST_TTL_S)
    try:
        body = {"userId": f"interop-{alg}", "deviceId": "tv", "streamId": "film"}
        started = server.request("POST", "/v1/sessions", body)
        assert started.status == 201, started.body
        sid, token = started.json()["sessionId"], started.json()["token"]
        beat = server.request("PUT", f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {token}"})
        assert beat.status == 200, beat.body
        yield alg, kid, server, [token, beat.json()["token"]]
    finally:
        server.stop()


def jwks_url(server):
    return f"{server.url}/.well-known/jwks.json"


def tampered(token):
    header, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["sub"] = "someone-else"
    return f"{header}.{jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()}.{signature}"


def test_pyjwt_jwks_client_over_http(signed):
    alg, kid, server, tokens = signed
    client = jwt.PyJWKClient(jwks_url(server), cache_keys=True)
    for token in tokens:
        key = client.get_signing_key_from_jwt(token)
        assert key.key_id == kid
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
        assert claims["sub"] == f"interop-{alg}"
        assert jwt.get_unverified_header(token) == {"alg": alg, "kid": kid, "typ": "session+jwt"}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            tampered(tokens[0]),
            client.get_signing_key_from_jwt(tokens[0]),
            algorithms=[alg],
            audience=AUDIENCE,
        )


# RFC 9864 deprecates the polymorphic "EdDSA" name in favour of "Ed25519"; we keep "EdDSA", which every
# verifier here (and PyJWT, which knows no "Ed25519") accepts. joserfc warns about it, as expected.
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated:joserfc.errors.SecurityWarning")
def test_joserfc(signed):
    alg, kid, server, tokens = signed
    with urllib.request.urlopen(jwks_url(server), timeout=5) as answer:
        keyset = JoseKeySet.import_key_set(json.load(answer))
    validator = jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
        sub={"essential": True},
    )
    for token in tokens:
        decoded = jose_jwt.decode(token, keyset, algorithms=[alg])
        assert decoded.header["kid"] == kid and decoded.header["typ"] == "session+jwt"
        validator.validate(decoded.claims)
        assert decoded.claims["sub"] == f"interop-{alg}"
    with pytest.raises(JoseError):
        jose_jwt.decode(tampered(tokens[0]), keyset, algorithms=[alg])


def test_node_jose(signed, node_verifier):
    alg, kid, server, tokens = signed
    done = subprocess.run(
        [*node_verifier, jwks_url(server), ISSUER, AUDIENCE],
        input="\n".join([*tokens, tampered(tokens[0])]) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert results[:2] == [{"ok": True, "alg": alg, "kid": kid, "sub": f"interop-{alg}"}] * 2
    assert results[2]["ok"] is False and "ERR_JWS_SIGNATURE_VERIFICATION_FAILED" in results[2]["error"]
