"""The identity provider's access tokens: verified with its JWKS (a URL, kept fresh off the request path, or
a file)."""

import base64
import binascii
import json
import logging
import threading
import time
import urllib.request
from typing import Any, Protocol

import jwt

from keys import strict_json

from .config import Config
from .errors import InvalidToken
from .requests import text_problem

log = logging.getLogger(__name__)

JWKS_FETCH_TIMEOUT_S = 2
JWKS_CACHE_S = 300  # the key set is fetched again this often
JWKS_REFETCH_S = 5  # and after an unknown kid, at most this often
MAX_JWKS_BYTES = 1 << 20

Claims = dict[str, Any]


class JwkSource(Protocol):
    """What PyJWKClient offers: the key that signed a token, by its `kid`."""

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK: ...


class UserTokens:
    """Verify user access tokens: our issuer, our audience, an allowed algorithm bound to the key."""

    def __init__(self, config: Config, source: JwkSource) -> None:
        self._config = config
        self._source = source

    def verify(self, token: str) -> Claims:
        """Return the verified claims of a user access token; raise InvalidToken naming the problem."""
        config = self._config
        try:
            key = self._source.get_signing_key_from_jwt(token)
            if key.algorithm_name not in config.user_algorithms:
                raise InvalidToken("user token algorithm is not allowed")
            claims: Claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                issuer=config.user_issuer,
                audience=config.user_audience,
                leeway=config.token_leeway_s,
                options={"require": ["sub", "exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, jwt.PyJWKClientError, ValueError) as exc:
            raise InvalidToken(f"user token is invalid: {exc}") from None
        _one_meaning(token)
        longest, sub = config.max_id_chars, claims["sub"]
        if not isinstance(sub, str) or not 0 < len(sub) <= longest:
            raise InvalidToken(f"user token 'sub' must be a user id of at most {longest} characters")
        problem = text_problem(sub)
        if problem:
            raise InvalidToken(f"user token 'sub' {problem}")
        return claims


def _one_meaning(token: str) -> None:
    """Refuse a header or payload that names a member twice: PyJWT takes the last, another parser the first,
    so `"sub":"ann","sub":"bob"` would be one user here and another elsewhere."""
    for segment in token.split(".")[:2]:
        try:
            strict_json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        except strict_json.DuplicateName as exc:
            raise InvalidToken(f"user token names {exc.name!r} twice") from None
        except (binascii.Error, ValueError, RecursionError):  # PyJWT has read it: not reached
            raise InvalidToken("user token is not JSON") from None


def jwks_from(source: str) -> JwkSource | None:
    """Return a cached JWKS URL client or a fixed file; None when user tokens are not configured."""
    if not source:
        return None
    if source.lower().startswith(("https://", "http://")):
        return _UrlJwks(source)
    with open(source, encoding="utf-8") as file:
        return _FileJwks(json.load(file))


class _FileJwks:
    """A JWKS read from a file once; PyJWKClient's interface, without the network."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._keys = _by_kid(document)

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
        kid = jwt.get_unverified_header(token).get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jwt.PyJWKClientError(f"no key with kid {kid!r}")
        return key


class _UrlJwks(_FileJwks):
    """A JWKS URL's keys, fetched on a thread of their own: a request never waits on the network.

    Fetched once when the worker starts (at most JWKS_FETCH_TIMEOUT_S), then every JWKS_CACHE_S, and soon
    after a token names an unknown kid, at most once every JWKS_REFETCH_S however many do (PyJWKClient
    fetched on the request's own thread, on the worker's event loop, and again on every unknown kid while
    the provider failed). A fetch that fails keeps the keys there were. A token signed with a key the
    provider published since the last fetch is refused (401) until the next one."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._keys: dict[str, jwt.PyJWK] = {}
        self._wake = threading.Event()
        self._fetched_at = 0.0
        self._fetch()
        threading.Thread(target=self._refresh, name="user-jwks", daemon=True).start()

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
        try:
            return super().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientError:
            self._wake.set()
            raise

    def _refresh(self) -> None:
        while True:
            self._wake.wait(JWKS_CACHE_S)
            time.sleep(max(0.0, self._fetched_at + JWKS_REFETCH_S - time.monotonic()))
            self._wake.clear()
            self._fetch()

    def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        try:
            opener = _LOOPBACK if self._url.lower().startswith("http://") else _HTTPS
            with opener.open(self._url, timeout=JWKS_FETCH_TIMEOUT_S) as answer:
                document = answer.read(MAX_JWKS_BYTES + 1)
            if len(document) > MAX_JWKS_BYTES:
                raise ValueError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
            self._keys = _by_kid(json.loads(document))
        except Exception as exc:  # whatever went wrong, the keys there were stay
            log.warning("cannot fetch the identity provider's JWKS from %s: %s", self._url, exc)


class _Refuse(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None  # the key set comes from the configured URL only (a redirect could downgrade to http)


_HTTPS = urllib.request.build_opener(_Refuse())  # through HTTPS_PROXY if set: TLS end to end
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}), _Refuse())  # http_proxy would
# carry a loopback http:// fetch off the machine, in the clear


def _by_kid(document: dict[str, Any]) -> dict[str, jwt.PyJWK]:
    return {key.key_id: key for key in jwt.PyJWKSet.from_dict(document).keys if key.key_id}
