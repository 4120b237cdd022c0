"""The hand-written compact JWS (keys/jws.py): our header, our keys, strict serialization."""

import base64
import hashlib
import hmac
import json
import re

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from keys import jws
from keys.errors import InvalidJws
from keys.keyring import KeySet
from keys.material import P256_ORDER, SigningKey
from keys.records import ALGORITHMS
from keys.store import KeyStore

CLAIMS = {"sub": "ann", "sid": "s-1", "n": 7, "f": 1.5, "ok": True, "none": None, "odd": 'ü|"\\\n🎬'}


@pytest.fixture(scope="module")
def keysets(tmp_path_factory):
    """One KeySet per algorithm, each with one active key (RSA keys are slow to make: once per module)."""
    sets = {}
    for alg in ALGORITHMS:
        store = KeyStore(str(tmp_path_factory.mktemp(alg)))
        store.generate(alg)
        sets[alg] = KeySet(store.load())
    return sets


@pytest.fixture(scope="module")
def keyset(keysets):
    return keysets["ES256"]


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    """An ES256 key that is not ours."""
    store = KeyStore(str(tmp_path_factory.mktemp("stranger")))
    store.generate("ES256")
    return KeySet(store.load()).signing


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment):
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def encode(value):
    return b64(json.dumps(value, separators=(",", ":")).encode())


def our_header(key):
    return {"alg": key.alg, "kid": key.kid, "typ": jws.TOKEN_TYPE}


def forge(key, header, payload=b'{"sub":"ann"}'):
    """Return a token with any header and payload bytes, validly signed by `key`."""
    header_segment = header if isinstance(header, str) else encode(header)
    signing_input = f"{header_segment}.{b64(payload)}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode()))}"


def unsealed(key, claims=CLAIMS):
    """Return a token of `claims` validly signed by `key` without our MAC: it takes the full path."""
    return forge(key, our_header(key), json.dumps(claims, separators=(",", ":")).encode())


def without_jti(claims):
    return {name: value for name, value in claims.items() if name != "jti"}


def with_signature(token, signature):
    return token.rsplit(".", 1)[0] + "." + b64(signature)


# -- what we sign -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_sign_then_verify(keysets, alg):
    keyset = keysets[alg]
    token = jws.sign(keyset.signing, CLAIMS)
    claims = jws.verify(token, keyset.verifying)
    assert without_jti(claims) == CLAIMS
    assert re.fullmatch(
        r"[A-Za-z0-9_-]{34}", claims["jti"]
    )  # a 12-character nonce, then the 22-character MAC


@pytest.mark.parametrize("name", ["sub", "sid", "odd"])
def test_claims_that_look_like_the_macs_placeholder_are_signed_as_given(keyset, name):
    """The MAC goes where the jti's placeholder is, never into a claim that holds the same characters."""
    claims = {**CLAIMS, name: "eve" + "~" * 44}
    token = jws.sign(keyset.signing, claims)
    assert without_jti(jws.verify(token, keyset.verifying)) == claims
    assert without_jti(jwt.decode(token, keyset.signing.public_key, algorithms=["ES256"])) == claims


@pytest.mark.parametrize("claims", [{}, {"jti": "mine", **CLAIMS}, {**CLAIMS, "jti": "mine"}])
def test_sign_writes_its_own_jti_last_in_place_of_any_given(keyset, claims):
    token = jws.sign(keyset.signing, claims)
    payload = unb64(token.split(".")[1])
    assert payload.endswith(b'"}') and payload.rindex(b'"jti":"') == len(payload) - 2 - 34 - 7
    assert without_jti(jws.verify(token, keyset.verifying)) == without_jti(claims)
    assert jws.verify(token, keyset.verifying)["jti"] != "mine"


