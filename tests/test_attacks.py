"""RFC 8725 attacks on session tokens: every one is a 401 (or 413 for an oversized body), never a 5xx.

Each test forges a token for a live session and sends it as a heartbeat; docs/security.md lists the same
attacks with the reason each is rejected.
"""

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, get_default_algorithms
from processes import request

from keys.keyring import Keyring
from keys.rotation import Lifecycle, RotationPolicy
from keys.store import KeyStore

START = {"userId": "mallory-target", "deviceId": "tv", "streamId": "film"}
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value):
    return b64(json.dumps(value).encode())


def compact(header, claims, sign=lambda signing_input: b""):
    signing_input = f"{segment(header)}.{segment(claims)}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def parts(token):
    header, claims, _ = token.split(".")
    return _unb64(header), _unb64(claims)


def _unb64(text):
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


class Victim:
    """A live session on the app, its genuine token, and the key that signed it."""

    def __init__(self, client, keyring):
        answer = client.simulate_post("/v1/sessions", json=START)
        assert answer.status_code in (200, 201), answer.text
        self.client = client
        self.sid = answer.json["sessionId"]
        self.token = answer.json["token"]
        self.header, self.claims = parts(self.token)
        self.key = keyring.current.verifying[self.header["kid"]]

    def heartbeat(self, token):
        return self.client.simulate_put(
            f"/v1/sessions/{self.sid}", headers={"Authorization": f"Bearer {token}"}
        )

    def signed(self, header=None, claims=None, key=None):
        """Return a token properly signed with our own private key, with the given header and claims."""
        key = key or self.key
        return compact(header or self.header, claims or self.claims, lambda data: key.sign(data))

    def assert_rejected(self, token, status=401):
        answer = self.heartbeat(token)
        assert answer.status_code == status, answer.text
        if status == 401:
            assert answer.json["error"] == "invalid_token"
            assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        # the real session is untouched: its genuine token still works
        assert self.heartbeat(self.token).status_code == 200
        return answer


@pytest.fixture
def victim(client, keyring):
    return Victim(client, keyring)


def test_genuine_token_is_accepted(victim):
    assert victim.heartbeat(victim.token).status_code == 200
    assert victim.heartbeat(victim.signed()).status_code == 200


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none(victim, alg):
    victim.assert_rejected(compact({**victim.header, "alg": alg}, victim.claims))
    victim.assert_rejected(compact({**victim.header, "alg": alg}, victim.claims) + "AA")


def test_empty_signature(victim):
    header, claims, _ = victim.token.split(".")
    victim.assert_rejected(f"{header}.{claims}.")


def _hs256(secret):
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def test_hs256_with_public_key_as_pem(victim):
    pem = victim.key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    victim.assert_rejected(compact({**victim.header, "alg": "HS256"}, victim.claims, _hs256(pem)))


def test_hs256_with_public_key_as_jwk_json(victim):
    for jwk in (victim.key.public_jwk(), ECAlgorithm.to_jwk(victim.key.public_key, as_dict=True)):
        secret = json.dumps(jwk).encode()
        victim.assert_rejected(compact({**victim.header, "alg": "HS256"}, victim.claims, _hs256(secret)))


def test_hs256_with_public_key_as_raw_bytes(victim):
    raw = victim.key.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    victim.assert_rejected(compact({**victim.header, "alg": "HS256"}, victim.claims, _hs256(raw)))


def test_all_zero_ecdsa_signature(victim):
    victim.assert_rejected(compact(victim.header, victim.claims, lambda data: bytes(64)))


@pytest.mark.parametrize(
    "r, s",
    [(P256_ORDER, 1), (1, P256_ORDER), (P256_ORDER + 1, P256_ORDER + 1), (2**256 - 1, 2**256 - 1), (0, 1)],
    ids=["r=n", "s=n", "r=s=n+1", "all-ones", "r=0"],
)
def test_ecdsa_r_s_out_of_range(victim, r, s):
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    victim.assert_rejected(compact(victim.header, victim.claims, lambda data: raw))
    # the same values DER-encoded, as a confused verifier might expect
    victim.assert_rejected(compact(victim.header, victim.claims, lambda data: encode_dss_signature(r, s)))


