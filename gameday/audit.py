"""What Redis holds, read from every master directly, and the over-admission checks.

Redis's side: every live session entry (api/lua.py's layout: `c:<digest>` hashes, one per user, one field
per session, `<expires><started><device>|<stream>`, tombstones start with `~`), sampled through the run
and read once at the end. The players' side: sessions a user certainly held at once, from the answers."""

import collections
import json
import re
import threading
import time

import redis
from prometheus_client.parser import text_string_to_metric_families

from api.lua import EPOCH_MS
from api.store import KEY_PREFIX, unescape, user_key

Entry = collections.namedtuple("Entry", "key device stream expires_ms")


def live_entries(client):
    """Return {sid: Entry} of the live (unexpired, not ended) sessions one master holds."""
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    keys = list(client.scan_iter(match=f"{KEY_PREFIX}*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    found = {}
    for key, fields in zip(keys, pipe.execute(), strict=True):
        for sid, value in fields.items():
            text = value.decode()
            if text.startswith("~"):
                continue
            expires_ms = int(text[:8], 36) + EPOCH_MS
            if expires_ms > now_ms:
                device, _, stream = text[16:].partition("|")
                found[sid.decode()] = Entry(key.decode(), unescape(device), unescape(stream), expires_ms)
    return found


def read_masters(cluster):
    """Return ({sid: Entry} over every master that answered, [ports that did not])."""
    found, missed = {}, []
    for port in cluster.topology():
        if port in cluster.paused:
            missed.append(port)
            continue
        try:
            found.update(live_entries(cluster.client(port)))
        except redis.RedisError:
            missed.append(port)
    return found, missed


def per_user(entries):
    return collections.Counter(entry.key for entry in entries.values())


class Sampler:
    """Read every master about once a second during the run; note each user over the limit."""

    def __init__(self, cluster, limit, interval_s=1.0):
        self._cluster = cluster
        self._limit = limit
        self._interval_s = interval_s
        self.samples = 0
        self.incomplete = 0  # a master did not answer (hung or dead): that shard was not read
        self.max_per_user = 0
        self.peak_live = 0
        self.over: list[tuple[float, str, int]] = []  # (monotonic, key, live sessions)
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self):
        self._running.set()
        self._thread = threading.Thread(target=self._run, name="redis-sampler", daemon=True)
        self._thread.start()

    def _run(self):
        while self._running.is_set():
            began = time.monotonic()
            try:
                entries, missed = read_masters(self._cluster)
            except Exception:  # a topology in flux: try again next time
                self.incomplete += 1
            else:
                counts = per_user(entries)
                self.samples += 1
                self.incomplete += bool(missed)
                self.peak_live = max(self.peak_live, len(entries))
                self.max_per_user = max(self.max_per_user, max(counts.values(), default=0))
                self.over += [(began, key, n) for key, n in counts.items() if n > self._limit]
            time.sleep(max(0.0, self._interval_s - (time.monotonic() - began)))

    def stop(self):
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=10)


def compare(believed, entries, confirmed_since):
    """Compare the players' believed-live sessions ({sid: (user, device, stream, confirmed)}) with Redis's."""
    # A session last confirmed before `confirmed_since` may have expired on its own (a heartbeat failed
    # just before the end): it is left out on both sides and counted as `unconfirmed`.
    unconfirmed = {sid for sid, b in believed.items() if b[3] < confirmed_since}
    expected = {
        sid: (user_key(user), device, stream)
        for sid, (user, device, stream, _) in believed.items()
        if sid not in unconfirmed
    }
    held = {sid: (e.key, e.device, e.stream) for sid, e in entries.items() if sid not in unconfirmed}
    missing = sorted(sid for sid in expected if sid not in held)
    extra = sorted(sid for sid in held if sid not in expected)
    differ = sorted(sid for sid in expected if sid in held and held[sid] != expected[sid])
    return {
        "believed_live": len(expected),
        "redis_live": len(held),
        "missing_from_redis": missing,
        "not_believed_by_any_player": extra,
        "different": differ,
        "unconfirmed": len(unconfirmed),
        "matches": not (missing or extra or differ),
    }


def proven_overlaps(confirmations, resumed_rids, limit):
    """Return (violations, most sessions one user certainly held at once) from the players' answers."""
    # Each 201/200 was produced by one atomic step in Redis between its request's send and its answer's
    # receipt. Between two consecutive confirmations of one session, the second a refresh that found the
    # session live (not a resumption: those re-check the limit, and the service logs them with the request
    # id), the session was live all along: certainly over [first received, second sent]. A user over the
    # limit in those intervals at one instant is an over-admission the players can prove.
    violations, most = [], 0
    for user, answers in confirmations.items():
        by_session = collections.defaultdict(list)
        for answer in answers:
            by_session[answer.sid].append(answer)
        events = []
        for sid, chain in by_session.items():
            chain.sort(key=lambda c: c.sent)
            for first, second in zip(chain, chain[1:], strict=False):
                refreshed = second.kind in ("beat", "renew") and second.rid not in resumed_rids
                if refreshed and first.received < second.sent:
                    events += [(first.received, 1, sid), (second.sent, -1, sid)]
        events.sort(key=lambda e: (e[0], e[1]))  # at one instant, an end before a start
        held: set[str] = set()
        for at, step, sid in events:
            if step > 0:
                held.add(sid)
            else:
                held.discard(sid)
            most = max(most, len(held))
            if len(held) > limit:
                violations.append((at, user, sorted(held)))
    return violations, most


RESUMED = re.compile(r"resumed session (\S+) of user")


def resumed_from_logs(paths):
    """Return {request id: sid} of the resumptions the instances logged (JSON lines with request_id)."""
    found = {}
    for path in paths:
        with open(path, "rb") as file:
            for raw in file:
                if not raw.startswith(b"{") or b"resumed session" not in raw:
                    continue
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                match = RESUMED.match(entry.get("message", ""))
                if match and entry.get("request_id"):
                    found[entry["request_id"]] = match.group(1)
    return found


def events_counted(metrics_text):
    """Return {event: count} of `concurrency_events_total` in a /metrics text."""
    counts: collections.Counter[str] = collections.Counter()
    if not metrics_text:
        return counts
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "concurrency_events_total":
                counts[sample.labels.get("event", "?")] += int(sample.value)
    return counts
