"""Prometheus metrics: operations by outcome, events, latency; `/metrics` serves them."""

import os

import falcon
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .config import MULTIPROC_ENV

OPERATIONS = {
    ("/concurrency", "POST"): "start",
    ("/v1/sessions", "POST"): "start",
    ("/concurrency", "PUT"): "heartbeat",
    ("/v1/sessions/{session_id}", "PUT"): "heartbeat",
    ("/concurrency", "DELETE"): "stop",
    ("/v1/sessions/{session_id}", "DELETE"): "stop",
}
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The service's counters and histograms, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._operations = Counter(
            "concurrency_operations",
            "Starts, heartbeats and stops by outcome: initiated, updated, stopped or the error code.",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self._events = Counter(
            "concurrency_events",
            "Sessions evicted, kicked or resumed; limit hits; store errors; degraded admissions.",
            ["event"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "concurrency_request_seconds",
            "Request latency by route and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._callers = Counter(
            "concurrency_caller_requests",
            "Starts and session-management requests by authenticated caller (its configured name, user,"
            " admin or anonymous) and operation.",
            ["caller", "operation"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, str], tuple[Counter | None, Histogram]] = {}

    def count(self, event: str, n: int = 1) -> None:
        if n:
            self._events.labels(event).inc(n)

    def count_caller(self, caller: str, route: str, method: str) -> None:
        self._callers.labels(caller, OPERATIONS.get((route, method), "manage")).inc()

    def observe(self, route: str, method: str, outcome: str, seconds: float) -> None:
        # Children by label values, resolved once: `labels()` costs a lock and a tuple per call.
        key = (route, method, outcome)
        children = self._children.get(key)
        if children is None:
            operation = OPERATIONS.get((route, method))
            counter = self._operations.labels(operation, outcome) if operation else None
            children = self._children[key] = (counter, self._latency.labels(route, method))
        if children[0] is not None:
            children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> bytes:
        """Return the text format: every worker's figures when gunicorn runs several."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsResource:
    """`/metrics`: Prometheus text format."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self._metrics.exposition()
