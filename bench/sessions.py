"""Live sessions with a valid token each, for the heartbeat and stop runs.

Start runs leave theirs behind (start.lua writes "sessionKey token" lines); when those are too few,
more are made in this process through the app itself, over the same Redis and keys as the server.
"""

import itertools

from .processes import BenchError


class SessionPool:
    """Sessions known to be live, in the order they were started."""

    def __init__(self, directory, env):
        self._directory = directory
        self._env = env
        self._sessions = []
        self._client = None
        self._made = itertools.count()

    def __len__(self):
        return len(self._sessions)

    def harvest_path(self, name):
        """Return the path prefix a start run writes its sessions to (wrk adds `.<thread>`)."""
        return self._directory / f"harvest-{name}"

    def harvest(self, name):
        """Take in the sessions that the start run `name` admitted."""
        for path in sorted(self._directory.glob(f"harvest-{name}.*")):
            self._sessions.extend(read_lines(path.read_text()))
            path.unlink()

    def ensure(self, count):
        """Make sessions through the app until the pool holds `count`; return how many were made."""
        missing = max(0, count - len(self._sessions))
        for _ in range(missing):
            self._sessions.append(self._make())
        return missing

    def write(self, name, start, count):
        """Write `count` sessions from index `start` to a file for wrk; return its path."""
        path = self._directory / f"sessions-{name}.txt"
        chosen = self._sessions[start : start + count]
        path.write_text("".join(f"{sid} {token}\n" for sid, token in chosen))
        return path

    def _make(self):
        if self._client is None:
            import falcon.testing

            from api.app import get_app

            self._client = falcon.testing.TestClient(get_app(self._env))
        user = f"pool{next(self._made)}"
        body = {"userId": user, "deviceId": "laptop", "streamId": "seattleSeahawks"}
        answer = self._client.simulate_post("/concurrency", json=body)
        if answer.status_code != 200:
            raise BenchError(f"making a session failed: {answer.status} {answer.text}")
        return answer.json["sessionKey"], answer.json["token"]


def read_lines(text):
    """Return (sessionKey, token) pairs from "sessionKey token" lines, skipping broken ones."""
    pairs = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            pairs.append((parts[0], parts[1]))
    return pairs
