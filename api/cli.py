"""`concurrency-service`: run the server and manage signing keys."""

import argparse
import contextlib
import os
import sys
import tempfile

from keys import cli as keys_cli
from keys.keyring import Keyring
from keys.store import KeyStoreError

from .config import MULTIPROC_ENV, Config, ConfigError
from .server import SERVERS, run


def main(argv=None):
    parser = argparse.ArgumentParser(prog="concurrency-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default %(default)s)")
    serve.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    serve.add_argument("--threads", type=int, default=8, help="threads per worker (default %(default)s)")
    serve.add_argument("--server", choices=SERVERS, default="granian", help="default %(default)s")
    serve.add_argument("--keys-dir", help="signing keys (CONCURRENCY_KEYS_DIR)")
    serve.set_defaults(run=_serve)

    keys_cli.add_parser(commands)

    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except (ConfigError, KeyStoreError) as exc:
        print(f"concurrency-service: {exc}", file=sys.stderr)
        return 2


def _serve(args):
    if args.keys_dir:
        os.environ["CONCURRENCY_KEYS_DIR"] = args.keys_dir
    config = Config.from_env()
    keyring = Keyring.from_dir(config.keys_dir)
    if keyring.current.signing is None:
        print(
            f"concurrency-service: no active signing key in {config.keys_dir!r}.\n"
            f"Make one with:  concurrency-service keys generate --dir {config.keys_dir}",
            file=sys.stderr,
        )
        return 2
    with _metrics_dir():
        run(args.server, args.bind, args.workers, args.threads)


@contextlib.contextmanager
def _metrics_dir():
    """Give the workers a fresh directory to share Prometheus figures through, unless one is set."""
    if os.environ.get(MULTIPROC_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="concurrency-metrics-") as directory:
        os.environ[MULTIPROC_ENV] = directory
        yield


if __name__ == "__main__":
    sys.exit(main())
