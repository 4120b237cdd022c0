"""Key material: make, load and identify private keys; sign and verify with them; export public JWKs."""

import base64
import dataclasses
import functools
import hashlib
import hmac
import json
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from .errors import KeyStoreError
from .records import ALGORITHMS, KeyRecord

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

RSA_BITS = 3072
MIN_RSA_BITS = 2048
MAC_SALT = b"concurrency-service session token MAC"
ENV_SOURCE = "env"  # the `source` of a key given in the environment rather than the directory

_JWK_EXPORTERS: dict[str, Any] = {"ES256": ECAlgorithm, "EdDSA": OKPAlgorithm, "RS256": RSAAlgorithm}
# Made once: building them costs a few microseconds on every signature otherwise.
_SHA256 = hashes.SHA256()
_ECDSA_SHA256 = ec.ECDSA(_SHA256)
_PKCS1 = padding.PKCS1v15()
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_HALF_ORDER = P256_ORDER // 2
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


def b64url(data: bytes) -> bytes:
    """Encode base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """A key of the key set: its manifest record and its private key, if kept."""

    record: KeyRecord
    private_key: PrivateKey | None = None
    source: str = "dir"

    @property
    def kid(self) -> str:
        return self.record.kid

    @property
    def alg(self) -> str:
        return self.record.alg

    @property
    def state(self) -> str:
        return self.record.state

    @functools.cached_property
    def public_key(self) -> PublicKey:
        if self.private_key is None:
            raise KeyStoreError(f"key {self.kid}: its private key is not kept in state {self.state}")
        return self.private_key.public_key()

    @functools.cached_property
    def mac_key(self) -> bytes:
        """A secret derived from the private key (HKDF-SHA256, bound to the kid): whoever may sign may MAC."""
        if self.private_key is None:
            raise KeyStoreError(f"key {self.kid}: its private key is not kept in state {self.state}")
        secret = pem_of(self.private_key)
        hkdf = HKDF(_SHA256, 32, salt=MAC_SALT, info=self.kid.encode())
        return hkdf.derive(secret)

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA256 of `data` under `mac_key`."""
        mac = self._mac_start.copy()  # the key's pads hashed once, not per call
        mac.update(data)
        return mac.digest()

    @functools.cached_property
    def _mac_start(self) -> hmac.HMAC:
        return hmac.new(self.mac_key, digestmod=hashlib.sha256)

    @functools.cached_property
    def signature_bytes(self) -> int:
        """The length of this key's signatures: 64 for ES256 (r || s) and EdDSA, the modulus for RS256."""
        key = self.public_key
        return key.key_size // 8 if isinstance(key, rsa.RSAPublicKey) else 64

    def sign(self, data: bytes) -> bytes:
        """Return the JWS signature of `data` (for ES256 the fixed-size r || s of RFC 7518, not DER).

        ECDSA signatures are malleable: (r, n - s) verifies as well as (r, s). We sign with the low s only
        and verify only that, so each token we issue has exactly one spelling."""
        key = self.private_key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(key.sign(data, _ECDSA_SHA256))
            s = min(s, P256_ORDER - s)
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, _PKCS1, _SHA256)
        raise KeyStoreError(f"key {self.kid} cannot sign: its private key is not kept")

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Return whether `signature` is this key's JWS signature of `data`."""
        key = self.public_key
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                if len(signature) != 64:
                    return False
                r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                if s > _HALF_ORDER:  # the other spelling of a signature we would have made low
                    return False
                key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
            elif isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, data)
            else:
                key.verify(signature, data, _PKCS1, _SHA256)
        except InvalidSignature:
            return False
        return True

    def public_jwk(self) -> dict[str, Any]:
        """Return the public JWK with `kid`, `alg` and `use`; never private members."""
        jwk = _JWK_EXPORTERS[self.alg].to_jwk(self.public_key, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}


def generate_private_key(alg: str) -> PrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise KeyStoreError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")


def algorithm_of(private_key: object) -> str | None:
    """Return the one algorithm a private key may sign with, or None if we do not support its kind."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(private_key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(private_key, rsa.RSAPrivateKey) and private_key.key_size >= MIN_RSA_BITS:
        return "RS256"
    return None


def thumbprint(alg: str, public_key: PublicKey) -> str:
    """Return the RFC 7638 JWK thumbprint, used as `kid`."""
    jwk = _JWK_EXPORTERS[alg].to_jwk(public_key, as_dict=True)
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest()).decode()


def pem_of(private_key: PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_pem(data: bytes, where: str) -> tuple[PrivateKey, str]:
    """Parse a private PEM and name its algorithm; raise KeyStoreError naming `where`."""
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # the last: a curve OpenSSL lacks
        raise KeyStoreError(f"{where}: not a readable unencrypted private key ({exc})") from None
    alg = algorithm_of(private_key)
    if alg is None:
        raise KeyStoreError(
            f"{where}: unsupported key type; use P-256 (ES256), Ed25519 (EdDSA) or RSA >= 2048"
        )
    return private_key, alg  # type: ignore[return-value]  # algorithm_of checked the kind
