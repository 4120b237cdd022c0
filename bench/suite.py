"""One benchmark run: Redis and the service up, the crypto floor, every op saturated then paced, memory."""

import dataclasses
import datetime
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile

from . import crypto, flood, memory, peer, roundtrips, wrk
from .processes import BenchError, redis_server, service
from .sessions import SessionPool

SESSION_TTL_S = 86_400  # sessions and tokens outlive the run: a heartbeat never meets an expired one
HEARTBEAT_SESSIONS = 2000
RPS_GUESS = 2000  # sizes the stop pool when no run has measured a rate yet
POOL_MARGIN = 1.5  # stop may well be the fastest op


@dataclasses.dataclass(frozen=True)
class Options:
    ops: tuple = wrk.OPS
    server: str = "asyncio"
    workers: int = 2  # on the server's cores: most heartbeats reach a worker that did not sign their token
    cores: int = 1  # the server's CPUs, when pinned
    threads: int = 8  # as `serve`
    connections: int = 16
    duration_s: int = 10
    warmup_s: int = 2
    pin: bool = True
    paced: float = 0.5  # the paced run's share of the saturated rate; 0 skips it
    memory_sessions: tuple[int, ...] = (10_000, 100_000)
    crypto_iterations: int = 20_000
    flood_s: int = 0  # seconds of each run of the one-account flood against the spread churn; 0 skips it
    peer_dir: str | None = str(peer.DEFAULT_DIR)  # the Node peer's heartbeat, run on the server's cores


