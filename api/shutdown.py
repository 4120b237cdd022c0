"""Graceful shutdown: on SIGTERM an instance says it is not ready at once, keeps serving while load
balancers notice (CONCURRENCY_DRAIN), then stops taking connections and finishes what it has in hand
(within CONCURRENCY_SHUTDOWN_TIMEOUT).

The flag lives in memory shared by the server process and the workers it forks: created here, when
`serve` imports this module before starting them, and read by every worker's /readyz.
"""

import mmap

_FLAG = mmap.mmap(-1, 1)  # anonymous and shared: the forked workers see the serve process's writes


def draining() -> bool:
    """Whether this instance is shutting down (its /readyz answers 503)."""
    return _FLAG[0] == 1


def begin() -> None:
    """Say not ready from now on, in every worker."""
    _FLAG[0] = 1