def test_ecdsa_signature_of_wrong_length(victim):
    good = victim.token.split(".")[2]
    sig = base64.urlsafe_b64decode(good + "==")
    for bad in (sig[:-1], sig + b"\0", sig * 2):
        victim.assert_rejected(compact(victim.header, victim.claims, lambda data, bad=bad: bad))


@pytest.mark.parametrize("alg", ["RS256", "PS256", "EdDSA", "ES384", "ES512", "ES256K", "HS512"])
def test_header_alg_not_the_keys_alg(victim, alg):
    signers = {
        "RS256": lambda d: _rsa().sign(d, *_pkcs1()),
        "PS256": lambda d: get_default_algorithms()["PS256"].sign(d, _rsa()),
        "EdDSA": lambda d: ed25519.Ed25519PrivateKey.generate().sign(d),
        "ES384": lambda d: get_default_algorithms()["ES384"].sign(d, ec.generate_private_key(ec.SECP384R1())),
        "ES512": lambda d: get_default_algorithms()["ES512"].sign(d, ec.generate_private_key(ec.SECP521R1())),
        "ES256K": lambda d: bytes(64),
        "HS512": lambda d: hmac.new(b"secret", d, hashlib.sha512).digest(),
    }
    victim.assert_rejected(compact({**victim.header, "alg": alg}, victim.claims, signers[alg]))
    # even with a genuine ES256 signature under the header that names another algorithm
    victim.assert_rejected(victim.signed(header={**victim.header, "alg": alg}))


def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pkcs1():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.PKCS1v15(), hashes.SHA256()


def test_embedded_jwk_header(victim):
    attacker = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    header = {"alg": "ES256", "typ": victim.header["typ"], "jwk": jwk}
    sign = get_default_algorithms()["ES256"].sign
    victim.assert_rejected(compact(header, victim.claims, lambda d: sign(d, attacker)))
    victim.assert_rejected(
        compact({**header, "kid": victim.header["kid"]}, victim.claims, lambda d: sign(d, attacker))
    )


class Listener:
    """A loopback HTTP server that counts the requests it gets: the service must never call it."""

    def __init__(self):
        self.hits = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"keys": []}')

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


@pytest.mark.parametrize("param", ["jku", "x5u"])
def test_header_key_url_is_never_fetched(victim, listener, param):
    attacker = ec.generate_private_key(ec.SECP256R1())
    sign = get_default_algorithms()["ES256"].sign
    header = {**victim.header, param: listener.url}
    victim.assert_rejected(compact(header, victim.claims, lambda d: sign(d, attacker)))
    victim.assert_rejected(victim.signed(header=header))
    time.sleep(0.05)
    assert listener.hits == []


def test_header_x5c_is_ignored(victim):
    victim.assert_rejected(victim.signed(header={**victim.header, "x5c": ["MIIB"]}))


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../etc/passwd",
        "..%2f..%2fkeys.json",
        'a"b',
        "'",
        "{}",
        '{"$ne": null}',
        "x" * 10240,
        12345,
        None,
        [],
        {},
        "",
        "\u0000",
        "keys",
    ],
    ids=[
        "traversal",
        "encoded-traversal",
        "dquote",
        "squote",
        "braces",
        "json",
        "10KB",
        "number",
        "null",
        "list",
        "object",
        "empty",
        "nul",
        "keys",
    ],
)
def test_odd_kid(victim, kid):
    header = {**victim.header, "kid": kid}
    answer = victim.assert_rejected(victim.signed(header=header))
    assert "Traceback" not in answer.text


@pytest.mark.parametrize("claim", ["iss", "aud", "sub", "sid", "iat", "exp", "jti", "device", "stream"])
def test_required_claim_missing(victim, claim):
    claims = {k: v for k, v in victim.claims.items() if k != claim}
    victim.assert_rejected(victim.signed(claims=claims))


