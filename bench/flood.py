"""One account cannot slow the others: a start/stop flood from one account against the same churn spread.

Two runs over the same service and Redis, each `duration_s` long, with bystanders (other users starting
and heartbeating at a steady pace) measured throughout:
- flood: CHURN_THREADS threads loop start+stop on ONE account as fast as they can;
- spread: the same threads, paced to the flood's rate, loop start+stop over many accounts.
The figures compared: the bystanders' p99 latency, and Redis CPU per request (used_cpu_sys+user of
INFO cpu over every request the service answered). Targets (issue 9): within 1.5× and 2× of spread.
"""

import http.client
import itertools
import json
import statistics
import threading
import time
import uuid

CHURN_THREADS = 3
BYSTANDERS = 2  # threads, each cycling through its own users' sessions
BYSTANDER_PAUSE_S = 0.01
P99_TARGET = 1.5
REDIS_CPU_TARGET = 2.0


class _Client:
    """One kept-alive connection, JSON in and out."""

    def __init__(self, port):
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, method, path, body=None, token=None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = json.dumps(body).encode() if body is not None else None
        self._connection.request(method, path, body=payload, headers=headers)
        answer = self._connection.getresponse()
        data = answer.read()
        return answer.status, json.loads(data) if data else None


def _churn(port, users, stopping, counts, pace_s=0.0):
    """Loop start+stop over `users` (one or many) until stopped; count the cycles."""
    client = _Client(port)
    for user in users:
        if stopping.is_set():
            return
        status, body = client.call("POST", "/v1/sessions", {"userId": user, "deviceId": "d", "streamId": "s"})
        if status in (200, 201):
            client.call("DELETE", f"/v1/sessions/{body['sessionId']}", token=body["token"])
        counts.append(1)
        if pace_s:
            time.sleep(pace_s)


def _bystander(port, stopping, latencies, errors):
    """Start sessions for fresh users and heartbeat them, timing every call."""
    client = _Client(port)
    live: list[tuple[str, str]] = []
    while not stopping.is_set():
        began = time.perf_counter()
        if len(live) < 20:
            user = f"bystander-{uuid.uuid4().hex[:12]}"
            status, body = client.call(
                "POST", "/v1/sessions", {"userId": user, "deviceId": "d", "streamId": "s"}
            )
            if status == 201:
                live.append((body["sessionId"], body["token"]))
        else:
            sid, token = live.pop(0)
            status, body = client.call("PUT", f"/v1/sessions/{sid}", token=token)
            if status == 200:
                live.append((sid, body["token"]))
        latencies.append(time.perf_counter() - began)
        if status not in (200, 201):
            errors.append(status)
        time.sleep(BYSTANDER_PAUSE_S)


def _redis_cpu_s(client):
    info = client.info("cpu")
    return info["used_cpu_sys"] + info["used_cpu_user"]


def _run(port, redis_client, duration_s, churn_users, pace_s=0.0):
    stopping = threading.Event()
    counts: list[int] = []
    latencies: list[float] = []
    errors: list[int] = []
    threads = [
        threading.Thread(target=_churn, args=(port, users, stopping, counts, pace_s), daemon=True)
        for users in churn_users
    ]
    threads += [
        threading.Thread(target=_bystander, args=(port, stopping, latencies, errors), daemon=True)
        for _ in range(BYSTANDERS)
    ]
    cpu_before, began = _redis_cpu_s(redis_client), time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(duration_s)
    stopping.set()
    for thread in threads:
        thread.join(timeout=15)
    seconds, cpu = time.monotonic() - began, _redis_cpu_s(redis_client) - cpu_before
    requests = 2 * len(counts) + len(latencies)
    return {
        "churn_per_s": len(counts) / seconds,
        "bystander_p99_ms": statistics.quantiles(latencies, n=100)[98] * 1000,
        "bystander_errors": len(errors),
        "redis_cpu_us_per_request": cpu / requests * 1e6,
    }


def measure(port, redis_client, duration_s=10.0):
    """Run the flood, then the spread churn at the flood's rate; return both and their ratios."""
    victim = f"flooder-{uuid.uuid4().hex[:8]}"
    flood = _run(port, redis_client, duration_s, [itertools.repeat(victim)] * CHURN_THREADS)
    pace_s = CHURN_THREADS / flood["churn_per_s"] if flood["churn_per_s"] else 0.0
    spread_users = [(f"spread-{t}-{i}" for i in itertools.count()) for t in range(CHURN_THREADS)]
    spread = _run(port, redis_client, duration_s, spread_users, pace_s)
    return {
        "flood": flood,
        "spread": spread,
        "p99_ratio": flood["bystander_p99_ms"] / spread["bystander_p99_ms"],
        "redis_cpu_ratio": flood["redis_cpu_us_per_request"] / spread["redis_cpu_us_per_request"],
    }


def report(figures):
    """Return the lines that print a flood measurement and judge it."""
    flood, spread = figures["flood"], figures["spread"]
    lines = [f"{'run':8} {'churn/s':>9} {'bystander p99 ms':>17} {'errors':>7} {'Redis CPU µs/request':>21}"]
    for name, run in (("flood", flood), ("spread", spread)):
        lines.append(
            f"{name:8} {run['churn_per_s']:9,.0f} {run['bystander_p99_ms']:17.2f} {run['bystander_errors']:7}"
            f" {run['redis_cpu_us_per_request']:21.1f}"
        )
    for name, ratio, target in (
        ("bystanders' p99, flood ÷ spread", figures["p99_ratio"], P99_TARGET),
        ("Redis CPU per request, flood ÷ spread", figures["redis_cpu_ratio"], REDIS_CPU_TARGET),
    ):
        lines.append(
            f"  {'met ' if ratio <= target else 'MISS'}  {name}: {ratio:.2f} × (target ≤ {target:g} ×)"
        )
    return lines
