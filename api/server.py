"""Run the WSGI app under gunicorn from inside the CLI."""

from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):
    def __init__(self, options):
        self._options = options
        super().__init__()

    def load_config(self):
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self):
        from .app import get_app

        return get_app()


def _child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def run_gunicorn(bind, workers, threads):
    options = {"bind": bind, "workers": workers, "threads": threads, "accesslog": None}
    options["child_exit"] = _child_exit
    options["control_socket_disable"] = True  # gunicorn >= 25 opens one in $HOME otherwise
    if threads > 1:
        options["worker_class"] = "gthread"
    _Gunicorn(options).run()