@pytest.mark.parametrize("aud", ["playback2", "Playback", "", ["playback"], ["playback", "other"], None, 1])
def test_wrong_audience(victim, aud):
    victim.assert_rejected(victim.signed(claims={**victim.claims, "aud": aud}))


@pytest.mark.parametrize(
    "iss",
    [
        "concurrency-servic",
        "concurrency-service-evil",
        "xconcurrency-service",
        "",
        ["concurrency-service"],
        None,
    ],
    ids=["prefix", "superstring", "suffix-match", "empty", "list", "null"],
)
def test_wrong_issuer(victim, iss):
    victim.assert_rejected(victim.signed(claims={**victim.claims, "iss": iss}))


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "session+JWT", "", None, "absent"])
def test_wrong_typ(victim, typ):
    header = {k: v for k, v in victim.header.items() if k != "typ"}
    if typ != "absent":
        header["typ"] = typ
    victim.assert_rejected(victim.signed(header=header))


def test_unknown_crit(victim):
    victim.assert_rejected(victim.signed(header={**victim.header, "crit": ["exp"], "exp": 1}))
    victim.assert_rejected(victim.signed(header={**victim.header, "crit": ["b64"], "b64": False}))


def test_json_serialization(victim):
    header, payload, signature = victim.token.split(".")
    flattened = json.dumps({"protected": header, "payload": payload, "signature": signature})
    general = json.dumps({"payload": payload, "signatures": [{"protected": header, "signature": signature}]})
    victim.assert_rejected(flattened)
    victim.assert_rejected(general)


def test_four_or_two_segments(victim):
    header, payload, signature = victim.token.split(".")
    for token in (
        f"{header}.{payload}.{signature}.{signature}",
        f"{header}.{payload}..{signature}",
        f"{header}.{payload}",
        f"{header}..{signature}",
        f"{header}.{payload}.{signature}.",
        f"{header}.{payload}.{signature}=",
        f"{header}.{payload}+.{signature}",
    ):
        victim.assert_rejected(token)


def test_64kb_token_is_rejected_fast(victim):
    token = victim.token + "A" * 65536
    began = time.perf_counter()
    victim.assert_rejected(token)
    assert time.perf_counter() - began < 0.5
    legacy = victim.client.simulate_put("/concurrency", json={"sessionKey": victim.sid, "token": token})
    assert legacy.status_code == 413


def test_tampered_payload(victim):
    header, _, signature = victim.token.split(".")
    claims = {**victim.claims, "sub": "someone-else"}
    victim.assert_rejected(f"{header}.{segment(claims)}.{signature}")


def test_expired_token(victim):
    """A genuine token past its exp ends the heartbeat with 410 expired: the player must stop."""
    now = int(time.time())
    victim.assert_rejected(victim.signed(claims={**victim.claims, "iat": now - 600, "exp": now - 60}), 410)


@pytest.mark.parametrize("exp", ["9999999999", 1e400, True, None])
def test_exp_of_wrong_type(victim, exp):
    victim.assert_rejected(victim.signed(claims={**victim.claims, "exp": exp}))


def test_token_of_another_session(victim):
    claims = {**victim.claims, "sid": "not-this-session"}
    victim.assert_rejected(victim.signed(claims=claims))


# -- keys that no longer (or not yet) verify ---------------------------------------------------------


class Rotated:
    """An app over its own key directory, driven through the key lifecycle with a movable clock."""

    def __init__(self, tmp_path, config, fake_redis, make_client):
        self.now = time.time()
        self.store = KeyStore(str(tmp_path), clock=lambda: self.now)
        self.store.generate("ES256")
        policy = RotationPolicy(
            jwks_max_age_s=0, reload_interval_s=0, token_lifetime_s=config.session_ttl_s, leeway_s=5
        )
        self.lifecycle = Lifecycle(self.store, policy, clock=lambda: self.now)
        self.keyring = Keyring(self.store, reload_interval_s=0)
        self.client = make_client(config, fake_redis, self.keyring)

    def private(self, kid):
        return next(k for k in self.store.load() if k.kid == kid)


