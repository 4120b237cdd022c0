"""One account looping start+stop cannot grow its Redis work, nor reach another user's key.

The latency and Redis CPU comparison with the same churn spread over many accounts is scripts/bench's
(`--flood`); this checks the bound behind it on the real server and redis-server: however long one
account churns, its hash holds at most its limit in sessions plus lua.MAX_TOMBSTONES tombstones and a
mark, stays in Redis's compact encoding, and every other user's session plays on untouched."""

import threading
import time

import pytest
from layout import live_sessions, user_key
from players import admitted, heartbeat, new_user, start, stop

from api.lua import MAX_TOMBSTONES

pytestmark = [pytest.mark.http, pytest.mark.redis]

FLOOD_S = 4.0


def test_a_start_stop_flood_is_bounded_by_the_accounts_own_sessions(server, real_redis):
    flooder = new_user("flooder")
    bystanders = {new_user("bystander"): None for _ in range(5)}
    for user in bystanders:
        bystanders[user] = admitted(start(server, user=user))
    stopping, cycles, sizes, failures = threading.Event(), [], [], []

    def churn():
        while not stopping.is_set():
            answer = start(server, user=flooder, device=f"d{len(cycles) % 7}")
            if answer.status in (200, 201):
                stop(server, *admitted(answer))
            cycles.append(answer.status)

    threads = [threading.Thread(target=churn, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + FLOOD_S
    while time.monotonic() < deadline:
        sizes.append(real_redis.hlen(user_key(flooder)))
        for user, (sid, token) in list(bystanders.items()):
            answer = heartbeat(server, sid, token)
            if answer.status != 200:
                failures.append((user, answer.status, answer.body))
            else:
                bystanders[user] = (sid, answer.json()["token"])
        time.sleep(0.05)
    stopping.set()
    for thread in threads:
        thread.join(timeout=10)

    print(f"\n[flood] {len(cycles)} start/stop cycles; the flooder's hash held at most {max(sizes)} fields")
    assert len(cycles) > 100 and failures == []
    assert max(sizes) <= 3 + MAX_TOMBSTONES + 1  # the default limit of 3 sessions, the tombstones, the mark
    assert real_redis.object("encoding", user_key(flooder)) == b"listpack"
    assert set(live_sessions(real_redis)) == {sid for sid, _ in bystanders.values()}
