"""One game day: start the fleet, drive the players through the faults, settle, audit, stop everything."""

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import os
import pathlib
import platform
import secrets
import shutil
import statistics
import tempfile
import time

from . import audit
from .client import Pool
from .faults import Fault, Operator
from .fleet import CALLER_NAME, Cluster, GamedayError, Keys, LoadBalancer, Service
from .players import FROZEN, SETTLING, Game, Plan

GRACE_S = 1.5  # after a fault's window, a request may still see it for one Retry-After (1 s, jittered)
FAULTS = (  # name, method of Operator, share of the active phase it comes at (not before)
    ("key rotation", "rotate", 0.12),
    ("instance restart (SIGTERM)", "restart", 0.30),
    ("Redis failover", "failover", 0.48),
    ("Redis hang", "hang", 0.68),
    ("key prune", "prune", 0.82),
)


@dataclasses.dataclass(frozen=True)
class Options:
    plan: Plan = Plan()
    duration_s: float = 180.0  # the players' time: the active phase, then the settle phase
    workers: int = 2
    threads: int = 8
    node_timeout_ms: int = 2500  # longer than the hang, so the hang stays a hang
    failover: str = "kill"  # or "manual" (CLUSTER FAILOVER on the replica)
    hang_s: float = 2.0
    keys_propagation_s: float = 2.0
    token_leeway_s: int = 5
    keep: bool = False  # keep the run's directory (logs, configs) even when every check passed

    @property
    def settle_s(self):
        """Return the settle time: long enough for crashed sessions (and unanswered starts) to expire."""
        return self.plan.ttl_s + 2.0

    @property
    def active_s(self):
        return self.duration_s - self.settle_s

    def service_settings(self):
        return {
            "session_ttl_s": self.plan.ttl_s,
            "token_leeway_s": self.token_leeway_s,
            "keys_propagation_s": self.keys_propagation_s,
            "keys_reload_s": 1.0,
        }


