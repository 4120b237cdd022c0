"""Verify concurrency-service session tokens offline with PyJWT's PyJWKClient, as a playback backend would.

`SessionTokenVerifier.verify(token, stream, sid)` does every check of docs/integration.md ("Verifying session
tokens"). Run as a program, it is a small HTTP server guarding GET /media/STREAM/... (a stand-in for a
licence server or a playback backend; tests/test_verifiers.py runs it against the real service):

    python verify.py --jwks-url http://127.0.0.1:8000/.well-known/jwks.json --port 8081

answers 200 with the token's claims for a valid token of that stream (and of the session named by ?sid= or
the `sid` cookie, if any), 401 for a missing or invalid token, 403 for a valid token of another stream or
session, 503 when the JWKS cannot be had. Needs PyJWT with its crypto extra (2.15.1 in constraints.txt).
"""

import argparse
import http.cookies
import http.server
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import jwt

ALGORITHMS = ("ES256", "EdDSA", "RS256")  # what the service signs with; never HS*, never none
TOKEN_TYPE = "session+jwt"
REQUIRED = ["iss", "aud", "sub", "sid", "iat", "exp", "jti", "stream", "device"]
MAX_TOKEN_CHARS = 6144  # the service's own limit (api/config.py)
MIN_CACHE_S, MAX_CACHE_S = 1.0, 3600.0
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)\s*(?:,|$)", re.IGNORECASE)


class Refused(Exception):
    """A refused request: 401 invalid token, 403 valid but not for this resource, 503 no JWKS."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: the JWKS comes from the configured URL only."""

    def redirect_request(self, *args: Any) -> None:
        return None


class CachingJWKClient(jwt.PyJWKClient):
    """PyJWKClient that keeps the JWKS for its Cache-Control max-age and revalidates it with its ETag.

    PyJWKClient's own get_signing_key holds one lock over a whole refetch and starts its cooldown only after a
    fetch that succeeded: while the JWKS endpoint hangs, one forged kid stalls every verification, and while
    it fails, every forged kid costs a request. Here a fresh set is read without a lock, one thread fetches
    at a time, and every attempt, failed or not, counts towards the refresh interval.
    """

    def __init__(self, uri: str, refresh_interval_s: float = 10.0, timeout_s: float = 5.0) -> None:
        super().__init__(uri, cache_jwk_set=True, timeout=timeout_s)
        self.refresh_interval_s = refresh_interval_s
        self._etag: str | None = None
        self._last: jwt.PyJWKSet | None = None
        self._opener = urllib.request.build_opener(_NoRedirects())
        self._fetch_lock = threading.Lock()
        self._attempted_at = -float("inf")  # monotonic start of the last fetch, failed or not
        self._failed = False
        self.fetches = 0

    def get_signing_key(self, kid: str) -> jwt.PyJWK:
        """Return the key of `kid`; fetch the JWKS when expired, or (rate-limited) when `kid` is unknown."""
        jwk_set = self.jwk_set_cache.get() if self.jwk_set_cache is not None else None
        if jwk_set is None:
            jwk_set = self._fetch_expired()
        key = _match(jwk_set, kid)
        if key is None and time.monotonic() - self._attempted_at >= self.refresh_interval_s:
            # a key published since we fetched, or a forged kid: one refetch per interval either way
            jwk_set = self._refetch() or jwk_set
            key = _match(jwk_set, kid)
        if key is None:
            raise jwt.PyJWKClientError(f"unknown kid {kid}")
        return key

    def _fetch_expired(self) -> jwt.PyJWKSet:
        """Fetch the JWKS we lack, or take the one fetched by the thread we waited for."""
        with self._fetch_lock:
            if self.jwk_set_cache is not None and (jwk_set := self.jwk_set_cache.get()) is not None:
                return jwk_set
            if self._failed and time.monotonic() - self._attempted_at < self.refresh_interval_s:
                # fail fast rather than have every request wait out its own timeout
                raise jwt.PyJWKClientConnectionError("the last JWKS fetch failed a moment ago")
            return self._fetch()

    def _refetch(self) -> jwt.PyJWKSet | None:
        """Refetch the JWKS for an unknown kid; None if another thread made this interval's attempt."""
        with self._fetch_lock:
            if time.monotonic() - self._attempted_at < self.refresh_interval_s:
                return None
            return self._fetch()

    def _fetch(self) -> jwt.PyJWKSet:
        self._attempted_at, self._failed = time.monotonic(), True
        jwk_set: jwt.PyJWKSet = self.fetch_data()
        self._failed = False
        return jwk_set

    def fetch_data(self) -> Any:
        """Fetch the JWKS (conditionally when we hold one), and keep it as long as the answer says."""
        headers = {"Accept": "application/json"}
        if self._etag and self._last is not None:
            headers["If-None-Match"] = self._etag
        self.fetches += 1
        try:
            request = urllib.request.Request(self.uri, headers=headers)
            with self._opener.open(request, timeout=self.timeout) as ans:
                cache_control, etag = ans.headers.get("Cache-Control", ""), ans.headers.get("ETag")
                jwk_set: Any = jwt.PyJWKSet.from_dict(json.load(ans))
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code != 304 or self._last is None:
                raise jwt.PyJWKClientConnectionError(f"JWKS answered {exc.code}") from None
            cache_control, etag, jwk_set = exc.headers.get("Cache-Control", ""), self._etag, self._last
        except (OSError, ValueError) as exc:
            raise jwt.PyJWKClientConnectionError(f"cannot fetch the JWKS: {exc}") from None
        match = _MAX_AGE.search(cache_control)
        max_age = float(match.group(1)) if match and "no-store" not in cache_control.lower() else 0.0
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.lifespan = min(max(max_age, MIN_CACHE_S), MAX_CACHE_S)
            self.jwk_set_cache.put(jwk_set)
        self._etag, self._last = etag, jwk_set
        return jwk_set