def test_every_token_has_its_own_jti(keyset):
    jtis = {jws.verify(jws.sign(keyset.signing, CLAIMS), keyset.verifying)["jti"] for _ in range(100)}
    assert len(jtis) == 100


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_header_is_exactly_alg_kid_and_typ(keysets, alg):
    key = keysets[alg].signing
    header_segment = jws.sign(key, CLAIMS).split(".")[0]
    assert json.loads(unb64(header_segment)) == {"alg": alg, "kid": key.kid, "typ": "session+jwt"}
    assert b" " not in unb64(header_segment)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_general_jose_library_verifies_our_tokens(keysets, alg):
    key = keysets[alg].signing
    token = jws.sign(key, CLAIMS)
    assert jwt.get_unverified_header(token) == {"alg": alg, "kid": key.kid, "typ": "session+jwt"}
    assert without_jti(jwt.decode(token, key.public_key, algorithms=[alg])) == CLAIMS


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_we_verify_what_a_general_jose_library_signs_with_our_header(keysets, alg):
    keyset = keysets[alg]
    key = keyset.signing
    headers = {"kid": key.kid, "typ": jws.TOKEN_TYPE}
    token = jwt.encode(CLAIMS, key.private_key, algorithm=alg, headers=headers)
    if alg == "ES256":  # a general library may pick either spelling of an ECDSA signature: take the low s
        token = with_s(token, low=True)
    assert jws.verify(token, keyset.verifying) == CLAIMS


def with_s(token, low):
    """Return the ES256 token with its signature's s replaced by the low (or the high) one of its pair."""
    head, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    s = min(s, P256_ORDER - s) if low else max(s, P256_ORDER - s)
    return f"{head}.{payload}." + base64.urlsafe_b64encode(r + s.to_bytes(32, "big")).rstrip(b"=").decode()


def test_ecdsa_signatures_have_one_spelling(keysets):
    """We sign with the low s only; the high-s twin of a signature verifies elsewhere, not on our full path"""
    keyset = keysets["ES256"]
    for _ in range(20):
        ours = jws.sign(keyset.signing, CLAIMS)
        assert with_s(ours, low=True) == ours
        token = unsealed(keyset.signing)
        twin = with_s(token, low=False)
        public = keyset.signing.public_key
        assert jwt.decode(
            twin, public, algorithms=["ES256"], audience=CLAIMS.get("aud"), options={"verify_exp": False}
        )
        with pytest.raises(InvalidJws, match="signature is invalid"):
            jws.verify(twin, keyset.verifying)


