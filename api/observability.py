"""Prometheus metrics, JSON logs and request ids."""

import contextvars
import itertools
import json
import logging
import os
import re
import secrets
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .config import MULTIPROC_ENV

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_OPERATIONS = {
    ("/concurrency", "POST"): "start",
    ("/v1/sessions", "POST"): "start",
    ("/concurrency", "PUT"): "heartbeat",
    ("/v1/sessions/{session_id}", "PUT"): "heartbeat",
    ("/concurrency", "DELETE"): "stop",
    ("/v1/sessions/{session_id}", "DELETE"): "stop",
}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

request_id = contextvars.ContextVar("request_id", default=None)


class Metrics:
    """The service's counters and histograms, in their own registry."""

    def __init__(self):
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
        self._children = {}

    def count(self, event, n=1):
        if n:
            self._events.labels(event).inc(n)

    def observe(self, route, method, outcome, seconds):
        # Children by label values, resolved once: `labels()` costs a lock and a tuple per call.
        key = (route, method, outcome)
        children = self._children.get(key)
        if children is None:
            operation = _OPERATIONS.get((route, method))
            counter = self._operations.labels(operation, outcome) if operation else None
            children = self._children[key] = (counter, self._latency.labels(route, method))
        if children[0] is not None:
            children[0].inc()
        children[1].observe(seconds)

    def exposition(self):
        """Return the text format: every worker's figures when gunicorn runs several."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class Observe:
    """Middleware: request ids, latency and outcome metrics, optional access log."""

    def __init__(self, metrics, access_log=False):
        self._metrics = metrics
        self._prefix = secrets.token_hex(4)  # this process; a counter numbers its requests
        self._ids = itertools.count(1)
        self._access_log = logging.getLogger("api.access") if access_log else None

    def process_request(self, req, resp):
        rid = req.get_header(REQUEST_ID_HEADER)
        if not (rid and _REQUEST_ID.fullmatch(rid)):
            rid = f"{self._prefix}{next(self._ids) & 0xFFFFFFFF:08x}"  # 16 hex digits, unique per process
        request_id.set(rid)
        resp.set_header(REQUEST_ID_HEADER, rid)
        req.context.started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded):
        seconds = time.perf_counter() - req.context.started
        route = req.uri_template or "unmatched"
        method = req.method if req.method in _METHODS else "OTHER"  # labels a client cannot multiply
        media = resp.media if isinstance(resp.media, dict) else {}
        outcome = media.get("error") or media.get("status") or resp.status_code
        if outcome == "limit_reached":
            self._metrics.count("limit_hit")
        elif outcome == "store_unavailable":
            self._metrics.count("store_error")
        if method == "DELETE" and resp.status_code == 204:
            outcome = "stopped"
        self._metrics.observe(route, method, str(outcome), seconds)
        if self._access_log:
            self._access_log.info(
                "%s %s %s",
                req.method,
                req.path,
                resp.status_code,
                extra={"route": route, "status": resp.status_code, "duration_ms": round(seconds * 1000, 3)},
            )


class MetricsResource:
    """`/metrics`: Prometheus text format."""

    def __init__(self, metrics):
        self._metrics = metrics

    def on_get(self, req, resp):
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self._metrics.exposition()


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    _EXTRA = ("route", "status", "duration_ms", "event", "sid", "user")

    def format(self, record):
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        entry.update((name, getattr(record, name)) for name in self._EXTRA if hasattr(record, name))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level="INFO"):
    """Send every log record to stderr as JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
