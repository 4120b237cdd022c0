"""Redis bytes per live session: this service's store against the seed's one string key per slot.

Both models hold one session for each of N users with short ids (user{i}, laptop, seattleSeahawks);
each is loaded into its own fresh redis-server and measured as the growth of `used_memory`.
"""

import functools

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


def load_seed_model(client, sessions):
    """The seed's model: SET <user>_1 <device>_<stream> PX 60000, one string key per slot."""
    pipe = client.pipeline(transaction=False)
    for i in range(sessions):
        pipe.set(f"{user(i)}_1", f"{DEVICE}_{STREAM}", px=SEED_TTL_MS)
        if (i + 1) % BATCH == 0:
            pipe.execute()
    pipe.execute()


def load_store_model(client, sessions, buckets, max_streams=3):
    """This service's model, written by the store's own admit script, one call per session."""
    store = RedisStore(client, buckets)
    policy = Limits(limit=max_streams)
    for i in range(sessions):
        store.admit(user(i), DEVICE, STREAM, policy, STORE_TTL_MS, STORE_TTL_MS)


def used_memory(client):
    return int(client.info("memory")["used_memory"])


def bytes_per_session(client, load, sessions):
    """Return the growth of used_memory per session while `load` adds `sessions` of them."""
    before = used_memory(client)
    load(client, sessions)
    return (used_memory(client) - before) / sessions


def measure(workdir, sessions, buckets, cpus=()):
    """Measure both models, each in a fresh redis-server pinned to `cpus`; return bytes per session."""
    figures = {"sessions": sessions}
    models = {"seed": load_seed_model, "store": functools.partial(load_store_model, buckets=buckets)}
    for name, load in models.items():
        with redis_server(workdir / f"redis-memory-{name}", cpus) as server:
            figures[f"{name}_bytes_per_session"] = bytes_per_session(server.client, load, sessions)
    return figures
