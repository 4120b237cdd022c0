"""Per-worker efficiency: heartbeats saturated with 1, 2, 4, ... workers, one worker per core.

Each count gets a fresh service pinned to that many CPUs; Redis keeps the last CPU and wrk the ones in
between, so the server's cores serve nothing else. Efficiency at N workers is req/s ÷ (N × req/s of one
worker); CPU µs per request, and its kernel part, say where the extra CPU goes when it falls.
"""

import datetime
import os
import pathlib
import tempfile

from . import crypto, roundtrips, wrk
from .processes import BenchError, redis_server, service
from .sessions import SessionPool
from .suite import HEARTBEAT_SESSIONS, _machine, _service_env

WARMUP_S = 2


def run(options, counts, log):
    """Measure heartbeats at each worker count in `counts`; return the figures as one JSON-ready dict."""
    cpus = sorted(os.sched_getaffinity(0))
    needed = max(counts) + 2
    if len(cpus) < needed:
        raise BenchError(f"{max(counts)} workers on cores of their own, wrk and Redis need {needed} CPUs")
    redis_cpus = (cpus[-1],)
    result = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "setup": {
            "server": options.server,
            "threads": options.threads,
            "duration_s": options.duration_s,
            "connections_per_worker": options.connections,
            "redis_cpus": list(redis_cpus),
            "wrk": wrk.version(),
        },
        "scaling": [],
    }
    with tempfile.TemporaryDirectory(prefix="concurrency-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        env = _service_env(workdir / "keys")
        with redis_server(workdir / "redis", redis_cpus) as redis:
            env["CONCURRENCY_REDIS_URL"] = redis.url
            result["machine"]["redis"] = redis.client.info("server")["redis_version"]
            log(f"timing ES256 verify and sign on CPU {cpus[0]}")
            result["crypto"] = crypto.measure_on(cpus[:1], options.crypto_iterations)
            pool = SessionPool(workdir, env)
            for count in counts:
                result["scaling"].append(_measure(options, workdir, env, redis, pool, cpus, count, log))
    single = next((row for row in result["scaling"] if row["workers"] == 1), None)
    for row in result["scaling"]:
        row["efficiency"] = (
            row["rps"] / (row["workers"] * single["rps"]) if single and single["rps"] else None
        )
    result["machine"]["loadavg_after"] = list(os.getloadavg())
    return result


def _measure(options, workdir, env, redis, pool, cpus, count, log):
    server_cpus, wrk_cpus = tuple(cpus[:count]), tuple(cpus[count:-1])
    threads = max(1, min(count, len(wrk_cpus)))
    connections = options.connections * count
    sessions = max(HEARTBEAT_SESSIONS, 4 * connections)
    pool.ensure(sessions)
    path = pool.write(f"scaling-{count}", 0, sessions)
    with service(workdir, env, options.server, count, options.threads, server_cpus) as app:
        log(f"{count} worker(s): {WARMUP_S} s warm-up, {connections} connections for {options.duration_s} s")
        wrk.run(
            "heartbeat",
            app.url,
            [path, threads],
            workdir,
            connections,
            WARMUP_S,
            cpus=wrk_cpus,
            threads=threads,
        )
        before, (user_before, system_before) = roundtrips.snapshot(redis.client), app.process.cpu_times()
        run = wrk.run(
            "heartbeat",
            app.url,
            [path, threads],
            workdir,
            connections,
            options.duration_s,
            cpus=wrk_cpus,
            threads=threads,
        )
        user, system = app.process.cpu_times()
        after = roundtrips.snapshot(redis.client)
    cpu_s, system_s = user + system - user_before - system_before, system - system_before
    per_request = 1e6 / run.requests if run.requests else 0.0
    return {
        "workers": count,
        "server_cpus": list(server_cpus),
        "wrk_threads": threads,
        "connections": connections,
        **run.as_dict(),
        "server_cpu_us": cpu_s * per_request,
        "server_sys_us": system_s * per_request,
        "server_busy": cpu_s / run.duration_s if run.duration_s else 0.0,
        "redis": roundtrips.per_request(before, after, run.requests),
    }
