"""Strict JSON for what we parse from outside (request bodies, token segments): one meaning per text.

Refused: a name twice in one object (parsers disagree on which one wins, so a token or body could mean
one thing to us and another to a verifier or proxy), and NaN or Infinity (not JSON).
"""

import json
from typing import Any


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise DuplicateName(name)
            seen.add(name)
    return obj


class DuplicateName(ValueError):
    """An object names the same member twice."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the name {name!r} appears twice in one object")
        self.name = name


# Made once: json.loads(..., hooks) builds a decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constants, object_pairs_hook=_unique_names)


def loads(text: str | bytes) -> Any:
    """Parse JSON text; raise ValueError (DuplicateName for a repeated name) or RecursionError."""
    if isinstance(text, bytes):
        text = text.decode()  # UnicodeDecodeError is a ValueError
    return _DECODER.decode(text)
