"""The Node peer's heartbeat, as a comparison row: the same design on the seed's stack, on the same core.

The peer (a yardstick kept outside this repository, `--peer DIR`) is one Node process: node:http,
node:crypto, ioredis. It verifies the ES256 token of every heartbeat (no cache), refreshes the session
with one Redis script and signs a fresh token. It runs where `node` is installed (and `npm`, unless the
folder holds its node_modules already); otherwise the report says why the row is missing. It is never a
dependency of the service or of its tests.
"""

import os
import pathlib
import shutil
import subprocess

from .processes import BenchError, Process, free_port, pinned, wait_until

DEFAULT_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "peers" / "node-heartbeat"
NPM_TIMEOUT_S = 300


def unavailable(peer_dir):
    """Return why the peer cannot run here, or None when it can."""
    if peer_dir is None:
        return "not asked for (--no-peer)"
    if not (pathlib.Path(peer_dir) / "peer.mjs").is_file():
        return f"no peer.mjs in {peer_dir}"
    installed = (pathlib.Path(peer_dir) / "node_modules").is_dir()
    missing = [tool for tool in ("node", *(() if installed else ("npm",))) if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed"
    return None


class Peer:
    """The peer, installed in a scratch copy and serving on a free port, pinned where asked."""

    def __init__(self, peer_dir, workdir, redis_port, cpus):
        self._copy = workdir / "peer"
        shutil.copytree(peer_dir, self._copy, dirs_exist_ok=True)
        if not (self._copy / "node_modules").is_dir():
            command = ["npm", "install", "--silent", "--no-audit", "--no-fund"]
            done = subprocess.run(
                command, cwd=self._copy, capture_output=True, text=True, timeout=NPM_TIMEOUT_S
            )
            if done.returncode != 0:
                raise BenchError(f"npm install of the peer failed:\n{done.stdout}\n{done.stderr}")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {"PATH": os.environ.get("PATH", ""), "REDIS_PORT": str(redis_port), "PORT": str(self.port)}
        log = workdir / "peer.log"
        self.process = Process(pinned(["node", str(self._copy / "peer.mjs")], cpus), log, env=env)
        wait_until(lambda: self._token(log) is not None, 30, "the peer's first token")
        self.token = self._token(log)

    def _token(self, log):
        if not self.process.running():
            raise BenchError(f"the peer exited:\n{self.process.log_tail()}")
        first = log.read_text().partition("\n")
        return first[0].strip() if first[1] else None

    def sessions_file(self, workdir):
        """Write the one session the peer made at start, for peer.lua; return the path."""
        path = workdir / "sessions-peer.txt"
        path.write_text(f"AAAAAAAAAAAAAAAA {self.token}\n")
        return path

    def stop(self):
        self.process.stop()
