"""Simulated players: start, heartbeat on schedule with the newest token, stop or crash, start again.

Three players share each account (whose limit is two), so the limit is hit all the time. Every request is
recorded with its send and receive times; every answer that proves a session live (201 or 200) is kept
as a confirmation, from which the audit rebuilds which sessions each user certainly held at once."""

import asyncio
import base64
import binascii
import collections
import dataclasses
import json
import random
import time

from .client import Failure, Pool

ACTIVE, SETTLING, FROZEN = "active", "settling", "frozen"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the players do, and the service settings their schedule is built around."""

    players: int = 2000
    players_per_user: int = 3
    limit: int = 2
    ttl_s: int = 10  # > heartbeat interval + failover (~5 s here) + a retry: see docs/operations.md
    interval_s: float = 2.0  # between heartbeats
    mean_play_s: float = 30.0  # a play lasts an exponentially distributed time of this mean
    crash_share: float = 0.2  # of plays that end without a stop
    idle_s: tuple[float, float] = (1.0, 6.0)  # between plays
    refused_wait_s: tuple[float, float] = (4.0, 12.0)  # after a 403 at the limit
    ramp_s: float = 10.0  # players arrive spread over this
    connections: int = 64
    timeout_s: float = 5.0
    seed: int = 1

    @property
    def users(self):
        return -(-self.players // self.players_per_user)


Record = collections.namedtuple("Record", "op sent received label rid sid server")
Confirmation = collections.namedtuple("Confirmation", "sid sent received kind rid")


class Game:
    """What all players share: the pool, the phase, and everything they saw."""

    def __init__(self, plan, pool: Pool, credential, run_id):
        self.plan = plan
        self.pool = pool
        self.run_id = run_id
        self._start_auth = {
            "Authorization": "Basic " + base64.b64encode(credential.encode()).decode(),
            "Content-Type": "application/json",
        }
        self.phase = ACTIVE
        self.frozen = asyncio.Event()
        self.records: list[Record] = []
        self.confirmations: dict[str, list[Confirmation]] = collections.defaultdict(list)
        self.kids: collections.Counter[str] = collections.Counter()
        self.kid_seen: dict[str, list[float]] = {}  # kid: [first, last] answer with a token of it
        self._kid_of_header: dict[str, str] = {}
        self.crashed = 0
        self.stopped = 0
        self.abandoned = 0  # a stop that never went through: the session expires by itself
        self.players = [Player(self, index) for index in range(plan.players)]

    async def call(self, player, op, method, path, headers, body=b"", sid=None):
        """Send one request for `player`; record it; return (label, status or None, JSON body or {})."""
        player.sequence += 1
        rid = f"{self.run_id}.{player.index:x}.{player.sequence:x}"
        try:
            answer = await self.pool.request(method, path, {**headers, "X-Request-Id": rid}, body)
        except Failure as failure:
            now = time.monotonic()
            self.records.append(Record(op, now, now, failure.label, rid, sid, ""))
            return failure.label, None, {}
        content = {}
        if answer.body and answer.headers.get("content-type", "").startswith("application/json"):
            try:
                content = json.loads(answer.body)
            except ValueError:
                content = {}
        label = str(answer.status)
        if answer.status == 410:
            label += f" {content.get('reason', '?')}"
        elif answer.status == 403:
            label += f" {content.get('error', '?')}"
        sid = content.get("sessionId", sid)
        server = answer.headers.get("x-gameday-server", "")
        self.records.append(Record(op, answer.sent, answer.received, label, rid, sid, server))
        if answer.status in (200, 201) and "token" in content:
            kind = {"start": "start" if answer.status == 201 else "renew", "heartbeat": "beat"}[op]
            self.confirmations[player.user].append(
                Confirmation(content["sessionId"], answer.sent, answer.received, kind, rid)
            )
            kid = self.kid(content["token"])
            self.kids[kid] += 1
            seen = self.kid_seen.setdefault(kid, [answer.received, answer.received])
            seen[1] = answer.received
        return label, answer.status, content | {"_retry_after": answer.headers.get("retry-after")}

    def kid(self, token):
        header = token.partition(".")[0]
        kid = self._kid_of_header.get(header)
        if kid is None:
            try:
                kid = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
            except (ValueError, KeyError, binascii.Error):
                kid = "?"
            self._kid_of_header[header] = kid
        return kid

    def start_request(self, player, stream):
        body = {"userId": player.user, "deviceId": player.device, "streamId": stream}
        return self._start_auth, json.dumps(body).encode()

    async def pause(self, seconds):
        """Sleep `seconds`; return True early once the players are frozen."""
        if seconds <= 0:
            return self.frozen.is_set()
        try:
            await asyncio.wait_for(self.frozen.wait(), seconds)
        except TimeoutError:
            return False
        return True

    def believed_live(self):
        """Return {sid: (user, device, stream, last confirmed)} of the sessions the players hold."""
        return {
            p.session["sid"]: (p.user, p.device, p.session["stream"], p.session["confirmed"])
            for p in self.players
            if p.session is not None
        }


def _retry_after(content, rng):
    try:
        seconds = float(content.get("_retry_after") or 1)
    except ValueError:
        seconds = 1.0
    return seconds * rng.uniform(1.0, 1.3)  # jitter, as clients should, so retries do not come in herds


class Player:
    """One device of one account."""

    def __init__(self, game: Game, index):
        self.game = game
        self.index = index
        plan = game.plan
        self.user = f"gd-{game.run_id}-{index // plan.players_per_user}"
        self.device = f"device-{index % plan.players_per_user}"
        self.rng = random.Random(plan.seed * 1_000_003 + index)
        self.sequence = 0
        self.cycle = 0
        self.session: dict | None = None  # what this player believes it holds

    async def run(self):
        game, plan, rng = self.game, self.game.plan, self.rng
        if await game.pause(rng.uniform(0, plan.ramp_s)):
            return
        while game.phase == ACTIVE:
            if not await self._start():
                if await game.pause(rng.uniform(*plan.refused_wait_s)):
                    return
                continue
            if await self._play():
                return
            if await game.pause(rng.uniform(*plan.idle_s)):
                return
        await game.frozen.wait()

    async def _start(self):
        """Start a session, retrying 503 and failed requests; return whether one was admitted."""
        game, rng = self.game, self.rng
        self.cycle += 1
        stream = f"stream-{self.cycle}"
        headers, body = game.start_request(self, stream)
        while game.phase == ACTIVE:
            label, status, content = await game.call(self, "start", "POST", "/v1/sessions", headers, body)
            if status in (200, 201):
                self.session = {
                    "sid": content["sessionId"],
                    "token": content["token"],
                    "stream": stream,
                    "confirmed": time.monotonic(),
                }
                return True
            if status == 403:
                return False  # refused at the limit: not a failure
            if status == 503:
                wait = _retry_after(content, rng)
            elif status is None or status >= 500:
                wait = rng.uniform(0.3, 0.8)
            else:
                return False  # 4xx: recorded; try a new play later
            if await game.pause(wait):
                return False
        return False

    async def _play(self):
        """Heartbeat until the play ends (stop or crash) or the session is lost; return True once frozen."""
        game, plan, rng = self.game, self.game.plan, self.rng
        play_until = time.monotonic() + rng.expovariate(1 / plan.mean_play_s)
        next_beat = time.monotonic() + plan.interval_s * rng.uniform(0.9, 1.1)
        while True:
            if await game.pause(next_beat - time.monotonic()):
                return True
            if game.phase == ACTIVE and time.monotonic() >= play_until:
                if rng.random() < plan.crash_share:
                    game.crashed += 1  # vanish: the session lives on in Redis until it expires
                    self.session = None
                else:
                    await self._stop()
                return False
            session = self.session
            assert session is not None
            headers = {"Authorization": f"Bearer {session['token']}"}
            path = f"/v1/sessions/{session['sid']}"
            _label, status, content = await game.call(
                self, "heartbeat", "PUT", path, headers, sid=session["sid"]
            )
            if status == 200:
                session["token"], session["confirmed"] = content["token"], time.monotonic()
                next_beat = time.monotonic() + plan.interval_s * rng.uniform(0.9, 1.1)
            elif status == 503:
                next_beat = time.monotonic() + _retry_after(content, rng)
            elif status is None or status >= 500:
                next_beat = time.monotonic() + rng.uniform(0.3, 0.8)
            else:  # 410 (ended: the player must stop) or 401: the session is lost
                self.session = None
                return False

    async def _stop(self):
        game, rng = self.game, self.rng
        session = self.session
        assert session is not None
        self.session = None  # from the moment the stop is sent, the player no longer counts on it
        headers = {"Authorization": f"Bearer {session['token']}"}
        path = f"/v1/sessions/{session['sid']}"
        for _ in range(10):
            _label, status, content = await game.call(
                self, "stop", "DELETE", path, headers, sid=session["sid"]
            )
            if status == 204:
                game.stopped += 1
                return
            if status is not None and status < 500 and status != 503:
                return  # 410: it had ended already (recorded); 401: recorded
            wait = _retry_after(content, rng) if status == 503 else rng.uniform(0.3, 0.8)
            if await game.pause(wait):
                break
        game.abandoned += 1
