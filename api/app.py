"""Wiring: `create_app` builds the app from its parts; `get_app` builds the parts from the environment."""

import os
import pathlib
from collections.abc import Mapping

import falcon

from keys.keyring import Keyring

from . import resources
from .aio import AsyncRunner
from .concurrency import Concurrency
from .config import Config
from .connection import connect, redis_target
from .front import Front
from .identity import Identity
from .metrics import Metrics, MetricsResource
from .observability import Observe, Observer, configure_logging
from .playback import Playback
from .responses import add_error_handlers
from .store import RedisStore
from .tokens import SessionTokens

OPENAPI_PATH = pathlib.Path(__file__).with_name("openapi.yaml")


def create_app(
    config: Config,
    store: RedisStore,
    keyring: Keyring,
    identity: Identity | None = None,
    metrics: Metrics | None = None,
    tokens: SessionTokens | None = None,
) -> falcon.App:
    """Return the WSGI app over the given config, session store and keyring; no side effects."""
    metrics = metrics or Metrics()
    tokens = tokens or session_tokens(config, keyring)
    concurrency = Concurrency(store, tokens, config, count=metrics.count)
    identity = identity or Identity(config)
    playback = Playback(concurrency, identity, config)

    app = falcon.App(
        middleware=(Observe(Observer(metrics, config.access_log)), _OptionsAllowed()), cors_enable=False
    )
    # No: it made DELETE /v1/users/{u}/sessions/ (a session id left out) the kick of every session.
    app.req_options.strip_url_path_trailing_slash = False
    add_error_handlers(app, config.retry_after_s)

    health = resources.Health()
    app.add_route("/health", health)
    app.add_route("/healthz", health)
    app.add_route("/readyz", resources.Ready(store, keyring, identity.modes))
    app.add_route("/concurrency", resources.LegacyConcurrency(playback, config))
    app.add_route("/v1/sessions", resources.Sessions(playback, config))
    app.add_route("/v1/sessions/{session_id}", resources.SessionItem(playback, config))
    user_sessions = resources.UserSessions(concurrency, identity, config)
    app.add_route("/v1/users/{user_id}/sessions", user_sessions)
    app.add_route("/v1/users/{user_id}/sessions/{session_id}", user_sessions, suffix="one")
    app.add_route("/.well-known/jwks.json", resources.Jwks(keyring, config.jwks_max_age_s))
    app.add_route("/openapi.yaml", resources.OpenApi(OPENAPI_PATH.read_bytes()))
    app.add_route("/metrics", MetricsResource(metrics))
    return app


class _OptionsAllowed:
    """Falcon's answer to OPTIONS lists the route's methods but not OPTIONS, which its 405 lists."""

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        allow = resp.get_header("Allow")
        if req.method == "OPTIONS" and allow and "OPTIONS" not in allow:
            resp.set_header("Allow", f"{allow}, OPTIONS")


def session_tokens(config: Config, keyring: Keyring) -> SessionTokens:
    return SessionTokens(
        keyring,
        config.issuer,
        config.audience,
        config.token_leeway_s,
    )


def get_app(environ: Mapping[str, str] | None = None) -> falcon.App:
    """Build the WSGI app from CONCURRENCY_* variables (os.environ by default), as gunicorn serves it."""
    config, keyring = _boot(environ)
    return create_app(config, RedisStore(connect(config), timeout_s=config.redis_timeout_s), keyring)


def get_front(environ: Mapping[str, str] | None = None) -> Front:
    """Build a worker's front from CONCURRENCY_* variables, as the asyncio server or granian serves it."""
    config, keyring = _boot(environ)
    metrics, identity, tokens = Metrics(), Identity(config), session_tokens(config, keyring)
    blocking = RedisStore(connect(config), timeout_s=config.redis_timeout_s)
    app = create_app(config, blocking, keyring, identity, metrics, tokens)
    inline = config.redis_mode == "standalone"  # the asyncio runner speaks to one Redis, not a cluster
    store = blocking
    if inline:
        urls, options = redis_target(config)
        runner = AsyncRunner(urls[0], config.redis_timeout_s, options)
        store = RedisStore(runner, timeout_s=config.redis_timeout_s)
    playback = Playback(Concurrency(store, tokens, config, count=metrics.count), identity, config)
    return Front(
        app,
        playback,
        Observer(metrics, config.access_log),
        inline=inline,
        threads=config.threads,
        max_body_bytes=config.max_body_bytes,
        body_timeout_s=config.body_timeout_s,
    )


def _boot(environ: Mapping[str, str] | None) -> tuple[Config, Keyring]:
    config = Config.from_env(os.environ if environ is None else environ)
    configure_logging(config.log_level)
    keyring = Keyring.open(config.keys_dir, config.signing_key_pem, config.keys_reload_s)
    _ = keyring.signing_key  # fail at boot, not on the first request, when no key is active
    return config, keyring
