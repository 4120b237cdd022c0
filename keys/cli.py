"""`concurrency-service keys ...`: the signing-key commands."""

import argparse
import dataclasses
import json
import logging
import math
import os
import pwd
import stat
import sys
import time
from collections.abc import Callable

from .errors import KeyStoreError
from .keyring import KeySet
from .records import ALGORITHMS, KID
from .rotation import Lifecycle, RotationPolicy, Step, at
from .store import PEM_ENV, KeyStore

KID_COMMANDS = ("retire", "revoke")  # the commands that take a kid as their one positional argument
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the commands need from the service's configuration."""

    keys_dir: str
    env_pem: str | None
    rotation: RotationPolicy


def add_parser(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", settings: Callable[[], Settings]
) -> None:
    """Add the `keys` command and its subcommands; `settings()` is called when one runs."""
    keys = commands.add_parser("keys", help="manage signing keys").add_subparsers(dest="keys", required=True)

    def command(
        name: str, run: Callable[[argparse.Namespace, Settings], None], help: str
    ) -> argparse.ArgumentParser:
        parser = keys.add_parser(name, help=help, description=help)
        parser.add_argument("--dir", help="key directory (default: CONCURRENCY_KEYS_DIR)")

        def run_as_owner(args: argparse.Namespace) -> None:
            given = settings()
            args.dir = as_owner_of(args.dir or given.keys_dir)
            run(args, given)

        parser.set_defaults(run=run_as_owner)
        return parser

    generate = command(
        "generate", _generate, "make a new signing key (active if none is, else next); print its kid"
    )
    generate.add_argument("--alg", default="ES256", choices=ALGORITHMS)
    generate.add_argument(
        "--state",
        choices=("next", "active"),
        help="default: active if no key is, else next (active is refused then: `keys rotate` switches keys)",
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
    maintain = command(
        "maintain",
        _maintain,
        "do what is due (idempotent; run it hourly): make an active key if none, prune, make a next key if"
        " none, rotate when the active key is old and the next one published long enough",
    )
    maintain.add_argument(
        "--rotate-after",
        type=duration,
        default="30d",
        metavar="DURATION",
        help="rotate once the active key has signed this long: 30d, 12h, 90m, 3600s (default %(default)s)",
    )


def as_owner_of(directory: str) -> str:
    """Run as root (`sudo concurrency-service keys ...`), let no one but root and the key directory's owner
    decide where the command works; return the directory, resolved.

    The path is walked one name at a time, symlinks included. Every directory and symlink met must be
    root's or the owner's, and no directory met may be writable by others (a sticky one, as /tmp, may be,
    as others may not rename what is not theirs there; not the key directory, nor the one it goes in).
    The owner is that of the key directory, or, for one yet to be made, of the directory it goes in. The
    command then runs with the owner's uid, primary group and no other groups (root's, if root owns it),
    taken before anything is touched: what it writes is the owner's to read, and no link or swapped
    directory can lead root's powers elsewhere."""
    if os.geteuid() != 0:
        return directory
    met, path = _walk(os.path.join(os.getcwd(), directory))
    owner = met[-1][1].st_uid
    for name, status in met:
        changeable = status.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not stat.S_ISLNK(status.st_mode)
        last = name == met[-1][0]  # the key directory, or the one it is to be made in: sticky will not do
        if status.st_uid not in (0, owner) or (changeable and (last or not status.st_mode & stat.S_ISVTX)):
            raise KeyStoreError(
                f"{directory}: as root, every directory and link on its way must be root's or its owner's,"
                f" and writable by them alone; {name} is not (run the command as the key directory's owner)"
            )
    if owner != 0:
        try:
            gid = pwd.getpwuid(owner).pw_gid
        except KeyError:  # a uid without an account (a container's): the directory's group
            gid = met[-1][1].st_gid
        if gid == 0:
            raise KeyStoreError(f"{path}: its owner's group would be root's; give it the owner's own group")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(owner, owner, owner)
    return path


def _walk(path: str) -> tuple[list[tuple[str, os.stat_result]], str]:
    """Resolve `path` one name at a time; return every directory and symlink met (the last: the key
    directory, or the directory it goes in) and the resolved path."""
    met = [("/", os.lstat("/"))]
    at, names, links = "/", [name for name in path.split("/") if name], 0
    while names:
        name = names.pop(0)
        if name in (".", ".."):
            at = at if name == "." else os.path.dirname(at)
            continue
        here = os.path.join(at, name)
        try:
            status = os.lstat(here)
        except FileNotFoundError:
            return _ending_at(met, at), os.path.join(here, *names)
        met.append((here, status))
        if stat.S_ISLNK(status.st_mode):
            links += 1
            if links > 40:
                raise KeyStoreError(f"{path}: too many symbolic links")
            target = os.readlink(here)
            names = [name for name in target.split("/") if name] + names
            at = "/" if target.startswith("/") else at
        else:
            at = here
    return _ending_at(met, at), at


def _ending_at(met: list[tuple[str, os.stat_result]], at: str) -> list[tuple[str, os.stat_result]]:
    """`met`, with the directory the walk ended in last (`..` may have left another there)."""
    return met if met[-1][0] == at else [*met, (at, os.lstat(at))]


def duration(text: str) -> float:
    """Parse `30d`, `12h`, `90m`, `3600s` or `3600` into seconds."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in DURATION_UNITS else (text, "s")
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30d, 12h, 90m or 3600s")
    return seconds


def kids_as_positionals(argv: list[str]) -> list[str]:
    """Move a kid that starts with '-' (one in 64 do) behind '--', so argparse takes it as the kid."""
    if len(argv) < 2 or argv[0] != "keys" or argv[1] not in KID_COMMANDS:
        return argv
    kids = [
        i
        for i, arg in enumerate(argv)
        if arg.startswith("-") and KID.fullmatch(arg) and argv[i - 1] != "--dir"
    ]
    if not kids or "--" in argv:
        return argv
    return [arg for i, arg in enumerate(argv) if i not in kids] + ["--", *(argv[i] for i in kids)]


def _configure_logging() -> None:
    """Log every change of the `keys` package to stderr, with a time stamp."""
    logger = logging.getLogger("keys")
    for handler in [h for h in logger.handlers if getattr(h, "keys_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.keys_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _store(args: argparse.Namespace, settings: Settings) -> KeyStore:
    return KeyStore(args.dir or settings.keys_dir)


def _lifecycle(args: argparse.Namespace, settings: Settings) -> Lifecycle:
    _configure_logging()
    return Lifecycle(_store(args, settings), settings.rotation)


def _generate(args: argparse.Namespace, settings: Settings) -> None:
    _configure_logging()
    store = KeyStore(args.dir or settings.keys_dir, env_pem=settings.env_pem)  # an env key is active too
    print(store.generate(args.alg, args.state))


def _list(args: argparse.Namespace, settings: Settings) -> None:
    records = _store(args, settings).records()
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return
    now = time.time()
    print(f"{'KID':43}  {'ALG':5}  {'STATE':8}  {'AGE':>7}  {'IN STATE':>8}  NOTE")
    for record in records:
        note = ""
        if record.state == "active" and record.since > now:
            note = f"signs in {record.since - now:.0f} s"
        elif record.state == "retiring" and record.active_until > now:
            note = f"signs for {record.active_until - now:.0f} s more"
        age, in_state = _duration(now - record.created), _duration(now - record.since)
        print(f"{record.kid:43}  {record.alg:5}  {record.state:8}  {age:>7}  {in_state:>8}  {note}")
    if settings.env_pem:
        print(f"(and one key from ${PEM_ENV}: active until a key here is)")


def _rotate(args: argparse.Namespace, settings: Settings) -> None:
    _tell(_lifecycle(args, settings).rotate(force=args.force, alg=args.alg), settings.rotation)


def _retire(args: argparse.Namespace, settings: Settings) -> None:
    _tell(_lifecycle(args, settings).retire(args.kid, force=args.force), settings.rotation)


def _revoke(args: argparse.Namespace, settings: Settings) -> None:
    _tell(_lifecycle(args, settings).revoke(args.kid), settings.rotation)


def _prune(args: argparse.Namespace, settings: Settings) -> None:
    policy = settings.rotation
    if args.token_lifetime:
        policy = dataclasses.replace(policy, token_lifetime_s=args.token_lifetime)
    _tell(
        _lifecycle(args, dataclasses.replace(settings, rotation=policy)).prune(), policy, "nothing to prune"
    )


def _maintain(args: argparse.Namespace, settings: Settings) -> None:
    _configure_logging()
    # With a key from the environment signing, the directory's first key must be published before it signs.
    store = KeyStore(args.dir or settings.keys_dir, env_pem=settings.env_pem)
    _tell(Lifecycle(store, settings.rotation).maintain(args.rotate_after), settings.rotation)


def _jwks(args: argparse.Namespace, settings: Settings) -> None:
    print(json.dumps(KeySet(_store(args, settings).load()).jwks, indent=2))


def _tell(steps: list[Step], policy: RotationPolicy, nothing: str = "nothing to do") -> None:
    """Print one line per step for the operator."""
    reach = f"{policy.view_lag_s:g} s (the propagation bound plus the workers' reload interval)"
    for step in steps:
        when = at(step.at) if step.at is not None else ""
        print(
            {
                "made-active": f"made active key {step.kid} ({step.alg}); it signs now (there was none)",
                "made-next": f"made next key {step.kid} ({step.alg}); it is published now",
                "wait-for-caches": f"verifiers may cache the JWKS for {policy.jwks_max_age_s:g} s: run"
                f" `concurrency-service keys rotate` again after {when}"
                " (or now with --force, which may fail tokens at verifiers holding an old JWKS)",
                "signs-from": f"{step.kid} signs from {when} (every instance has loaded it by then)",
                "signs-now": f"{step.kid} signs from now",
                "signs-on": f"{step.kid} goes on signing: the rotation to the revoked key is called off",
                "retiring": f"{step.kid} is retiring: it verifies until pruned, after {when}",
                "retired": f"{step.kid} is retired: gone from the JWKS and from verification within {reach}",
                "pruned": f"{step.kid} is retired (its last token expired)",
                "stays-retiring": f"{step.kid} stays retiring until {when}",
                "revoked": f"{step.kid} is revoked: gone from the JWKS and from verification within {reach}",
                "next-rotation": f"{step.kid} becomes active at the first `keys maintain` after {when}",
            }[step.kind]
        )
    if not steps:
        print(nothing)


def _duration(seconds: float) -> str:
    seconds = max(0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
