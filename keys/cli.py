"""`concurrency-service keys ...`: the signing-key commands."""

from api.config import Config

from .store import ALGORITHMS, KeyStore


def add_parser(commands):
    """Add the `keys` command and its subcommands to the CLI's subparsers."""
    keys = commands.add_parser("keys", help="manage signing keys").add_subparsers(dest="keys", required=True)
    generate = keys.add_parser("generate", help="make a new signing key and print its kid")
    generate.add_argument("--dir", help="key directory (default: CONCURRENCY_KEYS_DIR)")
    generate.add_argument("--alg", default="ES256", choices=ALGORITHMS)
    generate.set_defaults(run=_generate)


def _store(args):
    return KeyStore(args.dir or Config.from_env().keys_dir)


def _generate(args):
    print(_store(args).generate(args.alg))