def test_only_canonical_base64url(keyset):
    """A last character with bits set past the data decodes to the same bytes: a second spelling, refused."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    token = jws.sign(keyset.signing, CLAIMS)
    parts = token.split(".")
    flipped = 0
    for index, part in enumerate(parts):
        if len(part) % 4 not in (2, 3):  # no bits past the data in the last character
            continue
        other = part[:-1] + alphabet[alphabet.index(part[-1]) ^ 1]  # the lowest bit is never data here
        assert base64.urlsafe_b64decode(other + "==") == base64.urlsafe_b64decode(part + "==")
        spelled = ".".join(parts[:index] + [other] + parts[index + 1 :])
        with pytest.raises(InvalidJws, match="not canonical"):
            jws.verify(spelled, keyset.verifying)
        flipped += 1
    assert flipped >= 1  # the signature's 86 characters always leave 4 bits unused
    sig = parts[2][:-1] + alphabet[alphabet.index(parts[2][-1]) ^ 1]
    with pytest.raises(InvalidJws, match="not canonical"):
        jws.verify(".".join([*parts[:2], sig]), keyset.verifying)


# -- serialization ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "abc", "a.b", "a.b.c.d", "a..c", ".b.c", "a.b.", "a.b.c.", "a.b.c\n", " a.b.c", "a=.b.c", "a+/.b.c"],
)
def test_not_three_base64url_parts(keyset, text):
    with pytest.raises(InvalidJws, match=r"not a compact JWS \(three base64url parts\)"):
        jws.verify(text, keyset.verifying)


def test_padding_is_not_base64url(keyset):
    token = jws.sign(keyset.signing, CLAIMS)
    header_segment, payload, signature = token.split(".")
    padded = f"{header_segment}.{payload}.{signature}=="
    with pytest.raises(InvalidJws, match="not a compact JWS"):
        jws.verify(padded, keyset.verifying)


def test_header_that_is_not_base64url(keyset):
    token = jws.sign(keyset.signing, CLAIMS)
    broken = "A" + token[token.index(".") :]  # one character can never be base64 of anything
    with pytest.raises(InvalidJws, match="token header is not base64url"):
        jws.verify(broken, keyset.verifying)


def test_signature_that_is_not_base64url(keyset):
    token = jws.sign(keyset.signing, CLAIMS)
    broken = token.rsplit(".", 1)[0] + ".AAAAA"  # 4n + 1 characters can never be base64 of anything
    with pytest.raises(InvalidJws, match="token signature is not base64url"):
        jws.verify(broken, keyset.verifying)


def test_payload_that_is_not_base64url(keyset):
    key = keyset.signing
    signing_input = f"{encode(our_header(key))}.A"
    token = f"{signing_input}.{b64(key.sign(signing_input.encode()))}"
    with pytest.raises(InvalidJws, match="token payload is not base64url"):
        jws.verify(token, keyset.verifying)


@pytest.mark.parametrize("header", ["[]", "null", '"ES256"', "7", "{not json", '{"alg":"ES256",}'])
def test_header_that_is_not_a_json_object(keyset, header):
    token = forge(keyset.signing, b64(header.encode()))
    with pytest.raises(InvalidJws, match="token header is not a JSON object"):
        jws.verify(token, keyset.verifying)


# -- the header -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["exp"]},
        {"jku": "https://evil.example/jwks"},
        {"x5u": "https://evil.example/cert"},
        {"b64": False},
        {"zip": "DEF"},
        {"cty": "JWT"},
    ],
)
def test_header_with_another_parameter(keyset, extra):
    key = keyset.signing
    with pytest.raises(InvalidJws, match="token header has unexpected parameters"):
        jws.verify(forge(key, {**our_header(key), **extra}), keyset.verifying)


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "session+JWT", "", None, "missing"])
def test_header_with_the_wrong_type(keyset, typ):
    key = keyset.signing
    header = {**our_header(key), "typ": typ}
    if typ == "missing":
        del header["typ"]
    with pytest.raises(InvalidJws, match="token has the wrong type"):
        jws.verify(forge(key, header), keyset.verifying)


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "ES384", "PS256", "", None, "missing"])
def test_algorithm_that_is_not_allowed(keyset, alg):
    key = keyset.signing
    header = {**our_header(key), "alg": alg}
    if alg == "missing":
        del header["alg"]
    with pytest.raises(InvalidJws, match="token algorithm is not allowed"):
        jws.verify(forge(key, header), keyset.verifying)


def test_hmac_with_our_public_key_as_the_secret_is_refused(keyset):
    """Refuse the classic confusion: HS256 keyed with the public key everyone can fetch."""
    key = keyset.signing
    public_pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{encode({**our_header(key), 'alg': 'HS256'})}.{encode(CLAIMS)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidJws, match="token algorithm is not allowed"):
        jws.verify(f"{signing_input}.{b64(mac)}", keyset.verifying)


@pytest.mark.parametrize("alg", ["EdDSA", "RS256"])
def test_algorithm_that_does_not_match_the_key(keyset, alg):
    key = keyset.signing
    with pytest.raises(InvalidJws, match="token algorithm does not match its key"):
        jws.verify(forge(key, {**our_header(key), "alg": alg}), keyset.verifying)


@pytest.mark.parametrize("kid", ["nobody", "", "missing"])
def test_unknown_kid(keyset, kid):
    key = keyset.signing
    header = {**our_header(key), "kid": kid}
    if kid == "missing":
        del header["kid"]
    with pytest.raises(InvalidJws, match="token is signed with an unknown key"):
        jws.verify(forge(key, header), keyset.verifying)


@pytest.mark.parametrize("kid", [7, None, True, ["kid"], {"kid": "x"}])
def test_kid_that_is_not_a_string(keyset, kid):
    key = keyset.signing
    with pytest.raises(InvalidJws, match="token is signed with an unknown key"):
        jws.verify(forge(key, {**our_header(key), "kid": kid}), keyset.verifying)


def test_only_the_given_keys_verify(keysets, keyset):
    token = jws.sign(keyset.signing, CLAIMS)
    for keys in ({}, keysets["EdDSA"].verifying):
        with pytest.raises(InvalidJws, match="unknown key"):
            jws.verify(token, keys)


def test_a_key_in_the_header_is_never_used(keyset, stranger):
    """A `jwk` header parameter is refused, whichever kid it comes with; our kid needs our signature."""
    ours = keyset.signing
    jwk = stranger.public_jwk()
    for kid in (ours.kid, stranger.kid):
        header = {"alg": "ES256", "kid": kid, "typ": jws.TOKEN_TYPE, "jwk": jwk}
        with pytest.raises(InvalidJws, match="token header has unexpected parameters"):
            jws.verify(forge(stranger, header), keyset.verifying)
    with pytest.raises(InvalidJws, match="token signature is invalid"):
        jws.verify(forge(stranger, our_header(ours)), keyset.verifying)
    with pytest.raises(InvalidJws, match="token is signed with an unknown key"):
        jws.verify(forge(stranger, our_header(stranger)), keyset.verifying)


# -- the signature ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_altered_payload(keysets, alg):
    keyset = keysets[alg]
    header_segment, _, signature = jws.sign(keyset.signing, CLAIMS).split(".")
    altered = f"{header_segment}.{encode({**CLAIMS, 'sub': 'bob'})}.{signature}"
    with pytest.raises(InvalidJws, match="token signature is invalid"):
        jws.verify(altered, keyset.verifying)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_altered_signature(keysets, alg):
    keyset = keysets[alg]
    token = unsealed(keyset.signing)
    signature = bytearray(unb64(token.rsplit(".", 1)[1]))
    for index in (0, len(signature) // 2, -1):
        altered = signature.copy()
        altered[index] ^= 0x01
        with pytest.raises(InvalidJws, match="token signature is invalid"):
            jws.verify(with_signature(token, bytes(altered)), keyset.verifying)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_signature_of_the_wrong_length(keysets, alg):
    keyset = keysets[alg]
    token = jws.sign(keyset.signing, CLAIMS)
    signature = unb64(token.rsplit(".", 1)[1])
    for wrong in (signature[:-1], signature + b"\0", b"\0" + signature, signature * 2, b"\0"):
        with pytest.raises(InvalidJws, match="token signature is invalid"):
            jws.verify(with_signature(token, wrong), keyset.verifying)


def test_es256_signature_of_zeros(keyset):
    token = unsealed(keyset.signing)
    with pytest.raises(InvalidJws, match="token signature is invalid"):
        jws.verify(with_signature(token, bytes(64)), keyset.verifying)


# -- the MAC: tokens we signed skip the ECDSA verify --------------------------------------------------


@pytest.fixture
def full_path(monkeypatch):
    """Count the signature verifications: the full path's, which a token sealed by its own key skips."""
    calls = []
    verify = SigningKey.verify

    def counted(key, signature, data):
        calls.append(key.kid)
        return verify(key, signature, data)

    monkeypatch.setattr(SigningKey, "verify", counted)
    return calls


