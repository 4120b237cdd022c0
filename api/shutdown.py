"""Graceful shutdown: on SIGTERM an instance says it is not ready at once, keeps serving while load
balancers notice (CONCURRENCY_DRAIN), then stops taking connections and finishes what it has in hand
(within CONCURRENCY_SHUTDOWN_TIMEOUT).

The flag lives in memory shared by the server process and the workers it forks: created here, when
`serve` imports this module before starting them, and read by every worker's /readyz.
"""

import mmap
import threading
import time
from collections.abc import Callable

_FLAG = mmap.mmap(-1, 1)  # anonymous and shared: the forked workers see the serve process's writes


def draining() -> bool:
    """Whether this instance is shutting down (its /readyz answers 503)."""
    return _FLAG[0] == 1


def begin() -> None:
    """Say not ready from now on, in every worker."""
    _FLAG[0] = 1


def drain_then(stop: Callable[[], object], drain_s: float) -> None:
    """Say not ready at once; call `stop` after `drain_s`, on a thread (the caller is a signal handler).

    A second signal during the drain stops at once."""
    if draining():
        stop()
        return
    begin()

    def drain() -> None:
        time.sleep(drain_s)
        stop()

    threading.Thread(target=drain, daemon=True).start()
