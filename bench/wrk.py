"""Drive the service with wrk: one Lua script per operation, one parsed result per run."""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess

from .processes import BenchError, pinned

LUA_DIR = pathlib.Path(__file__).with_name("lua")
RESULT_PREFIX = "bench-result "
OPS = ("start", "heartbeat", "stop")
PEER = "peer"  # the Node peer's heartbeat (bench/peer.py), not an op of the service


@dataclasses.dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured; latencies in ms."""

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict
    socket_errors: dict
    reused: int
    server_cpu_us: float | None = None  # the server's CPU time per request, when measured
    server_sys_us: float | None = None  # the part of it spent in the kernel (system time)
    server_busy: float | None = None  # the server's CPU time / run time: cores kept busy

    @property
    def rps(self):
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def non_2xx(self):
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)

    def as_dict(self):
        return {
            **dataclasses.asdict(self),
            "statuses": {str(status): count for status, count in sorted(self.statuses.items())},
            "rps": self.rps,
            "non_2xx": self.non_2xx,
        }


def parse_output(text):
    """Return the WrkResult in the `bench-result {...}` line that our Lua `done()` prints."""
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX):
            raw = json.loads(line[len(RESULT_PREFIX) :])
            return WrkResult(
                requests=raw["requests"],
                duration_s=raw["duration_us"] / 1e6,
                p50_ms=raw["p50_us"] / 1000,
                p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
                statuses={int(status): count for status, count in raw["statuses"].items()},
                socket_errors=raw["socket_errors"],
                reused=raw["reused"],
            )
    raise BenchError(f"wrk printed no {RESULT_PREFIX.strip()!r} line; its output was:\n{text}")


def script_text(op):
    """Return the Lua script of `op` (or of the peer): the shared part, then the op's own."""
    if op not in (*OPS, PEER):
        raise ValueError(f"unknown op {op!r}")
    return (LUA_DIR / "common.lua").read_text() + "\n" + (LUA_DIR / f"{op}.lua").read_text()


def version():
    done = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def run(op, url, args, workdir, connections, duration_s, delay_ms=None, cpus=(), threads=1):
    """Run wrk's `op` script against `url` with `args`; pace each connection by `delay_ms` if given."""
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (apt-get install wrk)")
    script = workdir / f"{op}.lua"
    script.write_text(script_text(op))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    env = dict(os.environ)
    if delay_ms is not None:
        env["BENCH_DELAY_MS"] = str(max(0, round(delay_ms)))
    done = subprocess.run(
        pinned([*command, "--", *map(str, args)], cpus),
        capture_output=True,
        text=True,
        env=env,
        timeout=duration_s + 60,
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return parse_output(done.stdout)
