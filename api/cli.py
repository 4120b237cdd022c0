"""`concurrency-service`: run the server and manage signing keys."""

import argparse
import contextlib
import ipaddress
import os
import sys
import tempfile
from collections.abc import Iterator

from keys import cli as keys_cli
from keys.errors import KeyStoreError
from keys.keyring import Keyring
from keys.rotation import RotationPolicy

from .config import MULTIPROC_ENV, Config, ConfigError
from .server import SERVERS, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="concurrency-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default %(default)s)")
    serve.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    serve.add_argument("--threads", type=int, help="threads per worker (CONCURRENCY_THREADS, default 8)")
    serve.add_argument("--server", choices=SERVERS, default=SERVERS[0], help="default %(default)s")
    serve.add_argument("--keys-dir", help="signing keys (CONCURRENCY_KEYS_DIR)")
    serve.set_defaults(run=_serve)

    keys_cli.add_parser(commands, _keys_settings)

    args = parser.parse_args(keys_cli.kids_as_positionals(sys.argv[1:] if argv is None else argv))
    try:
        return args.run(args) or 0
    except (ConfigError, KeyStoreError) as exc:
        print(f"concurrency-service: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a key directory its owner cannot reach, say: a message, not a trace
        if args.command != "keys":
            raise
        print(f"concurrency-service: {exc} (as uid {os.geteuid()})", file=sys.stderr)
        return 2


def _keys_settings() -> keys_cli.Settings:
    """The service settings the key commands follow."""
    config = Config.from_env()
    rotation = RotationPolicy(
        jwks_max_age_s=config.jwks_max_age_s,
        reload_interval_s=config.keys_reload_s,
        propagation_s=config.keys_propagation_s,
        token_lifetime_s=config.longest_token_s,
        leeway_s=config.token_leeway_s,
    )
    return keys_cli.Settings(config.keys_dir, config.signing_key_pem or None, rotation)


def _serve(args: argparse.Namespace) -> int:
    for name, value in (("keys_dir", args.keys_dir), ("threads", args.threads)):
        if value is not None:  # the workers build their app from the environment
            os.environ[Config.env_name(name)] = str(value)
    config = Config.from_env()
    host = args.bind.rpartition(":")[0].strip("[]")
    if config.caller_modes == ("anonymous",) and not (_loopback(host) or config.allow_anonymous):
        print(
            f"concurrency-service: refusing to serve anonymous callers on {args.bind}, where anyone could"
            " act for any user: configure CONCURRENCY_USER_JWKS or CONCURRENCY_CALLERS, bind a loopback"
            " address, or set CONCURRENCY_ALLOW_ANONYMOUS=true.",
            file=sys.stderr,
        )
        return 2
    if Keyring.open(config.keys_dir, config.signing_key_pem, config.keys_reload_s).current.signing is None:
        print(
            f"concurrency-service: no active signing key in {config.keys_dir!r}.\n"
            f"Make one with:  concurrency-service keys generate --dir {config.keys_dir}",
            file=sys.stderr,
        )
        return 2
    with _metrics_dir():
        return run(args.server, args.bind, args.workers, config)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _metrics_dir() -> Iterator[None]:
    """Give the workers a fresh directory to share Prometheus figures through, unless one is set."""
    if os.environ.get(MULTIPROC_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="concurrency-metrics-") as directory:
        os.environ[MULTIPROC_ENV] = directory
        yield


if __name__ == "__main__":
    sys.exit(main())
