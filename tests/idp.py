"""A local identity provider for tests: key pairs, their JWKS on a loopback port, user access tokens."""

import base64
import http.server
import json
import threading
import time

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

JWKS_PATH = "/.well-known/jwks.json"


class IdentityProvider:
    """Key pairs, their JWKS served on a loopback port, and user access tokens signed with them."""

    issuer = "https://idp.example.test/"
    audience = "concurrency-service"

    def __init__(self):
        self._private = {}  # kid -> (private key, algorithm)
        self._lock = threading.Lock()
        self._fetches = 0
        self.add_key("idp-rsa", "RS256")
        self.add_key("idp-ec", "ES256")
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _JwksHandler)
        self._httpd.daemon_threads = True
        self._httpd.idp = self
        self.url = f"http://127.0.0.1:{self._httpd.server_port}{JWKS_PATH}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def add_key(self, kid, algorithm):
        """Make a key pair and publish its public half."""
        if algorithm == "RS256":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        with self._lock:
            self._private[kid] = (key, algorithm)

    def jwks(self):
        keys = []
        with self._lock:
            for kid, (key, algorithm) in self._private.items():
                exporter = RSAAlgorithm if algorithm == "RS256" else ECAlgorithm
                jwk = exporter.to_jwk(key.public_key(), as_dict=True)
                keys.append({**jwk, "kid": kid, "alg": algorithm, "use": "sig"})
        return {"keys": keys}

    def write_jwks(self, path):
        path.write_text(json.dumps(self.jwks()))
        return str(path)

    @property
    def fetches(self):
        """How often the JWKS has been fetched."""
        with self._lock:
            return self._fetches

    def count_fetch(self):
        with self._lock:
            self._fetches += 1

    def token(self, subject, kid="idp-rsa", signing_key=None, headers=None, **claims):
        """Return an access token for `subject`; a claim given as None is left out."""
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": self.audience, "sub": subject, "iat": now, "exp": now + 300}
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        key, algorithm = self._private.get(kid, self._private["idp-rsa"])
        return jwt.encode(
            payload, signing_key or key, algorithm=algorithm, headers={"kid": kid, **(headers or {})}
        )

    def signed(self, payload_text, kid="idp-rsa"):
        """Return a token whose payload is `payload_text` exactly (a name twice, say), signed with `kid`."""
        key, _ = self._private[kid]
        head = b64url(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())
        signing_input = f"{head}.{b64url(payload_text.encode())}"
        signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def public_pem(self, kid="idp-rsa"):
        key = self._private[kid][0].public_key()
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _JwksHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        idp = self.server.idp
        if self.path != JWKS_PATH:
            self.send_error(404)
            return
        idp.count_fetch()
        body = json.dumps(idp.jwks()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/jwk-set+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - the signature http.server calls
        pass


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header, payload, signature=b""):
    """Return a compact JWS with the given parts, signed with nothing or with `signature`."""
    head = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    return head + "." + b64url(signature)
