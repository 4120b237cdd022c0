"""`concurrency-service keys ...`: the signing-key commands."""

import json
import logging
import os
import sys
import time

from api.config import Config

from .keyring import PEM_ENV, RELOAD_ENV, RELOAD_INTERVAL_S, KeySet
from .rotation import Lifecycle, Policy
from .store import ALGORITHMS, KeyStore, KeyStoreError


def add_parser(commands):
    """Add the `keys` command and its subcommands to the CLI's subparsers."""
    keys = commands.add_parser("keys", help="manage signing keys").add_subparsers(dest="keys", required=True)

    def command(name, run, help):
        parser = keys.add_parser(name, help=help, description=help)
        parser.add_argument("--dir", help="key directory (default: CONCURRENCY_KEYS_DIR)")
        parser.set_defaults(run=run)
        return parser

    generate = command(
        "generate", _generate, "make a new signing key (active if none is, else next); print its kid"
    )
    generate.add_argument("--alg", default="ES256", choices=ALGORITHMS)
    generate.add_argument(
        "--state", choices=("next", "active"), help="default: active if no key is, else next"
    )
    listing = command("list", _list, "show every key: kid, alg, state, age")
    listing.add_argument("--json", action="store_true", help="print the manifest records as JSON")
    rotate = command(
        "rotate", _rotate, "next key becomes active, active becomes retiring, a new next is made"
    )
    rotate.add_argument(
        "--force", action="store_true", help="activate a next key published less than max-age"
    )
    rotate.add_argument(
        "--alg", choices=ALGORITHMS, help="algorithm of a key made now (default: as the current)"
    )
    retire = command("retire", _retire, "withdraw a next or retiring key from the JWKS and verification")
    retire.add_argument("kid")
    retire.add_argument("--force", action="store_true", help="even while its tokens may still be valid")
    revoke = command("revoke", _revoke, "withdraw a key at once (compromised): its tokens stop verifying")
    revoke.add_argument("kid")
    prune = command("prune", _prune, "retire retiring keys whose last token has expired")
    prune.add_argument(
        "--token-lifetime", type=float, help="longest token lifetime in s (default: session TTL)"
    )
    command("jwks", _jwks, "print the JWKS the service publishes from this directory")


def _configure_logging():
    """Log every change of the `keys` package to stderr, with a time stamp."""
    logger = logging.getLogger("keys")
    for handler in [h for h in logger.handlers if getattr(h, "keys_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.keys_cli = True
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _store(args):
    return KeyStore(args.dir or Config.from_env().keys_dir)


def _lifecycle(args, token_lifetime_s=None):
    _configure_logging()
    config = Config.from_env()
    try:
        reload_s = float(os.environ.get(RELOAD_ENV, RELOAD_INTERVAL_S))
    except ValueError:
        raise KeyStoreError(f"{RELOAD_ENV}={os.environ[RELOAD_ENV]!r} is not a number of seconds") from None
    policy = Policy(
        jwks_max_age_s=config.jwks_max_age_s,
        reload_interval_s=reload_s,
        token_lifetime_s=token_lifetime_s or config.longest_token_s,
        leeway_s=config.token_leeway_s,
    )
    return Lifecycle(_store(args), policy)


def _say(lines):
    for line in lines:
        print(line)


def _generate(args):
    _configure_logging()
    print(_store(args).generate(args.alg, args.state))


def _list(args):
    store = _store(args)
    records = store.records()
    if args.json:
        print(json.dumps(records, indent=2))
        return
    now = time.time()
    print(f"{'KID':43}  {'ALG':5}  {'STATE':8}  {'AGE':>7}  {'IN STATE':>8}  NOTE")
    for record in records:
        state = record["state"]
        since = record["times"].get(state, record["created"])
        note = ""
        if state == "active" and since > now:
            note = f"signs in {since - now:.0f} s"
        elif state == "retiring" and record["times"]["retiring"] > now:
            note = f"signs for {record['times']['retiring'] - now:.0f} s more"
        age = _duration(now - record["created"])
        print(
            f"{record['kid']:43}  {record['alg']:5}  {state:8}  {age:>7}  {_duration(now - since):>8}  {note}"
        )
    if os.environ.get(PEM_ENV):
        print(f"(and one key from ${PEM_ENV}: active until a key here is)")


def _rotate(args):
    _say(_lifecycle(args).rotate(force=args.force, alg=args.alg))


def _retire(args):
    _say(_lifecycle(args).retire(args.kid, force=args.force))


def _revoke(args):
    _say(_lifecycle(args).revoke(args.kid))


def _prune(args):
    _say(_lifecycle(args, args.token_lifetime).prune())


def _jwks(args):
    print(json.dumps(KeySet(_store(args).load()).jwks, indent=2))


def _duration(seconds):
    seconds = max(0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