def resigned(key, payload):
    """Return a token of exactly these payload bytes, validly signed by `key`."""
    return forge(key, our_header(key), payload)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_token_we_sealed_skips_the_signature_check(keysets, alg, full_path):
    keyset = keysets[alg]
    assert without_jti(jws.verify(jws.sign(keyset.signing, CLAIMS), keyset.verifying)) == CLAIMS
    assert full_path == []


def test_a_token_without_our_mac_takes_the_full_path(keyset, full_path):
    assert jws.verify(unsealed(keyset.signing), keyset.verifying) == CLAIMS
    assert full_path == [keyset.signing.kid]


def test_a_wrong_mac_takes_the_full_path(keyset, full_path):
    """Each character of the MAC changed, the payload signed again: the signature decides, and it holds."""
    key = keyset.signing
    payload = unb64(jws.sign(key, CLAIMS).split(".")[1])
    at = payload.index(b'"jti":"') + 7 + 12
    for index in range(at, at + 22):
        wrong = (
            payload[:index] + (b"A" if payload[index : index + 1] != b"A" else b"B") + payload[index + 1 :]
        )
        assert jws.verify(resigned(key, wrong), keyset.verifying)["jti"] != json.loads(payload)["jti"]
    assert len(full_path) == 22


def test_a_mac_made_with_another_key_takes_the_full_path(keysets, keyset, stranger, full_path):
    """The MAC is keyed per signing key and covers the header and its kid: another key's MAC never checks."""
    for other in (stranger, keysets["EdDSA"].signing):
        payload = unb64(jws.sign(other, CLAIMS).split(".")[1])
        assert without_jti(jws.verify(resigned(keyset.signing, payload), keyset.verifying)) == CLAIMS
    assert full_path == [keyset.signing.kid] * 2
    assert stranger.mac_key != keyset.signing.mac_key


