"""Run the service under the asyncio server (the default, api/httpserver.py), granian (HTTP in Rust,
the same front over RSGI) or gunicorn (the Falcon WSGI app alone, for setups with a buffering proxy in
front: its threads wait on slow clients). Any way, SIGTERM drains first (api/shutdown.py)."""

import threading
from typing import Any

from . import shutdown
from .config import Config

SERVERS = ("asyncio", "granian", "gunicorn")


def run(server: str, bind: str, workers: int, config: Config) -> int:
    """Serve on HOST:PORT until stopped; return the exit status."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if server == "asyncio":
        from .app import get_front
        from .httpserver import serve

        return serve(host, int(port), workers, config, get_front)
    if server == "granian":
        _run_granian(host, int(port), workers, config)
    else:
        _run_gunicorn(bind, workers, config)
    return 0


def _run_granian(host: str, port: int, workers: int, config: Config) -> None:
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.server.mp import MPServer  # granian.Granian: worker processes, as a GIL build runs

    class Draining(MPServer):
        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            shutdown.drain_then(
                lambda: super(Draining, self).signal_handler_interrupt(*args, **kwargs), config.drain_s
            )

    Draining(
        "api.app:get_front",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.RSGI,
        workers=workers,
        websockets=False,
        backlog=config.max_requests,
        backpressure=config.max_requests,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(config.header_timeout_s * 1000), max_buffer_size=config.max_header_bytes
        ),
        workers_kill_timeout=int(config.shutdown_timeout_s) or 1,
        respawn_failed_workers=True,
    ).serve()


def _run_gunicorn(bind: str, workers: int, config: Config) -> None:
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter

    class Draining(Arbiter):
        def handle_term(self) -> None:
            done = threading.Event()
            shutdown.drain_then(done.set, config.drain_s)
            done.wait()
            super().handle_term()

    class Gunicorn(BaseApplication):
        def load_config(self) -> None:
            options = {"bind": bind, "workers": workers, "threads": config.threads, "accesslog": None}
            options["control_socket_disable"] = True  # gunicorn >= 25 opens one in $HOME otherwise
            options["child_exit"] = _mark_worker_dead
            options["graceful_timeout"] = max(1, round(config.shutdown_timeout_s))
            options["timeout"] = max(30, int(config.shutdown_timeout_s) + 1)
            options["limit_request_field_size"] = config.max_header_bytes
            if config.threads > 1:
                options["worker_class"] = "gthread"
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Any:
            from .app import get_app

            return get_app()

        def run(self) -> None:
            Draining(self).run()

    Gunicorn().run()


def _mark_worker_dead(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
