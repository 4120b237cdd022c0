"""`scripts/bench`: start Redis and the service, drive start, heartbeat and stop with wrk, print figures."""

import argparse
import json
import shlex
import signal
import sys

from . import report, scaling, suite, wrk
from .processes import BenchError

DEFAULTS = suite.Options()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    option = parser.add_argument
    option("--server", default=DEFAULTS.server, help="a `serve --server` choice (%(default)s)")
    option("--workers", type=int, default=DEFAULTS.workers, help="worker processes (%(default)s)")
    option("--cores", type=int, default=DEFAULTS.cores, help="CPUs the server is pinned to (%(default)s)")
    option("--threads", type=int, default=DEFAULTS.threads, help="threads per worker (%(default)s)")
    option("--connections", type=int, default=DEFAULTS.connections, help="wrk connections (%(default)s)")
    option("--duration", type=int, default=DEFAULTS.duration_s, help="seconds per run (%(default)s)")
    option("--ops", default=",".join(DEFAULTS.ops), help="comma-separated, of %(default)s")
    option(
        "--pin",
        action=argparse.BooleanOptionalAction,
        help="server on the first --cores CPUs, wrk and Redis on the others (default: on)",
    )
    option(
        "--paced",
        type=float,
        default=DEFAULTS.paced,
        help="also run each op at this share of its saturated rate, for latency below saturation; 0 skips",
    )
    option("--warmup", type=int, default=DEFAULTS.warmup_s, help="seconds of starts first (%(default)s)")
    option(
        "--memory-sessions",
        type=_counts,
        default=DEFAULTS.memory_sessions,
        help="comma-separated counts of sessions for the Redis memory figures (10000,100000); 0 skips them",
    )
    option(
        "--crypto-iterations",
        type=int,
        default=DEFAULTS.crypto_iterations,
        help="ES256 signs and verifies timed for the floor (%(default)s)",
    )
    option(
        "--flood",
        type=int,
        default=DEFAULTS.flood_s,
        help="seconds of a one-account start/stop flood, then of the same churn spread (0 skips it)",
    )
    option(
        "--peer", default=DEFAULTS.peer_dir, help="the Node peer's folder, run beside heartbeat (%(default)s)"
    )
    option("--no-peer", dest="peer", action="store_const", const=None, help="skip the Node peer's row")
    option(
        "--scaling",
        type=_counts,
        default=(),
        help="instead of the table: heartbeats with each of these worker counts (1,2,4,8), one core each",
    )
    option("--json", action="store_true", help="print the figures as JSON instead of the table")
    args = parser.parse_args(argv)
    ops = tuple(op.strip() for op in args.ops.split(",") if op.strip())
    unknown = sorted(set(ops) - set(wrk.OPS))
    if unknown or not ops:
        parser.error(f"--ops takes some of {','.join(wrk.OPS)}")
    if min(args.workers, args.cores, args.threads, args.connections, args.duration, *args.scaling) < 1:
        parser.error(
            "--workers, --cores, --threads, --connections, --duration and --scaling must be at least 1"
        )
    if not 0 <= args.paced < 1:
        parser.error("--paced is a share of the saturated rate: at least 0, below 1")
    return (
        suite.Options(
            ops=ops,
            server=args.server,
            workers=args.workers,
            cores=args.cores,
            threads=args.threads,
            connections=args.connections,
            duration_s=args.duration,
            warmup_s=max(0, args.warmup),
            pin=args.pin is not False,
            paced=args.paced,
            memory_sessions=tuple(n for n in args.memory_sessions if n > 0),
            crypto_iterations=max(10, args.crypto_iterations),
            flood_s=max(0, args.flood),
            peer_dir=args.peer,
        ),
        args.scaling,
        args.json,
    )


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through every `with`, which stops what it started


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    options, counts, as_json = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where a parent shell ignores it
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)

    def log(message):
        print(f"bench: {message}", file=sys.stderr, flush=True)

    try:
        result = scaling.run(options, counts, log) if counts else suite.run(options, log)
    except KeyboardInterrupt:
        log("interrupted; stopped everything it had started")
        return 130
    except BenchError as exc:
        log(str(exc))
        return 1
    result["command"] = shlex.join(["scripts/bench", *argv])
    result["targets"] = [{"name": n, "value": v, "met": met} for n, v, met in report.targets(result)]
    print(json.dumps(result, indent=2) if as_json else report.table(result))
    return 0


def _counts(text):
    try:
        return tuple(int(n) for n in text.split(",") if n.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of counts") from None