def service_env(options, cluster_url, keys_dir, credential):
    """Return the environment of the instances and of the `keys` commands: the same CONCURRENCY_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCURRENCY_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # serve makes one per instance
    env.update(
        CONCURRENCY_REDIS_MODE="cluster",
        CONCURRENCY_REDIS_URL=cluster_url,
        CONCURRENCY_KEYS_DIR=str(keys_dir),
        CONCURRENCY_KEYS_PROPAGATION=str(options.keys_propagation_s),  # one shared directory: no lag
        CONCURRENCY_KEYS_RELOAD="1",
        CONCURRENCY_JWKS_MAX_AGE="2",  # so the next key made at start may sign a few seconds later
        CONCURRENCY_SESSION_TTL=str(options.plan.ttl_s),
        CONCURRENCY_TOKEN_LEEWAY=str(options.token_leeway_s),
        CONCURRENCY_MAX_STREAMS=str(options.plan.limit),
        CONCURRENCY_CALLERS=credential,
        CONCURRENCY_LOG_LEVEL="INFO",  # resumptions are logged with the request id
    )
    return env


def run(options: Options, log, command="scripts/gameday"):
    """Run one game day; return its result (a JSON-able dict)."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = _machine()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="gameday-"))
    result = None
    try:
        with contextlib.ExitStack() as stack:
            result = _run(options, log, workdir, stack)
        result.update(command=command, date=date, machine=machine)
        result["machine"]["loadavg_after"] = list(os.getloadavg())
        return result
    finally:
        if options.keep or result is None or not result["ok"]:
            log(f"logs and configs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(options, log, workdir, stack):
    plan = options.plan
    credential = f"{CALLER_NAME}:{secrets.token_urlsafe(24)}"
    cluster = Cluster(workdir / "redis", options.node_timeout_ms)
    (workdir / "redis").mkdir()
    env = service_env(options, cluster.url, workdir / "keys", credential)
    keys = Keys(workdir / "keys", env)
    status, out = keys.run("maintain")  # the active key, and the next one that the rotation will use
    if status != 0:
        raise GamedayError(f"keys maintain failed: {out}")

    log(f"starting a Redis Cluster of 6 nodes (3 masters, 3 replicas) on ports {cluster.ports}")
    stack.callback(cluster.stop)
    cluster.start()
    services = [Service(name, workdir, env, options.workers, options.threads) for name in ("a", "b")]
    for service in services:
        stack.callback(service.stop)
    for service in services:
        service.start()
    log(f"instances a and b on ports {[s.port for s in services]}")
    balancer = LoadBalancer(workdir, services)
    stack.callback(balancer.stop)
    balancer.start()
    log(f"HAProxy on port {balancer.port}; {plan.players} players for {options.duration_s:g} s")

    operator = Operator(
        cluster, services, balancer, keys, options.service_settings(), options.failover, options.hang_s
    )
    faults = [Fault(name, share * options.active_s) for name, _method, share in FAULTS]
    methods = {name: getattr(operator, method) for name, method, _share in FAULTS}
    sampler = audit.Sampler(cluster, plan.limit)
    stack.callback(sampler.stop)
    sampler.start()

    loop_result = asyncio.run(_drive(options, log, balancer.port, credential, faults, methods))
    game, t0, settle_began, frozen_at = loop_result
    sampler.stop()
    haproxy_counters = balancer.counters()

    read_began = time.monotonic()
    entries, missed = audit.read_masters(cluster)
    read_s = time.monotonic() - read_began
    comparison = audit.compare(game.believed_live(), entries, read_began - (plan.ttl_s - 2))
    comparison["read_seconds"] = round(read_s, 2)
    comparison["masters_not_read"] = missed
    end_counts = audit.per_user(entries)

    logs = [path for service in services for path in service.logs]
    resumed_logged = audit.resumed_from_logs(logs)
    violations, most = audit.proven_overlaps(game.confirmations, set(resumed_logged), plan.limit)
    metrics_texts = [operator.metrics_before_restart] + [service.metrics() for service in services]
    events: collections.Counter[str] = collections.Counter()
    for text in metrics_texts:
        events.update(audit.events_counted(text))

    return _result(
        options=options,
        game=game,
        faults=faults,
        t0=t0,
        settle_began=settle_began,
        frozen_at=frozen_at,
        sampler=sampler,
        end_over=[(key, n) for key, n in end_counts.items() if n > plan.limit],
        comparison=comparison,
        violations=violations,
        most=most,
        resumed_logged=resumed_logged,
        events=events,
        balancer=balancer,
        haproxy_counters=haproxy_counters,
        versions={"redis": cluster.version(), "haproxy": balancer.version()},
        workdir=workdir,
    )


async def _drive(options, log, port, credential, faults, methods):
    plan = options.plan
    pool = Pool("127.0.0.1", port, plan.connections, plan.timeout_s)
    game = Game(plan, pool, credential, secrets.token_hex(3))
    t0 = time.monotonic()
    players = [asyncio.create_task(player.run()) for player in game.players]
    timeline = asyncio.create_task(_timeline(faults, methods, t0, log))
    await asyncio.sleep(options.active_s)
    await timeline  # a fault that runs late keeps the players active until it is over
    game.phase = SETTLING
    settle_began = time.monotonic()
    log(f"settling for {options.settle_s:g} s: no new starts, stops or crashes; heartbeats go on")
    await asyncio.sleep(options.settle_s)
    game.phase = FROZEN
    game.frozen.set()
    frozen_at = time.monotonic()
    outcomes = await asyncio.gather(*players, return_exceptions=True)
    pool.close()
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    if failures:
        raise RuntimeError(f"{len(failures)} players failed; the first: {failures[0]!r}") from failures[0]
    return game, t0, settle_began, frozen_at


async def _timeline(faults, methods, t0, log):
    """Carry out the faults in order, each at its time and at least a second after the previous one."""
    ready = t0
    for fault in faults:
        await asyncio.sleep(max(0.0, max(t0 + fault.at, ready) - time.monotonic()))
        log(f"t={time.monotonic() - t0:5.1f} s  {fault.name}")
        try:
            await asyncio.to_thread(methods[fault.name], fault)
        except Exception as exc:  # the report says which fault failed and why; the run goes on
            fault.error = f"{type(exc).__name__}: {exc}"
            log(f"  {fault.name} failed: {fault.error}")
        if fault.ended is None:
            fault.ended = time.monotonic()
        ready = max(fault.ended, time.monotonic()) + 1.0


def window_of(record, faults):
    """Name the fault window a request overlapped (its window plus GRACE_S), else 'steady'."""
    for fault in faults:
        if fault.began is None or fault.ended is None:
            continue
        if record.received >= fault.began and record.sent <= fault.ended + GRACE_S:
            return fault.name
    return "steady"


def blamed_windows(beats, faults):
    """Return {request id: window} of the heartbeats; a failure counts where its session's streak began."""
    # A session that expired after 503s all through a failover was lost to the failover.
    streak_began: dict[str, object] = {}
    blame = {}
    for record in sorted(beats, key=lambda r: r.sent):
        if record.label == "200":
            streak_began.pop(record.sid, None)
            blame[record.rid] = window_of(record, faults)
        else:
            first = streak_began.setdefault(record.sid, record)
            blame[record.rid] = window_of(first, faults)
    return blame


def _percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


def _latency(records):
    took = [(r.received - r.sent) * 1000 for r in records if r.received > r.sent]
    if not took:
        return {"p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    return {
        "p50_ms": round(statistics.median(took), 1),
        "p99_ms": round(_percentile(took, 0.99), 1),
        "max_ms": round(max(took), 1),
    }


OK_LABELS = {"start": {"200", "201"}, "heartbeat": {"200"}, "stop": {"204"}}
REFUSED = "403 limit_reached"


def _result(**f):
    options, game, faults, t0 = f["options"], f["game"], f["faults"], f["t0"]
    plan = options.plan
    windows = ["steady", *(fault.name for fault in faults)]
    requests = {}
    for op in ("start", "heartbeat", "stop"):
        records = [r for r in game.records if r.op == op]
        labels = collections.Counter(r.label for r in records)
        requests[op] = {
            "sent": len(records),
            "ok": sum(n for label, n in labels.items() if label in OK_LABELS[op]),
            "refused_at_limit": labels.get(REFUSED, 0) if op == "start" else 0,
            "failed": dict(
                sorted((k, n) for k, n in labels.items() if k not in OK_LABELS[op] and k != REFUSED)
            ),
            **_latency(records),
        }
    beats = [r for r in game.records if r.op == "heartbeat"]
    by_window: dict[str, list] = {name: [] for name in windows}
    blame = blamed_windows(beats, faults)
    for record in beats:
        by_window[blame[record.rid]].append(record)
    heartbeat_windows = {}
    for name, records in by_window.items():
        labels = collections.Counter(r.label for r in records)
        heartbeat_windows[name] = {
            "sent": len(records),
            "ok": labels.get("200", 0),
            "failed": dict(sorted((k, n) for k, n in labels.items() if k != "200")),
            **_latency(records),
        }
    fault_rows = []
    for fault in faults:
        details = {k: (round(v - t0, 2) if k == "switch" else v) for k, v in fault.details.items()}
        if "new_kid" in details:  # when the players' answers carried each key
            new, old = game.kid_seen.get(details["new_kid"]), game.kid_seen.get(details["old_kid"])
            details["new_kid_first_answer_s"] = round(new[0] - t0, 2) if new else None
            details["old_kid_last_answer_s"] = round(old[1] - t0, 2) if old else None
        fault_rows.append(
            {
                "name": fault.name,
                "began_s": None if fault.began is None else round(fault.began - t0, 2),
                "ended_s": None if fault.ended is None else round(fault.ended - t0, 2),
                "happened": fault.happened,
                "error": fault.error,
                "details": details,
                "heartbeats": heartbeat_windows[fault.name],
            }
        )
    lost = collections.Counter(
        r.label for r in beats if r.label.startswith("410") or r.label.startswith("401")
    )
    lost_detail = _lost_detail(game, beats, blame, t0)
    stop_gone = collections.Counter(r.label for r in game.records if r.op == "stop" and r.label[:3] == "410")
    admitted = len({c.sid for chains in game.confirmations.values() for c in chains})
    sampler = f["sampler"]
    over = {
        "redis_samples": len({key for _t, key, _n in sampler.over}),
        "redis_samples_detail": [(round(t - t0, 2), key, n) for t, key, n in sampler.over[:20]],
        "samples": sampler.samples,
        "samples_incomplete": sampler.incomplete,
        "max_live_per_user_sampled": sampler.max_per_user,
        "peak_live_sampled": sampler.peak_live,
        "redis_end": len(f["end_over"]),
        "players_view": len(f["violations"]),
        "players_view_detail": [(round(t - t0, 2), user, sids) for t, user, sids in f["violations"][:20]],
        "max_held_at_once": f["most"],
    }
    over["total"] = over["redis_samples"] + over["redis_end"] + over["players_view"]
    invalid_tokens = sum(n for label, n in lost.items() if label.startswith("401"))
    checks = [
        ("no over-admission (Redis sampled and at the end, players' view)", over["total"] == 0),
        ("Redis holds exactly the sessions the players believe live", f["comparison"]["matches"]),
        ("every fault happened", all(fault.happened for fault in faults)),
        (
            "heartbeats ran in every fault window",
            all(heartbeat_windows[fault.name]["sent"] > 0 for fault in faults),
        ),
        ("no heartbeat refused 401 (a key rotation never fails one)", invalid_tokens == 0),
    ]
    return {
        "setup": {
            "players": plan.players,
            "users": plan.users,
            "players_per_user": plan.players_per_user,
            "limit": plan.limit,
            "session_ttl_s": plan.ttl_s,
            "heartbeat_interval_s": plan.interval_s,
            "mean_play_s": plan.mean_play_s,
            "crash_share": plan.crash_share,
            "connections": plan.connections,
            "instances": 2,
            "workers": options.workers,
            "threads": options.threads,
            "cluster_node_timeout_ms": options.node_timeout_ms,
            "failover_mode": options.failover,
            "keys_propagation_s": options.keys_propagation_s,
            **f["versions"],
        },
        "duration_s": round(f["frozen_at"] - t0, 1),
        "active_s": round(f["settle_began"] - t0, 1),
        "settle_s": round(f["frozen_at"] - f["settle_began"], 1),
        "faults": fault_rows,
        "requests": requests,
        "heartbeat_windows": heartbeat_windows,
        "sessions": {
            "admitted": admitted,
            "refused_at_limit": requests["start"]["refused_at_limit"],
            "stopped": game.stopped,
            "crashed": game.crashed,
            "stops_abandoned": game.abandoned,
            "lost": dict(sorted(lost.items())),
            "lost_total": sum(lost.values()),
            "lost_detail": lost_detail[:40],
            "gone_at_stop": dict(sorted(stop_gone.items())),
            "resumed_metrics": f["events"].get("resumed", 0),
            "resumed_logged": len(f["resumed_logged"]),
            "store_errors_metrics": f["events"].get("store_error", 0),
            "limit_hits_metrics": f["events"].get("limit_hit", 0),
        },
        "over_admissions": over,
        "redis": f["comparison"],
        "tokens": {"kids": dict(game.kids.most_common())},
        "haproxy": {
            "transitions": [
                {"at_s": round(at - t0, 2), "server": server, "status": status}
                for at, server, status in f["balancer"].transitions
            ],
            "servers": f["haproxy_counters"],
        },
        "checks": [{"name": name, "ok": ok} for name, ok in checks],
        "ok": all(ok for _name, ok in checks),
        "workdir": str(f["workdir"]),
    }


def _lost_detail(game, beats, blame, t0):
    """Return the story of each lost session: when, in which window, what its heartbeats got before."""
    by_sid = collections.defaultdict(list)
    for record in game.records:
        if record.sid is not None:
            by_sid[record.sid].append(record)
    stories = []
    for record in beats:
        if not record.label.startswith(("410", "401")):
            continue
        history = [r for r in by_sid[record.sid] if r.sent < record.sent]
        ok = [r for r in history if r.label in ("200", "201")]
        since = [r.label for r in history if not ok or r.sent > ok[-1].sent]
        stories.append(
            {
                "at_s": round(record.sent - t0, 2),
                "label": record.label,
                "window": blame[record.rid],
                "since_confirmed_s": round(record.sent - ok[-1].received, 2) if ok else None,
                "answers_since": since,
            }
        )
    return stories


def _machine():
    model = "?"
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_before": list(os.getloadavg()),
    }