def test_altered_claims_break_the_mac(keyset, full_path):
    """Any byte of the claims changed, the jti kept: the MAC fails, then the signature: refused."""
    key = keyset.signing
    header_segment, payload_segment, signature = jws.sign(key, CLAIMS).split(".")
    payload = unb64(payload_segment)
    for old, new in ((b'"ann"', b'"bob"'), (b'"n":7', b'"n":8'), (b"true", b"false"), (b"{", b'{"x":1,')):
        altered = payload.replace(old, new, 1)
        assert altered != payload
        with pytest.raises(InvalidJws, match="token signature is invalid"):
            jws.verify(f"{header_segment}.{b64(altered)}.{signature}", keyset.verifying)
    assert len(full_path) == 4


def test_a_sealed_payload_under_another_header_is_refused(keysets, keyset, full_path):
    """The MAC covers the header segment: our payload and signature under an altered header do not pass."""
    key = keyset.signing
    _, payload_segment, signature = jws.sign(key, CLAIMS).split(".")
    spaced = b64(json.dumps(our_header(key)).encode())  # the same header, spelled with spaces
    with pytest.raises(InvalidJws, match="token signature is invalid"):
        jws.verify(f"{spaced}.{payload_segment}.{signature}", keyset.verifying)
    assert full_path == [key.kid]


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_altered_signature_bytes_on_a_sealed_token_gain_nothing(keysets, alg):
    """The hole the fast path leaves, and why it is harmless: the MAC vouches for the header and claims, not
    the signature bytes. We accept the same claims under other signature bytes of the right length; every
    other verifier (here PyJWT) refuses it: the token is worth less to its holder than the original."""
    keyset = keysets[alg]
    key = keyset.signing
    token = jws.sign(key, CLAIMS)
    altered = with_signature(token, bytes(key.signature_bytes))
    assert jws.verify(altered, keyset.verifying) == jws.verify(token, keyset.verifying)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(altered, key.public_key, algorithms=[alg])
    for wrong in (
        bytes(key.signature_bytes - 1),
        bytes(key.signature_bytes + 1),
    ):  # the length is still checked
        with pytest.raises(InvalidJws, match="token signature is invalid"):
            jws.verify(with_signature(token, wrong), keyset.verifying)


# -- the payload ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"[1,2]", b'"text"', b"1", b"null", b"true", b"{not json", b'{"a":1} x', b"\xff\xfe"],
)
def test_payload_that_is_not_a_json_object(keyset, payload):
    key = keyset.signing
    with pytest.raises(InvalidJws, match="token payload is not a JSON object"):
        jws.verify(forge(key, our_header(key), payload), keyset.verifying)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_payload_with_non_json_constants(keyset, constant):
    key = keyset.signing
    token = forge(key, our_header(key), b'{"sub":"ann","exp":' + constant + b"}")
    with pytest.raises(InvalidJws, match="token payload is not a JSON object"):
        jws.verify(token, keyset.verifying)


def test_header_with_non_json_constants(keyset):
    key = keyset.signing
    header = json.dumps({**our_header(key), "x": 1})[:-1] + ',"y":NaN}'
    with pytest.raises(InvalidJws, match="token header is not a JSON object"):
        jws.verify(forge(key, b64(header.encode())), keyset.verifying)


def test_deeply_nested_payload(keyset):
    key = keyset.signing
    token = forge(key, our_header(key), b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(InvalidJws, match="token payload is not a JSON object"):
        jws.verify(token, keyset.verifying)


@pytest.mark.parametrize("part", ["header", "payload"])
def test_a_name_twice_in_a_token_is_refused(keyset, part):
    key = keyset.signing
    header = f'{{"alg":"{key.alg}","kid":"{key.kid}","typ":"session+jwt"}}'
    payload = json.dumps(CLAIMS)[:-1] + ', "sub": "mallory"}'
    if part == "header":
        header = header[:-1] + ',"kid":"' + key.kid + '"}'
    else:
        assert json.loads(payload)["sub"] == "mallory"  # a lenient parser takes the last one
    segments = [base64.urlsafe_b64encode(x.encode()).rstrip(b"=") for x in (header, payload)]
    signing_input = b".".join(segments)
    token = (signing_input + b"." + base64.urlsafe_b64encode(key.sign(signing_input)).rstrip(b"=")).decode()
    with pytest.raises(InvalidJws, match="twice"):
        jws.verify(token, keyset.verifying)
