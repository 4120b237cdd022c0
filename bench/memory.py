"""Redis bytes per live session: this service's store against the seed's one string key per slot.

Both models hold one session for each of N users with short ids (user{i}, laptop, seattleSeahawks);
each is loaded into its own fresh redis-server and measured as the growth of `used_memory`.
"""

import time

from api import sync
from api.sessions import Limits
from api.store import RedisStore

from .processes import redis_server

DEVICE = "laptop"
STREAM = "seattleSeahawks"
SEED_TTL_MS = 60_000
STORE_TTL_MS = 600_000  # long enough that no session expires while the rest load
BATCH = 1000


def user(i):
    return f"user{i}"


def load_seed_model(client, sessions, first=0):
    """The seed's model: SET <user>_1 <device>_<stream> PX 60000, one string key per slot."""
    pipe = client.pipeline(transaction=False)
    for i in range(first, first + sessions):
        pipe.set(f"{user(i)}_1", f"{DEVICE}_{STREAM}", px=SEED_TTL_MS)
        if (i + 1) % BATCH == 0:
            pipe.execute()
    pipe.execute()


def load_store_model(client, sessions, first=0, max_streams=3):
    """This service's model, written by the store's own admit script, one call per session."""
    store = RedisStore(client)
    policy = Limits(limit=max_streams)
    for i in range(first, first + sessions):
        sync.run(store.admit(user(i), DEVICE, STREAM, policy, STORE_TTL_MS, STORE_TTL_MS))


def used_memory(client):
    return int(client.info("memory")["used_memory"])


def settled_memory(client, interval_s=0.1, tries=50):
    """Return used_memory once it stops changing: Redis grows its key table incrementally."""
    last = used_memory(client)
    for _ in range(tries):
        time.sleep(interval_s)
        now = used_memory(client)
        if now == last:
            return now
        last = now
    return last


def bytes_per_session(client, load, sessions):
    """Return the growth of used_memory per session while `load` adds `sessions` of them.

    One session is loaded first and not counted: the connection's buffers and the script cache are
    paid once, not per session."""
    load(client, 1, first=sessions)
    before = settled_memory(client)
    load(client, sessions)
    return (settled_memory(client) - before) / sessions


def measure(workdir, counts, cpus=()):
    """Measure both models at each count of sessions, each in a fresh redis-server pinned to `cpus`.

    Return [{"sessions", "seed_bytes_per_session", "store_bytes_per_session"}] in the order of `counts`."""
    results = []
    for sessions in counts:
        figures = {"sessions": sessions}
        for name, load in {"seed": load_seed_model, "store": load_store_model}.items():
            with redis_server(workdir / f"redis-memory-{name}-{sessions}", cpus) as server:
                figures[f"{name}_bytes_per_session"] = bytes_per_session(server.client, load, sessions)
        results.append(figures)
    return results