def _match(jwk_set: jwt.PyJWKSet, kid: str) -> jwt.PyJWK | None:
    return next((key for key in jwk_set.keys if key.key_id == kid), None)


class SessionTokenVerifier:
    """Verify session tokens with the service's JWKS; one instance per process, safe across threads."""

    def __init__(
        self,
        jwks_url: str,
        issuer: str = "concurrency-service",
        audience: str = "playback",
        leeway_s: float = 5.0,
        refresh_interval_s: float = 10.0,
    ) -> None:
        self.jwks = CachingJWKClient(jwks_url, refresh_interval_s)
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s

    def verify(self, token: str, stream: str, sid: str | None = None) -> dict[str, Any]:
        """Return the claims of `token` if it is valid for `stream` (and session `sid`); raise Refused."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Refused(401, "token too long")
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if not isinstance(kid, str):
                raise Refused(401, "no kid")
            key = self.jwks.get_signing_key(kid)  # only from the JWKS, never from the token
            if key.algorithm_name not in ALGORITHMS or key.public_key_use not in ("sig", None):
                raise Refused(401, f"key {kid} is not a signing key of ours")
            decoded = jwt.decode_complete(
                token,
                key,
                algorithms=[key.algorithm_name],  # the key's own algorithm, never the header's choice
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway_s,
                options={"require": REQUIRED, "strict_aud": True},
            )
        except (jwt.PyJWKClientConnectionError, jwt.PyJWKSetError) as exc:
            raise Refused(503, f"JWKS unavailable: {exc}") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:  # unknown kid; every token check
            raise Refused(401, f"{type(exc).__name__}: {exc}") from None
        claims: dict[str, Any] = decoded["payload"]
        if decoded["header"].get("typ") != TOKEN_TYPE:
            raise Refused(401, "wrong token type")
        # PyJWT reads the time claims with int(), so it takes "1700000000" (and True) for a time
        times = [claims[name] for name in ("iat", "exp", "nbf") if name in claims]
        if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in times):
            raise Refused(401, "a time claim is not a number")
        if not all(isinstance(claims[name], str) for name in ("sub", "sid", "stream", "device", "jti")):
            raise Refused(401, "a string claim is not a string")
        if claims["stream"] != stream:
            raise Refused(403, "token is for another stream")
        if sid is not None and claims["sid"] != sid:
            raise Refused(403, "token is for another session")
        return claims


def _media_handler(verifier: SessionTokenVerifier) -> type[http.server.BaseHTTPRequestHandler]:
    class MediaHandler(http.server.BaseHTTPRequestHandler):
        """GET /media/STREAM/...: 200 with the claims when the token is valid for STREAM, else 401/403."""

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            segments = [urllib.parse.unquote(segment) for segment in url.path.split("/")]
            # dot segments, percent-encoded or not, are refused rather than resolved: a proxy in front may
            # resolve /media/a/%2e%2e/b/ to stream b, so reading `a` from it would be wrong
            if len(segments) < 4 or segments[1] != "media" or {".", ".."} & set(segments):
                return self._answer(404, {"error": "not found"})
            stream = segments[2]
            sid = urllib.parse.parse_qs(url.query).get("sid", [None])[0] or self._cookie("sid")
            try:
                claims = verifier.verify(self._token(url.query), stream, sid)
            except Refused as refusal:
                bearer = 'Bearer error="invalid_token"'
                challenge = {"WWW-Authenticate": bearer} if refusal.status == 401 else {}
                return self._answer(refusal.status, {"error": refusal.reason}, challenge)
            return self._answer(200, {"ok": True, "claims": claims})

        def _token(self, query: str) -> str:
            header = self.headers.get("Authorization", "")
            if header[:7].lower() == "bearer ":
                return header[7:].strip()
            if header:
                raise Refused(401, "Authorization is not a Bearer token")
            token = urllib.parse.parse_qs(query).get("token", [""])[0]
            if not token:
                raise Refused(401, "no token")
            return token

        def _cookie(self, name: str) -> str | None:
            cookies = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
            return cookies[name].value if name in cookies else None

        def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {**(headers or {}), "Content-Type": "application/json"}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass

    return MediaHandler


def main() -> None:
    """Serve GET /media/STREAM/... guarded by session tokens until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jwks-url", required=True)
    parser.add_argument("--issuer", default="concurrency-service")
    parser.add_argument("--audience", default="playback")
    parser.add_argument("--leeway", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--refresh-interval", type=float, default=10.0, help="seconds between kid refetches")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    verifier = SessionTokenVerifier(
        args.jwks_url, args.issuer, args.audience, args.leeway, args.refresh_interval
    )
    server = http.server.ThreadingHTTPServer((args.host, args.port), _media_handler(verifier))
    print(f"verifying session tokens on http://{args.host}:{server.server_port}/media/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
