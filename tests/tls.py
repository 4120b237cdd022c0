"""Redis as production runs it, for the tests: TLS with a throwaway CA, the ACL of infra/redis/users.acl.

The servers listen on 127.0.0.1 and OTHER_ADDRESS, but their certificate names 127.0.0.1 only, so a
connection to OTHER_ADDRESS fails the host name check. (Not `localhost`: redis-py's cluster client turns it
into 127.0.0.1 before connecting.) A second CA, which signed nothing of theirs, stands in for a wrong CA."""

import dataclasses
import datetime
import hashlib
import ipaddress
import pathlib
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.maint_notifications import MaintNotificationsConfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
ACL_TEMPLATE = ROOT / "infra" / "redis" / "users.acl"
SERVICE_USER = "concurrency-service"
PASSWORD_PLACEHOLDER = "#PASSWORD_SHA256"
OTHER_ADDRESS = "127.0.0.2"  # loopback too, not in the certificate
ADMIN_USER = "test-admin"  # the tests' own login, to look at what the service did; not in the template


@dataclasses.dataclass(frozen=True)
class Pki:
    ca_file: str  # the CA that signed the server's certificate
    other_ca_file: str  # a CA that did not
    cert_file: str
    key_file: str


def make_pki(directory):
    """Write a CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA, into `directory`."""
    directory = pathlib.Path(directory)
    ca_key, ca_cert = _ca("concurrency tests CA")
    _, other_ca_cert = _ca("another CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = Pki(
        ca_file=str(directory / "ca.crt"),
        other_ca_file=str(directory / "other-ca.crt"),
        cert_file=str(directory / "redis.crt"),
        key_file=str(directory / "redis.key"),
    )
    pathlib.Path(paths.ca_file).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pathlib.Path(paths.other_ca_file).write_bytes(other_ca_cert.public_bytes(serialization.Encoding.PEM))
    pathlib.Path(paths.cert_file).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pathlib.Path(paths.key_file).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


@dataclasses.dataclass(frozen=True)
class Logins:
    acl_file: str
    service_password: str
    admin_password: str


def write_acl_file(directory):
    """infra/redis/users.acl with a new service password filled in, plus the tests' admin user."""
    service_password, admin_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    template = ACL_TEMPLATE.read_text()
    assert template.count(PASSWORD_PLACEHOLDER) == 1
    digest = hashlib.sha256(service_password.encode()).hexdigest()
    text = template.replace(PASSWORD_PLACEHOLDER, "#" + digest)
    text += f"user {ADMIN_USER} on >{admin_password} ~* &* +@all\n"
    path = pathlib.Path(directory) / "users.acl"
    path.write_text(text)
    return Logins(str(path), service_password, admin_password)


def server_args(pki, logins, port):
    """redis-server's arguments: TLS only on `port` (no plain port), the ACL file; clients show no cert."""
    return [
        *("--port", "0", "--tls-port", str(port)),
        *(
            "--tls-cert-file",
            pki.cert_file,
            "--tls-key-file",
            pki.key_file,
            "--tls-ca-cert-file",
            pki.ca_file,
        ),
        *("--tls-auth-clients", "no", "--aclfile", logins.acl_file, "--bind", "127.0.0.1", OTHER_ADDRESS),
    ]


def client_options(pki, username, password):
    """redis-py options of a TLS client of those servers, without the CLIENT SETINFO and CLIENT
    MAINT_NOTIFICATIONS that Redis 7.0 answers ERR (tests count the errors the service caused)."""
    return {
        "host": "127.0.0.1",  # the name in the certificate
        "ssl": True,
        "ssl_ca_certs": pki.ca_file,
        "username": username,
        "password": password,
        "driver_info": None,
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
