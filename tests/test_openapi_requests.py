"""The request bodies the document describes are exactly those the app takes."""

import jsonschema
import pytest
from contract import DOC, REGISTRY, START, Api, at, deref, pointer, schema_uri


@pytest.fixture
def api(client, config, keyring, fake_redis, tmp_path):
    return Api(client, config, keyring, fake_redis, tmp_path)


def request_schema(method, path):
    body, fragment = deref(
        DOC["paths"][path][method]["requestBody"], pointer("paths", path, method, "requestBody")
    )
    assert body["required"]
    return f"{fragment}/content/application~1json/schema"


def test_start_request_body_is_one_of_the_two_modes():
    for path in ("/concurrency", "/v1/sessions"):
        assert at(request_schema("post", path))["anyOf"] == [
            {"$ref": pointer("components", "schemas", "StartRequest")},
            {"$ref": pointer("components", "schemas", "UserTokenStartRequest")},
        ]


START_BODIES = [
    START,
    {**START, "userId": "u" * 256, "streamId": "ünï|%{x}"},
    {**START, "userId": 7},
    {**START, "deviceId": ""},
    {**START, "streamId": "s" * 257},
    {**START, "admin": True},
    {"userId": "ann", "deviceId": "tv"},
    {"deviceId": "tv", "streamId": "film"},
]


@pytest.mark.parametrize("path", ["/concurrency", "/v1/sessions"])
@pytest.mark.parametrize("body", START_BODIES)
def test_start_request_schema_agrees_with_the_app(client, path, body):
    documented = jsonschema.Draft202012Validator(
        {"$ref": schema_uri(pointer("components", "schemas", "StartRequest"))}, registry=REGISTRY
    )
    answer = client.simulate_post(path, json=body)
    assert documented.is_valid(body) == (answer.status_code in (200, 201)), answer.text


@pytest.mark.parametrize("path", ["/concurrency", "/v1/sessions"])
@pytest.mark.parametrize("body", [*START_BODIES, {"userId": "zoe", "deviceId": "tv", "streamId": "film"}])
def test_user_token_start_request_schema_agrees_with_the_app(api, path, body):
    documented = jsonschema.Draft202012Validator(
        {"$ref": schema_uri(pointer("components", "schemas", "UserTokenStartRequest"))}, registry=REGISTRY
    )
    client = api.with_user_tokens()
    answer = client.simulate_post(path, json=body, headers=api.bearer(api.user_token("u" * 256)))
    if body.get("userId") in ("ann", "zoe"):  # a valid body of another user than the token's
        assert answer.status_code == (403 if documented.is_valid(body) else 400), answer.text
    else:
        assert documented.is_valid(body) == (answer.status_code in (200, 201)), answer.text


@pytest.mark.parametrize("method", ["put", "delete"])
@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"sessionKey": "k", "token": "t"}, True),
        ({"sessionKey": "k"}, False),
        ({"sessionKey": "k", "token": ""}, False),
        ({"sessionKey": "k" * 257, "token": "t"}, False),
        ({"sessionKey": "k", "token": "t", "userId": "ann"}, False),
    ],
)
def test_session_request_schema_agrees_with_the_app(client, method, body, valid):
    documented = jsonschema.Draft202012Validator(
        {"$ref": schema_uri(request_schema(method, "/concurrency"))}, registry=REGISTRY
    )
    assert documented.is_valid(body) == valid
    answer = client.simulate_request(method.upper(), "/concurrency", json=body)
    assert answer.status_code == (401 if valid else 400), answer.text  # a valid shape reaches the token check