def cpu_split(pin, cores=1):
    """Return (server CPUs, load CPUs): the first `cores` CPUs serve, wrk and Redis share the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) <= cores:
        return (), ()
    return tuple(cpus[:cores]), tuple(cpus[cores:])


def run(options, log):
    """Run the benchmark; return every figure as one JSON-ready dict."""
    server_cpus, load_cpus = cpu_split(options.pin, options.cores)
    if options.pin and not server_cpus:
        log(f"{options.cores} CPU(s) for the server leave none for the load: running unpinned")
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "setup": {
            **dataclasses.asdict(options),
            "server_cpus": list(server_cpus),
            "load_cpus": list(load_cpus),
            "wrk": wrk.version(),
        },
        "ops": {},
    }
    with tempfile.TemporaryDirectory(prefix="concurrency-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        env = _service_env(workdir / "keys")
        with redis_server(workdir / "redis", load_cpus) as redis:
            env["CONCURRENCY_REDIS_URL"] = redis.url
            result["machine"]["redis"] = redis.client.info("server")["redis_version"]
            log(f"starting the service: {options.server}, {options.workers} worker(s) × {options.threads}")
            with service(workdir, env, options.server, options.workers, options.threads, server_cpus) as app:
                on = f"CPU {server_cpus[0]}" if server_cpus else "any CPU"
                log(f"timing ES256 verify and sign ({options.crypto_iterations} each) on {on}")
                result["crypto"] = crypto.measure_on(server_cpus[:1], options.crypto_iterations)
                result["crypto"]["floor_per_s"] *= max(1, len(server_cpus))
                pool = SessionPool(workdir, env)
                bench = _Ops(options, workdir, app, redis.client, pool, load_cpus, log)
                bench.warm_up()
                for op in wrk.OPS:
                    if op in options.ops:
                        result["ops"][op] = bench.measure(op, result["crypto"]["floor_per_s"])
                if "heartbeat" in options.ops:
                    result["peer"] = bench.measure_peer(options.peer_dir, redis.port, server_cpus)
                if options.flood_s:
                    log(f"a one-account start/stop flood, then that churn spread: {options.flood_s} s each")
                    result["flood"] = flood.measure(app.port, redis.client, options.flood_s)
        if options.memory_sessions:
            counts = " and ".join(f"{n:,}" for n in options.memory_sessions)
            log(f"loading {counts} sessions into Redis, each model in a fresh redis-server")
            result["memory"] = memory.measure(workdir, options.memory_sessions, load_cpus)
    result["machine"]["loadavg_after"] = list(os.getloadavg())
    return result


class _Ops:
    """Runs wrk per op against the service and reads Redis's counters around each run."""

    def __init__(self, options, workdir, app, redis_client, pool, cpus, log):
        self._options = options
        self._workdir = workdir
        self._app = app
        self._redis = redis_client
        self._pool = pool
        self._cpus = cpus
        self._log = log
        self._rates = []

    def warm_up(self):
        """Start sessions for a while: the worker's first requests are slow, and it feeds the pool."""
        if self._options.warmup_s:
            self._log(f"warming up: start for {self._options.warmup_s} s")
            self._wrk("start", ["warm", self._pool.harvest_path("warmup")], self._options.warmup_s)
            self._pool.harvest("warmup")

    def measure(self, op, floor_per_s):
        """Run `op` saturated, then paced below saturation; return its figures."""
        duration_s = self._options.duration_s
        saturated_args, paced_args = self._args(op)
        self._log(f"{op}: {self._options.connections} connections for {duration_s} s")
        before = roundtrips.snapshot(self._redis)
        saturated = self._wrk(op, saturated_args, duration_s)
        after = roundtrips.snapshot(self._redis)
        self._rates.append(saturated.rps)
        figures = {
            **saturated.as_dict(),
            "floor_ratio": saturated.rps / floor_per_s,
            "redis": roundtrips.per_request(before, after, saturated.requests),
        }
        if op == "start":
            self._pool.harvest("start")
        if self._options.paced and saturated.rps:
            delay_ms = self._delay_ms(saturated.rps)
            share = self._options.paced
            self._log(f"{op}: paced at ~{share:.0%} of {saturated.rps:.0f}/s for {duration_s} s")
            paced = self._wrk(op, paced_args, duration_s, delay_ms)
            figures["paced"] = {**paced.as_dict(), "delay_ms": delay_ms}
            if op == "start":
                self._pool.harvest("start-paced")
        return figures

    def _args(self, op):
        """Return the Lua arguments of the saturated and the paced run of `op`."""
        if op == "start":
            return ["s", self._pool.harvest_path("start")], ["p", self._pool.harvest_path("start-paced")]
        if op == "heartbeat":
            self._ensure(HEARTBEAT_SESSIONS)
            path = self._pool.write("heartbeat", 0, HEARTBEAT_SESSIONS)
            return [path, 1], [path, 1]
        # Every stop ends a session of its own: size both runs from the fastest rate seen so far.
        rate = max(self._rates, default=RPS_GUESS)
        extra = self._options.connections
        saturated = math.ceil(rate * self._options.duration_s * POOL_MARGIN) + extra
        paced = math.ceil(rate * self._options.paced * self._options.duration_s * POOL_MARGIN) + extra
        self._ensure(saturated + paced)
        return (
            [self._pool.write("stop", 0, saturated), 1],
            [self._pool.write("stop-paced", saturated, paced), 1],
        )

    def _ensure(self, count):
        missing = count - len(self._pool)
        if missing > 0:
            self._log(f"making {missing} more sessions through the app")
            self._pool.ensure(count)

    def _delay_ms(self, rps):
        """Return the pause per connection that brings the rate to the paced share of `rps`."""
        connections, share = self._options.connections, self._options.paced
        return max(0.0, 1000 * (connections / (share * rps) - 1 / rps))

    def measure_peer(self, peer_dir, redis_port, server_cpus):
        """Run the Node peer's heartbeat saturated on the server's CPUs; its figures, or why it did not."""
        missing = peer.unavailable(peer_dir)
        if missing:
            self._log(f"no Node peer row: {missing}")
            return {"skipped": missing}
        node = peer.Peer(peer_dir, self._workdir, redis_port, server_cpus)
        try:
            duration_s = self._options.duration_s
            self._log(f"Node peer heartbeat: {self._options.connections} connections for {duration_s} s")
            before = roundtrips.snapshot(self._redis)
            run = self._wrk(wrk.PEER, [node.sessions_file(self._workdir)], duration_s, target=node)
            after = roundtrips.snapshot(self._redis)
            return {**run.as_dict(), "redis": roundtrips.per_request(before, after, run.requests)}
        finally:
            node.stop()

    def _wrk(self, op, args, duration_s, delay_ms=None, target=None):
        """Run wrk; add the server's CPU time per request (and its kernel part) and its busy cores."""
        target = target or self._app
        user_before, system_before = target.process.cpu_times()
        result = wrk.run(
            op,
            target.url,
            args,
            self._workdir,
            self._options.connections,
            duration_s,
            delay_ms,
            self._cpus,
        )
        user, system = target.process.cpu_times()
        cpu_s, system_s = user + system - user_before - system_before, system - system_before
        per_request = 1e6 / result.requests if result.requests else 0.0
        return dataclasses.replace(
            result,
            server_cpu_us=cpu_s * per_request,
            server_sys_us=system_s * per_request,
            server_busy=cpu_s / result.duration_s if result.duration_s else 0.0,
        )


def _service_env(keys_dir):
    """Return CONCURRENCY_* for the service: the caller's, with a fresh key and a long session TTL."""
    generate = [sys.executable, "-m", "api.cli", "keys", "generate", "--dir", str(keys_dir)]
    done = subprocess.run(generate, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"making a signing key failed:\n{done.stderr}")
    env = {name: value for name, value in os.environ.items() if name.startswith("CONCURRENCY_")}
    env.update(CONCURRENCY_KEYS_DIR=str(keys_dir), CONCURRENCY_SESSION_TTL=str(SESSION_TTL_S))
    return env


def _machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_before": list(os.getloadavg()),
    }
