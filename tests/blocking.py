"""Call the store or the domain service from a test as the Falcon app does: coroutines run on this thread."""

import inspect

from api import sync


class Blocking:
    """Wrap an object whose methods are coroutines; each call runs to completion (api/sync.py)."""

    def __init__(self, target):
        self.target = target

    def __getattr__(self, name):
        attribute = getattr(self.target, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        return lambda *args, **kwargs: sync.run(attribute(*args, **kwargs))
