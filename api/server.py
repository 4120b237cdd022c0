"""Run the WSGI app under granian (the default: HTTP in Rust, measured fastest) or gunicorn."""

from typing import Any

SERVERS = ("granian", "gunicorn")


def run(server: str, bind: str, workers: int, threads: int) -> None:
    """Serve `api.app:get_app()` on HOST:PORT until stopped."""
    host, _, port = bind.rpartition(":")
    if server == "granian":
        _run_granian(host or "127.0.0.1", int(port), workers, threads)
    else:
        _run_gunicorn(bind, workers, threads)


def _run_granian(host: str, port: int, workers: int, threads: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        "api.app:get_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        websockets=False,
        respawn_failed_workers=True,
    ).serve()


def _run_gunicorn(bind: str, workers: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    class Gunicorn(BaseApplication):
        def load_config(self) -> None:
            options = {"bind": bind, "workers": workers, "threads": threads, "accesslog": None}
            options["control_socket_disable"] = True  # gunicorn >= 25 opens one in $HOME otherwise
            options["child_exit"] = _mark_worker_dead
            if threads > 1:
                options["worker_class"] = "gthread"
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Any:
            from .app import get_app

            return get_app()

    Gunicorn().run()


def _mark_worker_dead(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