@pytest.fixture
def rotated(tmp_path, config, fake_redis, make_client):
    return Rotated(tmp_path, config, fake_redis, make_client)


def test_token_signed_with_retired_key(rotated):
    victim = Victim(rotated.client, rotated.keyring)
    old = victim.key
    rotated.lifecycle.rotate(force=True)
    rotated.now += 2
    assert victim.heartbeat(victim.token).status_code == 200  # a retiring key still verifies
    rotated.now += 3600
    rotated.lifecycle.prune()
    assert old.kid not in rotated.keyring.current.verifying
    fresh = {**victim.claims, "iat": int(time.time()), "exp": int(time.time()) + 60}
    answer = victim.heartbeat(compact(victim.header, fresh, old.sign))
    assert answer.status_code == 401
    assert "unknown key" in answer.json["message"]


def test_token_signed_with_revoked_key(rotated):
    victim = Victim(rotated.client, rotated.keyring)
    old = victim.key
    rotated.lifecycle.rotate(force=True)
    rotated.lifecycle.revoke(old.kid)
    answer = victim.heartbeat(victim.token)
    assert answer.status_code == 401
    assert "unknown key" in answer.json["message"]
    assert old.kid not in {
        k["kid"] for k in rotated.client.simulate_get("/.well-known/jwks.json").json["keys"]
    }


def test_token_signed_with_next_key_verifies_until_the_key_is_withdrawn(rotated):
    """Accept a token of a published next key, as a lagging instance must; refuse it once withdrawn."""
    victim = Victim(rotated.client, rotated.keyring)
    kid = rotated.store.generate("ES256")
    nxt = rotated.private(kid)
    assert nxt.state == "next"
    token = compact({**victim.header, "kid": kid}, victim.claims, nxt.sign)
    assert victim.heartbeat(token).status_code == 200
    rotated.lifecycle.retire(kid)
    answer = victim.heartbeat(compact({**victim.header, "kid": kid}, victim.claims, nxt.sign))
    assert answer.status_code == 401
    assert "unknown key" in answer.json["message"]


# -- a few over the real server ----------------------------------------------------------------------


@pytest.fixture
def live(server):
    answer = server.request("POST", "/v1/sessions", START | {"userId": f"mallory-{time.monotonic_ns()}"})
    assert answer.status == 201, answer.body
    body = answer.json()
    return server, body["sessionId"], body["token"]


def _heartbeat(server, sid, token):
    return server.request("PUT", f"/v1/sessions/{sid}", headers={"Authorization": f"Bearer {token}"})


@pytest.mark.http
def test_real_server_rejects_forgeries(live, listener):
    server, sid, token = live
    header, claims = parts(token)
    pem = request(server.port, "GET", "/.well-known/jwks.json").json()["keys"][0]
    forged = [
        compact({**header, "alg": "none"}, claims),
        compact({**header, "alg": "HS256"}, claims, _hs256(json.dumps(pem).encode())),
        compact({**header, "jku": listener.url}, claims, lambda d: bytes(64)),
        compact(header, claims, lambda d: bytes(64)),
        compact({**header, "kid": "../../etc/passwd"}, claims),
        json.dumps(dict(zip(("protected", "payload", "signature"), token.split("."), strict=True))),
        ".".join(token.split(".") * 2),
    ]
    for bad in forged:
        answer = _heartbeat(server, sid, bad)
        assert answer.status == 401, (bad[:80], answer.status, answer.body)
        assert answer.json()["error"] == "invalid_token"
    assert listener.hits == []
    assert _heartbeat(server, sid, token).status == 200


@pytest.mark.http
def test_real_server_64kb_token(live):
    server, sid, token = live
    huge = token + "A" * 65536
    began = time.perf_counter()
    legacy = server.request("PUT", "/concurrency", {"sessionKey": sid, "token": huge})
    assert legacy.status == 413
    bearer = _heartbeat(server, sid, huge)
    assert 400 <= bearer.status < 500  # the HTTP server refuses a header this large (gunicorn: 431)
    assert time.perf_counter() - began < 2
    assert _heartbeat(server, sid, token).status == 200
