"""The document and the app have the same routes; what they answer off the routes is documented."""

import falcon.inspect
import falcon.testing
import pytest
from contract import (
    DOC,
    HTTP_METHODS,
    START,
    app_operations,
    check_component,
    check_response,
    documented_operations,
)

from api.app import create_app
from api.store import RedisStore
from keys.keyring import Keyring
from keys.store import KeyStore

# -- routes -----------------------------------------------------------------------------------------


def test_document_and_app_have_the_same_operations(client):
    assert app_operations(client.app) == documented_operations()


def test_route_comparison_sees_an_undocumented_route(config, keyring, fake_redis):
    app = create_app(config, RedisStore(fake_redis), keyring)
    app.add_route("/v1/secret", _Resource())
    assert app_operations(app) - documented_operations() == {("/v1/secret", "get")}


class _Resource:
    def on_get(self, req, resp):
        resp.media = {}


def sample_path(path):
    return path.replace("{sessionId}", "AAAAAAAAAAAAAAAA").replace("{userId}", "ann")


@pytest.mark.parametrize("path", sorted(DOC["paths"]))
def test_undocumented_method_is_a_documented_405(client, path, fake_redis):
    answer = client.simulate_request("PATCH", sample_path(path), json={})
    assert answer.status_code == 405
    check_component("MethodNotAllowed", answer)
    allowed = set(answer.headers["allow"].split(", "))
    assert allowed == {m.upper() for m in DOC["paths"][path] if m in HTTP_METHODS} | {"OPTIONS"}
    assert fake_redis.dbsize() == 0


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/v1",
        "/v1/sessions/a/b",
        "/concurrency/x",
        "/.well-known/x",
        "/v1/users/ann",
        "/v1/users/ann/sessions/a/b",
        "/v1/users/a%2Fb/sessions",  # the router decodes %2F before matching: such a user has no route
    ],
)
def test_unknown_path_is_a_documented_404(client, path):
    answer = client.simulate_get(path)
    assert answer.status_code == 404
    check_component("NotFound", answer)


def test_internal_fault_is_the_documented_500(config, keyring):
    class Broken:
        async def run(self, script, key, args):
            raise RuntimeError("internals")

    client = falcon.testing.TestClient(create_app(config, RedisStore(Broken()), keyring))
    answer = client.simulate_post("/v1/sessions", json=START)
    assert answer.status_code == 500
    check_component("InternalError", answer)


def test_jwks_of_every_algorithm_matches_the_document(config, fake_redis, tmp_path):
    store = KeyStore(str(tmp_path))
    for alg in ("ES256", "EdDSA", "RS256"):
        store.generate(alg)
    keyring = Keyring.open(str(tmp_path))
    client = falcon.testing.TestClient(create_app(config, RedisStore(fake_redis), keyring))
    answer = client.simulate_get("/.well-known/jwks.json")
    assert sorted(k["alg"] for k in answer.json["keys"]) == ["ES256", "EdDSA", "RS256"]
    check_response("get", "/.well-known/jwks.json", answer)
