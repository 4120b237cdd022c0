"""Verify concurrency-service session tokens offline with PyJWT's PyJWKClient, as a playback backend would.

`SessionTokenVerifier.verify(token, stream, sid)` does every check of docs/integration.md ("Verifying session
tokens"). Run as a program, it is a small HTTP server guarding GET /media/STREAM/... (a stand-in for a
licence server or a playback backend; tests/test_verifiers.py runs it against the real service):

    python verify.py --jwks-url http://127.0.0.1:8000/.well-known/jwks.json --port 8081

answers 200 with the token's claims for a valid token of that stream (and of the session named by ?sid= or
the `sid` cookie, if any), 401 for a missing or invalid token, 403 for a valid token of another stream or
session, 503 when the JWKS cannot be had. Needs PyJWT with its crypto extra and PyJWKClient's
`cooldown_duration` (2.15.1 in constraints.txt; 2.10 lacks it).
"""

import argparse
import http.cookies
import http.server
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import jwt

ALGORITHMS = ("ES256", "EdDSA", "RS256")  # what the service signs with; never HS*, never none
TOKEN_TYPE = "session+jwt"
REQUIRED = ["iss", "aud", "sub", "sid", "iat", "exp", "jti", "stream", "device"]
MAX_TOKEN_CHARS = 4096
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
    """PyJWKClient that keeps the JWKS for its Cache-Control max-age and revalidates it with its ETag."""

    def __init__(self, uri: str, refresh_interval_s: float = 10.0, timeout_s: float = 5.0) -> None:
        # cooldown_duration: an unknown kid refetches the JWKS at most once per refresh_interval_s
        super().__init__(uri, cache_jwk_set=True, cooldown_duration=refresh_interval_s, timeout=timeout_s)
        self._etag: str | None = None
        self._last: jwt.PyJWKSet | None = None
        self._opener = urllib.request.build_opener(_NoRedirects())
        self.fetches = 0

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
        self._last_successful_fetch = time.monotonic()  # starts PyJWKClient's refresh cooldown
        return jwk_set


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
            key = self.jwks.get_signing_key(kid)  # only from the JWKS; refetched (rate-limited) if unknown
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
            segments = url.path.split("/")
            if len(segments) < 4 or segments[1] != "media" or {".", ".."} & set(segments):
                return self._answer(404, {"error": "not found"})
            stream = urllib.parse.unquote(segments[2])
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
