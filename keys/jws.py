"""Compact JWS (RFC 7515) for our own tokens only: exactly our header, our keys, strict serialization.

Kept by hand because it is measured faster: `jwt.encode`/`jwt.decode` cost about as much again as the
ECDSA operations on every heartbeat (docs/performance.md). Deliberately narrower than a general JOSE
library: the header must be exactly the one we write (`alg`, `kid`, `typ`), the key is looked up by `kid`
in the given key set only, with that key's one algorithm; no other header parameter is understood.

The tokens we sign carry a MAC in their `jti` (a nonce, then 128 bits of HMAC-SHA256 over the header
and the payload as signed, keyed by a secret derived from the signing key: SigningKey.mac_key). Any
process that holds the key checks it in a microsecond and skips the signature's ECDSA verify, which is
most of a heartbeat's cost; a token whose MAC does not check takes the full path. docs/security.md says
what the MAC vouches for and what it does not (the signature bytes).
"""

import base64
import binascii
import functools
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

from . import strict_json
from .errors import InvalidJws
from .material import SigningKey, b64url
from .records import ALGORITHMS
from .strict_json import DuplicateName

TOKEN_TYPE = "session+jwt"  # the `typ` of every token we sign (RFC 8725 section 3.11)
HEADER_PARAMS = frozenset({"alg", "kid", "typ"})
NONCE_BYTES = 9  # 12 characters: a token's jti is unique
MAC_BYTES = 16  # 22 characters: a forgery is a 2^-128 guess
_NONCE_CHARS, _MAC_CHARS = 12, 22
_PLACEHOLDER = "~" * _MAC_CHARS  # never base64url: where the MAC goes, while it is computed
_PLACEHOLDER_BYTES = _PLACEHOLDER.encode()
_MAC_AT = -_MAC_CHARS - 2  # where the MAC starts in a payload we sign: before its closing `"}`

# Made once, as json.dumps(..., separators) is not; UTF-8 as is, so ids of any script stay compact.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# By length mod 4, the bits of the last character past the data (None: no such length in base64).
_SPARE_BITS = (0, None, 0b1111, 0b11)


@functools.lru_cache(maxsize=64)
def _header(alg: str, kid: str) -> tuple[dict[str, str], bytes]:
    """Return the protected header of every token the key signs, and its encoded segment."""
    header = {"alg": alg, "kid": kid, "typ": TOKEN_TYPE}
    return header, b64url(_ENCODE(header).encode())


def sign(key: SigningKey, claims: Mapping[str, Any]) -> str:
    """Return the compact JWS of `claims` signed by `key`, with its `jti`: a nonce and the MAC.

    The jti is the payload's last member, so the MAC's place is known: nothing a claim holds can move it.
    A `jti` in `claims` is replaced."""
    if "jti" in claims:
        claims = {name: value for name, value in claims.items() if name != "jti"}
    header_b64 = _header(key.alg, key.kid)[1]
    nonce = secrets.token_urlsafe(NONCE_BYTES).encode()
    members = _ENCODE(claims).encode()[1:-1]
    unsealed = b'{%b%b"jti":"%b%b"}' % (members, b"," if members else b"", nonce, _PLACEHOLDER_BYTES)
    sealed = unsealed[:_MAC_AT] + _mac(key, header_b64, unsealed) + unsealed[_MAC_AT + _MAC_CHARS :]
    signing_input = header_b64 + b"." + b64url(sealed)
    return (signing_input + b"." + b64url(key.sign(signing_input))).decode()


def verify(token: str, keys: Mapping[str, SigningKey]) -> dict[str, Any]:
    """Return the payload of a token signed by one of `keys` (by kid); raise InvalidJws otherwise."""
    if not _COMPACT.fullmatch(token):
        raise InvalidJws("token is not a compact JWS (three base64url parts)")
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = _parsed_header(header_b64)
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None or header != _header(key.alg, key.kid)[0]:
        raise _header_problem(header, key)
    payload = _b64decode(payload_b64, "payload")
    signature = _b64decode(signature_b64, "signature")
    if not (len(signature) == key.signature_bytes and _sealed(key, header_b64.encode(), payload)):
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode()
        if not key.verify(signature, signing_input):
            raise InvalidJws("token signature is invalid")
    return _json_object(payload, "payload")


@functools.lru_cache(maxsize=64)
def _parsed_header(segment: str) -> dict[str, Any]:
    """Decode a header segment; all of a key's tokens carry the same one, decoded once (never mutated)."""
    return _json_object(_b64decode(segment, "header"), "header")


def _mac(key: SigningKey, header_b64: bytes, unsealed: bytes) -> bytes:
    """Return the MAC of a token: over its header segment and its payload with the MAC's place held."""
    return b64url(key.mac(header_b64 + b"." + unsealed)[:MAC_BYTES])


def _sealed(key: SigningKey, header_b64: bytes, payload: bytes) -> bool:
    """Whether `payload` carries the MAC `key` makes of exactly this header and payload."""
    at = payload.find(b'"jti":"')  # a string's own quotes are escaped, so this is the jti member's
    if at < 0:
        return False
    start = at + 7 + _NONCE_CHARS
    given = payload[start : start + _MAC_CHARS]
    if payload[start + _MAC_CHARS : start + _MAC_CHARS + 1] != b'"':
        return False
    unsealed = payload[:start] + _PLACEHOLDER_BYTES + payload[start + _MAC_CHARS :]
    return hmac.compare_digest(given, _mac(key, header_b64, unsealed))


def _header_problem(header: dict[str, Any], key: SigningKey | None) -> InvalidJws:
    """Name what is wrong with a header that is not exactly one of ours."""
    if not HEADER_PARAMS.issuperset(header):
        return InvalidJws("token header has unexpected parameters")
    if header.get("typ") != TOKEN_TYPE:
        return InvalidJws("token has the wrong type")
    if header.get("alg") not in ALGORITHMS:
        return InvalidJws("token algorithm is not allowed")
    if key is None:
        return InvalidJws("token is signed with an unknown key")
    return InvalidJws("token algorithm does not match its key")


def _b64decode(segment: str, part: str) -> bytes:
    """Decode canonical base64url only: no padding, no bits set past the data (one spelling per token).

    `segment` holds base64url characters only (the caller's pattern says so)."""
    spare = _SPARE_BITS[len(segment) % 4]
    if spare is None:
        raise InvalidJws(f"token {part} is not base64url")
    if _B64URL.index(segment[-1]) & spare:
        raise InvalidJws(f"token {part} is not canonical base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidJws(f"token {part} is not base64url") from None


def _json_object(data: bytes, part: str) -> dict[str, Any]:
    try:
        value = strict_json.loads(data)
    except DuplicateName as exc:
        raise InvalidJws(f"token {part} names {exc.name!r} twice") from None
    except (ValueError, RecursionError):
        raise InvalidJws(f"token {part} is not a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidJws(f"token {part} is not a JSON object")
    return value
