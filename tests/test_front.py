"""The front's player calls (api/front.py), in-process: what it answers when a call fails unexpectedly."""

import asyncio
import json
import logging
from types import SimpleNamespace

from api.front import Front
from api.metrics import Metrics
from api.observability import Observer


class BrokenPlayback:
    """A playback with a bug: every heartbeat raises."""

    async def heartbeat(self, sid, request):
        raise RuntimeError("a bug")


class Proto:
    def __init__(self):
        self.answers = []

    def response_bytes(self, status, headers, body):
        self.answers.append((status, dict(headers), json.loads(body)))


def test_a_failing_player_call_answers_500_under_its_request_id_and_is_counted(caplog):
    metrics = Metrics()
    front = Front(
        None,
        BrokenPlayback(),
        Observer(metrics),
        inline=True,
        threads=1,
        max_body_bytes=1024,
        body_timeout_s=1,
    )
    scope = SimpleNamespace(method="PUT", path="/concurrency", headers={"X-Request-Id": "trace-500"})
    proto = Proto()
    with caplog.at_level(logging.ERROR, logger="api.front"):
        asyncio.run(front.handle(scope, b"{}", proto, 0.0))
    front.close()

    [(status, headers, body)] = proto.answers
    assert (status, headers["X-Request-Id"], body["error"]) == (500, "trace-500", "internal_error")
    assert "a bug" in caplog.text  # the trace is logged, never sent
    assert "a bug" not in json.dumps(body)
    labels = {"operation": "heartbeat", "outcome": "internal_error"}
    assert metrics.registry.get_sample_value("concurrency_operations_total", labels) == 1
