"""Compact JWS (RFC 7515) for our own tokens only: exactly our header, our keys, strict serialization.

Kept by hand because it is measured faster: `jwt.encode`/`jwt.decode` cost about as much again as the
ECDSA operations on every heartbeat (docs/performance.md). Deliberately narrower than a general JOSE
library: the header must be exactly the one we write (`alg`, `kid`, `typ`), the key is looked up by `kid`
in the given key set only, with that key's one algorithm; no other header parameter is understood.
"""

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from typing import Any

from . import strict_json
from .errors import InvalidJws
from .material import SigningKey, b64url
from .records import ALGORITHMS
from .strict_json import DuplicateName

TOKEN_TYPE = "session+jwt"  # the `typ` of every token we sign (RFC 8725 section 3.11)
HEADER_PARAMS = frozenset({"alg", "kid", "typ"})

# Made once, as json.dumps(..., separators) is not; UTF-8 as is, so ids of any script stay compact.
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@functools.lru_cache(maxsize=64)
def _header(alg: str, kid: str) -> tuple[dict[str, str], bytes]:
    """Return the protected header of every token the key signs, and its encoded segment."""
    header = {"alg": alg, "kid": kid, "typ": TOKEN_TYPE}
    return header, b64url(_ENCODE(header).encode())


def sign(key: SigningKey, claims: Mapping[str, Any]) -> str:
    """Return the compact JWS of `claims` signed by `key`."""
    signing_input = _header(key.alg, key.kid)[1] + b"." + b64url(_ENCODE(claims).encode())
    return (signing_input + b"." + b64url(key.sign(signing_input))).decode()


def verify(token: str, keys: Mapping[str, SigningKey]) -> dict[str, Any]:
    """Return the payload of a token signed by one of `keys` (by kid); raise InvalidJws otherwise."""
    if not _COMPACT.fullmatch(token):
        raise InvalidJws("token is not a compact JWS (three base64url parts)")
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = _json_object(header_b64, "header")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None or header != _header(key.alg, key.kid)[0]:
        raise _header_problem(header, key)
    signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode()
    if not key.verify(_b64decode(signature_b64, "signature"), signing_input):
        raise InvalidJws("token signature is invalid")
    return _json_object(payload_b64, "payload")


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
    """Decode canonical base64url only: no padding, no bits set past the data (one spelling per token)."""
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidJws(f"token {part} is not base64url") from None
    if b64url(data) != segment.encode():
        raise InvalidJws(f"token {part} is not canonical base64url")
    return data


def _json_object(segment: str, part: str) -> dict[str, Any]:
    try:
        value = strict_json.loads(_b64decode(segment, part))
    except DuplicateName as exc:
        raise InvalidJws(f"token {part} names {exc.name!r} twice") from None
    except (ValueError, RecursionError):
        raise InvalidJws(f"token {part} is not a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidJws(f"token {part} is not a JSON object")
    return value
