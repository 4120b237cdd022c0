"""This repository's Python per heartbeat, in-process: `python -m bench.ourcode`.

Two workers' playback (as granian runs one per process), each with its own keyring over one key directory,
and Redis replaced by an instant "updated": what is timed is our code alone (the body, the token check, the
script's arguments, the new token, the answer), in CPU time, best of several rounds. Heartbeats alternate
between the workers, as they do behind a load balancer, or stay on one (`same worker`).
"""

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from api.concurrency import Concurrency
from api.config import Config
from api.identity import Identity
from api.lua import EPOCH_MS, Script
from api.playback import Playback, Request
from api.sessions import Session
from api.store import RedisStore
from api.tokens import SessionTokens
from keys.keyring import Keyring
from keys.store import KeyStore


class InstantRedis:
    """A runner whose every script answers at once, as REFRESH does for a live session."""

    async def run(self, script: Script, key: str, args: Sequence[object]) -> Any:
        return [b"updated", b"%d" % (time.time_ns() // 1_000_000 - EPOCH_MS)]

    async def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


def worker(keys_dir: str) -> Playback:
    config = Config(keys_dir=keys_dir, session_ttl_s=3600)
    tokens = SessionTokens(Keyring.open(keys_dir), config.issuer, config.audience)
    return Playback(Concurrency(RedisStore(InstantRedis()), tokens, config), Identity(config), config)


async def measure(rounds: int, calls: int) -> dict[str, float]:
    """Return the best CPU µs per heartbeat, for tokens from the same worker and from the other one."""
    with tempfile.TemporaryDirectory() as keys_dir:
        KeyStore(keys_dir).generate("ES256")
        workers = [worker(keys_dir), worker(keys_dir)]
        sid = "AAAAAAAAAAAAAAAA"
        config = Config(keys_dir=keys_dir)
        tokens = SessionTokens(Keyring.open(keys_dir), config.issuer, config.audience)
        token = tokens.sign(Session("bench", sid, "tv", "film"), int(time.time()), 3600, {"lim": 3})
        best = {"same worker": float("inf"), "other worker": float("inf")}
        for _ in range(rounds):
            for name, pair in (("same worker", (0, 0)), ("other worker", (0, 1))):
                started = time.process_time()
                for n in range(calls):
                    body = json.dumps({"sessionKey": sid, "token": token}).encode()
                    answer = await workers[pair[n % 2]].heartbeat(
                        None, Request(None, "application/json", body)
                    )
                    token = (answer.media or {})["token"]
                best[name] = min(best[name], (time.process_time() - started) / calls * 1e6)
    return best


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ourcode", description=__doc__)
    parser.add_argument(
        "--rounds", type=int, default=7, help="rounds of each case; the best counts (%(default)s)"
    )
    parser.add_argument("--calls", type=int, default=1500, help="heartbeats per round (%(default)s)")
    args = parser.parse_args(argv)
    for name, us in asyncio.run(measure(args.rounds, args.calls)).items():
        print(f"heartbeat, token from the {name}: {us:.0f} µs of CPU (our code, Redis answering at once)")


if __name__ == "__main__":
    main()
