"""Run the service's coroutines to completion on the calling thread.

The domain and the store are written once, as coroutines. Over a blocking runner (a redis-py client:
the Falcon app's threads, the tests, the CLI) none of them ever suspends, so driving one is a single
`send`; over the asyncio runner (api/aio.py) the event loop awaits them instead.
"""

from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Return what `coroutine` returns (or raise what it raises); it must not suspend."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a coroutine suspended on a blocking runner; run it on an event loop")
