"""Reading and checking request input: every problem becomes a 4xx naming it."""

import re
from collections.abc import Collection, Mapping
from typing import Any

import falcon

from keys import strict_json
from keys.strict_json import DuplicateName

from .errors import BadRequest, InvalidToken, PayloadTooLarge, UnsupportedMediaType

_CONTROL = re.compile("[\x00-\x1f\x7f]")


def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    """Return the request body, at most `max_bytes` long."""
    if req.content_length is not None and req.content_length > max_bytes:
        raise PayloadTooLarge.over(max_bytes)
    # Without Content-Length (chunked), bounded_stream reads nothing; the server ends req.stream.
    stream = req.bounded_stream if req.content_length is not None else req.stream
    raw = stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge.over(max_bytes)
    return bytes(raw)


def json_object(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """Return a request body as a JSON object: JSON by its Content-Type, strict, an object."""
    if not raw:
        raise BadRequest("request body is empty; send a JSON object")
    media = (content_type or "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {media or 'missing'!r}")
    try:
        body = strict_json.loads(raw)
    except DuplicateName as exc:
        raise BadRequest(f"field {exc.name!r} appears twice", field=exc.name) from None
    except (ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def require_strings(
    body: Mapping[str, Any], limits: Mapping[str, int], optional: Collection[str] = ()
) -> dict[str, str]:
    """Return the fields named in `limits`, each a non-empty string no longer than its limit; no others.

    A field named in `optional` may be absent (not null) and is then left out."""
    unknown = sorted(set(body) - set(limits))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
    values = {}
    for name, max_chars in limits.items():
        if name not in body and name in optional:
            continue
        value = body.get(name)
        if value is None:
            raise BadRequest(f"field {name!r} is required (and may not be null)", field=name)
        if not isinstance(value, str):
            raise BadRequest(f"field {name!r} must be a string", field=name)
        if not value:
            raise BadRequest(f"field {name!r} must not be empty", field=name)
        problem = text_problem(value)
        if problem:
            raise BadRequest(f"field {name!r} {problem}", field=name)
        if len(value) > max_chars:
            raise BadRequest(f"field {name!r} is longer than {max_chars} characters", field=name)
        values[name] = value
    return values


def bearer_token(header: str | None, what: str = "session token") -> str:
    """Return the token of an `Authorization: Bearer` header."""
    if not header:
        raise InvalidToken(f"Authorization: Bearer <{what}> is required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken(f"Authorization header must be 'Bearer <{what}>'")
    return token.strip()


def text_problem(value: str) -> str | None:
    """Say what makes `value` unfit to be an id or to be signed into a token; None when nothing does.

    Control characters are refused: JSON escapes them in six bytes each, so ids of them would make a
    token longer than the longest one accepted (MAX_TOKEN_CHARS), and no id needs them."""
    if _CONTROL.search(value):
        return "must not hold control characters"
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        return "is not valid unicode text"
    return None
