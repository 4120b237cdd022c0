"""Request ids, per-request metrics and the access log (a middleware); JSON log lines."""

import contextvars
import itertools
import json
import logging
import re
import secrets
import sys
import time
from typing import TextIO

import falcon

from .metrics import Metrics

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class Observer:
    """Request ids, latency and outcome metrics, and the access log, for any path a request takes."""

    def __init__(self, metrics: Metrics, access_log: bool = False) -> None:
        self._metrics = metrics
        self._prefix = secrets.token_hex(4)  # this process; a counter numbers its requests
        self._ids = itertools.count(1)
        self._access_log = logging.getLogger("api.access") if access_log else None

    def begin(self, given: str | None) -> str:
        """Return the request's id (the caller's, when acceptable) and make it the one logs carry."""
        rid = given if given and _REQUEST_ID.fullmatch(given) else None
        if rid is None:
            rid = f"{self._prefix}{next(self._ids) & 0xFFFFFFFF:08x}"  # 16 hex digits, unique per process
        request_id.set(rid)
        return rid

    def end(
        self,
        route: str,
        method: str,
        path: str,
        status: int,
        media: object,
        caller: str | None,
        started: float,
    ) -> None:
        """Count the request's outcome and latency, and log it when the access log is on."""
        seconds = time.perf_counter() - started
        method = method if method in _METHODS else "OTHER"  # labels a client cannot multiply
        body = media if isinstance(media, dict) else {}
        outcome = body.get("error") or body.get("status") or status
        if outcome == "limit_reached":
            self._metrics.count("limit_hit")
        elif outcome == "store_unavailable":
            self._metrics.count("store_error")
        if method == "DELETE" and status == 204:
            outcome = "stopped"
        self._metrics.observe(route, method, str(outcome), seconds)
        if caller:
            self._metrics.count_caller(caller, route, method)
        if self._access_log:
            extra = {"route": route, "status": status, "duration_ms": round(seconds * 1000, 3)}
            if caller:
                extra["caller"] = caller
            self._access_log.info("%s %s %s", method, path, status, extra=extra)


class Observe:
    """Falcon middleware: the Observer around each request the Falcon app serves."""

    def __init__(self, observer: Observer) -> None:
        self._observer = observer

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        resp.set_header(REQUEST_ID_HEADER, self._observer.begin(req.get_header(REQUEST_ID_HEADER)))

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        route = req.uri_template or "unmatched"
        caller = getattr(req.context, "caller", None)  # set once a credential was checked
        media = resp.media
        self._observer.end(route, req.method, req.path, resp.status_code, media, caller, req.context.started)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    _EXTRA = ("route", "status", "duration_ms", "caller", "event", "sid", "user")

    def format(self, record: logging.LogRecord) -> str:
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


class _Stderr(logging.StreamHandler[TextIO]):
    """Writes to sys.stderr as it is when a record comes, not as it was at set-up (a test may swap it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as JSON lines."""
    handler = _Stderr()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
