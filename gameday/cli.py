"""`scripts/gameday`: a local fleet under simulated players through rotation, restart, failover and hang.

Starts a Redis Cluster (3 masters + 3 replicas), two service instances sharing one key directory and
HAProxy in front, drives the players, and meanwhile rotates the signing key, restarts one instance with
SIGTERM, fails a Redis master over to its replica, hangs another for 2 s (1 s with --short) and prunes
the old key. Prints what the players saw and whether Redis holds exactly the live sessions; exits 1 when a
check fails."""

import argparse
import dataclasses
import json
import shlex
import signal
import sys

from .fleet import GamedayError
from .players import Plan
from .run import Options, run

SHORT_PLAYERS, SHORT_DURATION_S = 200, 50.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="scripts/gameday", description=__doc__)
    option = parser.add_argument
    option(
        "--players",
        type=int,
        help=f"simulated players (default {Plan.players}; {SHORT_PLAYERS} with --short)",
    )
    option(
        "--duration",
        type=float,
        help=f"seconds of play, settling included (default {Options.duration_s:g}; "
        f"{SHORT_DURATION_S:g} with --short)",
    )
    option("--short", action="store_true", help="the test form: few players, every fault compressed")
    option("--ttl", type=int, default=Plan.ttl_s, help="CONCURRENCY_SESSION_TTL, seconds (%(default)s)")
    option("--interval", type=float, default=Plan.interval_s, help="seconds between heartbeats (%(default)s)")
    option("--connections", type=int, help="keep-alive connections to HAProxy (default: players / 16)")
    option(
        "--failover",
        choices=("kill", "manual"),
        default="kill",
        help="SIGKILL the master (default) or CLUSTER FAILOVER on its replica",
    )
    option("--seed", type=int, default=1, help="players' random seed (%(default)s)")
    option("--keep", action="store_true", help="keep the run's directory of logs and configs")
    option("--json", action="store_true", help="print the figures as JSON instead of the report")
    args = parser.parse_args(argv)
    players = args.players or (SHORT_PLAYERS if args.short else Plan.players)
    duration = args.duration or (SHORT_DURATION_S if args.short else Options.duration_s)
    plan = Plan(players=players, seed=args.seed, ttl_s=args.ttl, interval_s=args.interval)
    if args.short:
        plan = dataclasses.replace(
            plan, mean_play_s=12.0, idle_s=(1.0, 4.0), refused_wait_s=(2.0, 6.0), ramp_s=3.0
        )
    else:
        plan = dataclasses.replace(plan, ramp_s=min(10.0, duration / 10))
    plan = dataclasses.replace(plan, connections=args.connections or max(16, min(256, players // 16)))
    options = Options(plan=plan, duration_s=duration, failover=args.failover, keep=args.keep)
    if args.short:  # half the node timeout: a late SIGCONT on a busy machine still leaves a hang, no failover
        options = dataclasses.replace(options, hang_s=1.0)
    if players < plan.players_per_user or options.active_s < 30:
        parser.error(
            f"needs at least {plan.players_per_user} players and a duration of "
            f"{30 + options.settle_s:g} s or more (the faults need 30 s, settling {options.settle_s:g} s)"
        )
    if not 0 < args.interval < args.ttl:
        parser.error("--interval must be positive and shorter than --ttl")
    return options, args.json


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through every `with`, which stops what it started


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    options, as_json = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)

    def log(message):
        print(f"gameday: {message}", file=sys.stderr, flush=True)

    try:
        result = run(options, log, shlex.join(["scripts/gameday", *argv]))
    except KeyboardInterrupt:
        log("interrupted; stopped everything it had started")
        return 130
    except GamedayError as exc:
        log(str(exc))
        return 2
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        from .report import table

        print(table(result))
    return 0 if result["ok"] else 1
