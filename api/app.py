"""Wiring: `create_app` builds the app from its parts; `get_app` builds the parts from the environment."""

import functools
import http
import logging
import pathlib
import re

import falcon

from keys.keyring import Keyring
from keys.tokens import Tokens

from . import resources
from .concurrency import Concurrency
from .config import Config
from .errors import InvalidToken, ServiceError, StoreUnavailable
from .identity import Identity
from .observability import Metrics, MetricsResource, Observe, configure_logging
from .store import RedisStore, connect

log = logging.getLogger(__name__)

_UNSAFE_IN_HEADER = re.compile(r'[^\x20-\x7e]|["\\]')
OPENAPI_PATH = pathlib.Path(__file__).with_name("openapi.yaml")


def create_app(config, store, keyring, identity=None, metrics=None):
    """Return the WSGI app over the given config, session store and keyring; no side effects."""
    metrics = metrics or Metrics()
    tokens = Tokens(
        keyring,
        config.issuer,
        config.audience,
        config.token_leeway_s,
        issued_cache_size=config.token_cache_size,
    )
    concurrency = Concurrency(store, tokens, config, count=metrics.count)
    identity = identity or Identity(config)

    app = falcon.App(middleware=[Observe(metrics, config.access_log)], cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    app.set_error_serializer(_serialize_http_error)
    app.add_error_handler(ServiceError, functools.partial(_handle_service_error, config.retry_after_s))
    app.add_error_handler(Exception, _handle_unexpected)

    health = resources.Health()
    app.add_route("/health", health)
    app.add_route("/healthz", health)
    app.add_route("/readyz", resources.Ready(store, keyring))
    app.add_route("/concurrency", resources.LegacyConcurrency(concurrency, identity, config))
    app.add_route("/v1/sessions", resources.Sessions(concurrency, identity, config))
    app.add_route("/v1/sessions/{session_id}", resources.Session(concurrency, config))
    user_sessions = resources.UserSessions(concurrency, identity, config)
    app.add_route("/v1/users/{user_id}/sessions", user_sessions)
    app.add_route("/v1/users/{user_id}/sessions/{session_id}", user_sessions, suffix="one")
    app.add_route("/.well-known/jwks.json", resources.Jwks(keyring, config.jwks_max_age_s))
    app.add_route("/openapi.yaml", resources.OpenApi(OPENAPI_PATH.read_bytes()))
    app.add_route("/metrics", MetricsResource(metrics))
    return app


def get_app(environ=None):
    """Build the app from CONCURRENCY_* variables: the entry point for WSGI servers."""
    config = Config.from_env() if environ is None else Config.from_env(environ)
    configure_logging(config.log_level)
    store = RedisStore(connect(config), config.buckets, timeout_s=config.redis_timeout_s)
    keyring = Keyring.from_dir(config.keys_dir)
    _ = keyring.signing_key  # fail at boot, not on the first request, when no key is active
    return create_app(config, store, keyring)


def _handle_service_error(retry_after_s, req, resp, exc, params):
    resp.status = exc.status
    resp.media = {"error": exc.code, "message": exc.message, **exc.details}
    if isinstance(exc, InvalidToken):
        text = _UNSAFE_IN_HEADER.sub("?", exc.message)[:200]  # messages may quote token contents
        resp.set_header("WWW-Authenticate", f'Bearer error="invalid_token", error_description="{text}"')
    elif isinstance(exc, StoreUnavailable):
        resp.set_header("Retry-After", str(retry_after_s))


def _handle_unexpected(req, resp, exc, params):
    log.exception("unexpected error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = {
        "error": "internal_error",
        "message": "internal error; it has been logged",
    }


def _serialize_http_error(req, resp, exc):
    phrase = http.HTTPStatus(exc.status_code).phrase
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {
        "error": phrase.lower().replace(" ", "_"),
        "message": exc.description or phrase,
    }
